"""The one lifecycle every action runs inside, and the records it leaves in the results folder.

Every action runs inside :func:`run_action`, so ``status.json`` means the same thing for all of
them: ``RUNNING`` while it works, then ``SUCCESS`` or ``FAILURE`` with the one-line reason, on
every way out (a user error, a crash, Ctrl-C). Nothing here loads torch: the light verbs
(``validate``, ``schema``) and a CLI that only fails on a spec stay fast.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from reidkit.actions.run_record import (
    FAILURE,
    OUTCOMES,
    RUNNING,
    SUCCESS,
    Outcome,
    RunRecord,
    read_run_record,
)
from reidkit.config.loading import save_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.engine.ranks import is_launch_primary
from reidkit.errors import ReidkitError, first_line
from reidkit.interrupts import RunInterrupted
from reidkit.oserrors import describe_os_error
from reidkit.outputs import make_folder
from reidkit.runlock import run_lock

log = logging.getLogger("reidkit")

EXPERIMENT, STATUS = "experiment.yaml", "status.json"
#: Where a rerun keeps its records until it has something to show (see :func:`run_action`).
PENDING = {EXPERIMENT: "experiment.pending.yaml", STATUS: "status.pending.json"}


@dataclass
class ActionRun:
    """One run of an action: its results folder and how it reports its state.

    ``published`` is False while a rerun's records are staged under :data:`PENDING` names
    beside the previous run's; :meth:`publish` makes them the folder's records. Only rank 0 of
    a multi-process run ``writes`` them.
    """

    action: str
    folder: Path
    published: bool = True
    writes: bool = True
    finished: bool = field(default=False, init=False)

    def record(self, name: str) -> Path:
        """Where this run writes the record ``name`` (``experiment.yaml``, ``status.json``)."""
        return self.folder / (name if self.published else PENDING[name])

    def update(
        self, message: str, outcome: Outcome | None = None, kpi: dict[str, float] | None = None
    ) -> None:
        """A progress note while the action runs (``status.json`` stays ``RUNNING``)."""
        self._write(RUNNING, message, kpi, outcome)

    def publish(self) -> None:
        """Replace the previous run's records with this run's (at its first checkpoint)."""
        if self.published or not self.writes:
            return
        for name, pending in PENDING.items():
            os.replace(self.folder / pending, self.folder / name)
        self.published = True

    def succeed(
        self, message: str, kpi: dict[str, float] | None = None, outcome: Outcome | None = None
    ) -> None:
        """Record success with the action's KPIs (percent) and its own fields."""
        self.publish()
        self._write(SUCCESS, message, kpi, outcome)
        self.finished = True

    def fail(self, message: str) -> None:
        """Record the failure; a full or read-only disk must not hide the original error."""
        try:
            self._write(FAILURE, message)
        except OSError as exc:
            log.warning("%s: could not record the failure (%s)", self.folder, exc.strerror or exc)

    def _write(
        self,
        status: str,
        message: str,
        kpi: dict[str, float] | None = None,
        outcome: Outcome | None = None,
    ) -> None:
        expected = OUTCOMES.get(self.action)
        if outcome is not None and not isinstance(outcome, expected or ()):
            raise TypeError(f"the {self.action} action cannot record a {type(outcome).__name__}")
        if not self.writes:
            return
        record = RunRecord(self.action, status, message, kpi or {}, outcome)
        record.write(self.record(STATUS))


@contextmanager
def run_action(spec: ExperimentSpec, action: str, *, exclusive: bool = True) -> Iterator[ActionRun]:
    """Lock the action's folder, record the resolved spec, and report its state to the end.

    The folder is held by one run at a time (:func:`reidkit.runlock.run_lock`); a second run
    stops at once naming the holder. ``exclusive=False`` is for AutoML, whose workers share
    one folder on purpose and coordinate through the study (each trial's train folder is
    still locked by its own run). ``status.json`` says ``RUNNING`` from the start; an action
    that returns without calling :meth:`ActionRun.succeed` is recorded as a success with a plain
    message; any exception, a user error, a crash or an interruption, is recorded as
    ``FAILURE`` with its one-line reason and raised again.

    When the folder holds the records of a run that succeeded, this run's ``experiment.yaml`` and
    ``status.json`` are staged (:data:`PENDING`) until it publishes them, at its first
    checkpoint or on success: a rerun that fails earlier leaves the earlier run's records as
    they were. Secrets are never recorded (:mod:`reidkit.redaction`).
    """
    folder = spec.action_dir(action)
    primary = is_launch_primary()  # the other ranks of a multi-process run neither lock nor write
    with ExitStack() as held:
        try:
            if exclusive and primary:
                held.enter_context(run_lock(folder, action))
            else:
                make_folder(folder)
            run = ActionRun(
                action,
                folder,
                published=not _finished(folder),
                writes=primary,
            )
            if primary:
                save_spec(spec, run.record(EXPERIMENT))
            run.update(f"{action} started")
        except OSError as exc:
            raise ReidkitError(
                f"results folder '{folder}' cannot be written ({exc.strerror or exc}); set "
                f"{action}.results_dir or results_dir to a writable folder"
            ) from None
        try:
            yield run
        except RunInterrupted as exc:
            run.fail(str(exc))
            raise
        except (KeyboardInterrupt, SystemExit) as exc:
            if not isinstance(exc, SystemExit) or exc.code not in (0, None):
                run.fail("interrupted; rerun the same command to resume")
            raise
        except BaseException as exc:
            run.fail(failure_line(exc))
            raise
        if not run.finished:
            run.succeed(f"{action} finished")


def _finished(folder: Path) -> bool:
    """Whether ``folder`` holds the records of a run that succeeded (worth keeping)."""
    record = read_run_record(folder / STATUS)
    return record is not None and record.status == SUCCESS


def failure_line(error: BaseException) -> str:
    """The one line that tells a user why an action failed (an OSError names its path)."""
    if isinstance(error, OSError):
        described = describe_os_error(error)
        if described:
            return described
    return first_line(error)
