"""Export a checkpoint to ONNX and prove, before the file is kept, that it matches PyTorch.

The file follows TAO's interface (input ``input`` ``[B,3,H,W]``, output ``fc_pred`` ``[B,D]``,
dynamic batch) and carries the model card (:mod:`reidkit.models.card`: preprocessing, input size,
match threshold) in ``metadata_props`` so a deployment never has to guess. Every file is staged,
run with onnxruntime on batches of 1, 3 and 8 and compared with the PyTorch model; only a file
within tolerance is renamed into place, so a failed export leaves nothing behind. The export
action (:mod:`reidkit.actions.export`) chooses the model, the check images and the paths.

Exporter choice (torch 2.14): the dynamo exporter is the recommended one but cannot emit opset
17 (its down-conversion fails on ``Pad``/``Reduce*`` for every backbone here) and silently
writes opset 18 instead. Opset 17 is what TensorRT 8.6 / DeepStream 6.x accept, so opset 17 uses
the TorchScript exporter, which produces it exactly; opset >= 18 uses the dynamo exporter. Both
give one self-contained file with a dynamic batch for ResNet, MobileNetV2 and timm Swin.
"""

from __future__ import annotations

import io
import os
import warnings
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from onnxruntime.transformers.float16 import convert_float_to_float16
from onnxruntime.transformers.onnx_model import OnnxModel
from torch import Tensor, nn

from reidkit.data.preprocessing import Preprocessing
from reidkit.errors import ExportError, first_line
from reidkit.export.runtime import INPUT_NAME, OUTPUT_NAME, OnnxEmbedder, default_providers
from reidkit.models.card import ModelCard
from reidkit.outputs import staged_path

#: fp32 agreement: 1e-4 absolute for embeddings whose largest value is <= 1, 1e-4 of the largest
#: value beyond that. A bound that ignores magnitude cannot hold: an untrained ResNet-50 reaches
#: values of ~600, where one fp32 ulp is 6e-5, so a different (equally valid) summation order
#: alone moves values by 1e-4 to 3e-4. Trained BNNeck embeddings are O(1): there this is 1e-4
#: absolute, as the export issue asks.
FP32_ATOL = 1e-4
#: fp16 keeps ~3 significant digits; accumulated over a deep network 1e-2 relative is sensible.
FP16_RTOL = 1e-2
FP16_MIN_COSINE = 0.999
CHECK_BATCHES = (1, 3, 8)
_DYNAMO_MIN_OPSET = 18


@dataclass(frozen=True)
class ExportResult:
    """What was written and how closely each file matched the PyTorch model."""

    onnx_file: Path
    fp16_file: Path | None
    #: Worst case over batch sizes 1, 3, 8 and every provider; ``tolerance`` is what it passed.
    max_abs_diff: float
    min_cosine: float
    tolerance: float
    #: onnxruntime execution providers the check ran on.
    providers: list[str]
    #: What the check fed the models: dataset images or random pixels.
    inputs: str
    fp16_max_abs_diff: float | None = None
    fp16_min_cosine: float | None = None


@dataclass(frozen=True)
class Agreement:
    """Worst-case agreement of one ONNX file with PyTorch over all batches and providers."""

    max_abs_diff: float
    min_cosine: float
    largest_value: float
    providers: list[str]


def write_verified(
    model: nn.Module,
    card: ModelCard,
    images: Tensor,
    target: Path,
    *,
    fp16_target: Path | None = None,
    opset: int = 17,
    gpu_id: int = 0,
    provenance: dict[str, str] | None = None,
    images_source: str = "check images",
    owner_only: bool = False,
) -> ExportResult:
    """Write ``model`` as ONNX (and fp16 ONNX) checked against PyTorch on ``images``.

    Every file is staged beside its target and checked; only when all pass are they renamed
    into place, so a failed export leaves nothing behind. ``provenance`` (e.g. the spec's
    digest) joins the card in the file's metadata. ``owner_only`` files are created mode 0600
    (the weights of an encrypted run must not become readable by others through the export).
    """
    proto = to_onnx(model, card.input_height, card.input_width, opset)
    onnx.helper.set_model_props(proto, {**card.to_onnx_metadata(), **(provenance or {})})
    fp16 = None
    try:
        with ExitStack() as publish:
            staged = publish.enter_context(staged_path(target))
            if owner_only:
                os.chmod(staged, 0o600)
            _save(proto, staged, target)
            fp32 = measure_agreement(staged, model, images, gpu_id)
            tolerance = FP32_ATOL * max(1.0, fp32.largest_value)
            if not fp32.max_abs_diff <= tolerance:
                raise ExportError(
                    f"export.onnx_file '{target}' differs from PyTorch by "
                    f"{fp32.max_abs_diff:.3g} (tolerance {tolerance:.3g}); nothing was written, "
                    "report this with the backbone"
                )
            if fp16_target is not None:
                staged_fp16 = publish.enter_context(staged_path(fp16_target))
                if owner_only:
                    os.chmod(staged_fp16, 0o600)
                _save(to_fp16(proto), staged_fp16, fp16_target)
                fp16 = measure_agreement(staged_fp16, model, images, gpu_id)
                _check_fp16(fp16, fp16_target)
    except OSError as exc:
        raise ExportError(
            f"export.onnx_file '{target}' cannot be written ({exc.strerror or exc}); free space "
            "or choose another path"
        ) from None
    return ExportResult(
        onnx_file=target,
        fp16_file=fp16_target,
        max_abs_diff=fp32.max_abs_diff,
        min_cosine=fp32.min_cosine,
        tolerance=tolerance,
        providers=fp32.providers,
        inputs=images_source,
        fp16_max_abs_diff=fp16.max_abs_diff if fp16 else None,
        fp16_min_cosine=fp16.min_cosine if fp16 else None,
    )


