"""Frames of a fast session processed on the ingest thread (`sessions.INLINE_MAX_S`): same delivery, same acks.

The thresholds are wall-clock times, so these tests widen them (a loaded 2-core machine preempts a 100 us step now
and then) and test the mechanism: a fast session goes inline, a slow one never does, and an inline frame whose
publish would wait for a full subscriber queue is finished by the session's own thread without loss or reordering.
"""

from __future__ import annotations

from typing import Any

import pytest
import zmq

from recon.nodes import sessions
from recon.nodes.camera_node import CameraNode, CameraNodeConfig
from recon.nodes.sources import PatternSource
from recon.nodes.viewer_node import ViewerNode
from tests.nodes.node_support import Collect, inproc_node, status, wait_for

pytestmark = pytest.mark.timeout(90)


def _stream(ctx: zmq.Context, name: str, frames: int, **node_kw: Any) -> tuple[Any, dict[str, Any], Collect, Any]:
    """`frames` recorded frames from one camera through an identity node to a viewer; (camera stats, the
    session's status, the viewer's results, the node) after every frame was acknowledged."""
    node = inproc_node(ctx, name, **node_kw)
    sink = Collect()
    viewer = ViewerNode(f"inproc://{name}-out", [sink], context=ctx).start()
    try:
        assert viewer.wait_connected(10)
        cam = CameraNode(PatternSource(frames, 32, 24), CameraNodeConfig(connect=f"inproc://{name}", stream_id=name),
                         ctx)
        stats = cam.run()
        wait_for(lambda: len(sink.results) >= frames, 20, "every result at the viewer")
        st = status(ctx, f"inproc://{name}-control")["sessions"][name]
    finally:
        node.stop()
        viewer.stop()
    return stats, st, sink, node


def test_a_fast_session_is_processed_inline_and_delivers_every_seq_once_in_order(
        ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "INLINE_MAX_S", 0.05)
    monkeypatch.setattr(sessions, "INLINE_AFTER", 4)
    stats, st, sink, _ = _stream(ctx, "fast", 120, queue_size=8)
    assert [r.seq for r in sink.results] == list(range(120))
    assert stats.sent == 120 and stats.acked == 120 and stats.resent == 0 and stats.refused == 0
    # The first INLINE_AFTER frames earn the points on the session thread; nearly all later ones are inline.
    assert 100 <= st["inline_frames"] <= 116, st["inline_frames"]
    assert st["frames"] == 120 and st["results_pending"] == 0 and st["drops"] == 0


def test_a_slow_session_is_never_processed_inline(ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sessions, "INLINE_MAX_S", 0.004)
    monkeypatch.setattr(sessions, "INLINE_AFTER", 2)
    stats, st, sink, _ = _stream(ctx, "slow", 30, backend_options={"delay_ms": 10}, queue_size=4)
    assert [r.seq for r in sink.results] == list(range(30))
    assert stats.acked == 30
    assert st["inline_frames"] == 0


def test_an_inline_frame_whose_publish_would_wait_is_finished_by_the_session_thread(
        ctx: zmq.Context, monkeypatch: pytest.MonkeyPatch) -> None:
    """The publisher says 'full' to the first non-waiting publishes: those frames go to the session thread, which
    publishes, acknowledges and marks them done; nothing is lost, repeated or reordered."""
    monkeypatch.setattr(sessions, "INLINE_MAX_S", 0.05)
    monkeypatch.setattr(sessions, "INLINE_AFTER", 4)
    from recon.nodes.publisher import Publisher

    refused: list[int] = []
    original = Publisher.publish

    def publish(self: Publisher, parts: list[Any], *, wait: bool = True, **kw: Any) -> Any:
        if not wait and len(refused) < 3:
            refused.append(1)
            return False
        return original(self, parts, wait=wait, **kw)

    monkeypatch.setattr(Publisher, "publish", publish)
    stats, st, sink, _ = _stream(ctx, "handover", 150, queue_size=8)
    assert len(refused) == 3, "the inline path never met a full subscriber queue"
    assert [r.seq for r in sink.results] == list(range(150))
    assert stats.acked == 150 and stats.resent == 0
    assert st["frames"] == 150 and st["results_out"] == 150 and st["results_pending"] == 0
    assert st["inline_frames"] > 0
