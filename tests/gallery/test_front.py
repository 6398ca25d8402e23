"""One suite, both backends (embedded folder and Milvus Lite), all through the Gallery front:
results checked against a NumPy brute force."""

from __future__ import annotations

import getpass
import json

import numpy as np
import pytest

from reidkit.gallery.factory import open_gallery
from reidkit.gallery.front import unit_rows
from reidkit.gallery.store import CropFilter, CropMeta, GalleryError, Selection
from tests.gallery.conftest import CARD, DAY, ORIGIN, brute_force, folder_bytes, site


def test_add_resume_search_decisions_and_stats(make_gallery):
    vectors, metas = site(200)
    gallery = make_gallery()
    thumbs = [f"jpeg-{i}".encode() for i in range(len(metas))]
    assert gallery.stats().size == 0 and gallery.card is None
    assert gallery.search(vectors[:2], k=3) == [[], []]
    assert gallery.add(vectors[:120], metas[:120], thumbs[:120]) == 120
    assert gallery.add(vectors, metas, thumbs) == 80  # a resumed add stores only the rest
    assert gallery.add(vectors, metas, thumbs) == 0
    assert gallery.contains([metas[5].path, "crops/never.jpg"]) == [True, False]
    queries = vectors[[3, 77, 150]] + 0.05
    hits = gallery.search(queries, k=7)
    expected = brute_force(vectors, metas, queries, 7)
    for got, want in zip(hits, expected, strict=True):
        assert [h.meta.path for h in got] == [p for p, _ in want]
        np.testing.assert_allclose([h.distance for h in got], [d for _, d in want], atol=1e-5)
        assert all(h.decision == ("match" if h.distance <= 0.6 else "unknown") for h in got)
    assert {h.decision for row in hits for h in row} == {"match", "unknown"}
    first = hits[0][0]
    assert first.meta == metas[3]
    assert gallery.thumbnail(first.crop_id) == b"jpeg-3"
    np.testing.assert_allclose(
        gallery.vectors([first.crop_id])[0], unit_rows(vectors[3:4], "v")[0], atol=1e-6
    )
    # A threshold given per call, or at open, decides instead of the card's.
    strict = gallery.search(queries[:1], k=3, threshold=0.0)[0]
    assert [h.decision for h in strict] == ["unknown"] * 3
    stats = gallery.stats()
    assert stats.size == 200
    assert stats.cameras == (0, 1, 2, 3)
    assert stats.start == min(m.timestamp for m in metas)
    assert stats.end == max(m.timestamp for m in metas)
    assert stats.card == CARD
    assert stats.backend in ("embedded", "milvus")


def test_camera_and_time_filters_match_brute_force(make_gallery):
    vectors, metas = site(300, seed=1)
    gallery = make_gallery()
    gallery.add(vectors, metas)
    queries = vectors[[0, 1, 2, 33]]
    start, end = ORIGIN + 2 * DAY, ORIGIN + 5 * DAY
    cases = [
        (CropFilter(cameras=(1, 3)), lambda m: m.camera in (1, 3)),
        (CropFilter(start=start, end=end), lambda m: start <= m.timestamp <= end),
        (CropFilter(cameras=(2,), start=start), lambda m: m.camera == 2 and m.timestamp >= start),
        (CropFilter(cameras=(0,), end=ORIGIN - 1.0), lambda m: False),
    ]
    for where, keep in cases:
        hits = gallery.search(queries, k=10, where=where)
        expected = brute_force(vectors, metas, queries, 10, keep)
        assert [[h.meta.path for h in row] for row in hits] == [
            [p for p, _ in row] for row in expected
        ], where
    for where, message in [
        (CropFilter(cameras=(1, 9)), "camera 9 is not in"),
        (CropFilter(start=end, end=start), "starts .* after it ends"),
    ]:
        with pytest.raises(GalleryError, match=message) as err:
            gallery.search(queries, k=3, where=where)
        assert "\n" not in str(err.value)


