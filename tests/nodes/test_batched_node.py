"""A reconstruction node that batches its streams and offloads idle sessions: real cameras over inproc ZeroMQ,
real tiny InfiniteVGGT backends on one shared model, every frame delivered once, status shows the batches and the
KV pages per session."""

from __future__ import annotations

import threading

import zmq

from recon.nodes.camera_node import CameraNode, CameraNodeConfig
from recon.nodes.recon_node import ReconNode, ReconNodeConfig
from recon.nodes.sources import PatternSource
from recon.nodes.viewer_node import ViewerNode
from tests.nodes.node_support import Collect, status

TINY = {"model_config": "tiny", "image_width": 56, "device": "cpu", "budget": 4 * 2 * 17, "camera_window": 1}


def test_three_cameras_are_stepped_in_batches_and_every_frame_arrives_once(ctx: zmq.Context) -> None:
    node = ReconNode(ReconNodeConfig(bind="inproc://batched", publish="inproc://batched-out", heartbeat_s=0.05,
                                     backend="infinitevggt", backend_options=TINY, batch_window_ms=500,
                                     kv_memory_bytes=8 * 2**20, kv_idle_s=0.0), ctx).start()
    sink = Collect()
    viewer = ViewerNode("inproc://batched-out", [sink], context=ctx).start()
    try:
        assert viewer.wait_connected(5)
        cams = [CameraNode(PatternSource(5, 56, 42, seed=i), CameraNodeConfig(connect="inproc://batched",
                                                                               stream_id=f"cam{i}"), ctx)
                for i in range(3)]
        threads = [threading.Thread(target=c.run) for c in cams]
        for t in threads:
            t.start()
        for t in threads:
            t.join(600)
        st = status(ctx, "inproc://batched-control")
    finally:
        node.stop()
        viewer.stop()
    by_stream: dict[str, list[int]] = {}
    for r in sink.results:
        by_stream.setdefault(r.stream_id, []).append(r.seq)
    assert by_stream == {f"cam{i}": list(range(5)) for i in range(3)}
    batching = st["batching"]
    assert batching["frames"] == 15 and batching["largest_batch"] >= 2 and batching["calls"] < 15
    kv = st["kv_memory"]["sessions"]
    assert set(kv) == {"cam0", "cam1", "cam2"} and all(s["pages"] >= 1 and s["paged"] for s in kv.values())
    resident = sum(s["pages"] for s in kv.values() if s["resident"])
    assert st["kv_memory"]["arena_pages_used"] == resident <= st["kv_memory"]["pages"]  # the arena's own count
