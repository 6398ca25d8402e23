"""The evaluation plots: TAO's CMC curve and "Sampled Matches" grid, and reidkit's ROC curve.

The curves are built with matplotlib's object API on the Agg canvas (no pyplot global state,
no display needed); the sampled matches, a mosaic of crops, are drawn with Pillow in
matplotlib's font. Every PNG is written atomically, so a crash never leaves a truncated file
where a report expects one.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont
from PIL import Image, ImageDraw, ImageFont

from reidkit.data.images import decode_rgb
from reidkit.outputs import atomic_open

_QUERY_COLOR = "#1f5fd6"
_MATCH_COLOR = "#1a9e3a"
_MISMATCH_COLOR = "#d62728"
# Sampled matches: person crops are about twice as tall as wide; each is shown at this size
# (pixels) in a frame, one per cell of the pitch below, with a heading above and
# a caption below in the label rows.
_THUMB_WIDTH, _THUMB_HEIGHT, _FRAME = 64, 128, 5
_LABEL_HEIGHT = 20
_PITCH_WIDTH, _PITCH_HEIGHT = 100, _THUMB_HEIGHT + 2 * _FRAME + 3 * _LABEL_HEIGHT
_TITLE_HEIGHT = 30


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


def _framed_thumbnail(image_path: str, color: str) -> Image.Image:
    """The crop resized to one cell, inside a ``_FRAME``-pixel frame of ``color``."""
    image = decode_rgb(Path(image_path), f"image '{image_path}'").resize(
        (_THUMB_WIDTH, _THUMB_HEIGHT), Image.BILINEAR
    )
    framed = Image.new(
        "RGB", (_THUMB_WIDTH + 2 * _FRAME, _THUMB_HEIGHT + 2 * _FRAME), _rgb_bytes(color)
    )
    framed.paste(image, (_FRAME, _FRAME))
    return framed


def _rgb_bytes(color: str) -> tuple[int, int, int]:
    red, green, blue = (round(c * 255) for c in to_rgb(color))
    return red, green, blue


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans, the font matplotlib ships (and draws the other plots in), at ``size`` px."""
    return ImageFont.truetype(findfont(FontProperties(family="DejaVu Sans")), size)


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

    The crops and their labels are drawn straight into one Pillow image: a grid of ~100
    matplotlib axes took a quarter of the evaluate action on CUHK03, and even one matplotlib
    figure spends most of a second compositing the mosaic and laying out ~200 labels.
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
    width, height = _PITCH_WIDTH * (num_ranks + 1), _TITLE_HEIGHT + _PITCH_HEIGHT * num_rows
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    title = "Sampled matches - blue: query, green: same id, red: different id"
    draw.text((width / 2, 8), title, fill="black", font=_font(15), anchor="mt")

    def cell(
        row: int, column: int, image_path: str, color: str, heading: str, caption: str
    ) -> None:
        framed = _framed_thumbnail(image_path, color)
        left = column * _PITCH_WIDTH + (_PITCH_WIDTH - framed.width) // 2
        top = _TITLE_HEIGHT + row * _PITCH_HEIGHT + _LABEL_HEIGHT
        canvas.paste(framed, (left, top))
        centre = left + framed.width / 2
        heading_color = color if heading == "query" else "black"
        draw.text((centre, top - 3), heading, fill=heading_color, font=_font(12), anchor="mb")
        below = (centre, top + framed.height + 3)
        draw.text(below, caption, fill="black", font=_font(11), anchor="mt")

    for row in range(num_rows):
        q_pid = query_pids[row]
        cell(
            row, 0, query_paths[row], _QUERY_COLOR, "query", f"id {q_pid} | cam {query_camids[row]}"
        )
        for rank, g in enumerate(ranked[row], start=1):
            color = _MATCH_COLOR if gallery_pids[g] == q_pid else _MISMATCH_COLOR
            caption = f"id {gallery_pids[g]} | cam {gallery_camids[g]}"
            cell(row, rank, gallery_paths[g], color, f"rank {rank}", caption)
    with atomic_open(Path(path), "wb") as handle:
        # zlib level 3: half the encode time of Pillow's default 6 on these mosaics, and no
        # bigger (photos barely compress; the flat background compresses at any level).
        canvas.save(handle, format="png", compress_level=3)
    return Path(path)
