"""3D video RoPE with interleaved pairs over (frame, row, column): LingBot-Map's global-attention positions.

Behaviour (../shared/reference/lingbot_map.md §3, Robbyant/lingbot-map@4cd9860 `layers/rope.py`, the
`WanRotaryPosEmbed` of the Wan video models):
- head_dim D is split into explicit parts `fhw_dim = (d_t, d_h, d_w)` (the reference hard-codes (20, 22, 22) for
  D = 64; the tiny fixtures use (4, 6, 6) for D = 16), each even;
- axis a rotates its d_a channels with frequencies `theta ** (-arange(0, d_a, 2) / d_a)`, computed in float64, so the
  angle table is a float64 island (the reference builds complex128 `torch.polar` tables);
- channels are rotated in **interleaved pairs** `(x[2i], x[2i+1])` (complex multiplication), not rotate-half as in
  `RotaryPositionEmbedding2D`; the pair index runs over the t part, then h, then w;
- positions are integers: special token i of frame f sits at (f, i, i), patch (r, c) at (f, S + r, S + c) with S the
  number of special tokens (`video_positions`).

Differences from the reference, on purpose:
- the reference precomputes `max_frame_num` (1024) rows and cannot index past them; here angles are computed from the
  positions themselves (bitwise the same products), so longer streams extrapolate instead of failing (the session
  warns once when a stream leaves the trained range);
- the rotation runs in float32 for half-precision inputs and in the input dtype otherwise (the reference always
  rotates in float64 and casts back); float64 inputs therefore match the reference bit for bit up to cos/sin rounding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from recon.models.layers.rope import RotaryPositionEmbedding2D


def video_positions(t_start: int, num_frames: int, grid_h: int, grid_w: int, num_special: int,
                    device: torch.device | None = None) -> torch.Tensor:
    """Integer (t, h, w) positions `[num_frames * (num_special + h*w), 3]` of consecutive frames' tokens.

    Frame f of the call has temporal index `t_start + f`; its special tokens i get (t, i, i) and its patches, in
    row-major order, (t, num_special + r, num_special + c) so that no patch shares a position with a special token.
    """
    t = torch.arange(t_start, t_start + num_frames, device=device)
    special = torch.arange(num_special, device=device)
    rows = torch.arange(grid_h, device=device) + num_special
    cols = torch.arange(grid_w, device=device) + num_special
    rr, cc = torch.meshgrid(rows, cols, indexing="ij")
    spatial = torch.cat([torch.stack([special, special], dim=-1), torch.stack([rr.reshape(-1), cc.reshape(-1)], -1)])
    per_frame = spatial.shape[0]
    tt = t.repeat_interleave(per_frame)[:, None]
    return torch.cat([tt, spatial.repeat(num_frames, 1)], dim=-1)


class VideoRotaryEmbedding3D(RotaryPositionEmbedding2D):
    """Applies 3D video RoPE to `tokens [B, heads, N, D]` given integer `positions [B, N, 3]` or `[N, 3]`.

    A subclass of the 2D module only so that it plugs into every `Attention(rope=...)`; it shares no tables with it.
    The cos/sin of the last positions tensor are kept (by identity), so the q and k rotations of all global layers
    of one frame compute them once.

    Args:
        fhw_dim: channels of the (t, h, w) parts; they must sum to head_dim and be even.
        theta: RoPE base (1e4).
    """

    def __init__(self, fhw_dim: Sequence[int] = (20, 22, 22), theta: float = 10000.0) -> None:
        super().__init__(frequency=theta)
        dims = tuple(int(d) for d in fhw_dim)
        if len(dims) != 3 or any(d <= 0 or d % 2 for d in dims):
            raise ValueError(f"VideoRotaryEmbedding3D: fhw_dim must be three positive even sizes, got {fhw_dim}")
        self.fhw_dim = dims
        self.theta = float(theta)
        self.head_dim = sum(dims)
        # float64 island: one inverse-frequency vector per axis, as the reference's complex128 tables.
        self._inv_freq = [1.0 / (self.theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)) for d in dims]
        self._last: tuple[torch.Tensor, torch.dtype, torch.Tensor, torch.Tensor] | None = None

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """float64 rotation angles `[..., D/2]` of integer `positions [..., 3]` (t part, then h, then w)."""
        parts = []
        for axis, inv_freq in enumerate(self._inv_freq):
            parts.append(positions[..., axis, None].to(torch.float64) * inv_freq.to(positions.device))
        return torch.cat(parts, dim=-1)

    def _cos_sin(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        last = self._last
        if last is not None and last[0] is positions and last[1] == dtype:
            return last[2], last[3]
        theta = self.angles(positions)
        cos, sin = theta.cos().to(dtype), theta.sin().to(dtype)
        if positions.dim() == 2:  # [N, 3]: shared by the batch
            cos, sin = cos[None], sin[None]
        cos, sin = cos[:, None], sin[:, None]  # broadcast over heads
        self._last = (positions, dtype, cos, sin)
        return cos, sin

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, max_position: int | None = None) -> torch.Tensor:
        """Rotate `tokens`; `max_position` is accepted for interface compatibility and not needed."""
        if tokens.shape[-1] != self.head_dim:
            raise ValueError(f"VideoRotaryEmbedding3D: head_dim {tokens.shape[-1]} != sum(fhw_dim) {self.head_dim}")
        work = torch.promote_types(tokens.dtype, torch.float32)
        cos, sin = self._cos_sin(positions, work)
        x = tokens.to(work)
        even, odd = x[..., 0::2], x[..., 1::2]
        out = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1).flatten(-2)
        return out.to(tokens.dtype)
