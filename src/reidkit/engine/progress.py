"""The training progress bar: Lightning's tqdm bar, refreshed at a pace that costs nothing.

Left to itself, Lightning shows its Rich bar whenever ``rich`` is installed (the GPU image has
it). That bar re-renders on every step (Lightning issue #13937: about 10 ms a step, more when
the output is not a terminal), and every refresh of any bar reads the logged loss, which on a
GPU waits for the step to finish. On the H200 every training setting ran at the same ~30 steps
a second whatever the model or batch size (BENCHMARKS.md, GPU check): a fixed host cost per
step. So reidkit picks the bar: tqdm, refreshed every step on a CPU (a step takes 100 ms or
more there, a refresh well under 1 ms) and every :data:`GPU_REFRESH_STEPS` steps on a GPU.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import TQDMProgressBar

#: Steps between refreshes on a GPU: a few a second at GPU step rates.
GPU_REFRESH_STEPS = 25


def training_progress_bar(on_gpu: bool) -> TQDMProgressBar:
    """The bar for a run on a GPU (``on_gpu``) or on the CPU."""
    return TQDMProgressBar(refresh_rate=GPU_REFRESH_STEPS if on_gpu else 1)
