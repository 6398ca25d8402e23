"""Which process of a launch this is, read from the launcher's environment without torch.

The action lifecycle asks before anything heavy loads (so that ``reidkit validate`` and
``schema`` stay light): only rank 0 locks the results folder and writes its records while the
other ranks train beside it. :mod:`reidkit.engine.distributed` describes the launchers.
"""

from __future__ import annotations

import os

# Set in the processes a launcher starts: torchrun (RANK, LOCAL_RANK, GROUP_RANK), SLURM's srun
# (SLURM_PROCID), Lightning's own extra processes and a node started by hand (LOCAL_RANK,
# NODE_RANK).
_RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")


def is_launch_primary() -> bool:
    """Whether this process is rank 0 of its run (or its only process).

    Known from the launcher's environment before Lightning starts, so that only rank 0 locks
    the results folder and writes its records while the other ranks train beside it.
    """
    return all(os.environ.get(name, "0") == "0" for name in _RANK_VARIABLES)
