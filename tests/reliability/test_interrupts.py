"""Signals become RunInterrupted with the shell's exit codes, in a real process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from reidkit.interrupts import RunInterrupted, stop_on_signals

WAIT = """
import signal, sys, time
from reidkit.interrupts import RunInterrupted, stop_on_signals
signal.signal(signal.SIGINT, signal.default_int_handler)  # shells start background jobs ignoring it
try:
    with stop_on_signals():
        print("ready", flush=True)
        time.sleep(60)
except RunInterrupted as stop:
    print(stop, flush=True)
    sys.exit(stop.exit_code)
"""


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_stops_the_body_with_its_exit_code(signum: int, code: int) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", WAIT],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert process.stdout is not None and process.stdout.readline() == "ready\n"
    process.send_signal(signum)
    out, _ = process.communicate(timeout=20)
    assert process.returncode == code
    assert out.strip() == f"interrupted by {signal.Signals(signum).name}"


def test_handlers_are_restored_and_only_the_first_signal_raises() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(RunInterrupted) as info, stop_on_signals():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            os.kill(os.getpid(), signal.SIGTERM)  # a second one during clean-up is ignored
    assert info.value.exit_code == 143
    assert signal.getsignal(signal.SIGTERM) is before
    assert str(info.value.with_message("kept epoch 2; rerun to resume")) == (
        "kept epoch 2; rerun to resume"
    )
