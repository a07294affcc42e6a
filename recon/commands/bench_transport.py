"""`recon bench transport`: camera -> reconstruction node throughput and latency, against a REQ/REP baseline.

Examples:
    recon bench transport                         # full run (about 3 minutes with the 60 s load test)
    recon bench transport --duration 3 --load-duration 10 --json out.json

Part 1 streams frames from camera nodes (threads of this process) to a reconstruction node process
(`--backend identity`: no model, so the transport is what is measured) over tcp on loopback, for
640x480 and 1280x720, raw and JPEG, 1 and 4 streams. In the same run, the same frames go through an
imagezmq-style baseline implemented here: a blocking REQ client per stream sending a JSON header and
the array (or JPEG) to one REP server process that decodes and replies. Latency is capture -> result
back on the camera's host (our result via the PUB socket; the baseline's reply), p50/p99 in ms.

Part 2 is a load test: 4 live cameras at 30 fps (latest-frame-wins) on the geometric backend for
`--load-duration` seconds, reporting frames captured, processed and dropped per stream.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

HELP = "transport: frames/s and p50/p99 latency camera->node vs an imagezmq-style REQ/REP baseline; 4x30fps load"

SIZES = {"640x480": (640, 480), "1280x720": (1280, 720)}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per transport configuration")
    parser.add_argument("--load-duration", type=float, default=60.0, help="seconds of the 4 x 30 fps load test "
                                                                            "(0 skips it)")
    parser.add_argument("--load-backend", default="geometric", help="backend of the load test")
    parser.add_argument("--sizes", default="640x480,1280x720", help="comma-separated WxH")
    parser.add_argument("--streams", default="1,4", help="comma-separated stream counts")
    parser.add_argument("--encodings", default="raw,jpeg", help="comma-separated: raw, jpeg")
    parser.add_argument("--window", type=int, default=8, help="credit window (node queue size) of the main run")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")


@dataclass
class Row:
    """One measured configuration."""

    system: str
    size: str
    encoding: str
    streams: int
    frames: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def _frames(width: int, height: int, n: int = 8) -> list[np.ndarray]:
    """A few distinct, natural-ish images (smooth gradients plus noise) so JPEG sizes are realistic."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for i in range(n):
        base = np.stack([x / width * 255, y / height * 255, ((x + y + 40 * i) % 256)], -1)
        noise = rng.normal(0, 8, (height, width, 3))
        out.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return out


class _CycleSource:
    """Recorded source cycling pre-made images for `seconds`, stamped at 'capture' (when yielded)."""

    live = False
    camera_info = None
    drops = 0

    def __init__(self, images: list[np.ndarray], seconds: float, name: str) -> None:
        self.images, self.seconds, self.name = images, seconds, name

    def __iter__(self) -> Any:
        from recon.types import Frame

        end = time.monotonic() + self.seconds
        i = 0
        while time.monotonic() < end:
            yield Frame(self.name, i, time.time_ns(), self.images[i % len(self.images)])
            i += 1

    def close(self) -> None:
        pass


