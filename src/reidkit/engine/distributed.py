"""Where training runs: one process, several on one machine, or several machines.

Lightning does the launching. With ``processes_per_node * num_nodes > 1`` the run uses DDP:
NCCL between GPUs, gloo between CPU processes (CPU clusters, and the tests of this code on a
machine without a GPU). Lightning starts the extra processes of one machine itself, or adopts
the ranks an outside launcher gives it, which it recognises from the environment:

* ``torchrun`` (``TORCHELASTIC_RUN_ID``, ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``, ...);
* SLURM's ``srun`` (``SLURM_NTASKS``, ``SLURM_PROCID``, ``SLURM_NODEID``, ...);
* by hand, one command per node: ``MASTER_ADDR``, ``MASTER_PORT``, ``NODE_RANK`` (and
  ``WORLD_SIZE``, checked against the spec when set).

Every rank trains on its own identities (``reidkit.data.sampler.IdentitySampler`` deals them
out), validates on the whole query/gallery split (so every rank computes the same metrics),
and only rank 0 writes ``metrics.csv``, ``status.json`` and checkpoints. ``docs/scale-out.md``
has the recipes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

import torch
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning.fabric.utilities.distributed import _set_num_threads_if_needed
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher

from reidkit.errors import ReidkitError, SpecError

log = logging.getLogger("reidkit")

Accelerator = Literal["auto", "gpu", "cpu"]

# How long a rank waits in a collective for its peers; PyTorch's default is 30 minutes. A peer
# that dies usually closes its sockets and fails the others at once; this bounds the other case
# (a peer that hangs or whose machine vanishes).
COLLECTIVE_TIMEOUT = timedelta(minutes=10)
# How long the main process of a one-machine run may take to fail with its own error once a
# process it started has died, before Lightning's observer SIGKILLs everything (its default: at
# once, leaving no error line and a status.json stuck at RUNNING).
LOST_CHILD_GRACE_S = 60
# Environment variables by which a launcher gives a process its place in a multi-node run
# (torchrun, SLURM, LSF, Open MPI, or by hand), the ones Lightning's cluster environments read.
LAUNCHER_VARIABLES = ("WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "TORCHELASTIC_RUN_ID",
                      "SLURM_NTASKS", "LSB_JOBID", "OMPI_COMM_WORLD_SIZE")  # fmt: skip
# Words of the errors gloo and NCCL raise when a peer process is gone.
_LOST_PEER = ("gloo", "nccl", "connection reset", "connection closed", "broken pipe", "timeout")


class DistributedError(ReidkitError):
    """A process of a multi-process run stopped, so the others cannot go on."""


def trainer_devices(
    *,
    accelerator: Accelerator,
    precision: str,
    num_processes: int = 1,
    num_gpus: int = 1,
    gpu_ids: list[int] | None = None,
    num_nodes: int = 1,
) -> dict[str, Any]:
    """Trainer arguments: accelerator, devices, nodes, strategy, sync BN and precision.

    ``accelerator='auto'`` trains on the GPUs when CUDA is there, else on the CPU. Processes
    per node are ``num_gpus`` on GPUs (``gpu_ids`` picks them) and ``num_processes`` on the
    CPU. Sync BN needs GPUs; CPU processes keep per-process BatchNorm statistics.
    """
    if accelerator == "gpu" and not torch.cuda.is_available():
        raise SpecError(
            "train.accelerator is 'gpu' but no CUDA device is visible here; use 'auto' or 'cpu'"
        )
    on_gpu = accelerator == "gpu" or (accelerator == "auto" and torch.cuda.is_available())
    if precision == "auto":
        precision = "16-mixed" if on_gpu else "32"
    if not on_gpu and precision == "16-mixed":
        raise SpecError(
            "train.precision is '16-mixed' but training runs on the CPU; use 'bf16-mixed' or '32'"
        )
    if not on_gpu and num_gpus > 1:
        log.warning(
            "train.num_gpus=%d but training runs on the CPU: %d process(es) per node "
            "(train.num_processes)", num_gpus, num_processes,
        )  # fmt: skip
    per_node = num_gpus if on_gpu else num_processes
    _check_launcher_world_size(per_node, num_nodes)
    ids = gpu_ids or []
    devices: int | list[int] = ids[:num_gpus] if on_gpu and len(ids) >= num_gpus else per_node
    distributed = per_node * num_nodes > 1
    strategy: ReidDDPStrategy | str = "auto"
    if distributed:
        backend = "nccl" if on_gpu else "gloo"
        strategy = ReidDDPStrategy(process_group_backend=backend, timeout=COLLECTIVE_TIMEOUT)
    return {
        "accelerator": "gpu" if on_gpu else "cpu",
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
        "sync_batchnorm": distributed and on_gpu,
        "precision": precision,
    }


def _check_launcher_world_size(per_node: int, num_nodes: int) -> None:
    """A launcher's ``WORLD_SIZE`` must be the spec's processes per node times nodes, and
    several nodes need a launcher at all: without one, Lightning takes this machine for node 0
    of a rendezvous on 127.0.0.1 and waits for the other nodes for ever."""
    if num_nodes > 1 and not any(os.environ.get(name) for name in LAUNCHER_VARIABLES):
        raise SpecError(
            f"train.num_nodes is {num_nodes} but no launcher set this process's place in the "
            "run (torchrun, srun, or MASTER_ADDR, MASTER_PORT and NODE_RANK on each node: "
            "docs/scale-out.md); start it through one, or set train.num_nodes=1"
        )
    launched = os.environ.get("WORLD_SIZE")
    if launched and launched.isdigit() and int(launched) != per_node * num_nodes:
        raise SpecError(
            f"the launcher's WORLD_SIZE is {launched} but the spec asks for {per_node} "
            f"process(es) per node x {num_nodes} node(s) (train.num_gpus or "
            "train.num_processes, train.num_nodes); make them agree"
        )


def lost_peer(
    error: BaseException, world_size: int, rank: int, resume_hint: str
) -> DistributedError | None:
    """``error`` as a :class:`DistributedError` when it says that another rank is gone, else None.

    gloo fails the survivors' next collective at once ("Connection reset by peer"); NCCL after
    ``COLLECTIVE_TIMEOUT``. Errors of a one-process run, and other errors, stay as they are.
    """
    text = str(error).strip()
    if world_size < 2 or not isinstance(error, RuntimeError):
        return None
    if not any(word in text.lower() for word in _LOST_PEER):
        return None
    reason = text.splitlines()[0] if text else type(error).__name__
    reason = reason.split("] ", 1)[-1][:160]  # drop gloo's source-file prefix
    return DistributedError(
        f"training process rank {rank} of {world_size} lost its peers ({reason}): another "
        f"rank stopped or was killed; {resume_hint}"
    )


class ReidDDPStrategy(DDPStrategy):
    """Lightning's DDP, whose own launcher lets rank 0 report a dead rank before it kills all.

    Lightning starts the extra processes of one machine itself and watches them from a thread
    that SIGKILLs every process as soon as one has died. Rank 0 would usually have failed its
    next collective a moment later with the reason (then :func:`lost_peer`'s one line and a
    FAILURE status); here it gets :data:`LOST_CHILD_GRACE_S` to do so. Launchers outside
    Lightning (torchrun, SLURM) are not affected.
    """

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):
            self._launcher = _PatientLauncher(
                self._launcher.cluster_environment, self.num_processes, self.num_nodes
            )


class _PatientObserver(_ChildProcessObserver):
    def _terminate_all(self) -> None:
        time.sleep(LOST_CHILD_GRACE_S)  # a daemon thread: it dies with rank 0 if that fails first
        super()._terminate_all()


class _PatientLauncher(_SubprocessScriptLauncher):
    def launch(self, function: Callable, *args: Any, trainer: Any = None, **kwargs: Any) -> Any:
        # Lightning's launch, with the patient observer.
        self.cluster_environment.validate_settings(
            num_devices=self.num_processes, num_nodes=self.num_nodes
        )
        if not self.cluster_environment.creates_processes_externally:
            self._call_children_scripts()
            _PatientObserver(os.getpid(), self.procs).start()
        _set_num_threads_if_needed(num_processes=self.num_processes)
        return function(*args, **kwargs)
