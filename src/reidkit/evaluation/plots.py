"""The evaluation plots: TAO's CMC curve and "Sampled Matches" grid, and reidkit's ROC curve.

Figures are built with matplotlib's object API on the Agg canvas (no pyplot global state, no
display needed) and written atomically, so a crash never leaves a truncated PNG where a report
expects one.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reidkit.data.dataset import read_rgb
from reidkit.outputs import atomic_open

_QUERY_COLOR = "#1f5fd6"
_MATCH_COLOR = "#1a9e3a"
_MISMATCH_COLOR = "#d62728"
# Person crops are about twice as tall as wide; each cell is shown at this size (inches).
_CELL_WIDTH, _CELL_HEIGHT = 1.25, 2.75


def _save_atomically(fig: Figure, path: Path) -> Path:
    """Render ``fig`` as a PNG written atomically to ``path``."""
    path = Path(path)
    FigureCanvasAgg(fig)
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png")
    return path


def plot_cmc_curve(cmc: np.ndarray, path: Path, title: str = "CMC curve") -> Path:
    """Plot the matching rate (%) against rank 1..len(cmc) and write it as a PNG."""
    rates = np.asarray(cmc, dtype=np.float64).reshape(-1) * 100.0
    if len(rates) == 0:
        raise ValueError("cmc is empty")
    ranks = np.arange(1, len(rates) + 1)
    fig = Figure(figsize=(7.0, 4.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(ranks, rates, color=_QUERY_COLOR, linewidth=2.0, marker="o", markersize=3)
    for rank in (1, 5, 10):
        if rank <= len(rates):
            ax.annotate(
                f"rank-{rank}: {rates[rank - 1]:.1f}%",
                (rank, rates[rank - 1]),
                textcoords="offset points",
                xytext=(8, -14),
                fontsize=9,
            )
    ax.set_xlim(1, max(2, len(rates)))
    ax.set_ylim(max(0.0, np.floor(rates.min() / 10.0) * 10.0 - 5.0), 100.5)
    ax.set_xlabel("Rank")
    ax.set_ylabel("Matching rate (%)")
    ax.set_title(title)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.grid(True, which="major", alpha=0.4)
    return _save_atomically(fig, path)


def plot_roc_curve(
    fmr: np.ndarray,
    tmr: np.ndarray,
    path: Path,
    marked: dict[float, tuple[float, float]] | None = None,
    title: str = "ROC of query-gallery pairs",
) -> Path:
    """Plot the true-match rate (%) against the false-match rate (log axis) and write a PNG.

    ``marked`` maps target false-match rates to ``(true-match rate, distance threshold)``, each
    annotated on the curve: the operating points a site chooses its "unknown" threshold from.
    """
    fmr = np.asarray(fmr, dtype=np.float64).reshape(-1)
    rates = np.asarray(tmr, dtype=np.float64).reshape(-1) * 100.0
    if len(rates) == 0 or len(rates) != len(fmr):
        raise ValueError("fmr and tmr must be non-empty and of equal length")
    fig = Figure(figsize=(7.0, 4.5), dpi=120, layout="constrained")
    ax = fig.add_subplot()
    positive = fmr > 0
    ax.plot(fmr[positive], rates[positive], color=_QUERY_COLOR, linewidth=2.0)
    for target, (rate, threshold) in sorted((marked or {}).items()):
        ax.plot([target], [rate * 100.0], marker="o", color=_MATCH_COLOR, markersize=5)
        ax.annotate(
            f"FMR {target:g}: TMR {rate * 100.0:.1f}%, d <= {threshold:.3f}",
            (target, rate * 100.0),
            textcoords="offset points",
            xytext=(8, -14),
            fontsize=9,
        )
    ax.set_xscale("log")
    ax.set_xlim(max(fmr[positive].min(), 1e-6), 1.0)
    ax.set_ylim(max(0.0, np.floor(rates[positive].min() / 10.0) * 10.0 - 5.0), 100.5)
    ax.set_xlabel("False-match rate (different-person pairs accepted)")
    ax.set_ylabel("True-match rate (%)")
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.4)
    return _save_atomically(fig, path)


def _show_cell(ax: Axes, image_path: str, caption: str, color: str, heading: str) -> None:
    """One image framed in ``color`` with its id/camera caption below and a heading above."""
    ax.imshow(np.asarray(read_rgb(Path(image_path))))
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(5)
    ax.set_title(heading, fontsize=9, color=color if heading == "query" else "black")
    ax.set_xlabel(caption, fontsize=9)


def plot_sampled_matches(
    query_paths: Sequence[str],
    query_pids: Sequence[int],
    query_camids: Sequence[int],
    gallery_paths: Sequence[str],
    gallery_pids: Sequence[int],
    gallery_camids: Sequence[int],
    ranked_indices: np.ndarray,
    path: Path,
) -> Path:
    """Draw one row per query: the query (blue frame), then its ranked gallery images (green
    frame when the id matches the query's, red when not), each captioned with id and camera.

    ``ranked_indices[i]`` lists gallery indices in rank order for query ``i`` (the caller
    decides whether same-camera matches, which the metrics ignore, are shown); its width sets
    the number of gallery columns.
    """
    ranked = np.asarray(ranked_indices, dtype=np.int64)
    if ranked.ndim != 2 or len(ranked) != len(query_paths):
        raise ValueError(
            f"ranked_indices must be [num_query={len(query_paths)}, max_rank], "
            f"got shape {ranked.shape}"
        )
    num_rows, num_ranks = ranked.shape
    if num_rows == 0 or num_ranks == 0:
        raise ValueError("nothing to plot: ranked_indices is empty")
    height = _CELL_HEIGHT * num_rows + 0.6
    # A fixed grid, not constrained layout: with ~100 cells the layout solver took a third of
    # the whole evaluate action (profiled on CUHK03); each cell's title and caption fit in
    # the fixed gaps below.
    fig = Figure(figsize=(_CELL_WIDTH * (num_ranks + 1) + 0.3, height), dpi=100)
    fig.suptitle(
        "Sampled matches - blue: query, green: same id, red: different id",
        fontsize=11, y=1 - 0.1 / height, verticalalignment="top",
    )  # fmt: skip
    grid = fig.add_gridspec(
        num_rows, num_ranks + 1, left=0.01, right=0.99, bottom=0.25 / height,
        top=1 - 0.75 / height, wspace=0.15, hspace=0.35,
    )  # fmt: skip
    for row in range(num_rows):
        q_pid = query_pids[row]
        _show_cell(
            fig.add_subplot(grid[row, 0]),
            query_paths[row],
            f"id {q_pid} | cam {query_camids[row]}",
            _QUERY_COLOR,
            "query",
        )
        for rank, g in enumerate(ranked[row], start=1):
            color = _MATCH_COLOR if gallery_pids[g] == q_pid else _MISMATCH_COLOR
            _show_cell(
                fig.add_subplot(grid[row, rank]),
                gallery_paths[g],
                f"id {gallery_pids[g]} | cam {gallery_camids[g]}",
                color,
                f"rank {rank}",
            )
    return _save_atomically(fig, path)
