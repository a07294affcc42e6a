"""Per-channel residual scaling (LayerScale, CaiT): `x * gamma`, key `gamma` as in the checkpoints."""

from __future__ import annotations

import torch
from torch import nn


class LayerScale(nn.Module):
    """Multiplies the branch output by a learned per-channel `gamma`, initialised to `init_values`.

    Why it matters for tests: with the default 0.01 the attention branches barely move the residual stream,
    which is why the golden fixtures scale the gammas up (README_vggt_family.md, "Weights").
    Under bf16 autocast the fp32 gamma promotes the product to fp32, which keeps VGGT's residual stream fp32.
    """

    def __init__(self, dim: int, init_values: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(init_values * torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma
