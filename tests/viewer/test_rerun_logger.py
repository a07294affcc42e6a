"""recon.viewer: a written .rrd read back with Rerun's own reader (entities, frame counts, conventions), the
blueprint's panel cap, the `--viewer` parser, and live gRPC delivery to a served recording on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import rerun.chunk as rr_chunk

from recon.errors import ConfigError
from recon.types import FrameResult
from recon.viewer import APPLICATION_ID, ViewerSpec, build_blueprint, create_rerun_sink, parse_viewer_spec


def make_result(stream_id: str, seq: int, h: int = 24, w: int = 32, is_update: bool = False) -> FrameResult:
    """A camera moving along x looking at a plane 2 m away, with colours and a confidence ramp."""
    K = np.array([[30.0, 0, w / 2], [0, 30.0, h / 2], [0, 0, 1]])
    T = np.eye(4)
    T[0, 3] = 0.1 * seq
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    depth = np.full((h, w), 2.0, np.float32)
    pts = np.stack([(u - K[0, 2]) / K[0, 0] * 2 + T[0, 3], (v - K[1, 2]) / K[1, 1] * 2, depth], -1)
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = (u * 255 / w).astype(np.uint8)
    image[..., 1] = 40 * seq % 256
    conf = (u / w).astype(np.float32)
    return FrameResult(stream_id, seq, 1_000_000_000 + seq * 33_000_000, T, K, depth=depth, confidence=conf,
                       points_world=pts.astype(np.float32), metric=True, image=image, is_update=is_update)


def read_rrd(path: Path) -> tuple[dict[str, set[int]], dict[str, set[str]], dict[str, bool], list]:
    """Per entity: the `seq` values logged, the component columns, whether static; plus the recording stores."""
    reader = rr_chunk.RrdReader(path)
    seqs: dict[str, set[int]] = defaultdict(set)
    cols: dict[str, set[str]] = defaultdict(set)
    static: dict[str, bool] = {}
    for chunk in reader.stream():
        entity = chunk.entity_path
        batch = chunk.to_record_batch()
        cols[entity].update(batch.schema.names)
        static[entity] = chunk.is_static
        if "seq" in batch.schema.names:
            seqs[entity].update(int(x) for x in batch.column("seq").to_pylist())
    return seqs, cols, static, reader.recordings()


def test_rrd_round_trip_has_one_subtree_per_stream_and_every_frame(tmp_path: Path) -> None:
    path = tmp_path / "rec.rrd"
    sink = create_rerun_sink(f"rrd:{path}", stream_ids=["left"], map_every=3, trajectory_block=4)
    assert sink is not None
    n = 7
    for seq in range(n):
        sink.on_result(make_result("left", seq))
        if seq < 4:  # a second stream appearing mid-run, with a name that needs escaping
            sink.on_result(make_result("right cam", seq))
    sink.on_result(make_result("left", 2, is_update=True))
    sink.close()

    seqs, cols, static, recordings = read_rrd(path)
    assert [r.application_id for r in recordings] == [APPLICATION_ID]
    assert static["/world"] and "ViewCoordinates:xyz" in cols["/world"]
    for name in ("cam", "cam/image", "cam/image/depth", "points"):
        assert seqs[f"/world/left/{name}"] == set(range(n)), name
        assert seqs[f"/world/right\\ cam/{name}"] == set(range(4)), name
    # the path in blocks of 4 frames; the update of seq 2 re-logs block 0 at the newest time (6)
    assert seqs["/world/left/trajectory/0"] == {0, 1, 2, 3, 6} and seqs["/world/left/trajectory/1"] == {4, 5, 6}
    assert "/world/right\\ cam/trajectory/1" not in seqs
    strips = [c.to_record_batch().column("LineStrips3D:strips").to_pylist()
              for c in rr_chunk.RrdReader(path).stream() if c.entity_path == "/world/left/trajectory/1"]
    last = [row for rows in strips for row in rows][-1][0]
    assert [p[0] for p in last] == pytest.approx([0.3, 0.4, 0.5, 0.6])  # starts at block 0's last centre
    assert {"Transform3D:relation", "Transform3D:mat3x3", "Transform3D:translation"} <= cols["/world/left/cam"]
    assert {"Pinhole:image_from_camera", "Pinhole:camera_xyz", "EncodedImage:blob"} <= cols["/world/left/cam/image"]
    assert "DepthImage:meter" in cols["/world/left/cam/image/depth"]
    assert "LineStrips3D:strips" in cols["/world/left/trajectory/1"]
    assert {"Points3D:positions", "Points3D:colors"} <= cols["/world/left/points"]
    # the map is refreshed every 3 frames and once more at close (7 frames: after 3, 6, and the final one)
    assert seqs["/world/left/map"] == {2, 5, 6}
    assert not any(k for k in seqs if k.startswith("/world/") and k.count("/") == 2)  # nothing directly at root
    assert rr_chunk.RrdReader(path).blueprints(), "the blueprint is stored with the recording"


def test_rrd_content_values_follow_the_conventions(tmp_path: Path) -> None:
    path = tmp_path / "rec.rrd"
    sink = create_rerun_sink([ViewerSpec("rrd", path=path)], stream_ids=["s"], map_every=0, jpeg_quality=90)
    sink.on_result(make_result("s", 0))
    sink.on_result(make_result("s", 1))
    sink.close()
    rows: dict[str, list] = defaultdict(list)
    for chunk in rr_chunk.RrdReader(path).stream():
        batch = chunk.to_record_batch()
        for name in batch.schema.names:
            rows[f"{chunk.entity_path}:{name}"].extend(batch.column(name).to_pylist())

    def first(key: str) -> list:
        """Component cells are lists (one batch per row); time cells are scalars."""
        return [v[0] if isinstance(v, list) else v for v in rows[key]]

    # camera-to-world is logged as parent-from-child (TransformRelation.ParentFromChild == 1)
    assert set(first("/world/s/cam:Transform3D:relation")) == {1}
    translations = sorted(t[0] for t in first("/world/s/cam:Transform3D:translation"))
    assert translations == pytest.approx([0.0, 0.1])
    assert set(first("/world/s/cam/image:EncodedImage:media_type")) == {"image/jpeg"}
    # intrinsics did not change: the pinhole is logged once; t_ns is the capture timestamp
    assert len(rows["/world/s/cam/image:Pinhole:image_from_camera"]) == 1
    t_values = {int(np.datetime64(t, "ns").astype(np.int64)) for t in rows["/world/s/cam:t_ns"]}
    assert t_values == {1_000_000_000, 1_033_000_000}
    # confidence filter: the default drops the lowest 10% per frame; the cap and stride bound the count
    n_points = [len(p) for p in rows["/world/s/points:Points3D:positions"]]
    assert all(0 < n < 24 * 32 // 4 for n in n_points)
    assert "/world/s/map:Points3D:positions" not in rows


def test_blueprint_caps_2d_panels_and_adds_plots() -> None:
    def rows(bp) -> list:
        return list(bp.root_container.contents)  # [top row, plots row]

    def panels(bp) -> list:
        return list(rows(bp)[0].contents[1].contents)

    assert len(panels(build_blueprint(["a"]))) == 2  # image + depth
    many = panels(build_blueprint([f"s{i}" for i in range(6)], max_2d_panels=4))
    assert len(many) == 4 and [p.name for p in many][:2] == ["s0 image", "s0 depth"]
    top, plots = rows(build_blueprint(["a"], max_2d_panels=0))
    assert type(top).__name__ == "Spatial3DView"
    assert [p.name for p in plots.contents] == ["frames/s", "latency (ms)", "memory (MB) / tokens (k)", "tracked"]
    assert type(build_blueprint(["a"], max_2d_panels=0, plots=False).root_container.contents[0]).__name__ == \
        "Spatial3DView"  # rerun wraps a lone view in Tabs


@pytest.mark.parametrize(("value", "expected"), [
    ("rrd", [ViewerSpec("rrd", path=Path("d.rrd"))]),
    ("rrd:x/y.rrd", [ViewerSpec("rrd", path=Path("x/y.rrd"))]),
    ("web", [ViewerSpec("web", host="127.0.0.1", port=9090, grpc_port=9876)]),
    ("web:9000", [ViewerSpec("web", port=9000)]),
    ("web:0.0.0.0:9000", [ViewerSpec("web", host="0.0.0.0", port=9000)]),
    ("web:9000:9001", [ViewerSpec("web", port=9000, grpc_port=9001)]),
    ("web:localhost:9000:9001", [ViewerSpec("web", host="localhost", port=9000, grpc_port=9001)]),
    ("web:[::1]:9000", [ViewerSpec("web", host="::1", port=9000)]),
    ("connect", [ViewerSpec("connect", url="rerun+http://127.0.0.1:9876/proxy")]),
    ("connect:10.0.0.2:9877", [ViewerSpec("connect", url="rerun+http://10.0.0.2:9877/proxy")]),
    ("connect:rerun+http://h:1/proxy", [ViewerSpec("connect", url="rerun+http://h:1/proxy")]),
    ("rrd,web", [ViewerSpec("rrd", path=Path("d.rrd")), ViewerSpec("web")]),
    ("none", []),
])
def test_parse_viewer_spec(value: str, expected: list[ViewerSpec]) -> None:
    assert parse_viewer_spec(value, "d.rrd") == expected


@pytest.mark.parametrize("value", ["spawn", "web:127.0.0.1:notaport", "web:70000", "none,rrd", "", "web,web:1",
                                   "web:9000:9000", "web:h:1:2:3", "web:[::1"])
def test_parse_viewer_spec_rejects(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_viewer_spec(value, "d.rrd")


def test_none_gives_no_sink() -> None:
    assert create_rerun_sink("none") is None


def test_importing_recon_does_not_import_rerun() -> None:
    code = ("import sys, recon, recon.sinks, recon.viewer, recon.commands.replay; "
            "assert 'rerun' not in sys.modules, 'rerun imported'; assert 'open3d' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_web_server_and_connect_deliver_over_grpc(caplog: pytest.LogCaptureFixture) -> None:
    """A served recording (--viewer web) on loopback; a second process-like sink streams to it (--viewer connect)."""
    grpc_port, web_port = _free_port(), _free_port()
    server = create_rerun_sink([ViewerSpec("web", port=web_port, grpc_port=grpc_port)], stream_ids=["a"])
    try:
        url = server.output.urls["grpc"]
        assert url == f"rerun+http://127.0.0.1:{grpc_port}/proxy"
        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/", timeout=10) as page:
            assert page.status == 200
        client = create_rerun_sink(f"connect:{url}", stream_ids=["a"])
        for seq in range(3):
            client.on_result(make_result("a", seq))
        with caplog.at_level("WARNING"):
            client.close()  # flushes: raises inside (logged as a warning) if nothing accepted the data
        assert "could not be delivered" not in caplog.text
    finally:
        server.close()


def test_connect_without_a_viewer_warns_instead_of_failing(caplog: pytest.LogCaptureFixture) -> None:
    """The counterpart of the test above: nothing listens on the port, so delivery is reported as failed."""
    sink = create_rerun_sink(f"connect:127.0.0.1:{_free_port()}", stream_ids=["a"])
    sink.on_result(make_result("a", 0))
    with caplog.at_level("WARNING"):
        sink.output.close(flush_timeout_s=1.0)
    assert "could not be delivered" in caplog.text


def test_logger_is_safe_to_feed_from_several_threads(tmp_path: Path) -> None:
    """The viewer node may hand results of different streams from different threads: times must not mix."""
    import threading

    path = tmp_path / "threads.rrd"
    sink = create_rerun_sink(f"rrd:{path}", map_every=0)
    n = 20

    def feed(stream: str, offset: int) -> None:
        for seq in range(n):
            sink.on_result(make_result(stream, seq + offset))

    threads = [threading.Thread(target=feed, args=(f"s{i}", 100 * i)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    sink.close()
    seqs, _, _, _ = read_rrd(path)
    for i in range(3):
        assert seqs[f"/world/s{i}/cam"] == set(range(100 * i, 100 * i + n))
        assert seqs[f"/world/s{i}/points"] == set(range(100 * i, 100 * i + n))


def test_intrinsics_and_their_source_are_logged_when_they_change(tmp_path: Path) -> None:
    """The backend's reported intrinsics (e.g. a self-calibrated focal length) appear as a text log per stream."""
    from recon.types import BackendStats

    reported = [{"fx": 256.0, "fy": 256.0, "cx": 159.5, "cy": 119.5, "source": "assumed (not calibrated yet)"}]

    def stats() -> BackendStats:
        return BackendStats(frames_in=1, results_out=1, memory_bytes=0, tokens_cached=0, timings_ms={},
                            extra={"intrinsics": reported[-1]})

    path = tmp_path / "rec.rrd"
    sink = create_rerun_sink(f"rrd:{path}", stream_ids=["s"], map_every=0, backend_stats=stats)
    sink.on_result(make_result("s", 0))
    sink.on_result(make_result("s", 1))  # unchanged: not logged again
    reported.append({**reported[0], "fx": 301.2, "fy": 301.2, "source": "self-calibrated (bundle adjustment)"})
    sink.on_result(make_result("s", 2))
    sink.close()
    texts = [row for chunk in rr_chunk.RrdReader(path).stream() if chunk.entity_path.endswith("/s/intrinsics")
             for row in chunk.to_record_batch().column("TextLog:text").to_pylist()]
    texts = [t[0] if isinstance(t, list) else t for t in texts]
    assert len(texts) == 2
    assert "fx 256.0" in texts[0] and "assumed" in texts[0]
    assert "fx 301.2" in texts[1] and "self-calibrated (bundle adjustment)" in texts[1]