def test_forget_by_track_crop_id_path_and_cutoff(make_gallery, backend_uri):
    vectors, metas = site(100, seed=2)
    gallery = make_gallery()
    thumbs = [f"face-{m.path}".encode() for m in metas]
    gallery.add(vectors, metas, thumbs)
    ids = {row[0].meta.path: row[0].crop_id for row in gallery.search(vectors, k=1)}
    assert gallery.forget(Selection(track_ids=("track-3", "track-404"))) == 5
    assert gallery.forget(Selection(paths=(metas[0].path, metas[0].path, "nowhere.jpg"))) == 1
    assert gallery.forget(Selection(crop_ids=(ids[metas[1].path], 123456789))) == 1
    cutoff = ORIGIN + 3 * DAY
    gone = {metas[0].path, metas[1].path} | {m.path for m in metas if m.track_id == "track-3"}
    old = {m.path for m in metas if m.timestamp < cutoff} - gone
    assert gallery.forget(Selection(before=cutoff)) == len(old)
    gone |= old
    kept = [m.path for m in metas if m.path not in gone]
    assert gallery.stats().size == len(kept) == gallery.backend.count()
    returned = {h.meta.path for row in gallery.search(vectors, k=100) for h in row}
    assert returned == set(kept)
    assert not any(gallery.contains(sorted(gone)))
    assert gallery.thumbnail(ids[metas[1].path]) is None
    with pytest.raises(GalleryError, match="no crop among"):
        gallery.vectors([ids[metas[0].path]])
    with pytest.raises(GalleryError, match="nothing to forget"):
        gallery.forget(Selection())
    if backend_uri.suffix != ".db":  # the embedded store also leaves no byte in its files
        stored = unit_rows(vectors, "v")
        blobs = folder_bytes(backend_uri)
        for i, meta in enumerate(metas):
            inside = [name for name, blob in blobs.items() if stored[i].tobytes() in blob]
            assert bool(inside) == (meta.path not in gone), (meta.path, inside)
            assert any(thumbs[i] in blob for blob in blobs.values()) == (meta.path not in gone)
    # Forgotten crops can be added again: they are new crops now.
    assert gallery.add(vectors[:1], metas[:1]) == 1


def test_another_models_weights_refused_on_open_add_and_search(make_gallery):
    vectors, metas = site(20)
    make_gallery().add(vectors, metas)
    retrained = {**CARD, "weights_digest": "b" * 64}
    with pytest.raises(GalleryError, match="filled by another model") as err:
        make_gallery(retrained, create=False)
    message = str(err.value)
    assert "\n" not in message
    assert "weights_digest: gallery 'aaaaaaaaaaaa', this model 'bbbbbbbbbbbb'" in message
    assert "use the model that filled it" in message and "reidkit gallery rebuild" in message
    with pytest.raises(GalleryError, match=r"backbone: gallery 'resnet_50', this model 'osnet'"):
        make_gallery({**CARD, "backbone": "osnet"}, create=False)
    # A recalibrated threshold or a newer reidkit is the same model.
    same = make_gallery({**CARD, "match_threshold": 0.1, "reidkit_version": "9.9"}, create=False)
    assert same.search(vectors[:1], k=1)[0][0].distance < 1e-5
    assert same.match_threshold == 0.6  # the gallery's calibration, unless one is given


def test_identity_checked_when_another_handle_fills_the_gallery(make_gallery):
    """Opened empty by one model, filled by another meanwhile: add and search refuse."""
    vectors, metas = site(20)
    early = make_gallery({**CARD, "weights_digest": "b" * 64})
    make_gallery().add(vectors, metas)
    for call in (
        lambda: early.add(vectors[:1], metas[:1]),
        lambda: early.search(vectors[:1], k=1),
    ):
        with pytest.raises(GalleryError, match="weights_digest"):
            call()


def test_cards_without_a_weights_digest_compare_what_they_record(make_gallery):
    """A gallery filled before cards had digests keeps working with the digest-carrying card
    of the same model; a field it does record still has to match."""
    vectors, metas = site(20)
    legacy = {k: v for k, v in CARD.items() if k != "weights_digest"}
    make_gallery(legacy).add(vectors, metas)
    assert make_gallery(create=False).search(vectors[:1], k=1)[0][0].meta == metas[0]
    with pytest.raises(GalleryError, match="embedding_dim"):
        make_gallery({**CARD, "embedding_dim": 32}, create=False)


def test_bad_inputs_one_line_gallery_unchanged(make_gallery, tmp_path):
    vectors, metas = site(40)
    gallery = make_gallery()
    gallery.add(vectors, metas)
    late = CropMeta(path="late.jpg", camera=0, timestamp=float("nan"))
    bad_calls = [
        (lambda: gallery.add(vectors[:, :8], metas), "8 dimensions, gallery .* holds 16"),
        (lambda: gallery.add(vectors[:3], metas[:2]), "3 embeddings for 2 crops"),
        (lambda: gallery.add(vectors[:2], metas[:2], [b"x"]), "and 1 thumbnails"),
        (lambda: gallery.add(np.full((1, 16), np.nan), metas[:1]), "NaN"),
        (lambda: gallery.add(vectors[:1], [late]), "timestamp nan"),
        (lambda: gallery.search(np.full((1, 16), np.inf), k=3), "NaN or infinite"),
        (lambda: gallery.search(np.full((2, 16), np.nan), k=3), "NaN or infinite"),
        (lambda: gallery.search(vectors[0], k=3), r"\[N, D\] matrix"),
        (lambda: gallery.search(vectors[:1], k=0), "top-k must be at least 1"),
        (lambda: gallery.search(vectors[:1, :4], k=3), "4 dimensions"),
    ]
    for call, message in bad_calls:
        with pytest.raises(GalleryError, match=message) as err:
            call()
        assert "\n" not in str(err.value)
    assert gallery.stats().size == 40
    with pytest.raises(GalleryError, match="run 'reidkit gallery add'"):
        open_gallery(tmp_path / "missing", CARD)