def to_onnx(model: nn.Module, height: int, width: int, opset: int) -> onnx.ModelProto:
    """The eval-mode forward (the embedding only) as an ONNX graph with a dynamic batch axis."""
    example = torch.zeros(2, 3, height, width)  # batch 2: a batch of 1 could be specialised
    if opset >= _DYNAMO_MIN_OPSET:
        program = torch.onnx.export(
            model,
            (example,),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=True,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            external_data=False,
            verbose=False,
        )
        return program.model_proto
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated but is the only one that writes opset 17.
        warnings.simplefilter("ignore", DeprecationWarning)
        # timm's shape asserts trace as constants: they are spatial sizes, fixed by the spec;
        # that the batch axis stayed dynamic is proven by the check at batches 1, 3 and 8.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            buffer,
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=opset,
            dynamo=False,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    return onnx.load_from_string(buffer.getvalue())


def to_fp16(proto: onnx.ModelProto) -> onnx.ModelProto:
    """A float16 copy with float32 input and output, so callers and pipelines stay unchanged.

    onnxruntime's own converter (the onnxconverter-common code it ships) converts initializers,
    constants and value types and puts casts at the graph input and output; ops without an fp16
    kernel on the CPU provider run in fp32 via onnxruntime's automatic casts. It appends the input
    casts at the end of the node list, so the graph is re-sorted to stay valid ONNX.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    half = convert_float_to_float16(copy, keep_io_types=True)
    OnnxModel.graph_topological_sort(half.graph)
    return half


def random_check_images(preprocessing: Preprocessing, count: int = max(CHECK_BATCHES)) -> Tensor:
    """Uniformly random pixels normalised like real crops, for a check without a dataset."""
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(count, 3, *preprocessing.input_size, generator=generator)
    mean = torch.tensor(preprocessing.pixel_mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocessing.pixel_std).view(1, 3, 1, 1)
    return (pixels - mean) / std


@torch.no_grad()
def measure_agreement(path: Path, model: nn.Module, images: Tensor, gpu_id: int) -> Agreement:
    """Run ``path`` on every available provider, batch sizes 1, 3 and 8, against ``model``."""
    model = model.eval().to("cpu")
    references = {size: model(images[:size]) for size in CHECK_BATCHES}
    worst_abs, worst_cos, providers = 0.0, 1.0, []
    for provider in default_providers(gpu_id):
        embedder = OnnxEmbedder(path, providers=[provider])
        providers += [p for p in embedder.providers if p not in providers]
        for size, reference in references.items():
            output = embedder(images[:size])
            if output.shape != reference.shape:
                raise ExportError(
                    f"export.onnx_file '{path}' gives shape {tuple(output.shape)} for a batch of "
                    f"{size}, PyTorch {tuple(reference.shape)}; report this with the backbone"
                )
            worst_abs = max(worst_abs, (output - reference).abs().max().item())
            worst_cos = min(worst_cos, F.cosine_similarity(output, reference).min().item())
    largest = max(r.abs().max().item() for r in references.values())
    return Agreement(worst_abs, worst_cos, largest, providers)


def _check_fp16(agreement: Agreement, path: Path) -> None:
    tolerance = FP16_RTOL * max(1.0, agreement.largest_value)
    if not (agreement.min_cosine >= FP16_MIN_COSINE and agreement.max_abs_diff <= tolerance):
        raise ExportError(
            f"fp16 file '{path}' is too far from PyTorch (cosine {agreement.min_cosine:.5f}, "
            f"max diff {agreement.max_abs_diff:.3g}, limits {FP16_MIN_COSINE} / {tolerance:.3g}); "
            "nothing was written; set export.fp16=false and use the fp32 file"
        )


def _save(proto: onnx.ModelProto, staged: Path, target: Path) -> None:
    """Write ``proto`` as one self-contained file and validate it."""
    onnx.save_model(proto, staged, save_as_external_data=False)
    try:
        onnx.checker.check_model(staged, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ExportError(
            f"export.onnx_file '{target}' is not valid ONNX ({first_line(exc)}); nothing was "
            "written, report this with the backbone"
        ) from None
