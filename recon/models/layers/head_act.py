"""Output activations of the VGGT heads (facebookresearch/vggt@44b3afb:vggt/heads/head_act.py).

Only the outputs are activated: the camera head feeds its *raw* accumulated pose back into the next
refinement iteration (README_vggt_family.md, "Camera head").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def inverse_log_transform(x: torch.Tensor) -> torch.Tensor:
    """`sign(x) * expm1(|x|)`: the point head's `inv_log` activation."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def activate(x: torch.Tensor, kind: str) -> torch.Tensor:
    """Apply one named activation: linear, relu, exp, inv_log, sigmoid, expp0, expp1."""
    if kind == "linear":
        return x
    if kind == "relu":
        return F.relu(x)
    if kind in ("exp", "expp0"):
        return torch.exp(x)
    if kind == "expp1":
        return 1 + torch.exp(x)
    if kind == "inv_log":
        return inverse_log_transform(x)
    if kind == "sigmoid":
        return torch.sigmoid(x)
    raise ValueError(f"unknown head activation {kind!r}")


def activate_pose(pose: torch.Tensor, trans_act: str = "linear", quat_act: str = "linear",
                  fl_act: str = "relu") -> torch.Tensor:
    """Activate `[..., 9]` absT_quaR_FoV encodings: translation, quaternion and FoV separately."""
    t = activate(pose[..., :3], trans_act)
    q = activate(pose[..., 3:7], quat_act)
    fov = activate(pose[..., 7:], fl_act)
    return torch.cat([t, q, fov], dim=-1)


def activate_head(out: torch.Tensor, activation: str, conf_activation: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a DPT output `[N, C, H, W]` into activated values `[N, H, W, C-1]` and confidence `[N, H, W]`."""
    fmap = out.permute(0, 2, 3, 1)
    return activate(fmap[..., :-1], activation), activate(fmap[..., -1], conf_activation)
