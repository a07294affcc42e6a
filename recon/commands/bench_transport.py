"""`recon bench transport`: camera -> reconstruction node throughput and latency, side by side with imagezmq.

Examples:
    recon bench transport                               # 640x480 raw and JPEG, 1 and 4 streams, 4 rounds
    recon bench transport --sizes 640x480 --encodings raw --rounds 6 --json out.json

What runs, for each configuration (size, encoding, streams), in rounds, interleaved and with the order of the
systems alternated from round to round (so a busy machine slows all of them alike):

- recon, credit window N (`--window`, default 8) and window 1: camera nodes (threads of this process,
  `CameraNode`) stream pre-made frames to a reconstruction node *process* on loopback tcp (`--transport ipc`:
  a unix socket in a private folder, for both systems) with
  `--backend identity` (no model: transport, validation, session queue, result encoding and publishing and the
  credit round trip are measured). Latency: send to the frame's acknowledgement arriving back at its camera (the
  node acknowledges a frame once its result is published), like imagezmq's send to reply. With `--subscriber`
  a result subscriber in this process also receives every result, and latency is capture to the result's
  arrival there (end to end, one more hop than imagezmq has, and a second busy thread in the cameras' process).
- imagezmq: the real package (`pip install imagezmq`), as its users run it: one `ImageSender` (REQ) per stream
  in this process, one `ImageHub` (REP) process that receives each image (JPEG: and decodes it, as our node does)
  and replies. Latency: send to reply.

Printed per configuration: the median frames/s over the rounds of each system, p50/p99 latency over all rounds,
and the ratio recon / imagezmq computed per round (median and range), so the figure compares like with like.
A tiny size (`--sizes 16x12`) measures what each message costs apart from moving its pixels: the ceiling that no
way of moving the payload (a faster socket, shared memory) can lift.
The load test that used to follow is `recon bench live`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

HELP = "transport: frames/s and latency camera->node, interleaved with the real imagezmq package"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per system per round")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per configuration")
    parser.add_argument("--sizes", default="640x480", help="comma-separated WxH")
    parser.add_argument("--streams", default="1,4", help="comma-separated stream counts")
    parser.add_argument("--encodings", default="raw,jpeg", help="comma-separated: raw, jpeg")
    parser.add_argument("--window", type=int, default=8, help="credit window of the pipelined recon rows")
    parser.add_argument("--transport", choices=("tcp", "ipc"), default="tcp",
                        help="loopback tcp (default) or a unix socket (ipc://) in a private folder, for both systems")
    parser.add_argument("--subscriber", action="store_true",
                        help="recon rows: a result subscriber in this process receives every result; latency is "
                             "capture to result arrival (default: send to acknowledgement, like imagezmq's reply)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write every round as JSON")


@dataclass
class Row:
    """One system in one round of one configuration."""

    system: str
    size: str
    encoding: str
    streams: int
    round: int
    frames: int = 0
    seconds: float = 0.0
    fps: float = 0.0
    latency_ms: list[float] = field(default_factory=list, repr=False)
    extra: dict[str, Any] = field(default_factory=dict)


def process_cpu_s(pid: int | None = None) -> float:
    """CPU seconds (user + system, every thread) a process has used so far; this process when `pid` is None."""
    import os

    if pid is None:
        t = os.times()
        return t.user + t.system
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def frames_for(width: int, height: int, n: int = 8) -> list[np.ndarray]:
    """A few distinct, natural-ish images (smooth gradients plus noise) so JPEG sizes are realistic."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    out = []
    for i in range(n):
        base = np.stack([x / width * 255, y / height * 255, ((x + y + 40 * i) % 256)], -1)
        noise = rng.normal(0, 8, (height, width, 3))
        out.append(np.clip(base + noise, 0, 255).astype(np.uint8))
    return out


class CycleSource:
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


class ResultTimes:
    """A viewer node in this process recording, per result, its arrival time minus its capture time."""

    def __init__(self, ctx: Any, endpoint: str) -> None:
        from recon.nodes.viewer_node import ViewerNode

        self.lat_ms: list[float] = []
        outer = self

        class Sink:
            name = "timing"

            def on_result(self, r: Any) -> None:
                outer.lat_ms.append((time.time_ns() - r.t_ns) / 1e6)

            def close(self) -> None:
                pass

        self.viewer = ViewerNode(endpoint, [Sink()], context=ctx, dedupe=False)

    def __enter__(self) -> ResultTimes:
        self.viewer.start()
        if not self.viewer.wait_connected(60):
            raise RuntimeError("no heartbeat from the reconstruction node")
        return self

    def __exit__(self, *exc: object) -> None:
        self.viewer.stop()


