"""The one helper that owns where Rerun data goes: `.rrd` file, a running viewer over gRPC, the web viewer.

`open_recording(specs)` builds a `RecordingStream` with the chosen sinks (several at once, e.g. a file and
the web viewer); `create_rerun_sink("rrd:out.rrd", ...)` adds a `RerunLogger` on top and returns one
result sink for `recon replay`, the viewer node and tests alike. Nothing here needs a display.

The web viewer: the SDK's own `serve_web_viewer` binds the page to every interface (0.0.0.0) and has no address
option, so we run the SDK's `rerun` CLI (shipped in the same wheel), which can bind both the page and its gRPC
proxy to one address (`--bind`): `WebViewerServer`. The data is streamed to that proxy, which keeps it (up to
`server_memory_limit`) for browsers that connect later; it stops with `close()`.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rerun as rr

from recon.errors import ConfigError
from recon.types import FrameResult
from recon.utils.processes import stop_process
from recon.viewer.logger import RerunLogger
from recon.viewer.spec import APPLICATION_ID, ViewerSpec, parse_viewer_spec

logger = logging.getLogger(__name__)


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"  # a browser on this machine reaches a server on every interface through loopback
    return f"[{host}]" if ":" in host else host


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host.strip("[]"), port), timeout=0.5):
            return True
    except OSError:
        return False


class WebViewerServer:
    """The web viewer page and its gRPC proxy, served by the SDK's `rerun` CLI on `host` (see the module doc)."""

    def __init__(self, host: str, port: int, grpc_port: int, *, memory_limit: str = "1GiB",
                 start_timeout_s: float = 30.0) -> None:
        self.host, self.port, self.grpc_port = host, port, grpc_port
        for p in (port, grpc_port):
            if _port_open(_url_host(host), p):
                raise ConfigError(f"cannot serve the web viewer on {host}:{p}: the port is in use (choose another "
                                  "with --viewer web:PORT:GRPC_PORT)")
        if host in ("0.0.0.0", "::"):
            logger.warning("serving the web viewer on every network interface (%s): anyone who can reach this "
                           "machine can see the reconstruction", host)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - the child's output, kept for error messages until close
        self.process = subprocess.Popen(
            [sys.executable, "-m", "rerun_cli", "--serve-web", "--bind", host, "--web-viewer-port", str(port),
             "--port", str(grpc_port), "--server-memory-limit", memory_limit],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + start_timeout_s
        while not (_port_open(_url_host(host), port) and _port_open(_url_host(host), grpc_port)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                output = self.output_tail()
                self.close()
                raise ConfigError(f"the Rerun web viewer did not start on {host}:{port} / {grpc_port}: {output}")
            time.sleep(0.1)

    @property
    def grpc_url(self) -> str:
        return f"rerun+http://{_url_host(self.host)}:{self.grpc_port}/proxy"

    @property
    def page_url(self) -> str:
        return f"http://{_url_host(self.host)}:{self.port}/?url={self.grpc_url}"

    def output_tail(self, limit: int = 2000) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-limit:].strip() or "(no output)"

    def close(self) -> None:
        stop_process(self.process)
        self._log.close()


class RerunOutput:
    """A recording stream and the sinks it feeds; `close` flushes and disconnects them (and stops a web viewer)."""

    def __init__(self, recording: rr.RecordingStream, specs: Sequence[ViewerSpec], urls: dict[str, str],
                 web: WebViewerServer | None = None) -> None:
        self.recording = recording
        self.specs = list(specs)
        self.urls = urls
        self.web = web
        self._closed = False

    @property
    def serving(self) -> bool:
        """True when a web viewer serves the data: it stops when this output is closed."""
        return self.web is not None

    def close(self, flush_timeout_s: float = 10.0) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.recording.flush(timeout_sec=flush_timeout_s)
        except RuntimeError as e:
            # A viewer that is not running must not fail a reconstruction whose other outputs are fine.
            logger.warning("Rerun data could not be delivered: %s", e)
        self.recording.disconnect()
        if self.web is not None:
            self.web.close()

    def serve_until_interrupted(self) -> None:
        """Keep a web/gRPC server alive for viewers until Ctrl-C (the data lives in this process)."""
        if not self.serving:
            return
        logger.info("serving the recording at %s; press Ctrl-C to stop", ", ".join(self.urls.values()))
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            logger.info("stopped serving")


def open_recording(specs: Sequence[ViewerSpec], *, recording_id: str | None = None,
                   open_browser: bool = False) -> RerunOutput:
    """A RecordingStream (application id `APPLICATION_ID`) writing to every sink in `specs`."""
    if not specs:
        raise ConfigError("open_recording: no Rerun output given (use --viewer none to skip Rerun)")
    recording = rr.RecordingStream(APPLICATION_ID, recording_id=recording_id or str(uuid.uuid4()))
    sinks: list[Any] = []
    urls: dict[str, str] = {}
    web: WebViewerServer | None = None
    for spec in specs:
        if spec.kind == "rrd":
            assert spec.path is not None
            spec.path.parent.mkdir(parents=True, exist_ok=True)
            sinks.append(rr.FileSink(str(spec.path)))
            urls["rrd"] = str(spec.path)
        elif spec.kind == "connect":
            sinks.append(rr.GrpcSink(spec.url))
            urls["connect"] = str(spec.url)
        elif spec.kind == "web":
            web = WebViewerServer(spec.host, spec.port, spec.grpc_port)
            sinks.append(rr.GrpcSink(web.grpc_url))
            urls["grpc"] = web.grpc_url
            urls["web"] = web.page_url
        else:
            raise ConfigError(f"unknown Rerun output {spec.kind!r}")
    recording.set_sinks(*sinks)
    if web is not None and open_browser:
        import webbrowser

        webbrowser.open(web.page_url)
    for spec in specs:
        logger.info("Rerun output: %s", spec.describe())
    if web is not None:
        logger.info("open %s in a browser", web.page_url)
    return RerunOutput(recording, specs, urls, web)


class RerunSink:
    """Result sink = `RerunLogger` + the `RerunOutput` it logs into; `close` finishes both."""

    name = "rerun"

    def __init__(self, rerun_logger: RerunLogger, output: RerunOutput) -> None:
        self.logger = rerun_logger
        self.output = output

    def on_result(self, result: FrameResult) -> None:
        self.logger.on_result(result)

    def on_segment(self, stream_id: str, segment: int, reason: str) -> None:
        self.logger.on_segment(stream_id, segment, reason)

    def on_latency(self, stream_id: str, seq: int, t_ns: int, latency_ms: float) -> None:
        self.logger.on_latency(stream_id, seq, t_ns, latency_ms)

    def close(self) -> None:
        try:
            self.logger.close()
        finally:
            self.output.close()


def create_rerun_sink(viewer: str | Sequence[ViewerSpec], *, default_rrd: str | Path | None = None,
                      stream_ids: Sequence[str] = (), recording_id: str | None = None,
                      **logger_options: Any) -> RerunSink | None:
    """Parse `viewer` (a `--viewer` value or specs), open the outputs and return a sink; None for `none`."""
    specs = parse_viewer_spec(viewer, default_rrd) if isinstance(viewer, str) else list(viewer)
    if not specs:
        return None
    output = open_recording(specs, recording_id=recording_id)
    try:
        rerun_logger = RerunLogger(output.recording, stream_ids=stream_ids, **logger_options)
    except Exception:
        output.close()
        raise
    return RerunSink(rerun_logger, output)
