"""Out of memory during training: one line that says what to lower, not a traceback.

PyTorch reports exhausted memory as a ``torch.OutOfMemoryError`` (a ``RuntimeError``) on a
GPU, as a ``RuntimeError`` from its CPU allocator ("DefaultCPUAllocator: can't allocate
memory" / "not enough memory") on the host, as Python's ``MemoryError``, or, when the kernel's
out-of-memory killer ends a data-loader worker, as "DataLoader worker ... is killed by signal:
Killed" or "... exited unexpectedly" (a worker that crashed names its signal instead). Each is
the user's to fix by asking for less, so each becomes :class:`~reidkit.errors.OutOfMemory`
naming the settings that decide how much is needed, with their current values. The checkpoints
on disk predate the failure (as for a diverged run).
"""

from __future__ import annotations

import torch

from reidkit.errors import OutOfMemory, first_line

_CPU = ("defaultcpuallocator: can't allocate memory", "defaultcpuallocator: not enough memory")
_GPU = ("cuda out of memory", "mps backend out of memory", "hip out of memory")
_KILLED_WORKER = ("killed by signal: killed", "exited unexpectedly")
_RESUME = "the checkpoints on disk are from before it; rerun to resume"


def out_of_memory(
    error: BaseException, batch_size: int, input_size: tuple[int, int], num_workers: int
) -> OutOfMemory | None:
    """``error`` as one line saying what to lower, or None when it is not about memory.

    ``batch_size`` (per device), ``input_size`` (height, width) and ``num_workers`` are the
    run's settings, quoted with their spec keys so the user sees what to change and from what.
    """
    text = str(error).lower()
    batch = f"dataset.batch_size (now {batch_size})"
    size = f"model.input_height x model.input_width (now {input_size[0]}x{input_size[1]})"
    workers = f"dataset.num_workers (now {num_workers})"
    if isinstance(error, torch.OutOfMemoryError) or any(s in text for s in _GPU):
        return OutOfMemory(
            f"training ran out of GPU memory; lower {batch} or {size}, or set train.precision "
            f"to 16-mixed and dataset.device_cache to false; {_RESUME}"
        )
    if "dataloader worker" in text and any(s in text for s in _KILLED_WORKER):
        return OutOfMemory(
            f"a data-loader worker died ({first_line(error).rstrip('. ')}), most often killed by "
            f"the system's out-of-memory killer; lower {workers} or {batch}; {_RESUME}"
        )
    if isinstance(error, MemoryError) or any(s in text for s in _CPU):
        return OutOfMemory(
            f"training ran out of host memory; lower {batch}, {size} or {workers}; {_RESUME}"
        )
    return None
