"""Two-layer perceptron used by every transformer block and by the camera head's pose branch.

Key names `fc1`/`fc2` follow the official VGGT/DINOv2 checkpoints so state dicts load strictly.
"""

from __future__ import annotations

import torch
from torch import nn


class Mlp(nn.Module):
    """`fc2(act(fc1(x)))`; GELU is the exact (erf) form, as in the reference blocks.

    Args:
        in_features: input width.
        hidden_features: hidden width (defaults to `in_features`).
        out_features: output width (defaults to `in_features`).
        bias: whether both linears carry a bias (`ffn_bias` in the reference configs).
    """

    def __init__(self, in_features: int, hidden_features: int | None = None, out_features: int | None = None,
                 bias: bool = True) -> None:
        super().__init__()
        hidden_features = hidden_features or in_features
        out_features = out_features or in_features
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
