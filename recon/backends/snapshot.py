"""Plain-data snapshots of backend state: nested values split into a msgpack-able tree and a flat table of arrays.

A backend's `save_state` names the attributes that make up its streaming state and hands their values to `pack`;
`load_state` gets them back with `unpack`. Values may be None, bools, ints, floats, strings, bytes, numpy arrays
and scalars, torch tensors (any device; restored to the same device) and generators, lists, tuples, dicts with
any plain keys, deques, defaultdicts of a builtin factory, and instances of classes defined in recon (dataclasses
and plain objects, by their `__dict__`). Anything else raises StateError naming where it was found, so a state
is never saved with a piece silently missing.

`to_state` / `from_state` wrap this into the `BackendState` of the Checkpointable protocol, with the check every
`load_state` starts with (same backend, same state version, same configuration).

Why not pickle: a checkpoint is read back by a long-running service, and unpickling runs whatever code the file
names. Here loading only ever creates recon classes by `cls.__new__` and fills their attributes.
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import sys
from typing import Any

import numpy as np

from recon.backends.base import BackendState
from recon.errors import StateError

_ALLOWED_MODULE_PREFIX = "recon."
_FACTORIES: dict[str, Any] = {"list": list, "dict": dict, "int": int, "float": float, "set": set}
STACK_MIN = 16  # dicts of arrays at least this long are saved stacked (`_Packer._stacked`)


def freeze(*arrays: np.ndarray | None) -> None:
    """Mark arrays that their owner will never change again read-only, so a snapshot can hold them uncopied.

    Why: a live monocular session keeps its last emitted results (depth, confidence, point map: ~11 MB) to revise
    them after bundle adjustment; copying them made every snapshot a third slower. Only arrays that own their
    memory are frozen (a read-only view of a writeable array can still change through its base), and the contract
    is that a frozen array is never made writeable again.
    """
    for a in arrays:
        if a is not None and a.base is None:
            a.setflags(write=False)


def is_frozen(a: np.ndarray) -> bool:
    """True when `a` and every array it views are read-only (`freeze`): its contents can no longer change."""
    while isinstance(a, np.ndarray):
        if a.flags.writeable:
            return False
        if a.base is None:
            return True
        a = a.base
    return False


class _Packer:
    """Packs one value; mutable values seen twice are saved once and referenced (`{"$": "ref"}`), so objects that
    share a list, an array or another object still share it after a load, as in the live backend."""

    def __init__(self, arrays: dict[str, Any], prefix: str) -> None:
        self.arrays = arrays
        self.prefix = prefix
        self._memo: dict[int, int] = {}
        self._rows: dict[int, tuple[int, int]] = {}  # id of an array saved as a row of a stacked dict: (ref, key)
        self._alive: list[Any] = []  # keeps packed values alive, so their ids stay unique while packing

    def _store(self, value: Any) -> str:
        name = f"{self.prefix}{len(self.arrays)}"
        while name in self.arrays:
            name += "_"
        self.arrays[name] = value
        return name

    def pack(self, value: Any, where: str) -> Any:
        if value is None or isinstance(value, bool | int | float | str | bytes | tuple | np.generic):
            return self._pack_value(value, where)
        row = self._rows.get(id(value))
        if row is not None:
            return {"$": "row", "of": row[0], "key": row[1]}
        ref = self._memo.get(id(value))
        if ref is not None:
            return {"$": "ref", "id": ref}
        ref = self._memo[id(value)] = len(self._memo)
        self._alive.append(value)
        node = self._stacked(value, ref) if type(value) is dict else None
        if node is None:
            node = self._pack_value(value, where)
        node["@"] = ref
        return node

    def _stacked(self, mapping: dict[Any, Any], ref: int) -> dict[str, Any] | None:
        """A dict of int keys to arrays of one shape and dtype as two arrays (keys, stacked values), or None.

        Why: trackers keep maps such as point id -> 3-vector with thousands of entries; one array each made a live
        geometric snapshot 7,500 arrays (80-120 ms on the session's thread, and as many safetensors entries to
        write). The values keep their identity: one met again later is saved as a reference to its row.
        """
        if len(mapping) < STACK_MIN:
            return None
        values = list(mapping.values())
        if not _stackable(values) or values[0].ndim < 1:
            return None
        for k, v in mapping.items():
            if type(k) is not int or not -(2**63) <= k < 2**63 or id(v) in self._memo or id(v) in self._rows:
                return None
        if len({id(v) for v in values}) < len(values):  # one array under two keys: keep it one object
            return None
        for k, v in mapping.items():
            self._rows[id(v)] = (ref, k)
            self._alive.append(v)
        return {"$": "amap", "keys": self._store(np.fromiter(mapping, np.int64, len(mapping))),
                "v": self._store(np.stack(values))}

    def _pack_value(self, value: Any, where: str) -> Any:
        torch = sys.modules.get("torch")  # no tensor can exist unless torch was imported: never import it here
        if value is None or isinstance(value, bool | int | float | str | bytes):
            if isinstance(value, int) and not isinstance(value, bool) and not -(2**63) <= value < 2**64:
                raise StateError(f"cannot save {where}: integer {value} does not fit in 64 bits")
            return value
        if isinstance(value, np.ndarray):
            if value.dtype.kind not in "biuf":
                raise StateError(f"cannot save {where}: numpy array of dtype {value.dtype}")
            if is_frozen(value) and value.flags.c_contiguous:
                return {"$": "nd", "k": self._store(value)}  # can never change: no copy needed
            # np.array, not ascontiguousarray: that makes a 0-d array 1-d, and it came back with shape (1,).
            return {"$": "nd", "k": self._store(np.array(value, order="C", copy=True))}
        if isinstance(value, np.generic):
            return {"$": "np", "dtype": value.dtype.str, "v": value.item()}
        if torch is not None and isinstance(value, torch.Tensor):
            t = value.detach()
            return {"$": "t", "k": self._store(t.to("cpu", copy=True).contiguous()), "device": str(t.device)}
        if torch is not None and isinstance(value, torch.Generator):
            return {"$": "gen", "k": self._store(value.get_state().clone()), "device": str(value.device)}
        if isinstance(value, collections.defaultdict):
            factory = next((k for k, f in _FACTORIES.items() if f is value.default_factory), None)
            if factory is None:
                raise StateError(f"cannot save {where}: defaultdict with factory {value.default_factory!r}")
            return {"$": "dd", "factory": factory, "v": self._pairs(value, where)}
        if isinstance(value, dict):
            return {"$": "map", "v": self._pairs(value, where)}
        if isinstance(value, collections.deque):
            return {"$": "deque", "maxlen": value.maxlen, "v": self._items(value, where)}
        if isinstance(value, list):
            return {"$": "list", "v": self._items(value, where)}
        if isinstance(value, tuple) and not hasattr(value, "_fields"):
            return {"$": "tuple", "v": self._items(value, where)}
        if isinstance(value, set | frozenset):
            return {"$": "set", "v": [self.pack(v, f"{where}{{}}") for v in sorted(value, key=repr)]}
        cls = type(value)
        if cls.__module__.startswith(_ALLOWED_MODULE_PREFIX) and hasattr(value, "__dict__"):
            fields = vars(value)
            return {"$": "obj", "cls": f"{cls.__module__}:{cls.__qualname__}",
                    "v": {k: self.pack(v, f"{where}.{k}") for k, v in fields.items()}}
        raise StateError(f"cannot save {where}: values of type {cls.__module__}.{cls.__qualname__} are not plain data")

    def _items(self, values: Any, where: str) -> list[Any]:
        return [self.pack(v, f"{where}[{i}]") for i, v in enumerate(values)]

    def _pairs(self, mapping: dict[Any, Any], where: str) -> list[list[Any]]:
        return [[self.pack(k, f"{where} key"), self.pack(v, f"{where}[{k!r}]")] for k, v in mapping.items()]


def pack(value: Any, arrays: dict[str, Any], prefix: str = "a") -> Any:
    """The msgpack-able tree of `value`; arrays and tensors go into `arrays` under names starting with `prefix`.

    Raises:
        StateError: `value` holds something that is not plain data (the message says where).
    """
    return _Packer(arrays, prefix).pack(value, "state")


def _class(path: str) -> type:
    module_name, _, qualname = path.partition(":")
    if not module_name.startswith(_ALLOWED_MODULE_PREFIX):
        raise StateError(f"checkpoint names class {path!r} outside recon; refusing to create it")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise StateError(f"checkpoint names class {path!r}, which this version of recon does not have") from e
    if not isinstance(obj, type):
        raise StateError(f"checkpoint names {path!r}, which is not a class")
    return obj


def unpack(tree: Any, arrays: dict[str, Any]) -> Any:
    """The value `pack` saved (arrays looked up in `arrays`, torch tensors moved back to their device)."""
    return _Unpacker(arrays).unpack(tree)


class _Unpacker:
    def __init__(self, arrays: dict[str, Any]) -> None:
        self.arrays = arrays
        self._refs: dict[int, Any] = {}

    def _keep(self, tree: dict[str, Any], value: Any) -> Any:
        if "@" in tree:
            self._refs[int(tree["@"])] = value
        return value

    def unpack(self, tree: Any) -> Any:
        if isinstance(tree, list):  # written by an older layout without list tags
            return [self.unpack(v) for v in tree]
        if not isinstance(tree, dict):
            return tree
        tag = tree.get("$")
        if tag == "ref":
            if int(tree["id"]) not in self._refs:
                raise StateError(f"checkpoint refers to value {tree['id']} before defining it")
            return self._refs[int(tree["id"])]
        if tag in ("nd", "t", "gen"):
            return self._keep(tree, self._array(tree, tag))
        if tag == "np":
            return np.dtype(tree["dtype"]).type(tree["v"])
        if tag == "list":
            out: list[Any] = self._keep(tree, [])
            out.extend(self.unpack(v) for v in tree["v"])
            return out
        if tag == "amap":
            keys = self._array({"k": tree["keys"]}, "nd")
            rows = self._array({"k": tree["v"]}, "nd")
            stacked: dict[int, Any] = self._keep(tree, {})
            stacked.update(zip(keys.tolist(), list(rows), strict=True))
            return stacked
        if tag == "row":
            of = int(tree["of"])
            if of not in self._refs:
                raise StateError(f"checkpoint refers to a row of value {of} before defining it")
            return self._refs[of][tree["key"]]
        if tag in ("map", "dd"):
            mapping: dict[Any, Any] = collections.defaultdict(_FACTORIES[tree["factory"]]) if tag == "dd" else {}
            self._keep(tree, mapping)
            mapping.update({_hashable(self.unpack(k)): self.unpack(v) for k, v in tree["v"]})
            return mapping
        if tag == "deque":
            dq: collections.deque[Any] = self._keep(tree, collections.deque(maxlen=tree["maxlen"]))
            dq.extend(self.unpack(v) for v in tree["v"])
            return dq
        if tag == "tuple":
            return self._keep(tree, tuple(self.unpack(v) for v in tree["v"]))
        if tag == "set":
            return self._keep(tree, {_hashable(self.unpack(v)) for v in tree["v"]})
        if tag == "obj":
            cls = _class(tree["cls"])
            obj = self._keep(tree, cls.__new__(cls))
            obj.__dict__.update({k: self.unpack(v) for k, v in tree["v"].items()})
            return obj
        raise StateError(f"checkpoint holds an unknown value tag {tag!r}")

    def _array(self, tree: dict[str, Any], tag: str) -> Any:
        if tree["k"] not in self.arrays:
            raise StateError(f"checkpoint is missing array {tree['k']!r}")
        a = self.arrays[tree["k"]]
        if tag == "nd":
            return np.asarray(a) if isinstance(a, np.ndarray) else a.numpy()
        import torch

        t = a if isinstance(a, torch.Tensor) else torch.from_numpy(np.asarray(a))
        if tag == "gen":
            gen = torch.Generator(device=tree["device"])
            gen.set_state(t)
            return gen
        return t.to(tree["device"])


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def dataclass_fields(obj: Any) -> dict[str, Any]:
    """A dataclass instance's fields, `{name: value}`, not copied: what `dataclasses.asdict` gives for flat
    dataclasses, without its deep copy of every array (`pack` copies each array once anyway; the keyframes'
    features copied twice were a tenth of a live snapshot)."""
    return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}


def columns(records: list[Any], names: tuple[str, ...]) -> dict[str, Any]:
    """Records (objects with attributes `names`) as one column per attribute: a numpy array when the values are
    arrays of one shape and dtype (stacked) or plain numbers (one array), else the list of values.

    Why: a live map keeps a record of each of its last few hundred frames, two poses and intrinsics each; packed one
    by one they were a third of a live snapshot (12 of 39 ms at 240 frames). `rows` reverses it.
    """
    out: dict[str, Any] = {}
    for name in names:
        values = [getattr(r, name) for r in records]
        out[name] = _column(values)
    return out


def _stackable(values: list[Any]) -> bool:
    """True when `values` are numeric arrays of one shape and dtype, which `np.stack` keeps exactly."""
    first = values[0]
    return type(first) is np.ndarray and first.dtype.kind in "biuf" and all(
        type(v) is np.ndarray and v.shape == first.shape and v.dtype == first.dtype for v in values)


def _column(values: list[Any]) -> Any:
    if values and _stackable(values):
        return {"$col": "stack", "v": np.stack(values)}
    if values and all(type(v) is int for v in values) and all(-(2**63) <= v < 2**63 for v in values):
        return {"$col": "int", "v": np.fromiter(values, np.int64, len(values))}
    if values and all(type(v) is bool for v in values):
        return {"$col": "bool", "v": np.fromiter(values, np.bool_, len(values))}
    return {"$col": "list", "v": list(values)}


def rows(table: dict[str, Any]) -> list[dict[str, Any]]:
    """The records `columns` saved (after `unpack`), each as `{name: value}` in the saved order."""
    cols: dict[str, list[Any]] = {}
    for name, column in table.items():
        kind, values = column["$col"], column["v"]
        if kind == "stack":
            cols[name] = [row.copy() for row in np.asarray(values)]  # each record owns its array, as before
        elif kind in ("int", "bool"):
            cols[name] = np.asarray(values).tolist()
        elif kind == "list":
            cols[name] = list(values)
        else:
            raise StateError(f"checkpoint holds an unknown column kind {kind!r}")
    lengths = {len(v) for v in cols.values()}
    if len(lengths) > 1:
        raise StateError(f"checkpoint holds columns of different lengths {sorted(lengths)}")
    names = list(cols)
    return [dict(zip(names, vals, strict=True)) for vals in zip(*cols.values(), strict=True)]


def fields_of(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """`{name: getattr(obj, name)}`: the attributes a backend saves, checked to exist (a renamed attribute must
    fail the backend's own round-trip test, not vanish from its checkpoints)."""
    missing = [n for n in names if not hasattr(obj, n)]
    if missing:
        raise StateError(f"{type(obj).__name__} has no attributes {missing} to save")
    return {n: getattr(obj, n) for n in names}


def to_state(backend: str, version: int, config: dict[str, Any], values: dict[str, Any]) -> BackendState:
    """A `BackendState` holding `values` (packed: arrays in `arrays`, the tree in `meta["tree"]`)."""
    arrays: dict[str, Any] = {}
    return BackendState(backend, version, dict(config), arrays, {"tree": pack(values, arrays)})


def check_state(state: BackendState, backend: str, version: int, config: dict[str, Any]) -> None:
    """Refuse a state of another backend, state version or configuration (StateError naming what differs)."""
    from recon.checkpoint import normalise

    if state.backend != backend:
        raise StateError(f"state of backend {state.backend!r} cannot be loaded into {backend!r}")
    if state.version != version:
        raise StateError(f"{backend}: state layout version {state.version} is not this build's version {version}")
    saved, mine = normalise(state.config), normalise(config)
    if saved != mine:
        diff = sorted(k for k in set(saved) | set(mine) if saved.get(k) != mine.get(k))
        raise StateError(f"{backend}: the state was saved with another configuration; differing: "
                         + ", ".join(f"{k} (saved {saved.get(k)!r}, now {mine.get(k)!r})" for k in diff))


def from_state(state: BackendState, backend: str, version: int, config: dict[str, Any]) -> dict[str, Any]:
    """The values `to_state` saved, after `check_state`."""
    check_state(state, backend, version, config)
    if "tree" not in state.meta:
        raise StateError(f"{backend}: the state holds no snapshot")
    return unpack(state.meta["tree"], state.arrays)


def model_signature(model: Any) -> dict[str, Any]:
    """What of a model shapes the state computed with it: its configuration, parameter dtype and device type."""
    import dataclasses

    config = getattr(model, "config", None)
    param = next(model.parameters(), None) if hasattr(model, "parameters") else None
    return {"config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else repr(config),
            "dtype": str(param.dtype) if param is not None else None,
            "device": param.device.type if param is not None else None}