def test_one_row_and_a_batch_are_normalised_alike():
    """A query searched alone and in a batch becomes the same unit row within float32 rounding
    of a float64 reference (one sums by a BLAS dot product, the other pairwise); a row already
    of unit length comes back bit for bit either way; a zero row stays zero."""
    rng = np.random.default_rng(4)
    vectors = rng.standard_normal((300, 256)).astype(np.float32) * rng.uniform(
        1e-3, 1e3, (300, 1)
    ).astype(np.float32)
    wide = vectors.astype(np.float64)
    vectors[::3] = (wide / np.linalg.norm(wide, axis=1, keepdims=True))[::3]  # unit already
    batch = unit_rows(vectors, "v")
    alone = np.concatenate([unit_rows(row[None], "v") for row in vectors])
    assert batch.dtype == alone.dtype == np.float32
    np.testing.assert_array_max_ulp(batch, alone, maxulp=2)
    assert np.array_equal(batch[::3], vectors[::3]) and np.array_equal(alone[::3], vectors[::3])
    np.testing.assert_allclose(batch, wide / np.linalg.norm(wide, axis=1, keepdims=True), atol=1e-7)
    np.testing.assert_allclose(alone, wide / np.linalg.norm(wide, axis=1, keepdims=True), atol=1e-7)
    assert np.array_equal(unit_rows(np.zeros((2, 4)), "v"), np.zeros((2, 4), np.float32))
    assert np.array_equal(unit_rows(np.zeros((1, 4)), "v"), np.zeros((1, 4), np.float32))


def test_audit_names_the_operator_of_each_call(make_gallery):
    vectors, metas = site(30)
    gallery = make_gallery()
    gallery.add(vectors, metas, operator="alice")
    gallery.search(vectors[:2], k=3, where=CropFilter(cameras=(1,)), operator="bob")
    gallery.search(vectors[:1], k=2)
    gallery.forget(Selection(track_ids=("track-1",), before=ORIGIN), operator="carol")
    # A forget record written before the cutoff was named `before` reads under the new name.
    old = {"operator": "old", "action": "forget", "older_than": 5.0}
    gallery.backend.append_audit(json.dumps(old), durable=True)
    records = gallery.audit_log()
    assert [(r["action"], r["operator"]) for r in records] == [
        ("add", "alice"),
        ("search", "bob"),
        ("search", getpass.getuser()),
        ("forget", "carol"),
        ("forget", "old"),
    ]
    assert all(r["time"].endswith("Z") for r in records[:4])
    assert records[0]["added"] == 30
    assert records[1]["cameras"] == [1] and records[1]["queries"] == 2 and records[1]["k"] == 3
    assert records[3]["track_ids"] == ["track-1"] and records[3]["removed"] == 5
    assert records[3]["before"] == ORIGIN
    assert records[4]["before"] == 5.0 and "older_than" not in records[4]
    text = repr(records)
    assert all(f"{v:.4f}" not in text for v in vectors[:2].reshape(-1)[:8])


def test_every_search_has_its_own_record_even_when_repeated_within_a_second(make_gallery):
    """Search records are built once a second per kind of search: each search still gets one
    record, with its own operator, counts and filter, in order."""
    vectors, metas = site(30)
    gallery = make_gallery()
    gallery.add(vectors, metas, operator="alice")
    asked = [
        ("bob", 3, None),
        ("bob", 3, None),
        ("eve", 3, None),
        ("bob", 5, None),
        ("bob", 3, CropFilter(cameras=(1,))),
        ("bob", 3, CropFilter(cameras=(1,), start=ORIGIN, end=ORIGIN + 2 * DAY)),
        ("bob", 3, None),
    ]
    for operator, k, where in asked:
        gallery.search(vectors[:2], k=k, where=where, operator=operator)
    records = gallery.audit_log()[1:]
    assert len(records) == len(asked)
    for record, (operator, k, where) in zip(records, asked, strict=True):
        shown = {"cameras": None, "start": None, "end": None} if where is None else where.to_dict()
        hits = sum(len(row) for row in gallery.search(vectors[:2], k=k, where=where))
        assert record == {
            "time": record["time"],
            "operator": operator,
            "action": "search",
            "queries": 2,
            "k": k,
            **shown,
            "hits": hits,
        }
