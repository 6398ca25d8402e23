"""Load test of ``reidkit serve`` on loopback: 16 clients for 30 s, mixing search and add.

Run from the repository root::

    .venv/bin/python benchmarks/bench_serve.py

Exports the demo model (ResNet-18, 128x64, 256-d; random weights, which do not change its
speed), synthesises crops, and then, for each batching mode, starts a real server
(``reidkit serve -e spec.yaml``) on 127.0.0.1, fills its gallery with ``--prefill`` crops and
runs ``--clients`` concurrent clients for ``--seconds``: each request is a search of one crop
(k=10) with probability ``--search-share``, else an add of 4 crops. Every request loop is
bounded in time and stops by itself; nothing leaves the machine.

Modes: ``batched`` (micro-batching, up to 32 images, 5 ms gather window) against
``one-at-a-time`` (``serve.max_batch=1``), same server otherwise. Prints p50/p99 latency per
operation, throughput and errors, and appends rows to ``benchmarks/results.csv``. The model
alone (onnxruntime in this process, batch 1 against 16) is measured first: micro-batching can
gain at most that ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort
import torch

from common import append_rows, machine
from reidkit.actions.export import export
from reidkit.config.loading import apply_overrides, load_spec
from reidkit.data import synthesize
from reidkit.engine.module import build_model
from reidkit.models.card import MODEL_PREFIX, attach_card
from reidkit.models.checkpoint_file import save_checkpoint
from reidkit.serve.tokens import create_token

COMMAND = ".venv/bin/python benchmarks/bench_serve.py"
REPO = Path(__file__).resolve().parents[1]
MODES = {"batched": [], "one-at-a-time": ["serve.max_batch=1"]}
T0 = datetime(2026, 11, 1, tzinfo=timezone.utc)


def demo_model(folder: Path, data: Path) -> Path:
    """The demo spec's model (examples/demo.yaml), random weights, exported to ONNX (checked on
    the synthetic crops in ``data``)."""
    spec = load_spec(
        REPO / "examples" / "demo.yaml",
        [
            f"results_dir={folder}",
            "dataset.num_classes=30",
            f"dataset.train_dataset_dir={data / 'bounding_box_train'}",
            f"dataset.test_dataset_dir={data / 'bounding_box_test'}",
            f"dataset.query_dataset_dir={data / 'query'}",
        ],
    )
    torch.manual_seed(0)
    model = build_model(spec, 30)
    content = {"state_dict": {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}}
    attach_card(content, model.card(spec.dataset.pixel_mean, spec.dataset.pixel_std))
    checkpoint = folder / "demo.pth"
    save_checkpoint(content, checkpoint, None)
    return export(apply_overrides(spec, {"export.checkpoint": str(checkpoint)})).onnx_file


def demo_site(work: Path) -> tuple[Path, list[bytes]]:
    """The demo model exported to ONNX and the bytes of the synthetic crops it was checked on."""
    synthesize(work / "crops", ids=40, cameras=4, images_per_id=8, seed=1)
    model = demo_model(work / "model", work / "crops")
    return model, [p.read_bytes() for p in sorted((work / "crops").rglob("*.jpg"))]


def model_images_per_s(model: Path, threads: int, batch: int, seconds: float = 4.0) -> float:
    """The model alone on onnxruntime, in this process: what batching can gain at most."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    images = np.random.default_rng(0).random((batch, 3, 128, 64), dtype=np.float32)
    session.run(None, {name: images})
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {name: images})
        done += batch
    return done / (time.perf_counter() - start)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, gallery: Path, tokens: Path, overrides: list[str], threads: int):
    port = free_port()
    spec = gallery.parent / f"serve-{port}.yaml"
    spec.write_text(f"results_dir: {gallery.parent / 'results'}\n")
    command = [
        sys.executable, "-m", "reidkit", "serve", "-e", str(spec), f"serve.model={model}",
        f"serve.gallery_uri={gallery}", f"serve.token_file={tokens}", f"serve.port={port}",
        f"serve.threads={threads}", "serve.log_level=warning", *overrides,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(command, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            time.sleep(0.3)
    process.kill()
    raise RuntimeError("server did not start")


def add_form(crops: list[bytes], start: int) -> dict:
    metadata = [
        {
            "camera": (start + i) % 4 + 1,
            "timestamp": (T0 + timedelta(seconds=start + i)).isoformat(),
            "track_id": f"t{(start + i) // 8}",
        }
        for i in range(len(crops))
    ]
    return {
        "files": [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(crops)],
        "data": {"metadata": json.dumps(metadata)},
    }


async def prefill(url: str, token: str, crops: list[bytes], count: int) -> None:
    async with httpx.AsyncClient(base_url=url, headers=_auth(token), timeout=120) as client:
        for start in range(0, count, 32):
            part = [crops[(start + i) % len(crops)] for i in range(min(32, count - start))]
            response = await client.post("/v1/gallery", **add_form(part, start))
            response.raise_for_status()


def _auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def load(url: str, token: str, crops: list[bytes], args: argparse.Namespace) -> dict:
    """``args.clients`` loops, each sending one request after another until the time is up."""
    latencies: dict[str, list[float]] = {"search": [], "add": []}
    errors: list[str] = []
    stop_at = time.monotonic() + args.seconds
    counter = iter(range(10**9))

    async def client_loop(seed: int) -> None:
        rng = random.Random(seed)
        async with httpx.AsyncClient(base_url=url, headers=_auth(token), timeout=30) as client:
            while time.monotonic() < stop_at:
                operation = "search" if rng.random() < args.search_share else "add"
                if operation == "search":
                    query = rng.choice(crops)
                    request = client.post(
                        "/v1/search",
                        files=[("images", ("q.jpg", query, "image/jpeg"))],
                        data={"k": "10"},
                    )
                else:
                    part = rng.sample(crops, 4)
                    request = client.post("/v1/gallery", **add_form(part, 10**6 + next(counter)))
                start = time.perf_counter()
                try:
                    response = await request
                    ok = response.status_code in (200, 201)
                    if not ok:
                        errors.append(f"{operation} {response.status_code} {response.text[:80]}")
                except httpx.HTTPError as exc:
                    ok = False
                    errors.append(f"{operation} {type(exc).__name__}")
                if ok:
                    latencies[operation].append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(client_loop(seed) for seed in range(args.clients)))
    elapsed = time.perf_counter() - began
    return {"latencies": latencies, "errors": errors, "elapsed": elapsed}


def summarise(result: dict) -> dict[str, float]:
    figures: dict[str, float] = {}
    total = 0
    for operation, values in result["latencies"].items():
        total += len(values)
        if values:
            figures[f"{operation}_p50_ms"] = 1000 * float(np.percentile(values, 50))
            figures[f"{operation}_p99_ms"] = 1000 * float(np.percentile(values, 99))
        figures[f"{operation}_count"] = len(values)
    figures["requests_per_s"] = total / result["elapsed"]
    figures["errors"] = len(result["errors"])
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--prefill", type=int, default=1000)
    parser.add_argument("--search-share", type=float, default=0.8)
    parser.add_argument("--threads", type=int, default=1, help="server onnxruntime threads")
    parser.add_argument("--modes", default=",".join(MODES))
    args = parser.parse_args()
    torch.set_num_threads(1)
    where = machine()
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        model, crops = demo_site(work)
        scaling = {
            f"model_images_per_s_batch{batch}": model_images_per_s(model, args.threads, batch)
            for batch in (1, 16)
        }
        print(f"model alone: {json.dumps(scaling)}")
        tokens = work / "tokens.json"
        token = create_token(tokens, "bench", ["admin"])
        results: dict[str, dict[str, float]] = {}
        for mode in args.modes.split(","):
            process, url = start_server(
                model, work / f"gallery-{mode}", tokens, MODES[mode], args.threads
            )
            try:
                asyncio.run(prefill(url, token, crops, args.prefill))
                outcome = asyncio.run(load(url, token, crops, args))
            finally:
                process.terminate()
                process.wait(timeout=30)
            results[mode] = summarise(outcome)
            print(f"{mode}: {json.dumps(results[mode])}")
            for line in sorted(set(outcome["errors"]))[:5]:
                print(f"  error: {line}")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{where}; {args.clients} clients, {args.seconds:.0f} s, prefill {args.prefill}")
    print("| mode | search p50 / p99 ms | add p50 / p99 ms | requests/s | errors |")
    print("|---|---|---|---|---|")
    for mode, f in results.items():
        print(
            f"| {mode} | {f.get('search_p50_ms', 0):.0f} / {f.get('search_p99_ms', 0):.0f} "
            f"| {f.get('add_p50_ms', 0):.0f} / {f.get('add_p99_ms', 0):.0f} "
            f"| {f['requests_per_s']:.1f} | {f['errors']:.0f} |"
        )
    gain = scaling["model_images_per_s_batch16"] / scaling["model_images_per_s_batch1"]
    print(
        f"model alone: {scaling['model_images_per_s_batch1']:.1f} images/s at batch 1, "
        f"{scaling['model_images_per_s_batch16']:.1f} at batch 16 ({gain:.2f}x)"
    )
    ratio = None
    if {"batched", "one-at-a-time"} <= results.keys():
        ratio = results["batched"]["requests_per_s"] / results["one-at-a-time"]["requests_per_s"]
        print(f"micro-batching throughput / one-at-a-time: {ratio:.2f}x")
    today = date.today().isoformat()
    rows = []
    for mode, figures in results.items():
        for metric, value in figures.items():
            reference = results.get("one-at-a-time", {}).get(metric) if mode == "batched" else None
            rows.append(
                {
                    "date": today,
                    "benchmark": f"serve/{mode}",
                    "machine": where,
                    "command": COMMAND,
                    "metric": metric,
                    "value": f"{value:.4g}",
                    "reference": "" if reference is None else f"{reference:.4g}",
                    "ratio": "" if not reference else f"{value / reference:.3g}",
                }
            )
    rows += [
        {
            "date": today,
            "benchmark": "serve/model-alone",
            "machine": where,
            "command": COMMAND,
            "metric": metric,
            "value": f"{value:.4g}",
            "reference": "",
            "ratio": "",
        }
        for metric, value in scaling.items()
    ]
    append_rows(rows)


if __name__ == "__main__":
    main()
