"""What ``status.json`` says: one typed record that every action writes and later runs read.

Run folders talk to each other through it: ``evaluate.checkpoint: <results>/train`` means the
train run's best checkpoint, an export folder means its ONNX file, an AutoML folder its best
trial (:func:`reidkit.actions.models.resolve_checkpoint`). The file keeps TAO's flat layout
(``date``, ``time``, ``action``, ``status``, ``message``, ``kpi``, the KPIs in percent) with the
action's own fields (its :data:`Outcome`) beside them at the top level.

Reading is tolerant: a file from an older reidkit, another tool or a hand edit gives every field
that has the right type and None for the rest, so a run folder from before a field existed still
resolves, and a hostile value is never trusted for its type.
"""

from __future__ import annotations

import time
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Final, Union, get_args, get_origin, get_type_hints

from reidkit.outputs import read_json, write_json

RUNNING: Final = "RUNNING"
SUCCESS: Final = "SUCCESS"
FAILURE: Final = "FAILURE"


@dataclass(frozen=True)
class TrainOutcome:
    """How far training got, and its best checkpoint by the monitored metric."""

    epoch: int | None = None
    max_epoch: int | None = None
    #: A file name inside the run folder (``model_003_00042.pth``).
    best_checkpoint: str | None = None
    #: The metric and its value that made it the best (``cmc_rank_1 87.50``).
    best_metric: str | None = None


@dataclass(frozen=True)
class EvaluateOutcome:
    """The match threshold calibrated at ``evaluate.target_false_match_rate``."""

    match_threshold: float | None = None


@dataclass(frozen=True)
class InferenceOutcome:
    num_images: int | None = None


@dataclass(frozen=True)
class ExportOutcome:
    """The ONNX files written and how closely they matched PyTorch on the check images."""

    onnx_file: str | None = None
    fp16_file: str | None = None
    checkpoint: str | None = None
    max_abs_diff: float | None = None
    min_cosine: float | None = None
    fp16_max_abs_diff: float | None = None
    fp16_min_cosine: float | None = None
    providers: list[str] | None = None
    check_inputs: str | None = None


@dataclass(frozen=True)
class AutomlOutcome:
    best_trial: int | None = None
    #: The best trial's results folder (its ``train`` run holds the model).
    best_trial_dir: str | None = None


@dataclass(frozen=True)
class ServeOutcome:
    url: str | None = None


@dataclass(frozen=True)
class GalleryOutcome:
    size: int | None = None
    removed: int | None = None
    #: ``reidkit gallery rebuild``: crops dropped because their file is gone.
    dropped: int | None = None
    output_file: str | None = None
    #: ``reidkit gallery stats``'s report.
    stats: dict[str, Any] | None = None


@dataclass(frozen=True)
class AssociateOutcome:
    tracks: int | None = None
    identities: int | None = None


@dataclass(frozen=True)
class AdaptOutcome:
    #: The adapted checkpoint (written only when a round beat the source model).
    adapted_checkpoint: str | None = None
    #: The round reached, while running.
    round: int | None = None
    #: The round kept, once finished.
    chosen_round: int | None = None
    quality: float | None = None
    source_quality: float | None = None
    #: Every round's report (clusters, outliers, quality, seconds).
    rounds: list[dict[str, Any]] | None = None


Outcome = (
    TrainOutcome | EvaluateOutcome | InferenceOutcome | ExportOutcome | AutomlOutcome
    | ServeOutcome | GalleryOutcome | AssociateOutcome | AdaptOutcome
)  # fmt: skip
#: The fields each action records besides the common ones; a new action adds its class here.
OUTCOMES: dict[str, type[Outcome]] = {
    "train": TrainOutcome,
    "evaluate": EvaluateOutcome,
    "inference": InferenceOutcome,
    "export": ExportOutcome,
    "automl": AutomlOutcome,
    "serve": ServeOutcome,
    "gallery": GalleryOutcome,
    "associate": AssociateOutcome,
    "adapt": AdaptOutcome,
}


@dataclass(frozen=True)
class RunRecord:
    """One ``status.json``. ``action`` is None for a file that does not say (not reidkit's)."""

    action: str | None
    #: :data:`RUNNING`, :data:`SUCCESS` or :data:`FAILURE` (whatever a foreign file says).
    status: str
    message: str = ""
    kpi: dict[str, float] = field(default_factory=dict)
    outcome: Outcome | None = None
    #: When it was written (local time), as TAO writes them; set by :meth:`write`.
    date: str = ""
    time: str = ""

    def to_json(self) -> dict[str, Any]:
        """The file's content: the common keys, then the outcome's fields that are set."""
        common = {
            "date": self.date,
            "time": self.time,
            "action": self.action,
            "status": self.status,
            "message": self.message,
            "kpi": self.kpi,
        }
        own = asdict(self.outcome) if self.outcome is not None else {}
        return {**common, **{name: value for name, value in own.items() if value is not None}}

    def write(self, path: Path) -> None:
        """Write the record (atomically), stamped with the current date and time."""
        now = time.localtime()
        stamped = {
            **self.to_json(),
            "date": time.strftime("%Y-%m-%d", now),
            "time": time.strftime("%H:%M:%S", now),
        }
        write_json(path, stamped)

    @classmethod
    def from_json(cls, data: Any) -> RunRecord | None:
        """The record in ``data`` (a parsed file), keeping only well-typed fields; None when
        ``data`` is not an object at all."""
        if not isinstance(data, dict):
            return None
        common = _typed_fields(cls, data, skip=("outcome",))
        outcome_type = OUTCOMES.get(common.get("action") or "")
        outcome = outcome_type(**_typed_fields(outcome_type, data)) if outcome_type else None
        return cls(**{"action": None, "status": "", **common}, outcome=outcome)


def read_run_record(path: Path) -> RunRecord | None:
    """The run record in the file ``path``; None when it is missing or not JSON."""
    return RunRecord.from_json(read_json(path))


def _typed_fields(cls: type, data: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """The entries of ``data`` that are fields of dataclass ``cls`` with the declared type."""
    hints = get_type_hints(cls)
    kept = {}
    for spec in fields(cls):
        if spec.name in skip or spec.name not in data:
            continue
        if _fits(data[spec.name], hints[spec.name]):
            kept[spec.name] = data[spec.name]
    return kept


def _fits(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the type ``hint`` describes (``int`` is never a ``bool``)."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_fits(item, args[0]) for item in value)
    if origin is dict:
        return isinstance(value, dict) and all(
            isinstance(key, str) and _fits(item, args[1]) for key, item in value.items()
        )
    if hint is typing.Any:
        return True
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    return isinstance(value, hint) and not (isinstance(value, bool) and hint is int)
