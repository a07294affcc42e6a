"""3D rotary position embedding over (time, row, column): HorizonStream's "spatiotemporal RoPE".

Behaviour (../shared/golden/horizonstream_tiny/README.md rule 6, ../shared/reference/horizonstream.md §2.4):
- head_dim D is split into t = D//3, y = D//3 and x = the rest; each part rotates its first even number of
  channels with the 1-D rotate-half RoPE of `RotaryPositionEmbedding2D` (angles pos * base^(-2i/d_rot), duplicated
  as [a, a]) and passes an odd leftover channel through unchanged (D = 16: parts 5/5/6, rotated 4/4/6;
  D = 64: 21/21/22, rotated 20/20/22);
- positions are integers; special and pose tokens sit at (0, 0, 0), which is the identity rotation.

The temporal coordinate wraps (`rope_temporal_period`), so angles stay bounded however long the stream is; the
wrapping itself is the caller's business (`spatiotemporal_positions`).
"""

from __future__ import annotations

import torch

from recon.models.layers.rope import RotaryPositionEmbedding2D


def spatiotemporal_positions(num_frames: int, grid_h: int, grid_w: int, t_start: int, num_special: int,
                             device: torch.device | None = None) -> torch.Tensor:
    """Integer (t, y, x) positions `[num_frames, num_special + h*w, 3]` of a chunk's special + patch tokens.

    A patch at grid cell (r, c) of the chunk's frame f gets (f + t_start + 1, r + 1, c + 1), row-major; the
    `num_special` leading tokens get (0, 0, 0).
    """
    t = torch.arange(num_frames, device=device) + t_start + 1
    rows = torch.arange(grid_h, device=device) + 1
    cols = torch.arange(grid_w, device=device) + 1
    tt, rr, cc = torch.meshgrid(t, rows, cols, indexing="ij")
    grid = torch.stack([tt, rr, cc], dim=-1).reshape(num_frames, grid_h * grid_w, 3)
    special = torch.zeros(num_frames, num_special, 3, dtype=grid.dtype, device=device)
    return torch.cat([special, grid], dim=1)


class RotaryPositionEmbedding3D(RotaryPositionEmbedding2D):
    """Applies 3D RoPE to `tokens [B, heads, N, head_dim]` given `positions [B, N, 3]` (int64, (t, y, x)).

    Shares the angle tables, their float32 island and the rotate-half form with the 2D module; only the split of
    the head dimension differs.
    """

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, max_position: int | None = None) -> torch.Tensor:
        """Rotate `tokens`; pass `max_position` (largest value in `positions`) to avoid a device sync per call."""
        D = tokens.shape[-1]
        d1 = d2 = D // 3
        length = (int(positions.max()) if max_position is None else max_position) + 1
        parts = (tokens[..., :d1], tokens[..., d1:d1 + d2], tokens[..., d1 + d2:])
        out = []
        for axis, part in enumerate(parts):
            rot = (part.shape[-1] // 2) * 2
            if rot == 0:
                out.append(part)
                continue
            cos, sin = self._table(rot, length, tokens.device, tokens.dtype)
            rotated = self._rotate_1d(part[..., :rot], positions[..., axis], cos, sin)
            out.append(rotated if rot == part.shape[-1] else torch.cat([rotated, part[..., rot:]], dim=-1))
        return torch.cat(out, dim=-1)
