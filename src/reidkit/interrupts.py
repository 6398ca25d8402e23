"""Ctrl-C and SIGTERM as one exception that says which signal stopped the run.

Left alone, Lightning turns Ctrl-C into ``sys.exit(1)`` and SIGTERM (Slurm, Kubernetes,
``docker stop``) into a ``SystemExit`` with code 0, so a killed training looked like a success.
Inside :func:`stop_on_signals`, both raise :class:`RunInterrupted` in the main thread at once;
it is a ``BaseException`` (like ``KeyboardInterrupt``) so no ``except Exception`` swallows it,
and Lightning re-raises it unchanged after its own clean-up. The CLI exits with
``128 + signal`` (130 for Ctrl-C, 143 for SIGTERM), the shell convention schedulers expect.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_HANDLED = (signal.SIGINT, signal.SIGTERM)


class RunInterrupted(BaseException):
    """The run was stopped by a signal; ``exit_code`` is ``128 + signum``."""

    def __init__(self, signum: int, message: str | None = None) -> None:
        self.signum = signum
        self.signal_name = signal.Signals(signum).name
        super().__init__(message or f"interrupted by {self.signal_name}")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum

    def with_message(self, message: str) -> RunInterrupted:
        """The same interruption with a message that says what was kept (e.g. how to resume)."""
        return RunInterrupted(self.signum, message)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """For the body, SIGINT and SIGTERM raise :class:`RunInterrupted`; the old handlers return.

    Only the first signal raises: a second one while the run unwinds (writing its status,
    closing workers) is ignored so the clean-up is not cut short. Outside the main thread
    Python cannot install handlers and the body runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = False

    def handler(signum: int, frame: FrameType | None) -> None:
        nonlocal raised
        if not raised:
            raised = True
            raise RunInterrupted(signum)

    previous = {signum: signal.signal(signum, handler) for signum in _HANDLED}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old if old is not None else signal.SIG_DFL)
