"""The `frames` export, which is also the run record every other export can be rebuilt from (`recon export`).

Layout under `<run>/frames/` (paths relative to that folder; `<s>` is the stream id made file-safe):

    frames.jsonl              one JSON line per result, in emission order (updates append a line; the last line of a
                              (stream_id, seq) wins): stream_id, seq, t_ns, width, height, K (3x3, pixels of the
                              result grid), T_world_cam (4x4 camera-to-world, OpenCV axes), metric, tracked,
                              is_update, and the files below (null when absent)
    rgb/<s>/<seq>.jpg         colours of the result grid (uint8 RGB, JPEG quality 95)
    depth/<s>/<seq>.png       depth along the optical axis: 16-bit PNG in millimetres when the run is metric
    depth/<s>/<seq>.npy       ... float32 in the session's scale when it is not (`depth_format` says which)
    confidence/<s>/<seq>.npy  float16 confidence, when the backend gives one
    cameras/<s>/<seq>.json    written at close with the final pose: K, T_world_cam, width, height, t_ns, metric

`frames.jsonl` is appended and flushed as results arrive, so a crashed run keeps what it had. Untracked results
get a line (`tracked: false`) but no files; readers skip them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

from recon.errors import SequenceError
from recon.export.common import (
    CameraLog,
    frame_stem,
    read_depth_mm,
    safe_name,
    write_depth_mm,
    write_rgb,
)
from recon.types import FrameResult

logger = logging.getLogger(__name__)

INDEX = "frames.jsonl"
VERSION = 1


class FramesWriter:
    """Sink writing the frames record into `folder` (normally `<run>/frames`)."""

    name = "export_frames"

    def __init__(self, folder: str | Path, *, jpeg_quality: int = 95) -> None:
        self.folder = Path(folder)
        self.jpeg_quality = int(jpeg_quality)
        self.cameras = CameraLog()
        self._written: dict[tuple[str, int], dict[str, str | None]] = {}
        self._index: IO[str] | None = None
        self._closed = False
        self.far_depth_pixels = 0

    def _open(self) -> IO[str]:
        if self._index is None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._index = (self.folder / INDEX).open("w")
        return self._index

    def on_result(self, result: FrameResult) -> None:
        index = self._open()
        key = (result.stream_id, int(result.seq))
        cam = self.cameras.add(result)
        files = self._written.get(key, {"rgb": None, "depth": None, "depth_format": None, "confidence": None})
        if cam is not None and (key not in self._written or result.depth is not None):
            files = self._write_files(result, files)
            self._written[key] = files
        line = {"v": VERSION, "stream_id": result.stream_id, "seq": int(result.seq), "t_ns": int(result.t_ns),
                "tracked": bool(result.tracked) and cam is not None, "is_update": bool(result.is_update),
                "metric": bool(result.metric)}
        if cam is not None:
            line.update({"width": cam.width, "height": cam.height, "K": cam.K.tolist(),
                         "T_world_cam": cam.T_world_cam.tolist()})
        line.update(files)
        index.write(json.dumps(line) + "\n")
        index.flush()

    def _write_files(self, result: FrameResult, files: dict[str, str | None]) -> dict[str, str | None]:
        stream, stem = safe_name(result.stream_id), frame_stem(result.seq)
        files = dict(files)
        if result.image is not None:
            rel = f"rgb/{stream}/{stem}.jpg"
            write_rgb(self.folder / rel, result.image, self.jpeg_quality)
            files["rgb"] = rel
        if result.depth is not None:
            if result.metric:
                rel = f"depth/{stream}/{stem}.png"
                self.far_depth_pixels += write_depth_mm(self.folder / rel, result.depth)
                files["depth_format"] = "png_mm"
            else:
                rel = f"depth/{stream}/{stem}.npy"
                (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
                np.save(self.folder / rel, np.asarray(result.depth, np.float32))
                files["depth_format"] = "npy"
            files["depth"] = rel
        if result.confidence is not None:
            rel = f"confidence/{stream}/{stem}.npy"
            (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
            np.save(self.folder / rel, np.asarray(result.confidence, np.float16))
            files["confidence"] = rel
        return files

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._index is not None:
            self._index.close()
        for stream_id in self.cameras.stream_ids:
            for cam in self.cameras.frames(stream_id):
                path = self.folder / "cameras" / safe_name(stream_id) / f"{frame_stem(cam.seq)}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"stream_id": stream_id, "seq": cam.seq, "t_ns": cam.t_ns,
                                            "width": cam.width, "height": cam.height, "K": cam.K.tolist(),
                                            "T_world_cam": cam.T_world_cam.tolist(), "metric": cam.metric}, indent=1))
        if self.far_depth_pixels:
            logger.warning("%d depth pixels beyond 65.535 m could not be stored in 16-bit millimetres: written as 0",
                           self.far_depth_pixels)
        logger.info("wrote %d frames (%s) to %s", len(self.cameras), ", ".join(self.cameras.stream_ids) or "none",
                    self.folder)


@dataclass
class FrameRecord:
    """One frame of a record: its final line (`entry`) and the folder the paths are relative to."""

    folder: Path
    entry: dict[str, Any]

    @property
    def stream_id(self) -> str:
        return str(self.entry["stream_id"])

    @property
    def seq(self) -> int:
        return int(self.entry["seq"])

    def result(self) -> FrameResult:
        """The frame as a FrameResult (final pose; image, depth and confidence loaded from their files)."""
        e = self.entry
        image = depth = confidence = None
        try:
            if e.get("rgb"):
                from recon.io.images import read_rgb

                image = read_rgb(self.folder / e["rgb"])
            if e.get("depth"):
                path = self.folder / e["depth"]
                depth = read_depth_mm(path) if e.get("depth_format") == "png_mm" else np.load(path)
            if e.get("confidence"):
                confidence = np.load(self.folder / e["confidence"]).astype(np.float32)
        except (OSError, ValueError) as err:
            raise SequenceError(f"{self.folder}: frame {self.stream_id}/{self.seq}: {err}") from err
        return FrameResult(self.stream_id, self.seq, int(e["t_ns"]), np.asarray(e["T_world_cam"], np.float64),
                           np.asarray(e["K"], np.float64), depth=depth, confidence=confidence,
                           metric=bool(e.get("metric")), image=image)


def read_frames(folder: str | Path) -> list[FrameRecord]:
    """The tracked frames of a record folder (`<run>/frames` or the run folder itself), final lines only, in
    stream order of first appearance then seq."""
    folder = Path(folder)
    if not (folder / INDEX).is_file() and (folder / "frames" / INDEX).is_file():
        folder = folder / "frames"
    path = folder / INDEX
    if not path.is_file():
        raise SequenceError(f"{folder}: no {INDEX}: the run was not recorded with the frames export "
                            "(`recon replay ... --export frames`, the default)")
    last: dict[tuple[str, int], dict[str, Any]] = {}
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                e = json.loads(line)
                key = (str(e["stream_id"]), int(e["seq"]))
            except (ValueError, KeyError, TypeError) as err:
                # A run killed mid-write leaves a partial last line: what came before is still good.
                logger.warning("%s:%d: unreadable line skipped (%s)", path, lineno, err)
                continue
            last[key] = e
    streams = list(dict.fromkeys(k[0] for k in last))
    keys = sorted((k for k, e in last.items() if e.get("tracked") and "T_world_cam" in e),
                  key=lambda k: (streams.index(k[0]), k[1]))
    return [FrameRecord(folder, last[k]) for k in keys]


def iter_results(folder: str | Path) -> Iterator[FrameResult]:
    """The record's frames as FrameResults (final poses), for feeding exports after the run."""
    for record in read_frames(folder):
        yield record.result()
