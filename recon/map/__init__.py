"""recon.map: the map layer shared by every backend (keyframes, place recognition, loop closure, pose graph).

`MappedBackend(inner, MapOptions())` wraps any backend; `create_backend(name, loop_closure=True)` does it for
the registry. See recon.map.mapped for how corrected poses reach the sinks.
"""

from recon.map.mapped import MapOptions, MappedBackend
from recon.map.metrics import OdometryRecorder, loop_figures

__all__ = ["MapOptions", "MappedBackend", "OdometryRecorder", "loop_figures"]