_FOLDERS: list[str] = []
"""Private folders of the ipc endpoints, removed when the benchmark ends."""


def endpoints(transport: str, n: int) -> list[str]:
    """`n` fresh endpoints: loopback tcp ports, or unix sockets in a new private (0700) folder."""
    from recon.nodes.pipeline import free_port

    if transport == "ipc":
        import tempfile

        folder = tempfile.mkdtemp(prefix="recon-bench-")
        _FOLDERS.append(folder)
        return [f"ipc://{folder}/{i}" for i in range(n)]
    return [f"tcp://127.0.0.1:{free_port()}" for _ in range(n)]


def _recon(cfg: tuple[str, str, int], seconds: float, images: list[np.ndarray], window: int, rnd: int,
           subscriber: bool = False, transport: str = "tcp") -> Row:
    import zmq

    from recon.nodes.camera_node import CameraNode, CameraNodeConfig
    from recon.nodes.pipeline import node_command, stop_process
    from recon.nodes.transport import request

    size, encoding, streams = cfg
    ep_in, ep_out, ep_ctl = endpoints(transport, 3)
    proc = subprocess.Popen(node_command("recon", "--bind", ep_in, "--publish", ep_out, "--control", ep_ctl,
                                         "--backend", "identity", "--heartbeat", "0.1",
                                         "--wait-subscribers", "1" if subscriber else "0",
                                         "--queue-size", str(window), "--no-state"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ctx = zmq.Context()
    row = Row(f"recon window {window}", size, encoding, streams, rnd)
    try:
        _wait_until_serving(ctx, ep_ctl)
        with ResultTimes(ctx, ep_out) if subscriber else contextlib.nullcontext() as times:
            cams = [CameraNode(CycleSource(images, seconds, f"s{i}"),
                               CameraNodeConfig(connect=ep_in, stream_id=f"s{i}", encoding=encoding,
                                                record_latency=not subscriber), ctx)
                    for i in range(streams)]
            threads = [threading.Thread(target=c.run, daemon=True) for c in cams]
            cpu0 = (process_cpu_s(proc.pid), process_cpu_s())
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(seconds + 60)
            elapsed = time.perf_counter() - t0
            cpu1 = (process_cpu_s(proc.pid), process_cpu_s())
            status = request(ctx, ep_ctl, {"cmd": "status"})
            acked = sum(c.stats.acked for c in cams)
            deadline = time.monotonic() + 5
            while times is not None and len(times.lat_ms) < acked and time.monotonic() < deadline:
                time.sleep(0.01)
        row.frames, row.seconds, row.fps = acked, elapsed, acked / elapsed
        row.latency_ms = list(times.lat_ms) if times is not None else [x for c in cams for x in c.stats.latency_ms]
        row.extra = {"node_drops": status["drops"], "rejected": status["rejected_total"],
                     **_cpu_per_frame(cpu0, cpu1, acked)}
    finally:
        stop_process(proc)
        ctx.term()
    return row


def _wait_until_serving(ctx: Any, control: str, timeout_s: float = 120.0) -> None:
    """Block until the node process answers on its control socket: its start-up (imports, binding) is not part of
    the measured time or CPU, as the imagezmq hub's is not (its senders wait for a first reply before the clock)."""
    from recon.nodes.transport import request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            request(ctx, control, {"cmd": "status"}, timeout_s=1.0)
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the reconstruction node did not start within {timeout_s:g} s") from None


def imagezmq_hub(endpoint: str, decode: bool) -> None:
    """The imagezmq side as its users run it: `ImageHub` receives, (decodes a JPEG), replies b'OK'."""
    import cv2
    import imagezmq

    hub = imagezmq.ImageHub(open_port=endpoint)
    while True:
        if decode:
            _, jpg = hub.recv_jpg()
            cv2.imdecode(np.frombuffer(jpg, np.uint8), cv2.IMREAD_COLOR)
        else:
            hub.recv_image()
        hub.send_reply(b"OK")


def _imagezmq(cfg: tuple[str, str, int], seconds: float, images: list[np.ndarray], rnd: int,
              transport: str = "tcp") -> Row:
    import cv2
    import imagezmq

    from recon.nodes.pipeline import stop_process

    size, encoding, streams = cfg
    ep = endpoints(transport, 1)[0]
    code = f"from recon.commands.bench_transport import imagezmq_hub; imagezmq_hub({ep!r}, {encoding == 'jpeg'})"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lat: list[list[float]] = [[] for _ in range(streams)]
    start = threading.Barrier(streams + 1)

    def client(k: int) -> None:
        sender = imagezmq.ImageSender(connect_to=ep)
        try:
            sender.send_image("warmup", images[0][:2, :2].copy())  # the hub is up once this returns
            start.wait()
            end = time.monotonic() + seconds
            i = 0
            while time.monotonic() < end:
                t_ns = time.time_ns()
                img = images[i % len(images)]
                if encoding == "jpeg":
                    jpg = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR),
                                       [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
                    sender.send_jpg(f"s{k}", jpg)
                else:
                    sender.send_image(f"s{k}", img)
                lat[k].append((time.time_ns() - t_ns) / 1e6)
                i += 1
        finally:
            sender.close()

    row = Row("imagezmq", size, encoding, streams, rnd)
    try:
        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(streams)]
        for t in threads:
            t.start()
        start.wait(60)
        cpu0 = (process_cpu_s(proc.pid), process_cpu_s())
        t0 = time.perf_counter()
        for t in threads:
            t.join(seconds + 60)
        row.seconds = time.perf_counter() - t0
        cpu1 = (process_cpu_s(proc.pid), process_cpu_s())
        row.latency_ms = [x for s in lat for x in s]
        row.frames = len(row.latency_ms)
        row.fps = row.frames / row.seconds
        row.extra = _cpu_per_frame(cpu0, cpu1, row.frames)
    finally:
        stop_process(proc)
    return row


def _cpu_per_frame(before: tuple[float, float], after: tuple[float, float], frames: int) -> dict[str, float]:
    """Microseconds of CPU per frame of the receiving process (node / hub) and of this, the sending, process."""
    n = max(frames, 1)
    return {"receiver_cpu_us": 1e6 * (after[0] - before[0]) / n, "sender_cpu_us": 1e6 * (after[1] - before[1]) / n}


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def summarize(rows: list[Row], window: int) -> list[dict[str, Any]]:
    """Per configuration: median fps per system, latency percentiles, per-round fps ratios recon / imagezmq."""
    out = []
    configs = list(dict.fromkeys((r.size, r.encoding, r.streams) for r in rows))
    for cfg in configs:
        mine = [r for r in rows if (r.size, r.encoding, r.streams) == cfg]
        entry: dict[str, Any] = {"size": cfg[0], "encoding": cfg[1], "streams": cfg[2]}
        for system in (f"recon window {window}", "recon window 1", "imagezmq"):
            rs = [r for r in mine if r.system == system]
            lat = [x for r in rs for x in r.latency_ms]
            entry[system] = {"fps": float(np.median([r.fps for r in rs])) if rs else float("nan"),
                             "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99), "rounds": len(rs),
                             "receiver_cpu_us": float(np.median([r.extra["receiver_cpu_us"] for r in rs]))
                             if rs else float("nan"),
                             "sender_cpu_us": float(np.median([r.extra["sender_cpu_us"] for r in rs]))
                             if rs else float("nan")}
        for system in (f"recon window {window}", "recon window 1"):
            ratios = []
            for rnd in sorted({r.round for r in mine}):
                a = [r.fps for r in mine if r.round == rnd and r.system == system]
                b = [r.fps for r in mine if r.round == rnd and r.system == "imagezmq"]
                if a and b and b[0] > 0:
                    ratios.append(a[0] / b[0])
            entry[f"{system} / imagezmq"] = {"median": float(np.median(ratios)) if ratios else float("nan"),
                                            "min": min(ratios, default=float("nan")),
                                            "max": max(ratios, default=float("nan"))}
        entry["added_p99_ms (window 1)"] = entry["recon window 1"]["p99_ms"] - entry["imagezmq"]["p99_ms"]
        out.append(entry)
    return out


def run(args: argparse.Namespace) -> int:

    import imagezmq  # noqa: F401 - fail early with a clear error when the peer is not installed

    from recon.nodes.transport import tune_allocator

    tune_allocator()  # as in every node process (the cameras run in this one)

    rows: list[Row] = []
    try:
        _measure(args, rows)
    finally:
        import shutil

        for folder in _FOLDERS:
            shutil.rmtree(folder, ignore_errors=True)
    _report(args, rows)
    return 0


def _measure(args: argparse.Namespace, rows: list[Row]) -> None:
    """Every configuration, round and system (appended to `rows`)."""
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        w, h = (int(v) for v in size.lower().split("x"))
        images = frames_for(w, h)
        for encoding in args.encodings.split(","):
            for streams in (int(s) for s in args.streams.split(",")):
                cfg = (size, encoding, streams)
                systems: list[Callable[[int], Row]] = [
                    lambda rnd, c=cfg, im=images: _recon(c, args.duration, im, args.window, rnd, args.subscriber,
                                                         args.transport),
                    lambda rnd, c=cfg, im=images: _recon(c, args.duration, im, 1, rnd, args.subscriber,
                                                         args.transport),
                    lambda rnd, c=cfg, im=images: _imagezmq(c, args.duration, im, rnd, args.transport),
                ]
                for rnd in range(args.rounds):
                    for fn in (systems if rnd % 2 == 0 else systems[::-1]):
                        row = fn(rnd)
                        rows.append(row)
                        logger.info("round %d %-16s %-9s %-4s x%d: %7.1f frames/s  p50 %6.2f ms  p99 %6.2f ms", rnd,
                                    row.system, size, encoding, streams, row.fps, _pct(row.latency_ms, 50),
                                    _pct(row.latency_ms, 99))


def _report(args: argparse.Namespace, rows: list[Row]) -> None:
    """Print the tables (and write --json)."""
    import os

    table = summarize(rows, args.window)
    w8 = f"recon window {args.window}"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    what = ("capture -> result at a subscriber" if args.subscriber
            else "send -> acknowledgement (recon), send -> reply (imagezmq)")
    link = "loopback tcp" if args.transport == "tcp" else "unix sockets (ipc)"
    print(f"\nrecon bench transport  ({os.cpu_count()} CPUs, load average {load}, {link}, {args.rounds} "
          f"interleaved rounds of {args.duration:g} s per system, order alternated; latency: {what})\n")
    print(f"| size | enc | streams | {w8} fps | p50 / p99 ms | recon window 1 fps | p50 / p99 ms | imagezmq fps | "
          f"p50 / p99 ms | {w8} / imagezmq (range) | window 1 / imagezmq (range) | added p99 ms (window 1) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for e in table:
        a, b, z = e[w8], e["recon window 1"], e["imagezmq"]
        ra, rb = e[f"{w8} / imagezmq"], e["recon window 1 / imagezmq"]
        print(f"| {e['size']} | {e['encoding']} | {e['streams']} | {a['fps']:.0f} | {a['p50_ms']:.2f} / "
              f"{a['p99_ms']:.2f} | {b['fps']:.0f} | {b['p50_ms']:.2f} / {b['p99_ms']:.2f} | {z['fps']:.0f} | "
              f"{z['p50_ms']:.2f} / {z['p99_ms']:.2f} | {ra['median']:.2f}x ({ra['min']:.2f}-{ra['max']:.2f}) | "
              f"{rb['median']:.2f}x ({rb['min']:.2f}-{rb['max']:.2f}) | {e['added_p99_ms (window 1)']:+.2f} |")
    print("\nCPU per frame, median over the rounds (microseconds, every thread of the process: receiver = the "
          "reconstruction node / the imagezmq hub, sender = this process, the cameras / the ImageSenders)\n")
    print(f"| size | enc | streams | {w8} receiver / sender | recon window 1 receiver / sender | imagezmq receiver / "
          f"sender |")
    print("|---|---|---|---|---|---|")
    for e in table:
        cells = [f"{e[k]['receiver_cpu_us']:.0f} / {e[k]['sender_cpu_us']:.0f}" for k in (w8, "recon window 1",
                                                                                           "imagezmq")]
        print(f"| {e['size']} | {e['encoding']} | {e['streams']} | {' | '.join(cells)} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"summary": table, "rounds": [{**asdict(r), "latency_ms": None,
                                                     "p50_ms": _pct(r.latency_ms, 50),
                                                     "p99_ms": _pct(r.latency_ms, 99)} for r in rows]}, f, indent=1)
