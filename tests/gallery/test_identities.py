"""Global identities on gallery crops, on both backends through the one front: labels written,
read back, grouped per person, forgotten per person (audited), and gone with their crops."""

from __future__ import annotations

import pytest

from reidkit.gallery.store import GalleryError, Selection
from tests.gallery.conftest import site


def test_identities_label_group_and_forget_a_person(make_gallery):
    vectors, metas = site(60, seed=4)  # 12 people (track-<p>), 4 cameras
    gallery = make_gallery()
    gallery.add(vectors, metas)
    crops = gallery.crops()
    assert len(crops) == 60
    # associate's answer: tracks 0 and 1 are one person "g-a", every other track its own
    person = {f"track-{p}": f"g-{p}" for p in range(12)} | {"track-0": "g-a", "track-1": "g-a"}
    labels = {c.crop_id: person[c.meta.track_id] for c in crops}
    assert gallery.assign_identities({**labels, 987654321: "g-x"}, operator="assoc") == 60
    assert gallery.identities() == labels
    some = [c.crop_id for c in crops[:3]]
    assert gallery.identities([*some, 987654321]) == {i: labels[i] for i in some}

    # search grouped per person: the query of a "g-a" crop finds that identity first, with
    # every camera and the whole time span of both of its tracks
    query = next(i for i, m in enumerate(metas) if m.track_id == "track-1")
    (people,) = gallery.group_by_identity(gallery.search(vectors[query : query + 1], k=20))
    assert people[0].global_id == "g-a"
    mine = [c.meta for c in crops if person[c.meta.track_id] == "g-a"]
    assert people[0].cameras == tuple(sorted({m.camera for m in mine}))
    assert (people[0].start, people[0].end) == (
        min(m.timestamp for m in mine),
        max(m.timestamp for m in mine),
    )
    assert people[0].crops == len(mine) == 10
    assert len({p.global_id for p in people}) == len(people)
    assert sum(len(p.hits) for p in people) == 20
    assert [p.hits[0].distance for p in people] == sorted(p.hits[0].distance for p in people)

    # forget the person: both tracks, every camera, audited with what it matched
    forgotten = gallery.forget_identity("g-a", operator="privacy")
    assert forgotten.removed == 10
    assert forgotten.tracks == ("track-0", "track-1")
    assert forgotten.cameras == tuple(sorted({m.camera for m in mine}))
    left = gallery.crops()
    assert len(left) == 50 and not {c.meta.track_id for c in left} & {"track-0", "track-1"}
    assert "g-a" not in gallery.identities().values()
    record = gallery.audit_log()[-1]
    assert record["action"] == "forget" and record["global_id"] == "g-a"
    assert record["operator"] == "privacy" and record["removed"] == 10
    assert any(r["action"] == "assign_identities" and r["crops"] == 60 for r in gallery.audit_log())
    with pytest.raises(GalleryError, match="carries global id 'g-a'"):
        gallery.forget_identity("g-a")

    # a crop forgotten another way takes its label with it; unlabelled hits stay single
    gallery.forget(Selection(track_ids=("track-2",)))
    assert "g-2" not in gallery.identities().values()
    gallery.add(vectors[:1], metas[:1])  # track-0 again, no identity now
    (people,) = gallery.group_by_identity(gallery.search(vectors[:1], k=3))
    assert people[0].global_id is None and len(people[0].hits) == 1
    with pytest.raises(GalleryError, match="non-empty text"):
        gallery.assign_identities({left[0].crop_id: ""})


def test_event_log_numbers_records_in_order_across_handles(make_gallery):
    gallery = make_gallery()
    first, second = gallery.backend.event_log("live"), make_gallery().backend.event_log("live")
    assert first.read(0) == []
    with first.exclusive():
        assert first.append([{"n": 1}, {"n": 2}]) == 2
    assert second.append([{"n": 3}]) == 3
    assert first.read(1) == [(2, {"n": 2}), (3, {"n": 3})]
    first.close()
    second.close()
