"""Stand-in for the authors' `pi3.models.pi3.Pi3` (no-argument constructor, official keys, `forward(imgs)`), backed by
recon's tiny pi3 so gpu-check's reference adapter runs on a CPU."""

from __future__ import annotations

from recon.models.pi3 import Pi3 as _Ours
from recon.models.pi3 import tiny_config


class Pi3(_Ours):
    def __init__(self) -> None:
        super().__init__(tiny_config())
