"""Parsing of `--viewer` values (no rerun import, so argument parsing stays cheap).

Forms, comma-separated to combine (for example `rrd,web`):
    rrd                       write OUT/recording.rrd (the caller's default path)
    rrd:PATH                  write PATH
    web                       serve the web viewer at http://127.0.0.1:9090 and the data over gRPC on 127.0.0.1:9876
    web:PORT                  ... the page on PORT
    web:HOST:PORT             ... both bound to HOST instead of loopback (0.0.0.0: every interface; [::1] for IPv6)
    web:[HOST:]PORT:GRPC      ... and the gRPC data port GRPC
    connect                   stream to a running viewer at rerun+http://127.0.0.1:9876/proxy (start one with `rerun`)
    connect:URL               ... at URL (`HOST:PORT` is completed to rerun+http://HOST:PORT/proxy)
    none                      no Rerun output
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
    """One Rerun sink: `kind` in KINDS plus its target (rrd: path; web: bind address, page and gRPC ports;
    connect: URL)."""

    kind: str
    path: Path | None = None
    url: str | None = None
    host: str = "127.0.0.1"
    port: int = DEFAULT_WEB_PORT
    grpc_port: int = DEFAULT_GRPC_PORT

    def describe(self) -> str:
        if self.kind == "rrd":
            return f"file {self.path}"
        if self.kind == "web":
            return f"web viewer on http://{_url_host(self.host)}:{self.port} (data over gRPC on port {self.grpc_port})"
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


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _web(target: str, value: str) -> ViewerSpec:
    """`[HOST:]PORT[:GRPC]` (HOST may be a bracketed IPv6 address) -> a web ViewerSpec."""
    host = ""
    rest = target
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise ConfigError(f"--viewer {value!r}: unclosed '[' in the IPv6 address")
        host, rest = rest[1:end], rest[end + 1:].lstrip(":")
    parts = [p for p in rest.split(":")] if rest else []
    if parts and not host and not parts[0].isdigit():
        host = parts.pop(0)
    if len(parts) > 2 or any(not p for p in parts):
        raise ConfigError(f"--viewer {value!r}: expected web[:[HOST:]PORT[:GRPC_PORT]]")
    port = _port(parts[0], value) if parts else DEFAULT_WEB_PORT
    grpc = _port(parts[1], value) if len(parts) > 1 else DEFAULT_GRPC_PORT
    if port == grpc:
        raise ConfigError(f"--viewer {value!r}: the web page and the gRPC data need two different ports")
    return ViewerSpec("web", host=host or "127.0.0.1", port=port, grpc_port=grpc)


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
            specs.append(_web(target, value))
        else:
            specs.append(ViewerSpec("connect", url=_connect_url(target) if target else DEFAULT_CONNECT_URL))
    if not specs:
        raise ConfigError(f"--viewer {value!r}: nothing given; use one of {', '.join(KINDS)}")
    if sum(s.kind == "web" for s in specs) > 1:
        raise ConfigError(f"--viewer {value!r}: at most one web server")
    return specs
