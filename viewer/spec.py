"""Parsing of `--viewer` values (no rerun import, so argument parsing stays cheap).

Forms, comma-separated to combine (for example `rrd,web`):
    rrd             write OUT/recording.rrd (the caller's default path)
    rrd:PATH        write PATH
    web             serve the data over gRPC on 127.0.0.1:9876 and the web viewer on port 9090
    web:PORT        ... gRPC on PORT; `web:HOST:PORT` binds HOST (loopback unless you ask otherwise)
    connect         stream to a running viewer at rerun+http://127.0.0.1:9876/proxy (start one with `rerun`)
    connect:URL     ... at URL (`HOST:PORT` is completed to rerun+http://HOST:PORT/proxy)
    none            no Rerun output
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recon.errors import ConfigError

# One application id for every recon recording, so the viewer groups them and nodes can share a recording.
APPLICATION_ID = "recon"

DEFAULT_GRPC_PORT = 9876
DEFAULT_WEB_PORT = 9090
DEFAULT_CONNECT_URL = f"rerun+http://127.0.0.1:{DEFAULT_GRPC_PORT}/proxy"
KINDS = ("rrd", "web", "connect", "none")


@dataclass(frozen=True)
class ViewerSpec:
    """One Rerun sink: `kind` in KINDS plus its target (rrd: path; web: host and port; connect: URL)."""

    kind: str
    path: Path | None = None
    url: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_GRPC_PORT
    web_port: int = DEFAULT_WEB_PORT

    def describe(self) -> str:
        if self.kind == "rrd":
            return f"file {self.path}"
        if self.kind == "web":
            return f"web viewer (gRPC on {self.host}:{self.port}, web page on port {self.web_port})"
        if self.kind == "connect":
            return f"viewer at {self.url}"
        return "none"


def _port(text: str, value: str) -> int:
    try:
        port = int(text)
    except ValueError as e:
        raise ConfigError(f"--viewer {value!r}: port {text!r} is not a number") from e
    if not 0 < port < 65536:
        raise ConfigError(f"--viewer {value!r}: port {port} out of range")
    return port


def _connect_url(target: str) -> str:
    if "://" in target:
        return target
    return f"rerun+http://{target}/proxy"


def parse_viewer_spec(value: str, default_rrd: str | Path | None = None) -> list[ViewerSpec]:
    """Parse a `--viewer` value into sinks; `none` gives an empty list. Raises ConfigError on bad input."""
    specs: list[ViewerSpec] = []
    for part in (p.strip() for p in value.split(",")):
        if not part:
            continue
        kind, _, target = part.partition(":")
        if kind not in KINDS:
            raise ConfigError(f"--viewer {value!r}: unknown kind {kind!r}; use one of {', '.join(KINDS)}")
        if kind == "none":
            if target or len([p for p in value.split(",") if p.strip()]) > 1:
                raise ConfigError(f"--viewer {value!r}: 'none' cannot be combined with other outputs")
            return []
        if kind == "rrd":
            path = target or default_rrd
            if not path:
                raise ConfigError(f"--viewer {value!r}: give a file, e.g. rrd:out/recording.rrd")
            specs.append(ViewerSpec("rrd", path=Path(path)))
        elif kind == "web":
            host, _, port = target.rpartition(":") if ":" in target else ("", "", target)
            specs.append(ViewerSpec("web", host=host or "127.0.0.1",
                                    port=_port(port, value) if port else DEFAULT_GRPC_PORT))
        else:
            specs.append(ViewerSpec("connect", url=_connect_url(target) if target else DEFAULT_CONNECT_URL))
    if not specs:
        raise ConfigError(f"--viewer {value!r}: nothing given; use one of {', '.join(KINDS)}")
    if sum(s.kind == "web" for s in specs) > 1:
        raise ConfigError(f"--viewer {value!r}: at most one web server")
    return specs
