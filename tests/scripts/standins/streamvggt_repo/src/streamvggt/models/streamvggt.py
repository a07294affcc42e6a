"""Stand-in for the authors' `streamvggt.models.streamvggt.StreamVGGT` (StreamVGGT and InfiniteVGGT checkouts):
the API surface gpu-check's reference adapter uses (constructor kwargs, official state-dict keys, `inference(frames)`
calling `self.aggregator` once per frame), backed by recon's tiny VGGT so it runs on a CPU."""

from __future__ import annotations

import torch

from recon.models.vggt import VGGT, tiny_config


class StreamVGGT(VGGT):
    def __init__(self, total_budget: int | None = None) -> None:
        super().__init__(tiny_config(causal=True))
        self.total_budget = total_budget

    def inference(self, frames: list[dict]) -> list[torch.Tensor]:
        out = []
        for frame in frames:
            last = {self.config.aggregator.depth - 1}
            tokens, _ = self.aggregator(frame["img"][:, None], causal=True, keep_layers=last)
            out.append(tokens[-1])
        return out
