"""Hypothesis strategies the property tests share: what a client or a message broker may send."""

from __future__ import annotations

from hypothesis import strategies as st

#: Any JSON value, NaN and infinities included (Python's json reads and writes them).
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(10**20), 10**20),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=12),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
#: Any number JSON can carry, past float64 and float32 included.
numbers = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(10**40), 10**40))


def mostly(good: st.SearchStrategy, hostile: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` three times in four: enough whole messages are sound that what they give is
    checked too, not only the refusals."""
    return st.sampled_from([True, True, True, False]).flatmap(lambda ok: good if ok else hostile)
