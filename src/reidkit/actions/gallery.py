"""``reidkit gallery add|search|forget|stats|rebuild``: a site's crops, searchable by camera and
time, and movable to a new model.

The spec's ``gallery`` section is translated here into the plain arguments of
:mod:`reidkit.gallery`; each verb runs inside :func:`run_action` (results in
``<results_dir>/gallery``: ``status.json``, the resolved spec, ``search.json`` for a search,
``missing_crops.txt`` for a rebuild that found crops without a file). The model that embeds
crops is checked against the spec like evaluate's, and the gallery refuses a model other than
the one that filled it; ``rebuild`` moves it to ``gallery.checkpoint``'s model.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from reidkit.actions.embedding import select_device
from reidkit.actions.lifecycle import run_action
from reidkit.actions.models import load_checked_embedder
from reidkit.actions.run_record import GalleryOutcome
from reidkit.config.spec import ExperimentSpec
from reidkit.config.times import parse_time
from reidkit.errors import SpecError
from reidkit.evaluation.features import Embedder
from reidkit.evaluation.rerank import re_rank
from reidkit.gallery import validation
from reidkit.gallery.factory import open_gallery, undone_if_left_empty
from reidkit.gallery.front import Gallery
from reidkit.gallery.ingest import (
    IMAGE_SUFFIXES,
    add_crops,
    crops_in_folder,
    embed_batches,
    read_manifest,
)
from reidkit.gallery.rebuild import MissingCrops, RebuildResult, rebuild
from reidkit.gallery.store import (
    CropFilter,
    CropMeta,
    GalleryError,
    GalleryStats,
    Hit,
    IdentityHit,
    Selection,
)
from reidkit.outputs import atomic_open, path_text, write_json

T = TypeVar("T")


@dataclass
class AddResult:
    added: int
    already_stored: int
    stats: GalleryStats


@dataclass
class SearchResult:
    queries: list[str]
    hits: list[list[Hit]]
    output_file: Path


def _uri(spec: ExperimentSpec) -> str:
    if not spec.gallery.uri:
        raise SpecError(
            "gallery.uri is not set; give a folder (or http://host:19530 / a *.db file for Milvus)"
        )
    return spec.gallery.uri


def _model(spec: ExperimentSpec) -> tuple[Embedder, dict[str, Any]]:
    settings = spec.gallery
    if not settings.checkpoint:
        raise SpecError(
            "gallery.checkpoint is not set; point it at the .pth/.onnx model (or its run folder)"
        )
    gpu = settings.gpu_ids[0] if settings.gpu_ids else 0
    embedder, card = load_checked_embedder(spec, settings.checkpoint, "gallery.checkpoint", gpu)
    if isinstance(embedder, torch.nn.Module):
        embedder = embedder.to(select_device(settings.gpu_ids))
    recorded = card.to_dict()
    if settings.match_threshold is not None:  # evaluate's calibration, given by hand
        recorded["match_threshold"] = settings.match_threshold
    return embedder, recorded


def _time(value: str | None, key: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as exc:
        raise SpecError(f"gallery.{key}: {exc}") from None


def gallery_add(spec: ExperimentSpec) -> AddResult:
    """Embed ``gallery.crops`` (Market-style names) or ``gallery.manifest`` into the gallery."""
    settings = spec.gallery
    with run_action(spec, "gallery") as run:
        if bool(settings.crops) == bool(settings.manifest):
            raise SpecError("set exactly one of gallery.crops (a folder) and gallery.manifest")
        if settings.manifest:
            metas = read_manifest(Path(settings.manifest))
        else:
            origin = _time(settings.time_origin, "time_origin") or 0.0
            metas = crops_in_folder(Path(settings.crops or ""), origin, settings.fps)
        embedder, card = _model(spec)
        uri = _uri(spec)
        with undone_if_left_empty(uri), open_gallery(uri, card, create=True) as gallery:
            added, skipped = add_crops(
                gallery,
                embedder,
                card,
                metas,
                batch_size=settings.batch_size,
                thumbnails=settings.thumbnails,
                operator=settings.operator,
            )
            gallery.optimise()
            stats = gallery.stats()
        outcome = GalleryOutcome(size=stats.size)
        run.succeed(f"added {added} crops ({skipped} already stored)", outcome=outcome)
    return AddResult(added, skipped, stats)


def _query_crops(paths: list[str]) -> list[CropMeta]:
    files: list[Path] = []
    for entry in paths:
        path = Path(entry)
        if path.is_dir():
            files += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            files.append(path)
    if not files:
        raise SpecError("gallery.query is empty; list query crop files or folders")
    return [CropMeta(str(p), camera=-1, timestamp=0.0) for p in files]


def gallery_search(spec: ExperimentSpec) -> SearchResult:
    """Search the gallery with ``gallery.query`` crops; writes a JSON file and prints a table."""
    settings = spec.gallery
    with run_action(spec, "gallery") as run:
        queries = _query_crops(settings.query)
        embedder, card = _model(spec)
        (vectors,) = [
            torch.cat([v for v, _, _ in embed_batches(
                embedder, card, queries, batch_size=settings.batch_size, thumbnails=False,
                progress=False,
            )])
        ]  # fmt: skip
        if settings.query_as_track:
            vectors = vectors.mean(dim=0, keepdim=True)
        where = CropFilter(
            cameras=None if settings.cameras is None else tuple(settings.cameras),
            start=_time(settings.start, "start"),
            end=_time(settings.end, "end"),
        )
        with open_gallery(_uri(spec), card) as gallery:
            pool = settings.rerank_pool if settings.re_ranking else settings.top_k
            hits = gallery.search(
                vectors,
                pool,
                where=where,
                threshold=settings.match_threshold,
                operator=settings.operator,
            )
            if settings.re_ranking:
                hits = [
                    _rerank(spec, gallery, v, row) for v, row in zip(vectors, hits, strict=True)
                ]
            hits = [row[: settings.top_k] for row in hits]
            people = gallery.group_by_identity(hits) if settings.group_by_identity else None
        names = ["track"] if settings.query_as_track else [q.path for q in queries]
        output = Path(settings.output_file or run.folder / "search.json")
        if people is None:
            found = [
                {"query": name, "hits": [h.to_dict() for h in row]}
                for name, row in zip(names, hits, strict=True)
            ]
            print(hits_table(names, hits))
        else:
            found = [
                {"query": name, "identities": [p.to_dict() for p in row]}
                for name, row in zip(names, people, strict=True)
            ]
            print(identities_table(names, people))
        write_json(output, found)
        outcome = GalleryOutcome(output_file=str(output))
        run.succeed(f"searched {len(names)} queries", outcome=outcome)
    return SearchResult(names, hits, output)


def _rerank(
    spec: ExperimentSpec, gallery: Gallery, query: torch.Tensor, row: list[Hit]
) -> list[Hit]:
    """Reorder one query's hits by k-reciprocal re-ranking among themselves (a small set).

    Distances and decisions stay the calibrated ones: re-ranking changes the order only.
    """
    if len(row) < 3:
        return row
    ranking = spec.re_ranking
    stored = torch.from_numpy(gallery.vectors([h.crop_id for h in row]))
    k1 = min(ranking.k1, len(row) - 1)
    k2 = min(ranking.k2, k1)
    reranked = re_rank(query[None], stored, k1, k2, ranking.lambda_value)
    order = np.argsort(np.asarray(reranked)[0], kind="stable")
    return [row[i] for i in order]


def hits_table(names: list[str], hits: list[list[Hit]]) -> str:
    """Per query, its hits: rank, distance, decision, camera, time (UTC), track, crop."""
    lines = []
    for name, row in zip(names, hits, strict=True):
        lines.append(f"query {name}")
        lines.append("  rank  distance  decision  camera  time (UTC)           track     crop")
        for rank, hit in enumerate(row, 1):
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(hit.meta.timestamp))
            lines.append(
                f"  {rank:>4}  {hit.distance:8.4f}  {hit.decision or '-':<8}  "
                f"{hit.meta.camera:>6}  {when}  {hit.meta.track_id or '-':<8}  {hit.meta.path}"
            )
        if not row:
            lines.append("  (no crop in the gallery passes the filters)")
    return "\n".join(lines)


def identities_table(names: list[str], people: list[list[IdentityHit]]) -> str:
    """Per query, the people among its hits: rank, nearest distance, decision, global id,
    cameras and time span (UTC) of that identity, hits."""
    lines = []
    for name, row in zip(names, people, strict=True):
        lines.append(f"query {name}")
        lines.append("  rank  distance  decision  global id     cameras       seen (UTC)")
        for rank, person in enumerate(row, 1):
            best = person.hits[0]
            label = person.global_id or f"(crop {best.crop_id})"
            cameras = ",".join(map(str, person.cameras))
            lines.append(
                f"  {rank:>4}  {best.distance:8.4f}  {best.decision or '-':<8}  {label:<12}  "
                f"{cameras:<12}  {_utc(person.start)} .. {_utc(person.end)}  "
                f"{len(person.hits)} hits"
            )
        if not row:
            lines.append("  (no crop in the gallery passes the filters)")
    return "\n".join(lines)


def _checked(key: str, rule: Callable[[T], T], value: T) -> T:
    """``rule(value)``, its refusal as a one-line error naming ``gallery.<key>``."""
    try:
        return rule(value)
    except ValueError as exc:
        raise SpecError(f"gallery.{key}: {exc}") from None


def _selection(spec: ExperimentSpec) -> Selection:
    """The crops ``gallery.forget_*`` and ``gallery.retention_days`` name, checked by the rules
    the HTTP API applies (a retention age of at least ``MIN_FORGET_AGE``, real track ids)."""
    settings = spec.gallery
    if not (
        settings.forget_tracks
        or settings.forget_crops
        or settings.retention_days
        or settings.forget_identity
    ):
        raise SpecError(
            "nothing to forget: set gallery.forget_identity, gallery.forget_tracks, "
            "gallery.forget_crops or gallery.retention_days (or pass --all --yes to erase "
            "everything)"
        )
    before = None
    if settings.retention_days is not None:  # an age: crops taken before now - age go
        age = _checked(
            "retention_days", validation.forget_age, timedelta(days=settings.retention_days)
        )
        before = time.time() - age.total_seconds()
    for track in settings.forget_tracks:
        _checked("forget_tracks", validation.track_id, track)
    return Selection(
        paths=tuple(str(Path(p).resolve()) for p in settings.forget_crops),
        track_ids=tuple(settings.forget_tracks),
        before=before,
    )


def gallery_forget(spec: ExperimentSpec, *, everything: bool = False) -> int:
    """Remove ``gallery.forget_identity`` (every crop of those people, in every camera),
    ``gallery.forget_tracks``, ``gallery.forget_crops`` and crops older than
    ``gallery.retention_days`` (at least an hour), or with ``everything`` every crop, from every
    file of the gallery; returns how many. Nothing matched is a warning on stderr, not silence."""
    settings = spec.gallery
    with run_action(spec, "gallery") as run:
        if everything and (
            settings.forget_tracks
            or settings.forget_crops
            or settings.retention_days
            or settings.forget_identity
        ):
            raise SpecError(
                "--all erases everything; unset gallery.forget_identity, gallery.forget_tracks, "
                "gallery.forget_crops and gallery.retention_days"
            )
        selection = None if everything else _selection(spec)
        with open_gallery(_uri(spec)) as gallery:
            if selection is None:
                removed = gallery.forget_all(operator=settings.operator)
                asked = "every crop"
            else:
                removed = 0
                for global_id in settings.forget_identity:  # every camera of that person
                    person = gallery.forget_identity(global_id, operator=settings.operator)
                    print(
                        f"global id {global_id}: {person.removed} crops in cameras "
                        f"{list(person.cameras)}, tracks {list(person.tracks)}"
                    )
                    removed += person.removed
                if not selection.is_empty():
                    removed += gallery.forget(selection, operator=settings.operator)
                asked = _described(selection, settings.forget_identity)
            size = gallery.stats().size
        print(f"forgot {removed} crops ({asked}); {size} remain")
        if not removed:
            print(
                f"reidkit gallery forget: warning: nothing matched {asked}; no crop was erased",
                file=sys.stderr,
            )
        run.succeed(f"forgot {removed} crops", outcome=GalleryOutcome(size=size, removed=removed))
    return removed


def _described(selection: Selection, identities: Sequence[str] = ()) -> str:
    """What a forget selected, in the words of the spec keys that chose it."""
    parts = [f"global ids {', '.join(identities)}"] if identities else []
    if selection.track_ids:
        parts.append(f"tracks {', '.join(selection.track_ids)}")
    if selection.paths:
        parts.append(f"{len(selection.paths)} crop paths")
    if selection.before is not None:
        parts.append(f"taken before {_utc(selection.before)} UTC")
    return "; ".join(parts)


def _utc(seconds: float | None) -> str:
    return "-" if seconds is None else time.strftime("%Y-%m-%d %H:%M", time.gmtime(seconds))


def stats_line(stats: GalleryStats) -> str:
    """One line: size, cameras, time span, backend and index, the model that filled it."""
    card = stats.card or {}
    model = (
        f"{card.get('backbone')} {card.get('input_height')}x{card.get('input_width')} -> "
        f"{card.get('embedding_dim')}-d, match_threshold {card.get('match_threshold')}"
    )
    return (
        f"{stats.size} crops, cameras {list(stats.cameras)}, {_utc(stats.start)} .. "
        f"{_utc(stats.end)} UTC, {stats.backend} {stats.index_kind}, model {model}"
    )


def gallery_stats(spec: ExperimentSpec) -> GalleryStats:
    """Size, cameras, time span, index kind and model card of the gallery."""
    with run_action(spec, "gallery") as run:
        with open_gallery(_uri(spec)) as gallery:
            stats = gallery.stats()
        print(stats_line(stats))
        outcome = GalleryOutcome(size=stats.size, stats=stats.to_dict())
        run.succeed("gallery stats", outcome=outcome)
    return stats


def gallery_rebuild(spec: ExperimentSpec) -> RebuildResult:
    """Re-embed every crop of the gallery with ``gallery.checkpoint`` (the NEW model) and switch
    the gallery to it; the old version answers searches until the switch. Crops whose file is
    gone are listed in ``missing_crops.txt`` and refused unless ``gallery.rebuild_drop_missing``.
    """
    settings = spec.gallery
    with run_action(spec, "gallery") as run:
        embedder, card = _model(spec)

        def embed(metas: Sequence[CropMeta]) -> Iterator[tuple[torch.Tensor, list[CropMeta]]]:
            batches = embed_batches(
                embedder, card, metas, batch_size=settings.batch_size, thumbnails=False
            )
            return ((vectors, batch) for vectors, batch, _ in batches)

        listed = run.folder / "missing_crops.txt"
        with open_gallery(_uri(spec)) as gallery:
            try:
                result = rebuild(
                    gallery,
                    embed,
                    card,
                    drop_missing=settings.rebuild_drop_missing,
                    operator=settings.operator,
                )
            except MissingCrops as missing:
                _list_paths(listed, missing.paths)
                raise GalleryError(
                    f"{len(missing.paths)} crops of the gallery have no file to re-embed (listed "
                    f"in {listed}); {missing.FIX}"
                ) from None
        if result.dropped:
            _list_paths(listed, result.dropped)
        message = (
            f"rebuilt the gallery with {result.crops} crops ({result.embedded} embedded now, "
            f"{len(result.dropped)} dropped)"
        )
        print(message)
        run.succeed(message, outcome=GalleryOutcome(size=result.crops, dropped=len(result.dropped)))
    return result


def _list_paths(path: Path, paths: list[str]) -> None:
    with atomic_open(path) as handle:
        handle.writelines(path_text(p) + "\n" for p in paths)
