"""A real headless Chromium (Debian's package) driven over the DevTools protocol, for the web-viewer test.

WebGL runs on SwiftShader (Chromium's CPU renderer), so no GPU or display is needed. `screenshots(url)` yields
PNG screenshots (as RGB arrays) every `interval_s` until the caller is satisfied or `timeout_s` passes: the viewer
is a WebAssembly application that loads, connects and renders in real time, so there is no load event to wait for.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from recon.utils.processes import stop_process

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader",
                  "--ignore-gpu-blocklist", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                  "--hide-scrollbars", "--mute-audio", "--remote-debugging-address=127.0.0.1")


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Chromium:
    """One headless browser with one page; `close()` ends the process and removes its profile."""

    def __init__(self, width: int = 1280, height: int = 800, start_timeout_s: float = 30.0) -> None:
        import websocket  # websocket-client (dev extra)

        exe = chromium_path()
        if exe is None:
            raise FileNotFoundError("no chromium on PATH (scripts/install.sh dev installs Debian's chromium)")
        self.profile = Path(tempfile.mkdtemp(prefix="recon-chromium-"))
        self.process = subprocess.Popen([exe, *CHROMIUM_FLAGS, f"--window-size={width},{height}",
                                         f"--user-data-dir={self.profile}", "--remote-debugging-port=0",
                                         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + start_timeout_s
        while not (port_file.is_file() and port_file.read_text().strip()):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.ws = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=60)
        self._id = 0
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=False)

    def call(self, method: str, **params: object) -> dict:
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def screenshot(self) -> np.ndarray:
        png = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        return cv2.cvtColor(cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)

    def screenshots(self, url: str, *, timeout_s: float = 120.0, interval_s: float = 2.0) -> Iterator[np.ndarray]:
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            time.sleep(interval_s)
            yield self.screenshot()

    def close(self) -> None:
        ws = getattr(self, "ws", None)
        if ws is not None:
            ws.close()
        stop_process(self.process)
        shutil.rmtree(self.profile, ignore_errors=True)
