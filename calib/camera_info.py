"""Camera-info files: one reader for every calibration format recon accepts, and the folder search.

Used by the sequence readers (a `camera.json` beside a dataset), `recon node camera --camera-info FILE` and
`recon live --camera-info FILE`. Errors are SequenceError naming the file and what was expected (the node CLI
rewords them as option errors).
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon.errors import SequenceError
from recon.types import CameraInfo


@dataclass
class Calibration:
    """What a calibration file says: K, the image size it refers to (None: not stated), distortion, depth scale."""

    K: np.ndarray
    size: tuple[int, int] | None = None
    distortion: np.ndarray | None = None
    depth_scale: float | None = None
    frame_id: str = "camera"
    distortion_model: str = "plumb_bob"

    def camera_info(self, image_size: tuple[int, int] | None) -> CameraInfo | None:
        """CameraInfo at the stated size, else at `image_size` (first image); None when neither is known."""
        size = self.size or image_size
        if size is None:
            return None
        fisheye = self.distortion_model.lower() in ("equidistant", "fisheye", "kannala_brandt")
        if fisheye and self.distortion is not None and np.any(self.distortion != 0):
            # CameraInfo has no model field: its coefficients are read as k1, k2, p1, p2 by every consumer, which
            # would "undistort" a fisheye image wrongly. Use Undistorter(..., model="equidistant") on the file's
            # Calibration instead.
            raise SequenceError(f"distortion_model {self.distortion_model!r} cannot be carried by a CameraInfo "
                                "(pinhole plumb_bob / rational_polynomial only); undistort the images first with "
                                "recon.calib.Undistorter(..., model='equidistant')")
        dist = self.distortion if self.distortion is not None else np.zeros(0)
        return CameraInfo(size[0], size[1], self.K, dist, self.frame_id)


def load_camera_file(path: Path) -> Calibration:
    """Calibration from any supported file (the format follows the suffix and the content).

    - `.json`: `K` (3x3) or `fx, fy, cx, cy`; optional `width`, `height`, `distortion`, `depth_scale` (depth units
      per metre) - what `recon synth` writes as camera.json;
    - `.yaml` / `.yml`: a ROS camera_info file (image_width, image_height, camera_matrix.data,
      distortion_coefficients.data, as camera_calibration writes it), or an OpenCV FileStorage file
      (camera_matrix / distortion_coefficients, image_width / image_height);
    - `.xml`: OpenCV FileStorage;
    - `cameras.txt` / `cameras.bin`: COLMAP's text or binary model (`CAMERA_ID MODEL WIDTH HEIGHT PARAMS...`,
      first camera);
    - `transforms.json`: nerfstudio's or instant-ngp's (`fl_x`, `fl_y` or `camera_angle_x`, `cx`, `cy`, `w`, `h`,
      distortion `k1`...; top level, else the first frame's: nerfstudio allows per-frame intrinsics);
    - text with `P0:` ... `P3:` lines: KITTI's `calib.txt` (K of `P2`, the left colour camera, else `P0`);
    - anything else: plain text `fx fy cx cy [width height]` or the 9 numbers of K (7-Scenes'
      `camera-intrinsics.txt` holds the 3x3 K).
    """
    path = Path(path)
    if path.name.lower() == "cameras.bin":
        return _load_colmap_cameras_bin(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SequenceError(f"cannot read calibration {path}: {e}") from e
    if path.suffix.lower() in (".yaml", ".yml", ".xml"):
        return _load_yaml_or_xml(path, text)
    if path.name.lower() == "cameras.txt":
        return _load_colmap_cameras(path, text)
    if path.name.lower() == "transforms.json":
        return _load_transforms_json(path, text)
    if re.search(r"^\s*P[0-3]\s*:", text, re.MULTILINE):
        return _load_kitti_calib(path, text)
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
            if "K" in data:
                K = np.asarray(data["K"], dtype=np.float64).reshape(3, 3)
            else:
                K = np.array([[data["fx"], 0, data["cx"]], [0, data["fy"], data["cy"]], [0, 0, 1]], dtype=np.float64)
            size = (int(data["width"]), int(data["height"])) if "width" in data and "height" in data else None
            dist = np.asarray(data.get("distortion", []), dtype=np.float64)
            scale = data.get("depth_scale")
            return Calibration(K, size, dist, None if scale is None else float(scale),
                               distortion_model=str(data.get("distortion_model") or "plumb_bob"))
        except (ValueError, KeyError, TypeError) as e:
            raise SequenceError(f"{path}: expected JSON with K (or fx, fy, cx, cy), width and height: {e}") from e
    try:
        nums = [float(x) for x in text.replace(",", " ").split()]
    except ValueError as e:
        raise SequenceError(f"{path}: expected numbers 'fx fy cx cy [width height]' or a 3x3 K: {e}") from e
    if len(nums) == 9:
        return Calibration(np.asarray(nums).reshape(3, 3))
    if len(nums) in (4, 6):
        fx, fy, cx, cy = nums[:4]
        size = (int(nums[4]), int(nums[5])) if len(nums) == 6 else None
        return Calibration(np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]]), size)
    raise SequenceError(f"{path}: expected 'fx fy cx cy [width height]' or 9 numbers of K, got {len(nums)} numbers")


CAMERA_FILE_NAMES = ("camera.json", "intrinsics.json", "calibration.json", "camera_info.yaml", "camera_info.yml",
                     "camera.yaml", "calibration.yaml", "intrinsics.txt", "camera-intrinsics.txt", "camera.txt",
                     "calibration.txt", "cameras.txt", "sparse/0/cameras.txt", "cameras.bin", "sparse/0/cameras.bin",
                     "transforms.json", "calib.txt")
"""Calibration file names `find_camera_file` looks for, first found wins: recon's own, ROS / OpenCV YAML, plain
text, 7-Scenes (`camera-intrinsics.txt`), COLMAP (`cameras.txt` or the binary `cameras.bin` COLMAP writes by
default, also in `sparse/0/`), nerfstudio / instant-ngp (`transforms.json`), KITTI (`calib.txt`)."""


def find_camera_file(folder: Path) -> Path | None:
    """The calibration file of a sequence folder, if any (the names of `CAMERA_FILE_NAMES`, in that order)."""
    for name in CAMERA_FILE_NAMES:
        p = Path(folder) / name
        if p.is_file():
            return p
    return None


# COLMAP camera models: binary model id and parameter names in file order (https://colmap.github.io/cameras.html;
# the ids are COLMAP's `CameraModelId`).
_COLMAP_MODELS = {
    "SIMPLE_PINHOLE": (0, ("f", "cx", "cy")),
    "PINHOLE": (1, ("fx", "fy", "cx", "cy")),
    "SIMPLE_RADIAL": (2, ("f", "cx", "cy", "k1")),
    "RADIAL": (3, ("f", "cx", "cy", "k1", "k2")),
    "OPENCV": (4, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2")),
    "OPENCV_FISHEYE": (5, ("fx", "fy", "cx", "cy", "k1", "k2", "k3", "k4")),
    "FULL_OPENCV": (6, ("fx", "fy", "cx", "cy", "k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")),
}
_COLMAP_MODEL_NAMES = {model_id: name for name, (model_id, _) in _COLMAP_MODELS.items()}


def _colmap_calibration(model: str, size: tuple[int, int], params: dict[str, float]) -> Calibration:
    """K and distortion of one COLMAP camera (pixel centres at +0.5 in COLMAP: moved to OpenCV's integers)."""
    fx, fy = params.get("fx", params.get("f")), params.get("fy", params.get("f"))
    K = np.array([[fx, 0, params["cx"] - 0.5], [0, fy, params["cy"] - 0.5], [0, 0, 1]], dtype=np.float64)
    if model == "OPENCV_FISHEYE":
        return Calibration(K, size, np.array([params[k] for k in ("k1", "k2", "k3", "k4")]),
                           distortion_model="equidistant")
    return Calibration(K, size, *_opencv_distortion(params))


def _opencv_distortion(params: dict[str, float]) -> tuple[np.ndarray, str]:
    """OpenCV's coefficient vector (k1 k2 p1 p2 k3 k4 k5 k6) of the named ones, up to the last one given."""
    order = ("k1", "k2", "p1", "p2", "k3", "k4", "k5", "k6")
    n = max((i + 1 for i, k in enumerate(order) if k in params), default=0)
    return np.array([params.get(k, 0.0) for k in order[:n]]), "rational_polynomial" if n > 5 else "plumb_bob"


def _load_colmap_cameras(path: Path, text: str) -> Calibration:
    """The first camera of a COLMAP `cameras.txt`."""
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        model = parts[1].upper() if len(parts) > 1 else ""
        if model not in _COLMAP_MODELS:
            raise SequenceError(f"{path}:{lineno}: COLMAP camera model {model or '?'!r} is not supported "
                                f"({', '.join(_COLMAP_MODELS)})")
        names = _COLMAP_MODELS[model][1]
        try:
            w, h = int(parts[2]), int(parts[3])
            p = dict(zip(names, (float(x) for x in parts[4:4 + len(names)]), strict=True))
        except (ValueError, IndexError) as e:
            raise SequenceError(f"{path}:{lineno}: expected 'CAMERA_ID {model} WIDTH HEIGHT "
                                f"{' '.join(n.upper() for n in names)}': {e}") from e
        return _colmap_calibration(model, (w, h), p)
    raise SequenceError(f"{path}: no camera line in the COLMAP cameras.txt")


def _load_colmap_cameras_bin(path: Path) -> Calibration:
    """The first camera of a COLMAP `cameras.bin`: little-endian uint64 count, then per camera int32 id, int32
    model id, uint64 width, uint64 height and the model's float64 parameters."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SequenceError(f"cannot read calibration {path}: {e}") from e
    head = struct.Struct("<QiiQQ")
    if len(data) < head.size:
        raise SequenceError(f"{path}: {len(data)} bytes, too short for a COLMAP cameras.bin with a camera")
    count, _, model_id, w, h = head.unpack_from(data)
    if count == 0:
        raise SequenceError(f"{path}: a COLMAP cameras.bin without cameras")
    model = _COLMAP_MODEL_NAMES.get(model_id)
    if model is None:
        raise SequenceError(f"{path}: COLMAP camera model id {model_id} is not supported "
                            f"({', '.join(f'{n} = {i}' for n, (i, _) in _COLMAP_MODELS.items())})")
    names = _COLMAP_MODELS[model][1]
    if len(data) < head.size + 8 * len(names) or not (0 < w < 2**20 and 0 < h < 2**20):
        raise SequenceError(f"{path}: not a COLMAP cameras.bin (truncated, or a {w}x{h} {model} camera)")
    values = struct.unpack_from(f"<{len(names)}d", data, head.size)
    return _colmap_calibration(model, (int(w), int(h)), dict(zip(names, values, strict=True)))


def _load_transforms_json(path: Path, text: str) -> Calibration:
    """Intrinsics of a nerfstudio / instant-ngp `transforms.json`: the top level's, else the first frame's."""
    try:
        data = json.loads(text)
        frames = data.get("frames") or [{}]
        top = "fl_x" in data or "camera_angle_x" in data
    except (ValueError, TypeError, AttributeError) as e:
        raise SequenceError(f"{path}: not a transforms.json: {type(e).__name__}: {e}") from e
    return transforms_calibration(data if top else {**data, **frames[0]}, path)


def transforms_calibration(record: dict, path: Path) -> Calibration:
    """The camera of one transforms.json record (its top level, or a frame merged over it).

    Pixel coordinates there have the image corner at 0 (COLMAP's, what `recon.export.nerfstudio` writes), so cx, cy
    move by -0.5 to ours; a missing cx, cy is the image centre; instant-ngp may give the horizontal field of view
    (`camera_angle_x`, radians) instead of `fl_x`.
    """
    try:
        w, h = int(record["w"]), int(record["h"])
        if "fl_x" in record:
            fx = float(record["fl_x"])
        else:
            fx = 0.5 * w / math.tan(0.5 * float(record["camera_angle_x"]))
        if "fl_y" in record:
            fy = float(record["fl_y"])
        elif "camera_angle_y" in record:
            fy = 0.5 * h / math.tan(0.5 * float(record["camera_angle_y"]))
        else:
            fy = fx
        cx, cy = float(record.get("cx", 0.5 * w)), float(record.get("cy", 0.5 * h))
        coefficients = {k: float(record[k]) for k in ("k1", "k2", "p1", "p2", "k3", "k4") if k in record}
        model = str(record.get("camera_model") or "OPENCV").upper()
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise SequenceError(f"{path}: expected nerfstudio / instant-ngp transforms.json intrinsics (fl_x or "
                            f"camera_angle_x, w, h; top level or per frame): {type(e).__name__}: {e}") from e
    K = np.array([[fx, 0, cx - 0.5], [0, fy, cy - 0.5], [0, 0, 1]], dtype=np.float64)
    if model == "OPENCV_FISHEYE":
        dist = np.array([coefficients.get(k, 0.0) for k in ("k1", "k2", "k3", "k4")])
        return Calibration(K, (w, h), dist, distortion_model="equidistant")
    if model not in ("OPENCV", "PINHOLE", "SIMPLE_PINHOLE"):
        raise SequenceError(f"{path}: camera_model {model!r} is not a pinhole camera (OPENCV, OPENCV_FISHEYE, "
                            "PINHOLE, SIMPLE_PINHOLE)")
    coefficients.pop("k4", None)  # nerfstudio's OPENCV model has no k4
    return Calibration(K, (w, h), *_opencv_distortion(coefficients))


def parse_kitti_projections(text: str, path: Path) -> dict[str, np.ndarray]:
    """Projection matrices by name (`P0`..`P3`, `Tr`) of a KITTI `calib.txt` as 3x4 arrays (`path` for errors)."""
    P: dict[str, np.ndarray] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        key, sep, rest = line.partition(":")
        if not sep:
            continue
        try:
            vals = np.array([float(x) for x in rest.split()])
        except ValueError as e:
            raise SequenceError(f"{path}:{lineno}: not numbers: {line!r}") from e
        if vals.size == 12:
            P[key.strip()] = vals.reshape(3, 4)
    return P


def _load_kitti_calib(path: Path, text: str) -> Calibration:
    """K of a KITTI `calib.txt`: the left colour camera's `P2`, else `P0` (rectified: no distortion)."""
    P = parse_kitti_projections(text, path)
    for name in ("P2", "P0"):
        if name in P:
            return Calibration(P[name][:, :3].copy())
    raise SequenceError(f"{path}: a KITTI calib.txt needs a P2 or P0 line of 12 numbers")



def _load_yaml_or_xml(path: Path, text: str) -> Calibration:
    """ROS camera_info YAML, else OpenCV FileStorage (YAML with a %YAML header, or XML)."""
    if path.suffix.lower() != ".xml" and not text.lstrip().startswith("%YAML"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise SequenceError(f"{path}: not valid YAML: {e}") from e
        if isinstance(data, dict) and "camera_matrix" in data:
            try:
                K = np.asarray(data["camera_matrix"]["data"], dtype=np.float64).reshape(3, 3)
                size = (int(data["image_width"]), int(data["image_height"]))
                dist = np.asarray((data.get("distortion_coefficients") or {}).get("data", []), dtype=np.float64)
            except (KeyError, TypeError, ValueError) as e:
                raise SequenceError(f"{path}: a ROS camera_info YAML needs image_width, image_height and "
                                    f"camera_matrix.data (3x3): {type(e).__name__}: {e}") from e
            return Calibration(K, size, dist, frame_id=str(data.get("camera_name") or "camera"),
                               distortion_model=str(data.get("distortion_model") or "plumb_bob"))
        raise SequenceError(f"{path}: expected a ROS camera_info YAML (image_width, image_height, camera_matrix.data)"
                            " or an OpenCV FileStorage file (starting with %YAML) with camera_matrix")
    return _load_opencv_storage(path)


def _load_opencv_storage(path: Path) -> Calibration:
    import cv2

    fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    try:
        if not fs.isOpened():
            raise SequenceError(f"{path}: not a ROS camera_info YAML nor an OpenCV FileStorage file")
        K = fs.getNode("camera_matrix").mat()
        if K is None or K.shape != (3, 3):
            raise SequenceError(f"{path}: an OpenCV calibration file needs a 3x3 camera_matrix")
        dist = fs.getNode("distortion_coefficients").mat()
        w, h = fs.getNode("image_width").real(), fs.getNode("image_height").real()
        size = (int(w), int(h)) if w > 0 and h > 0 else None
        model = fs.getNode("distortion_model").string() or "plumb_bob"
        return Calibration(np.asarray(K, np.float64), size,
                           np.zeros(0) if dist is None else np.asarray(dist, np.float64).reshape(-1),
                           distortion_model=model)
    finally:
        fs.release()


def load_camera_info(path: str | Path) -> CameraInfo:
    """A CameraInfo from a calibration file that states the image size (SequenceError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise SequenceError(f"camera info {path} is not a file")
    info = load_camera_file(path).camera_info(None)
    if info is None:
        raise SequenceError(f"{path}: the file must state the image width and height")
    return info


def write_camera_info_yaml(path: str | Path, info: CameraInfo, distortion_model: str | None = None) -> None:
    """Write a ROS camera_info YAML (camera_calibration layout), readable by ROS tools and by `load_camera_info`."""
    import yaml

    w, h = int(info.width), int(info.height)
    data = {"image_width": w, "image_height": h, "camera_name": info.frame_id,
            "camera_matrix": {"rows": 3, "cols": 3, "data": [float(v) for v in info.K.reshape(-1)]},
            "distortion_model": distortion_model or _default_model(info),
            "distortion_coefficients": {"rows": 1, "cols": int(info.distortion.size),
                                        "data": [float(v) for v in info.distortion]},
            "rectification_matrix": {"rows": 3, "cols": 3, "data": [float(v) for v in np.eye(3).reshape(-1)]},
            "projection_matrix": {"rows": 3, "cols": 4,
                                  "data": [float(v) for v in np.hstack([info.K, np.zeros((3, 1))]).reshape(-1)]}}
    Path(path).write_text(yaml.safe_dump(data, sort_keys=False))


def write_camera_info(path: str | Path, info: CameraInfo, fmt: str | None = None,
                      distortion_model: str | None = None) -> None:
    """Write `info` as `fmt`: "ros" (camera_info YAML), "opencv" (cv2.FileStorage YAML/XML) or "json" (recon's
    camera.json: width, height, K, distortion). Default from the suffix: .json -> json, .xml -> opencv, .yaml /
    .yml -> ros. Every format reads back with `load_camera_info`."""
    path = Path(path)
    suffix = path.suffix.lower()
    fmt = fmt or {".json": "json", ".xml": "opencv", ".yaml": "ros", ".yml": "ros"}.get(suffix)
    model = distortion_model or _default_model(info)
    if fmt == "ros":
        write_camera_info_yaml(path, info, model)
    elif fmt == "json":
        path.write_text(json.dumps({"width": int(info.width), "height": int(info.height), "K": info.K.tolist(),
                                    "distortion": info.distortion.tolist(), "distortion_model": model}, indent=1))
    elif fmt == "opencv":
        import cv2

        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_WRITE)
        try:
            fs.write("image_width", int(info.width))
            fs.write("image_height", int(info.height))
            fs.write("camera_matrix", info.K)
            fs.write("distortion_coefficients", info.distortion.reshape(1, -1))
            fs.write("distortion_model", model)
        finally:
            fs.release()
    else:
        raise SequenceError(f"{path}: unknown calibration format {fmt!r} (ros, opencv, json; or a .json / .xml / "
                            ".yaml suffix)")


def _default_model(info: CameraInfo) -> str:
    return "rational_polynomial" if info.distortion.size == 8 else "plumb_bob"
