"""What every benchmark shares: the machine description and the results table."""

from __future__ import annotations

import csv
import os
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results.csv"
COLUMNS = ["date", "benchmark", "machine", "command", "metric", "value", "reference", "ratio"]


def machine() -> str:
    """``<n> CPU <model> (load average <x>)``: what a reader needs to weigh these figures.

    These machines are shared, so the load at the start says how much a figure can be trusted.
    """
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        model = names[0].split(":", 1)[1].strip() if names else model
    return f"{os.cpu_count()} CPU {model} (load average {os.getloadavg()[0]:.1f} at start)"


def append_rows(rows: list[dict[str, str]]) -> None:
    """Append rows to results.csv, following the header of an existing file."""
    exists = RESULTS.is_file() and RESULTS.stat().st_size > 0
    header = COLUMNS
    if exists:
        with RESULTS.open(newline="") as handle:
            header = next(csv.reader(handle))
    with RESULTS.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        if not exists:
            writer.writeheader()
        writer.writerows(rows)
