"""Stand-in for the authors' `horizonstream.models.horizonstream.HorizonStream`: the streaming API gpu-check drives
(`build_sequence_state`, `forward_chunk(images, window_size=, chunk_idx=, **state)`, `advance_sequence_state`),
backed by recon's tiny HorizonStream so it runs on a CPU."""

from __future__ import annotations

from typing import Any

import torch

from recon.models.horizonstream import HorizonStream as _Ours
from recon.models.horizonstream import tiny_config


class HorizonStream(_Ours):
    def __init__(self, **cfg: Any) -> None:
        super().__init__(tiny_config())

    def build_sequence_state(self) -> dict[str, Any]:
        return {"state": self.new_state()}

    def forward_chunk(self, images: torch.Tensor, *, window_size: int, chunk_idx: int, state: Any
                      ) -> dict[str, torch.Tensor]:
        if state.chunk_idx != chunk_idx:
            raise ValueError(f"chunk {chunk_idx} out of order (state at {state.chunk_idx})")
        out, self._next = super().forward_chunk(images, state, window_size)
        return out

    def advance_sequence_state(self, state: dict[str, Any], *, is_last_chunk: bool) -> None:
        state["state"] = self.new_state() if is_last_chunk else self._next