def _pcts(lat_ms: list[float]) -> tuple[float, float]:
    if not lat_ms:
        return float("nan"), float("nan")
    a = np.asarray(lat_ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


def _spawn(args: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class _ResultTimes:
    """SUB thread recording arrival time minus capture time of every result."""

    def __init__(self, ctx: Any, endpoint: str) -> None:
        import zmq

        from recon.nodes.viewer_node import ViewerNode

        self.lat_ms: list[float] = []
        self.count = 0
        outer = self

        class Sink:
            def on_result(self, r: Any) -> None:
                outer.lat_ms.append((time.time_ns() - r.t_ns) / 1e6)
                outer.count += 1

            def close(self) -> None:
                pass

        self.viewer = ViewerNode(endpoint, [Sink()], context=ctx, dedupe=False)
        self._zmq = zmq

    def __enter__(self) -> _ResultTimes:
        self.viewer.start()
        if not self.viewer.wait_connected(30):
            raise RuntimeError("no heartbeat from the reconstruction node")
        return self

    def __exit__(self, *exc: object) -> None:
        self.viewer.stop()


def _ours(size: str, encoding: str, streams: int, seconds: float, images: list[np.ndarray], window: int = 8) -> Row:
    import zmq

    from recon.nodes.camera_node import CameraNode, CameraNodeConfig
    from recon.nodes.pipeline import free_port, node_command
    from recon.nodes.transport import request

    ep_in, ep_out, ep_ctl = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    proc = subprocess.Popen(node_command("recon", "--bind", ep_in, "--publish", ep_out, "--control", ep_ctl,
                                         "--backend", "identity", "--heartbeat", "0.1", "--wait-subscribers", "1",
                                         "--queue-size", str(window)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = zmq.Context()
    row = Row(f"recon (credit window {window})", size, encoding, streams)
    try:
        with _ResultTimes(ctx, ep_out) as times:
            cams = [CameraNode(_CycleSource(images, seconds, f"s{i}"),
                               CameraNodeConfig(connect=ep_in, stream_id=f"s{i}", encoding=encoding), ctx)
                    for i in range(streams)]
            threads = [threading.Thread(target=c.run, daemon=True) for c in cams]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 60)
            elapsed = time.perf_counter() - t0
            status = request(ctx, ep_ctl, {"cmd": "status"})
            deadline = time.monotonic() + 5
            while times.count < sum(c.stats.acked for c in cams) and time.monotonic() < deadline:
                time.sleep(0.01)
        row.frames = sum(c.stats.acked for c in cams)
        row.seconds = elapsed
        row.fps = row.frames / elapsed
        row.p50_ms, row.p99_ms = _pcts(times.lat_ms)
        row.extra = {"node_drops": status["drops"], "rejected": status["rejected_total"]}
    finally:
        _stop(proc)
        ctx.term()
    return row


def baseline_server(endpoint: str) -> None:
    """imagezmq-style hub: REP; each request is [JSON header, array bytes or JPEG]; decode, reply b'OK'."""
    import cv2
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    sock.bind(endpoint)
    while True:
        header_b, payload = sock.recv_multipart(copy=False)
        header = json.loads(bytes(header_b.buffer))
        if header["encoding"] == "jpeg":
            img = cv2.cvtColor(cv2.imdecode(np.frombuffer(payload.buffer, np.uint8), cv2.IMREAD_COLOR),
                               cv2.COLOR_BGR2RGB)
        else:
            img = np.frombuffer(payload.buffer, dtype=header["dtype"]).reshape(header["shape"])
        sock.send(b"OK" if img.size else b"EMPTY")


def _baseline(size: str, encoding: str, streams: int, seconds: float, images: list[np.ndarray]) -> Row:
    import cv2
    import zmq

    from recon.nodes.pipeline import free_port

    ep = f"tcp://127.0.0.1:{free_port()}"
    proc = _spawn(["-c", f"from recon.commands.bench_transport import baseline_server; baseline_server({ep!r})"])
    ctx = zmq.Context()
    lat: list[list[float]] = [[] for _ in range(streams)]

    def client(k: int) -> None:
        sock = ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(ep)
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            t_ns = time.time_ns()
            img = images[i % len(images)]
            if encoding == "jpeg":
                payload = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 90])[
                    1].tobytes()
            else:
                payload = img
            header = json.dumps({"stream": k, "seq": i, "t_ns": t_ns, "dtype": str(img.dtype),
                                 "shape": list(img.shape), "encoding": encoding}).encode()
            sock.send_multipart([header, payload], copy=False)
            if not sock.poll(30_000):
                break
            sock.recv()
            lat[k].append((time.time_ns() - t_ns) / 1e6)
            i += 1
        sock.close(0)

    row = Row("imagezmq-style REQ/REP", size, encoding, streams)
    try:
        warm = ctx.socket(zmq.REQ)  # wait until the server answers before timing
        warm.setsockopt(zmq.LINGER, 0)
        warm.connect(ep)
        warm.send_multipart([json.dumps({"encoding": "raw", "dtype": "uint8", "shape": [1]}).encode(), b"\0"])
        if not warm.poll(30_000):
            raise RuntimeError("baseline server did not start")
        warm.recv()
        warm.close(0)
        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(streams)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(seconds + 60)
        row.seconds = time.perf_counter() - t0
        all_lat = [x for s in lat for x in s]
        row.frames = len(all_lat)
        row.fps = row.frames / row.seconds
        row.p50_ms, row.p99_ms = _pcts(all_lat)
    finally:
        _stop(proc)
        ctx.term()
    return row


def _load_test(seconds: float, backend: str) -> list[dict[str, Any]]:
    """4 live cameras x 30 fps, 640x480 JPEG, into one node running `backend`; per-stream counters."""
    import zmq

    from recon.nodes.camera_node import CameraNode, CameraNodeConfig
    from recon.nodes.pipeline import free_port, node_command
    from recon.nodes.sources import as_live
    from recon.nodes.transport import request

    ep_in, ep_out, ep_ctl = (f"tcp://127.0.0.1:{free_port()}" for _ in range(3))
    proc = subprocess.Popen(node_command("recon", "--bind", ep_in, "--publish", ep_out, "--control", ep_ctl,
                                         "--backend", backend, "--heartbeat", "0.1", "--queue-size", "2",
                                         "--wait-subscribers", "1", "--no-image", "--stride", "4",
                                         "--points-dtype", "f2"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = zmq.Context()
    images = _frames(640, 480)
    out = []
    try:
        with _ResultTimes(ctx, ep_out) as times:
            sources = [as_live(_CycleSource(images, seconds, f"cam{i}"), fps=30.0) for i in range(4)]
            cams = [CameraNode(s, CameraNodeConfig(connect=ep_in, stream_id=f"cam{i}", encoding="jpeg"), ctx)
                    for i, s in enumerate(sources)]
            threads = [threading.Thread(target=c.run, daemon=True) for c in cams]
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 120)
            status = request(ctx, ep_ctl, {"cmd": "status"})
        p50, p99 = _pcts(times.lat_ms)
        for i, (src, cam) in enumerate(zip(sources, cams, strict=True)):
            sess = status["sessions"].get(f"cam{i}", {})
            out.append({"stream": f"cam{i}", "captured": src.captured, "sent": cam.stats.sent,
                        "dropped_at_camera": src.drops, "processed": sess.get("frames", 0),
                        "node_queue_drops": sess.get("drops", 0), "processed_fps": round(sess.get("frames", 0)
                                                                                          / seconds, 2)})
        out.append({"stream": "all", "latency_p50_ms": round(p50, 1), "latency_p99_ms": round(p99, 1),
                    "backend": backend, "seconds": seconds, "rss_mb": round(status["rss_bytes"] / 2**20, 1)})
    finally:
        _stop(proc)
        ctx.term()
    return out


def run(args: argparse.Namespace) -> int:
    import os

    rows: list[Row] = []
    sizes = [s.strip() for s in args.sizes.split(",") if s.strip()]
    for size in sizes:
        w, h = (int(v) for v in size.lower().split("x"))
        images = _frames(w, h)
        for encoding in args.encodings.split(","):
            for streams in (int(s) for s in args.streams.split(",")):
                for fn, kw in ((_ours, {"window": args.window}), (_ours, {"window": 1}), (_baseline, {})):
                    row = fn(size, encoding, streams, args.duration, images, **kw)
                    rows.append(row)
                    logger.info("%-32s %-9s %-4s x%d: %7.1f frames/s  p50 %6.1f ms  p99 %6.1f ms", row.system,
                                size, encoding, streams, row.fps, row.p50_ms, row.p99_ms)
    print(f"\nrecon bench transport  ({os.cpu_count()} CPUs, loopback tcp, {args.duration:g} s per row)\n")
    print(f"| size | enc | streams | recon fps (window {args.window}) | p50 ms | p99 ms | recon fps (window 1) "
          "| p50 ms | p99 ms | REQ/REP fps | p50 ms | p99 ms | fps ratio (best recon / REQ/REP) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for ours, one, base in zip(rows[::3], rows[1::3], rows[2::3], strict=True):
        ratio = max(ours.fps, one.fps) / base.fps if base.fps else float("nan")
        print(f"| {ours.size} | {ours.encoding} | {ours.streams} | {ours.fps:.0f} | {ours.p50_ms:.1f} | "
              f"{ours.p99_ms:.1f} | {one.fps:.0f} | {one.p50_ms:.1f} | {one.p99_ms:.1f} | {base.fps:.0f} | "
              f"{base.p50_ms:.1f} | {base.p99_ms:.1f} | {ratio:.2f}x |")
    load: list[dict[str, Any]] = []
    if args.load_duration > 0:
        load = _load_test(args.load_duration, args.load_backend)
        print(f"\nload: 4 live cameras x 30 fps, 640x480 JPEG, backend {args.load_backend}, "
              f"{args.load_duration:g} s\n")
        print("| stream | captured | sent | dropped at camera | dropped at node | processed | processed frames/s |")
        print("|---|---|---|---|---|---|---|")
        for r in load[:-1]:
            print(f"| {r['stream']} | {r['captured']} | {r['sent']} | {r['dropped_at_camera']} | "
                  f"{r['node_queue_drops']} | {r['processed']} | {r['processed_fps']} |")
        tail = load[-1]
        print(f"\nresult latency p50 {tail['latency_p50_ms']} ms, p99 {tail['latency_p99_ms']} ms; "
              f"node RSS {tail['rss_mb']} MiB")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"transport": [asdict(r) for r in rows], "load": load}, f, indent=1)
    return 0
