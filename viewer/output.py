"""The one helper that owns where Rerun data goes: `.rrd` file, a running viewer over gRPC, the web viewer.

`open_recording(specs)` builds a `RecordingStream` with the chosen sinks (several at once, e.g. a file and
the web viewer); `create_rerun_sink("rrd:out.rrd", ...)` adds a `RerunLogger` on top and returns one
result sink for `recon replay`, the viewer node and tests alike. Nothing here needs a display.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import rerun as rr

from recon.errors import ConfigError
from recon.types import FrameResult
from recon.viewer.logger import RerunLogger
from recon.viewer.spec import APPLICATION_ID, DEFAULT_WEB_PORT, ViewerSpec, parse_viewer_spec

logger = logging.getLogger(__name__)


class RerunOutput:
    """A recording stream and the sinks it feeds; `close` flushes and disconnects them."""

    def __init__(self, recording: rr.RecordingStream, specs: Sequence[ViewerSpec], urls: dict[str, str]) -> None:
        self.recording = recording
        self.specs = list(specs)
        self.urls = urls
        self._closed = False

    @property
    def serving(self) -> bool:
        """True when a gRPC server (web viewer) serves the data: it stops when this process exits."""
        return any(s.kind == "web" for s in self.specs)

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
    web_url = None
    web_port = DEFAULT_WEB_PORT
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
            try:
                server = rr.GrpcServerSink(bind_ip=spec.host, port=spec.port)
            except Exception as e:  # rerun raises plain RuntimeError/OSError when the port is taken
                raise ConfigError(f"cannot serve Rerun gRPC on {spec.host}:{spec.port}: {e}") from e
            sinks.append(server)
            web_url = server.uri
            web_port = spec.web_port
            urls["grpc"] = web_url
        else:
            raise ConfigError(f"unknown Rerun output {spec.kind!r}")
    recording.set_sinks(*sinks)
    if web_url is not None:
        rr.serve_web_viewer(web_port=web_port, open_browser=open_browser, connect_to=web_url)
        urls["web"] = f"http://localhost:{web_port}/?url={web_url}"
    for spec in specs:
        logger.info("Rerun output: %s", spec.describe())
    return RerunOutput(recording, specs, urls)


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
