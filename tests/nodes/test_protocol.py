"""Wire protocol v1: round trips, the version rule, limits checked before allocation, and a fuzzed decoder."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from recon.errors import IncompatibleVersionError, ProtocolError
from recon.nodes import protocol as P
from recon.types import Frame, FrameResult

pytestmark = pytest.mark.timeout(120)


def _frame(h: int = 24, w: int = 32, depth: bool = True, seed: int = 0) -> Frame:
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    K = np.array([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]])
    d = rng.uniform(0.5, 4.0, (h, w)).astype(np.float32) if depth else None
    return Frame("cam0", 7, 123_456_789, img, K=K, depth=d)


def _wire(parts: list) -> list[bytes]:
    """What a receiver gets: plain bytes per frame."""
    return [bytes(p) for p in parts]


def _replace_header(parts: list[bytes], **changes: object) -> list[bytes]:
    h = msgpack.unpackb(parts[1], raw=False)
    h.update(changes)
    return [parts[0], msgpack.packb(h, use_bin_type=True), *parts[2:]]


@pytest.mark.parametrize("encoding", ["raw", "png"])
@pytest.mark.parametrize("depth_encoding", ["f4", "u2", "png"])
def test_frame_round_trip_lossless(encoding: str, depth_encoding: str) -> None:
    f = _frame()
    got = P.to_frame(P.decode(_wire(P.encode_frame(f, encoding=encoding, depth_encoding=depth_encoding, epoch=9))))
    assert (got.stream_id, got.seq, got.t_ns) == (f.stream_id, f.seq, f.t_ns)
    np.testing.assert_array_equal(got.image, f.image)
    np.testing.assert_array_equal(got.K, f.K)
    tol = 0 if depth_encoding == "f4" else 0.0005 + 1e-6  # uint16 millimetres: half a step
    np.testing.assert_allclose(got.depth, f.depth, atol=tol, rtol=0)
    assert got.meta["epoch"] == 9


def test_jpeg_is_lossy_but_close_on_smooth_images() -> None:
    y, x = np.mgrid[0:48, 0:64]
    img = np.stack([x * 4, y * 5, (x + y) * 2], -1).astype(np.uint8)
    f = Frame("c", 0, 1, img)
    got = P.to_frame(P.decode(_wire(P.encode_frame(f, encoding="jpeg", quality=95))))
    assert got.image.shape == img.shape and np.abs(got.image.astype(int) - img).mean() < 3


def test_raw_payloads_are_zero_copy_views() -> None:
    f = _frame(depth=False)
    parts = P.encode_frame(f)
    assert isinstance(parts[2], memoryview)  # sent with copy=False, no serialisation copy
    msg = P.decode(parts)
    assert not msg.payloads["image"].flags.owndata


def test_result_round_trip_with_stride_and_f16() -> None:
    h, w = 12, 16
    pts = np.random.default_rng(1).normal(size=(h, w, 3)).astype(np.float32)
    T = np.eye(4)
    T[:3, 3] = [1.0, 2.0, 3.0]
    r = FrameResult("s", 3, 99, T, np.eye(3), depth=np.ones((h, w), np.float32), confidence=np.ones((h, w)),
                    points_world=pts, metric=True, image=np.zeros((h, w, 3), np.uint8), is_update=True)
    msg = P.decode(_wire(P.encode_result(r, points_dtype="f2", stride=2, session=4)))
    got = P.to_result(msg)
    assert msg.header["stride"] == 2 and msg.header["session"] == 4
    assert got.points_world.shape == (6, 8, 3) and got.points_world.dtype == np.float32
    np.testing.assert_allclose(got.points_world, pts[::2, ::2], atol=2e-3)
    np.testing.assert_array_equal(got.T_world_cam, T)
    assert got.metric and got.is_update and got.image.shape == (6, 8, 3)


def test_unknown_major_version_is_incompatible() -> None:
    parts = _replace_header(_wire(P.encode_frame(_frame())), v=2)
    with pytest.raises(IncompatibleVersionError, match="version 2"):
        P.decode(parts)
    with pytest.raises(IncompatibleVersionError):
        P.decode(_replace_header(_wire(P.encode_frame(_frame())), kind="recon/frame/v2"))


@pytest.mark.parametrize(("change", "label"), [
    ({"kind": "recon/nonsense/v1"}, "unknown_kind"),
    ({"seq": "7"}, "bad_field_type"),
    ({"seq": True}, "bad_field_type"),
    ({"stream_id": ""}, "bad_stream_id"),
    ({"payloads": [{"name": "image", "encoding": "raw", "dtype": "<f8", "shape": [24, 32, 3], "nbytes": 18432}]},
     "bad_dtype"),
    ({"payloads": [{"name": "image", "encoding": "raw", "dtype": "|u1", "shape": [100000, 100000, 3],
                    "nbytes": 30000000000}]}, "bad_shape"),
    ({"payloads": [{"name": "image", "encoding": "raw", "dtype": "|u1", "shape": [2000, 2000, 3],
                    "nbytes": 2304}]}, "size_mismatch"),
    ({"payloads": [{"name": "image", "encoding": "jpeg", "dtype": "|u1", "shape": [8000, 8000, 3],
                    "nbytes": 2304}]}, "too_many_pixels"),
    ({"seq": -1}, "bad_field_value"),
    ({"capture_ns": -5}, "bad_field_value"),
])
def test_bad_headers_are_rejected_with_a_label(change: dict, label: str) -> None:
    parts = _wire(P.encode_frame(_frame(depth=False)))
    parts = _replace_header(parts, **change)
    with pytest.raises(ProtocolError) as e:
        P.decode(parts)
    assert P.fault_kind(e.value) == label


def test_huge_declared_shape_is_refused_before_allocation() -> None:
    """A 4 GB declared image must fail on the header check, not by trying to allocate or decode it."""
    limits = P.Limits(max_dim=4096, max_payload_bytes=10_000_000)
    parts = _wire(P.encode_frame(_frame(depth=False)))
    desc = {"name": "image", "encoding": "jpeg", "dtype": "|u1", "shape": [40000, 40000, 3], "nbytes": 10}
    with pytest.raises(ProtocolError, match="dimension"):
        P.decode(_replace_header(parts, payloads=[desc])[:2] + [b"0123456789"], limits)


def test_jpeg_whose_real_size_differs_from_the_header_is_refused() -> None:
    parts = _wire(P.encode_frame(_frame(depth=False), encoding="jpeg"))
    h = msgpack.unpackb(parts[1], raw=False)
    h["payloads"][0]["shape"] = [12, 16, 3]
    with pytest.raises(ProtocolError, match="header declares"):
        P.decode([parts[0], msgpack.packb(h), *parts[2:]])


def test_truncated_and_padded_payloads() -> None:
    parts = _wire(P.encode_frame(_frame()))
    with pytest.raises(ProtocolError):
        P.decode(parts[:-1])
    with pytest.raises(ProtocolError):
        P.decode([*parts[:-1], parts[-1][:-1]])
    with pytest.raises(ProtocolError):
        P.decode([*parts, b"extra"])


def test_no_pickle_or_extension_types_in_headers() -> None:
    ext = msgpack.packb({"v": 1, "kind": msgpack.ExtType(1, b"x")})
    with pytest.raises(ProtocolError):
        P.decode([b"t", ext])


def test_schema_tables_document_every_field() -> None:
    for spec in [*P.COMMON_FIELDS, *P.PAYLOAD_FIELDS, *(f for k in P.KINDS.values() for f in k.fields)]:
        assert spec.doc and len(spec.doc) > 10
    for kind in P.KINDS.values():
        assert kind.kind.endswith("/v1")
        for p in kind.payloads:
            assert all(d[0] in "<|" for d in p.dtypes)  # little-endian or byte-sized only


def _mutations() -> st.SearchStrategy[list[bytes]]:
    valid = _wire(P.encode_frame(_frame(h=8, w=8), depth_encoding="u2"))
    header = msgpack.unpackb(valid[1], raw=False)
    junk = st.one_of(st.integers(-(2**63), 2**64 - 1), st.text(max_size=20), st.booleans(), st.none(),
                     st.floats(allow_nan=True), st.lists(st.integers(-5, 10**12), max_size=5),
                     st.binary(max_size=10))

    def mutate_header(key: str, value: object) -> list[bytes]:
        h = dict(header)
        h[key] = value
        return [valid[0], msgpack.packb(h, use_bin_type=True), *valid[2:]]

    def mutate_payload(i: int, key: str, value: object) -> list[bytes]:
        h = dict(header)
        h["payloads"] = [dict(d) for d in header["payloads"]]
        h["payloads"][i % len(h["payloads"])][key] = value
        return [valid[0], msgpack.packb(h, use_bin_type=True), *valid[2:]]

    return st.one_of(
        st.lists(st.binary(max_size=64), max_size=6),
        st.builds(lambda n: valid[:n], st.integers(0, len(valid) - 1)),
        st.builds(lambda i, cut: [*valid[:i], valid[i][:cut], *valid[i + 1:]],
                  st.integers(1, len(valid) - 1), st.integers(0, 50)),
        st.builds(mutate_header, st.sampled_from(sorted(header)), junk),
        st.builds(mutate_payload, st.integers(0, 3), st.sampled_from(["name", "encoding", "dtype", "shape", "nbytes"]),
                  st.one_of(junk, st.lists(st.integers(0, 2**40), min_size=0, max_size=4),
                            st.sampled_from(["<f8", ">u2", "|u1", "<f2", "O", "V8", "jpeg", "png"]))),
        st.builds(lambda v: mutate_header("v", v), st.integers(-3, 300)),
    )


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_mutations())
def test_fuzzed_decoder_raises_only_protocol_errors(parts: list[bytes]) -> None:
    """Any input either decodes to a consistent message or raises ProtocolError; nothing else escapes."""
    try:
        msg = P.decode(parts, P.Limits(max_dim=4096, max_payload_bytes=2**24))
        if msg.kind == P.FRAME:
            P.to_frame(msg)
    except ProtocolError:
        return
    for name, arr in msg.payloads.items():
        assert arr.nbytes <= 2**24, name


def test_docs_protocol_page_matches_the_schema_tables(repo_root) -> None:
    """docs/protocol.md embeds `schema_markdown()`; regenerate with `python -m recon.nodes.protocol`."""
    text = (repo_root / "docs" / "protocol.md").read_text()
    assert P.schema_markdown() in text


def test_payloads_received_unaligned_are_made_aligned() -> None:
    """TCP frames carry no alignment guarantee; decoded float arrays must still be aligned (open3d needs it)."""
    parts = _wire(P.encode_frame(_frame()))
    shifted = []
    for p in parts:
        backing = bytearray(len(p) + 1)
        backing[1:] = p
        shifted.append(memoryview(backing)[1:])  # start at an odd address
    got = P.to_frame(P.decode(shifted))
    assert got.K.flags.aligned and got.depth.flags.aligned
    assert memoryview(got.K).format == "d"
