"""What a study leaves in its folder: leaderboard (CSV + JSON), ``best_spec.yaml`` and plots.

Rewritten after every trial by whichever worker finished it, atomically, so a study killed at
any point (or watched while it runs on several machines) always has consistent files.
"""

from __future__ import annotations

import csv
import io
import json
import warnings
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import optuna
from matplotlib.ticker import MaxNLocator
from optuna.trial import FrozenTrial, TrialState

from reidkit.automl.space import SearchParam
from reidkit.automl.trial import trial_spec
from reidkit.config.loading import save_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.outputs import atomic_open, write_json

LEADERBOARD = "leaderboard"
BEST_SPEC = "best_spec.yaml"
HISTORY_PLOT = "automl_history.png"
INTERMEDIATE_PLOT = "automl_intermediate.png"


def leaderboard_rows(
    study: optuna.Study, space: list[SearchParam], direction: str
) -> list[dict[str, Any]]:
    """One row per trial that ran (best first), with its params as spec values."""
    decoders = {param.key: param.decode for param in space}
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get("surplus") or trial.state == TrialState.WAITING:
            continue
        steps = trial.intermediate_values
        rows.append(
            {
                "trial": trial.number,
                "state": trial.state.name,
                "metric": trial.value if trial.state == TrialState.COMPLETE else None,
                "epochs": trial.user_attrs.get("epochs", max(steps, default=0)),
                "last_reported": steps[max(steps)] if steps else None,
                "results_dir": trial.user_attrs.get("results_dir"),
                "worker": trial.user_attrs.get("worker"),
                "params": {k: decoders.get(k, _same)(v) for k, v in sorted(trial.params.items())},
                "error": trial.user_attrs.get("error"),
            }
        )
    sign = -1.0 if direction == "maximize" else 1.0
    rows.sort(key=lambda r: (r["metric"] is None, sign * (r["metric"] or 0.0), r["trial"]))
    return rows


def write_reports(
    study: optuna.Study,
    spec: ExperimentSpec,
    space: list[SearchParam],
    folder: Path,
) -> FrozenTrial | None:
    """Write every report file; returns the best completed trial (None before the first)."""
    rows = leaderboard_rows(study, space, spec.automl.direction)
    write_json(folder / f"{LEADERBOARD}.json", rows)
    _write_csv(folder / f"{LEADERBOARD}.csv", rows)
    completed = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if not completed:
        return None
    best = study.best_trial
    params = next(row["params"] for row in rows if row["trial"] == best.number)
    save_spec(trial_spec(spec, params, folder / best.user_attrs["results_dir"]), folder / BEST_SPEC)
    _write_plots(study, spec.automl.metric, folder)
    return best


def _same(value: Any) -> Any:
    return value


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    keys = sorted({key for row in rows for key in row["params"]})
    columns = ["trial", "state", "metric", "epochs", "last_reported", "results_dir", "worker"]
    columns += [*keys, "error"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        flat = {k: v for k, v in row.items() if k != "params"}
        flat.update(
            {k: json.dumps(v) if isinstance(v, list) else v for k, v in row["params"].items()}
        )
        writer.writerow(flat)
    with atomic_open(path) as handle:
        handle.write(buffer.getvalue())


def _write_plots(study: optuna.Study, metric: str, folder: Path) -> None:
    """The optimisation history (best so far) and every trial's curve, where pruning shows."""
    from optuna.visualization import matplotlib as optuna_plots

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        history = optuna_plots.plot_optimization_history(study, target_name=metric)
        curves = optuna_plots.plot_intermediate_values(study)
    history.set_title(f"AutoML: {metric} per trial and best so far")
    curves.set_title(f"AutoML: {metric} per validated epoch (cut lines = pruned)")
    curves.set_xlabel("epoch")
    curves.set_ylabel(metric)
    for axes, name in ((history, HISTORY_PLOT), (curves, INTERMEDIATE_PLOT)):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        figure = axes.figure
        figure.set_size_inches(8, 5)
        figure.tight_layout()
        with atomic_open(folder / name, "wb") as handle:
            figure.savefig(handle, format="png", dpi=110)
        plt.close(figure)
