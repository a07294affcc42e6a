"""Dicts of int -> same-shape arrays are saved stacked (`recon.backends.snapshot`): two arrays instead of one per
entry, with the dict's order, its values' dtype and shape, and every identity the live state had."""

from __future__ import annotations

import numpy as np

from recon.backends.snapshot import STACK_MIN, columns, pack, rows, unpack


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


class _Rec:
    def __init__(self, t: object, T: object, flag: object, note: object) -> None:
        self.t, self.T, self.flag, self.note = t, T, flag, note


def test_records_saved_as_columns_come_back_equal_with_their_types_and_order() -> None:
    """`columns` stacks what it can (same-shape arrays, ints, bools) and keeps the rest as lists; `rows` gives
    each record its own array back, in the saved order, after a real pack / unpack."""
    rng = np.random.default_rng(1)
    recs = [_Rec(int(1e18) + i, rng.normal(size=(4, 4)), bool(i % 2), "a" if i % 3 else None) for i in range(40)]
    names = ("t", "T", "flag", "note")
    table = columns(recs, names)
    assert table["T"]["$col"] == "stack" and table["t"]["$col"] == "int" and table["flag"]["$col"] == "bool"
    assert table["note"]["$col"] == "list"
    back, arrays = _round_trip(table)
    assert len(arrays) == 3  # T, t and flag: one array each, whatever the number of records
    got = rows(back)
    assert [r["t"] for r in got] == [r.t for r in recs]
    assert [r["flag"] for r in got] == [r.flag for r in recs] and all(type(r["flag"]) is bool for r in got)
    assert [r["note"] for r in got] == [r.note for r in recs]
    for g, r in zip(got, recs, strict=True):
        np.testing.assert_array_equal(g["T"], r.T)
        assert g["T"].dtype == r.T.dtype and g["T"].base is None  # owns its data, like the record it replaces


def test_columns_of_mixed_arrays_stay_lists_and_empty_tables_come_back_empty() -> None:
    """Arrays of differing dtype or shape are not stacked (stacking would change a dtype on the way back)."""
    recs = [_Rec(0, np.eye(3, dtype=np.float32), True, 1), _Rec(1, np.eye(3), False, 2.5)]
    table = columns(recs, ("t", "T", "flag", "note"))
    assert table["T"]["$col"] == "list" and table["note"]["$col"] == "list"
    got = rows(_round_trip(table)[0])
    assert [g["T"].dtype for g in got] == [np.float32, np.float64]
    assert rows(_round_trip(columns([], ("t", "T")))[0]) == []
