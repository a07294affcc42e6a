"""2D rotary position embedding (RoPE) of the VGGT aggregator, and the patch position grid it reads.

Behaviour copied from facebookresearch/vggt@44b3afb:vggt/layers/rope.py (described in
../shared/reference/vggt_family.md §1.2):
- head_dim is split in two halves: the first is rotated by the row position, the second by the column;
- each half uses `inv_freq = 1 / freq**(arange(0, d, 2)/d)` with `d` = half of head_dim, `cat(angles, angles)`
  and the rotate-half form `x*cos + cat(-x2, x1)*sin`;
- **float32 island**: the angle table is computed in float32 and only then cast to the token dtype before
  cos/sin, so a float64 run still carries float32 angles (README_vggt_family.md, "Float32 islands" 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def patch_positions(batch: int, grid_h: int, grid_w: int, num_special: int,
                    device: torch.device | None = None) -> torch.Tensor:
    """Integer (row, col) positions of one frame's tokens, `[batch, num_special + h*w, 2]`.

    Patches get `(row+1, col+1)` in row-major order; the special tokens (camera, registers) get `(0, 0)`,
    i.e. the identity rotation. Every frame uses the same positions (there is no temporal component).
    """
    rows = torch.arange(grid_h, device=device)
    cols = torch.arange(grid_w, device=device)
    grid = torch.cartesian_prod(rows, cols) + 1
    special = torch.zeros(num_special, 2, dtype=grid.dtype, device=device)
    return torch.cat([special, grid], dim=0).unsqueeze(0).expand(batch, -1, -1)


class RotaryPositionEmbedding2D(nn.Module):
    """Applies 2D RoPE to `tokens [B, heads, N, head_dim]` given `positions [B, N, 2]` (int64).

    Args:
        frequency: base frequency (`rope_freq`, 100 in VGGT).
        float32_table: build the angle table in float32 whatever the token dtype (the reference's island);
            False computes it in the token dtype (what a reference run patched to float64 does, e.g. pi3_tiny f64).
    """

    def __init__(self, frequency: float = 100.0, float32_table: bool = True) -> None:
        super().__init__()
        self.frequency = frequency
        self.float32_table = float32_table
        self._tables: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def _table(self, dim: int, length: int, device: torch.device, dtype: torch.dtype
               ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (dim, length, device, dtype)
        if key not in self._tables:
            # float32 island: exponents, inverse frequencies, positions and angles in float32.
            table_dtype = torch.float32 if self.float32_table else dtype
            exponents = torch.arange(0, dim, 2, device=device).to(table_dtype) / dim
            inv_freq = 1.0 / (self.frequency ** exponents)
            pos = torch.arange(length, device=device, dtype=table_dtype)
            angles = torch.outer(pos, inv_freq).to(dtype)
            angles = torch.cat([angles, angles], dim=-1)
            self._tables[key] = (angles.cos(), angles.sin())
        return self._tables[key]

    @staticmethod
    def _rotate_half(x: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.chunk(2, dim=-1)
        return torch.cat([-x2, x1], dim=-1)

    def _rotate_1d(self, x: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        c = F.embedding(pos, cos)[:, None]
        s = F.embedding(pos, sin)[:, None]
        return x * c + self._rotate_half(x) * s

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, max_position: int | None = None) -> torch.Tensor:
        """Rotate `tokens`; pass `max_position` (largest position value) to avoid a device sync per call."""
        half = tokens.shape[-1] // 2
        length = (int(positions.max()) if max_position is None else max_position) + 1
        cos, sin = self._table(half, length, tokens.device, tokens.dtype)
        rows, cols = tokens.chunk(2, dim=-1)
        rows = self._rotate_1d(rows, positions[..., 0], cos, sin)
        cols = self._rotate_1d(cols, positions[..., 1], cos, sin)
        return torch.cat([rows, cols], dim=-1)
