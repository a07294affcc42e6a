"""The web viewer as a user gets it: served on loopback only, and a real headless Chromium (SwiftShader WebGL) that
loads the page, connects to the data and renders the point cloud and the camera, checked on the screenshot's pixels.
Also the blueprint read back from a recording and resolved by Rerun's own entity-query engine: the 3D view holds the
points and the camera but no depth image."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import rerun.chunk as rr_chunk

from recon.types import FrameResult
from recon.viewer import ViewerSpec, create_rerun_sink
from tests.viewer.browser import Chromium, chromium_path

pytestmark = pytest.mark.timeout(300)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scene(seq: int, h: int = 48, w: int = 64) -> FrameResult:
    """A camera stepping along x in front of a wall 2 m away whose colours run from green to orange."""
    K = np.array([[60.0, 0, w / 2], [0, 60.0, h / 2], [0, 0, 1]])
    T = np.eye(4)
    T[0, 3] = 0.1 * seq
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]
    image[..., 1] = 160
    return FrameResult("cam", seq, 1_000_000_000 + seq * 33_000_000, T, K, depth=np.full((h, w), 2.0, np.float32),
                       confidence=np.ones((h, w), np.float32), metric=True, image=image)


def _listening(port: int) -> list[str]:
    out = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    return [line.split()[3] for line in out.splitlines() if line.strip()]


def test_web_viewer_binds_loopback_only() -> None:
    web, grpc = _free_port(), _free_port()
    sink = create_rerun_sink([ViewerSpec("web", port=web, grpc_port=grpc)], stream_ids=["cam"])
    try:
        assert sink.output.urls["web"] == f"http://127.0.0.1:{web}/?url=rerun+http://127.0.0.1:{grpc}/proxy"
        for port in (web, grpc):
            addresses = _listening(port)
            assert addresses and all(a.startswith("127.0.0.1:") for a in addresses), addresses
    finally:
        sink.close()
    assert sink.output.web.process.poll() is not None  # the server stops with the output


def _pixel_counts(shot: np.ndarray) -> dict[str, int]:
    """Pixels of the 3D view (the viewport's top-left 60 % x 80 % with the side panels collapsed) by what they show:
    the stream's magenta camera frustum, the wall's green-to-orange points, and the depth colour map's dark red."""
    h, w = shot.shape[:2]
    view = shot[int(0.08 * h):int(0.72 * h), int(0.02 * w):int(0.57 * w)].astype(int)
    r, g, b = view[..., 0], view[..., 1], view[..., 2]
    return {"frustum": int(np.sum((r > 200) & (g < 90) & (b > 140))),
            "points": int(np.sum((g > 100) & (b < 80) & (np.abs(g - 160) < 60))),
            "depth_colour_map": int(np.sum((r > 90) & (g < 40) & (b < 40)))}


def test_browser_renders_the_point_cloud_and_camera(tmp_path: Path) -> None:
    if chromium_path() is None:
        message = "chromium is not installed (scripts/install.sh dev installs Debian's chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    sink = create_rerun_sink([ViewerSpec("web", port=_free_port(), grpc_port=_free_port())], stream_ids=["cam"],
                             collapse_panels=True)
    browser = None
    counts: dict[str, int] = {}
    try:
        for seq in range(5):
            sink.on_result(scene(seq))
        sink.logger.close()
        sink.output.recording.flush(timeout_sec=10)
        browser = Chromium(1280, 800)
        shot = None
        for shot in browser.screenshots(sink.output.urls["web"], timeout_s=150, interval_s=2):
            counts = _pixel_counts(shot)
            if counts["frustum"] > 30 and counts["points"] > 300:
                break
        assert shot is not None
        cv2.imwrite(str(tmp_path / "web_viewer.png"), cv2.cvtColor(shot, cv2.COLOR_RGB2BGR))
    finally:
        if browser is not None:
            browser.close()
        sink.close()
    assert counts["points"] > 300, counts  # the wall's points are drawn in 3D
    assert counts["frustum"] > 30, counts  # and so is the camera
    assert counts["depth_colour_map"] < 0.05 * counts["points"], counts  # the depth image is not drawn over them


def test_blueprint_read_back_excludes_depth_from_3d(tmp_path: Path) -> None:
    """The blueprint stored in the .rrd, evaluated by Rerun's own query engine on the logged entities."""
    from rerun.server import Server

    folder = tmp_path / "rec"
    folder.mkdir()
    sink = create_rerun_sink(f"rrd:{folder / 'run.rrd'}", stream_ids=["cam", "cam 2"])
    for seq in range(3):
        sink.on_result(scene(seq))
        sink.on_result(FrameResult(**{**scene(seq).__dict__, "stream_id": "cam 2"}))
    sink.close()

    # The active layout: from the last viewport record down its containers to the views it holds.
    reader = rr_chunk.RrdReader(folder / "run.rrd")
    records: dict[str, dict] = {}
    for chunk in reader.stream(store=reader.blueprints()[0]):
        records.setdefault(chunk.entity_path.lstrip("/"), {}).update(chunk.to_record_batch().to_pylist()[-1])
    root = str(uuid.UUID(bytes=bytes(records["viewport"]["ViewportBlueprint:root_container"][0])))
    views, todo = [], [f"container/{root}"]
    while todo:
        path = todo.pop()
        if path.startswith("view/"):
            views.append(records[path] | records.get(f"{path}/ViewContents", {}))
        else:
            todo += records[path]["ContainerBlueprint:contents"]
    (query,) = [v["ViewContents:query"] for v in views if v["ViewBlueprint:class_identifier"] == ["3D"]]
    plots = {v["ViewBlueprint:display_name"][0] for v in views if v["ViewBlueprint:class_identifier"] == ["TimeSeries"]}
    assert plots == {"frames/s", "latency (ms)", "memory (MB) / tokens (k)", "tracked"}

    server = Server(host="127.0.0.1", datasets={"run": str(folder)})
    try:
        dataset = server.client().get_dataset("run")
        shown = {c.entity_path for c in dataset.filter_contents(query).schema().component_columns()}
    finally:
        server.shutdown()
    for stream in ("cam", "cam\\ 2"):
        assert f"/world/{stream}/points" in shown and f"/world/{stream}/cam/image" in shown
        assert f"/world/{stream}/cam/image/depth" not in shown
    assert not any(p.startswith("/stats") for p in shown)
