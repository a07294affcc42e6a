"""Dicts of int -> same-shape arrays are saved stacked (`recon.backends.snapshot`): two arrays instead of one per
entry, with the dict's order, its values' dtype and shape, and every identity the live state had."""

from __future__ import annotations

import numpy as np

from recon.backends.snapshot import STACK_MIN, pack, unpack


def _round_trip(value):
    arrays: dict = {}
    tree = pack(value, arrays)
    return unpack(tree, arrays), arrays


def test_a_point_map_is_two_arrays_and_comes_back_equal_in_order() -> None:
    rng = np.random.default_rng(0)
    points = {int(k): rng.normal(size=3) for k in rng.permutation(500)}
    back, arrays = _round_trip({"points": points})
    assert len(arrays) == 2
    assert list(back["points"]) == list(points)
    for k, v in points.items():
        np.testing.assert_array_equal(back["points"][k], v)
        assert back["points"][k].dtype == v.dtype and back["points"][k].shape == (3,)


def test_a_row_met_again_is_the_same_object_after_a_load() -> None:
    """A value of a stacked dict that is also held elsewhere (a list, another object's attribute) stays one
    object, as `pack` keeps every other shared value."""
    points = {k: np.full(2, float(k), np.float32) for k in range(STACK_MIN + 4)}
    state = {"points": points, "newest": [points[3], points[7]], "again": points}
    back, _ = _round_trip(state)
    assert back["newest"][0] is back["points"][3] and back["newest"][1] is back["points"][7]
    assert back["again"] is back["points"]
    back["points"][3][0] = -1.0  # a row is its own array: writing it changes that value only
    assert back["newest"][0][0] == -1.0 and back["points"][4][0] == 4.0


def test_dicts_that_cannot_be_stacked_are_saved_entry_by_entry_and_come_back_equal() -> None:
    shared = np.zeros(3)
    cases = {
        "short": {k: np.zeros(3) for k in range(STACK_MIN - 1)},
        "mixed_shapes": {k: np.zeros(3 if k % 2 else 2) for k in range(STACK_MIN + 1)},
        "mixed_dtypes": {k: np.zeros(3, np.float32 if k % 2 else np.float64) for k in range(STACK_MIN + 1)},
        "str_keys": {str(k): np.zeros(3) for k in range(STACK_MIN + 1)},
        "scalars": {k: np.float64(k) for k in range(STACK_MIN + 1)},
        "zero_dim": {k: np.array(float(k)) for k in range(STACK_MIN + 1)},
        "one_array_twice": {k: shared for k in range(STACK_MIN + 1)},
    }
    back, arrays = _round_trip(cases)
    for name, original in cases.items():
        assert list(back[name]) == list(original), name
        for k, v in original.items():
            np.testing.assert_array_equal(back[name][k], v)
            assert np.asarray(back[name][k]).dtype == np.asarray(v).dtype, name
    assert len({id(v) for v in back["one_array_twice"].values()}) == 1
    assert isinstance(back["zero_dim"][0], np.ndarray) and back["zero_dim"][0].shape == ()


def test_an_array_seen_before_the_dict_keeps_the_dict_entry_by_entry() -> None:
    """Identity wins over compactness: a value already saved elsewhere is referenced, not copied into a stack."""
    points = {k: np.full(3, float(k)) for k in range(STACK_MIN + 2)}
    back, arrays = _round_trip({"first": points[5], "points": points})
    assert back["first"] is back["points"][5]
    assert len(arrays) == len(points)
