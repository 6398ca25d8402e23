"""``reidkit train`` for the multi-process tests, plus a record of what each rank trained on.

Run as ``python ddp_runner.py SPEC LOG_DIR [overrides...]``; Lightning re-runs this same
command for the extra processes of a node. Each rank writes ``LOG_DIR/rank<N>.json``: per
epoch, the (relabelled) identity of every training image it drew and the validation metrics
it computed. With ``KILL_RANK`` and
``KILL_EPOCH`` set, that rank SIGKILLs itself at the start of that epoch (0-based), as a crashed
or preempted process would die. Errors leave as the CLI's do: one line, exit code 2.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from reidkit.actions.fit import run_training
from reidkit.config.loading import load_spec
from reidkit.errors import ReidkitError, first_line


class IdentityLog(Callback):
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.epochs: dict[int, list[int]] = {}
        self.validation: dict[int, dict[str, float]] = {}

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        kill = os.environ.get("KILL_RANK"), os.environ.get("KILL_EPOCH")
        if kill == (str(trainer.global_rank), str(trainer.current_epoch)):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        _, labels, _ = batch
        self.epochs.setdefault(trainer.current_epoch, []).extend(labels.tolist())

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        metrics = trainer.callback_metrics
        self.validation[trainer.current_epoch] = {
            key: float(metrics[key]) for key in ("mAP", "cmc_rank_1") if key in metrics
        }
        record = {"world_size": trainer.world_size, "epochs": self.epochs}
        record["validation"] = self.validation
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def main() -> int:
    spec_file, log_dir, *overrides = sys.argv[1:]
    try:
        spec = load_spec(spec_file, overrides)
        run_training(spec, callbacks=[IdentityLog(Path(log_dir))])
    except ReidkitError as error:
        print(f"reidkit train: error: {first_line(error)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
