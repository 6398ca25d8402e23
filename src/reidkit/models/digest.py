"""Digests that name a model: of its trained weights, or of a file whose weights are out of reach.

A model card's ``weights_digest`` (:mod:`reidkit.models.card`) is what tells two models apart
when everything else on their cards is equal (two trainings of one architecture). It is computed
from the weights, not from a file, so that one model keeps one identity across its files: the
checkpoint records it when it is written, ``reidkit export`` carries it into the ONNX file and
its fp16 variant (whose weights cannot be read back into the same numbers: the fp16 file holds
rounded, BatchNorm-folded values), and loading a checkpoint computes it again from the weights
it actually holds (about 0.13 s for a ResNet-50 on one CPU core), so a checkpoint edited after
it was written, or written before cards recorded a digest, still gets its true identity.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

_CHUNK = 1 << 20


def weights_digest(weights: Mapping[str, Tensor]) -> str:
    """SHA-256 (hex) of a model's ``state_dict``, independent of how the tensors are stored.

    Canonical form, so that one set of numbers gives one digest: tensors in name order, each as
    its name, its shape and its values in C order (a channels-last or GPU tensor hashes like
    its contiguous CPU copy); floating tensors as float32, integer ones as int64. Float32 is the
    canonical float because training keeps float32 master weights (mixed precision included)
    and widening fp16 or bf16 to float32 is exact, so the same values stored in a narrower type
    hash the same. An fp16 *rounding* of float32 weights is other numbers, hence other weights
    by this digest: an fp16 export is the same model because export carries the source's digest
    on its card, not because it is recomputed.
    """
    digest = hashlib.sha256()
    for name in sorted(weights):
        tensor = weights[name].detach()
        dtype = torch.float32 if tensor.is_floating_point() else torch.int64
        values = tensor.to("cpu", dtype).contiguous()
        digest.update(f"{name}:{dtype}:{tuple(values.shape)}\n".encode())
        digest.update(values.reshape(-1).numpy().view(np.uint8))
    return digest.hexdigest()


def file_digest(path: str | Path) -> str:
    """SHA-256 (hex) of a file's bytes: the identity of a model known only as a file (a foreign
    ONNX file), and what ties a calibration to the exact file it was measured on."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
