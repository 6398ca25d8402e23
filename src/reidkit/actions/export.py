"""``reidkit export``: a checkpoint to one ONNX file (and an fp16 one), verified before it is kept.

The check runs on real query/gallery crops when the spec names both splits (they exercise the
activation ranges the file will see in use), else on random pixels normalised like real ones,
and says which.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import torch
from torch import Tensor

from reidkit.actions.lifecycle import run_action
from reidkit.actions.models import calibrated_card, require_card_fit, resolve_checkpoint
from reidkit.actions.run_record import ExportOutcome
from reidkit.config.spec import ExperimentSpec
from reidkit.data import (
    ImageDataset,
    Preprocessing,
    build_eval_transform,
    prepare_splits,
    resolve_preprocessing,
    spec_settings,
)
from reidkit.errors import ExportError
from reidkit.export.onnx import CHECK_BATCHES, ExportResult, random_check_images, write_verified
from reidkit.models.restore import restore_model
from reidkit.outputs import make_folder

log = logging.getLogger("reidkit")


def export(spec: ExperimentSpec) -> ExportResult:
    """Export ``export.checkpoint`` to ONNX (and fp16 ONNX if asked), verified against PyTorch."""
    settings = spec.export
    with run_action(spec, "export") as run:
        if not settings.checkpoint:
            raise ExportError(
                "export.checkpoint is not set; set it to a checkpoint written by reidkit train "
                "or to its results folder (e.g. <results_dir>/train)"
            )
        target = Path(settings.onnx_file) if settings.onnx_file else run.folder / "model.onnx"
        fp16_target = target.with_name(f"{target.stem}_fp16.onnx") if settings.fp16 else None
        for path in filter(None, (target, fp16_target)):
            if path.exists() and not settings.overwrite:
                raise ExportError(
                    f"'{path}' already exists (export.onnx_file); set export.overwrite=true to "
                    "replace it or choose another export.onnx_file"
                )
        checkpoint = resolve_checkpoint(settings.checkpoint, "export.checkpoint")
        if checkpoint.suffix.lower() == ".onnx":
            raise ExportError(
                f"export.checkpoint '{checkpoint}' is already an ONNX file; point it at a "
                "checkpoint (.pth) or a train run's folder"
            )
        model, card = restore_model(checkpoint, spec.encryption_key, spec.model.neck_feat)
        require_card_fit(spec, card, f"checkpoint '{checkpoint}'")
        card = calibrated_card(spec, card, checkpoint)
        _make_dir(target.parent)
        fed = resolve_preprocessing(
            spec_settings(spec.model, spec.dataset), card, model=f"checkpoint '{checkpoint}'"
        )
        images, source = _check_images(spec, fed)
        run.update(f"exporting {checkpoint}")
        result = write_verified(
            model,
            card,
            images,
            target,
            fp16_target=fp16_target,
            opset=settings.opset,
            gpu_id=settings.gpu_id,
            provenance={"spec_digest": spec.digest()},
            images_source=source,
            owner_only=bool(spec.encryption_key),
        )
        log.info(
            "exported %s: max |onnx - torch| %.3g (tolerance %.3g), min cosine %.7f on %s via %s",
            target, result.max_abs_diff, result.tolerance, result.min_cosine, result.inputs,
            ", ".join(result.providers),
        )  # fmt: skip
        outcome = ExportOutcome(
            onnx_file=str(target), fp16_file=str(fp16_target) if fp16_target else None,
            checkpoint=str(checkpoint),
            max_abs_diff=result.max_abs_diff, min_cosine=result.min_cosine,
            fp16_max_abs_diff=result.fp16_max_abs_diff, fp16_min_cosine=result.fp16_min_cosine,
            providers=result.providers, check_inputs=result.inputs,
        )  # fmt: skip
        run.succeed(f"exported {target}", outcome=outcome)
        return result


def _check_images(spec: ExperimentSpec, preprocessing: Preprocessing) -> tuple[Tensor, str]:
    """The largest check batch, from query/gallery images when the spec names both splits,
    fed as the model will be fed (the card's preprocessing unless the spec sets its own)."""
    count = max(CHECK_BATCHES)
    data = spec.dataset
    if not (data.query_dataset_dir and data.test_dataset_dir):
        source = "random pixels (dataset query/gallery dirs not set)"
        return random_check_images(preprocessing, count), source
    splits = prepare_splits(spec, train=False, verify=False, scored=False)
    records = (splits.query + splits.gallery)[:count]
    dataset = ImageDataset(records, build_eval_transform(preprocessing))
    images = torch.stack([dataset[i][0] for i in range(len(records))])
    repeats = math.ceil(count / len(records))
    return images.repeat(repeats, 1, 1, 1)[:count], f"{len(records)} query/gallery images"


def _make_dir(folder: Path) -> None:
    try:
        make_folder(folder)
    except OSError as exc:
        raise ExportError(
            f"export.onnx_file: cannot create folder '{folder}' ({exc.strerror}); choose a "
            "writable path"
        ) from None
