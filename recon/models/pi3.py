"""pi3 (Pi3): permutation-equivariant multi-view geometry, the offline window model behind LASER.

Reference: yyfz/Pi3@9fa3ddb pi3/models/pi3.py (notes in ../shared/reference/laser_pi3.md §3, exact rules in
../shared/golden/pi3_tiny/README.md). Built from the shared layers of recon.models.layers (the DINOv2 encoder,
transformer blocks with qk-norm and 2D RoPE); only what is pi3's own lives here: the shared register tokens, the
frame/global alternation over one block list, the head decoders, the pixel-shuffle point/confidence heads and the
SVD-orthogonalised camera head. State-dict keys are the official ones (`model.safetensors` loads strictly).

Outputs: `local_points [B,N,H,W,3]` (camera frame, OpenCV axes, z > 0), `conf [B,N,H,W,1]` (logits),
`camera_poses [B,N,4,4]` (camera-to-world; the world frame and scale are arbitrary per call), `points` (world).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from recon.models.layers.block import Block
from recon.models.layers.dinov2 import IMAGENET_MEAN, IMAGENET_STD, DinoVisionTransformer
from recon.models.layers.rope import RotaryPositionEmbedding2D, patch_positions


@dataclass
class Pi3Config:
    """Every knob of the pi3 architecture (defaults: the published full-size model, ~959 M parameters).

    Attributes:
        img_size, patch_size: encoder training size (pos-embed grid img_size/patch_size squared) and patch.
        enc_dim, enc_depth, enc_heads: DINOv2 ViT-L/14 with 4 registers by default.
        dec_dim, dec_depth, dec_heads: the alternating decoder (even blocks: per frame; odd: all frames).
        num_register_tokens: registers shared by every frame of the decoder (5).
        head_dim, head_depth, head_heads: the point / confidence / camera head decoders.
        point_out_dim, camera_out_dim, camera_head_dim: widths of the head decoders' outputs and camera MLP.
        mlp_ratio, rope_freq: block MLP ratio and RoPE base frequency.
        float32_islands: resize the pos-embed and build RoPE tables in float32 (the stock code's casts).
    """

    img_size: int = 518
    patch_size: int = 14
    enc_dim: int = 1024
    enc_depth: int = 24
    enc_heads: int = 16
    enc_registers: int = 4
    dec_dim: int = 1024
    dec_depth: int = 36
    dec_heads: int = 16
    num_register_tokens: int = 5
    head_dim: int = 1024
    head_depth: int = 5
    head_heads: int = 16
    point_out_dim: int = 1024
    camera_out_dim: int = 512
    camera_head_dim: int = 512
    mlp_ratio: float = 4.0
    rope_freq: float = 100.0
    float32_islands: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_fixture(cls, cfg: dict) -> Pi3Config:
        """Config from a pi3 fixture's config.json (the shape used by ../shared/golden/pi3_tiny)."""
        enc, dec, pd, cam = cfg["encoder"], cfg["decoder"], cfg["point_decoder"], cfg["camera_decoder"]
        return cls(img_size=enc["img_size"], patch_size=cfg["patch_size"], enc_dim=enc["embed_dim"],
                   enc_depth=enc["depth"], enc_heads=enc["num_heads"], enc_registers=enc["num_register_tokens"],
                   dec_dim=dec["dim"], dec_depth=dec["depth"], dec_heads=dec["num_heads"],
                   num_register_tokens=dec["register_tokens"], head_dim=pd["dim"], head_depth=pd["depth"],
                   head_heads=pd["num_heads"], point_out_dim=pd["out_dim"], camera_out_dim=cam["out_dim"],
                   camera_head_dim=cfg["camera_head"]["dim"], mlp_ratio=dec["mlp_ratio"],
                   rope_freq=dec["rope"]["freq_base"])


class HeadDecoder(nn.Module):
    """`linear_out(blocks(projects(x)))`: plain blocks (no LayerScale, no qk-norm) with 2D RoPE, per frame."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, out_dim: int, mlp_ratio: float,
                 rope: RotaryPositionEmbedding2D) -> None:
        super().__init__()
        self.projects = nn.Linear(in_dim, dim)
        self.blocks = nn.ModuleList([Block(dim, heads, mlp_ratio, norm_eps=1e-6, rope=rope) for _ in range(depth)])
        self.linear_out = nn.Linear(dim, out_dim)

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        x = self.projects(x)
        for blk in self.blocks:
            x = blk(x, pos=pos)
        return self.linear_out(x)


class PixelShuffleHead(nn.Module):
    """Patch tokens -> per-pixel values: Linear to C*p*p channels (channel-major), then pixel_shuffle(p)."""

    def __init__(self, in_dim: int, out_channels: int, patch_size: int) -> None:
        super().__init__()
        self.patch_size, self.out_channels = patch_size, out_channels
        self.proj = nn.Linear(in_dim, out_channels * patch_size * patch_size)

    def forward(self, tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """`tokens [BN, h*w, D]` -> `[BN, H, W, C]`."""
        BN = tokens.shape[0]
        h, w = grid_hw
        x = self.proj(tokens).transpose(1, 2).reshape(BN, -1, h, w)
        return F.pixel_shuffle(x, self.patch_size).permute(0, 2, 3, 1)


class ResidualMlp(nn.Module):
    """`r + relu(res_conv3(relu(res_conv2(relu(res_conv1(r))))))` (key names as in the checkpoint)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.res_conv1, self.res_conv2, self.res_conv3 = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return r + F.relu(self.res_conv3(F.relu(self.res_conv2(F.relu(self.res_conv1(r))))))


class Pi3CameraHead(nn.Module):
    """Camera-to-world pose per frame from the camera decoder's patch tokens (mean-pooled)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.res_conv = nn.ModuleList([ResidualMlp(dim) for _ in range(2)])
        self.more_mlps = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim), nn.ReLU())
        self.fc_t = nn.Linear(dim, 3)
        self.fc_rot = nn.Linear(dim, 9)

    def forward(self, tokens: torch.Tensor, intermediates: dict | None = None) -> torch.Tensor:
        """`tokens [BN, h*w, D]` -> `[BN, 4, 4]`. The 3x3 rotation: rows L2-normalised, then the nearest
        rotation by SVD (M^T = U S V^T, R = V diag(1, 1, det(V U^T)) U^T)."""
        x = tokens
        for block in self.res_conv:
            x = block(x)
        x = self.more_mlps(x.mean(dim=1))
        t, rot = self.fc_t(x), self.fc_rot(x)
        if intermediates is not None:
            intermediates.update(camera_head_fc_t_out=t, camera_head_fc_rot_out=rot)
        # The SVD needs float32 or better (no half-precision kernels); bf16 weights get their rotation in float32.
        M = F.normalize(rot.reshape(-1, 3, 3), dim=-1).to(torch.promote_types(rot.dtype, torch.float32))
        U, _, Vh = torch.linalg.svd(M.transpose(-1, -2))
        V = Vh.transpose(-1, -2)
        d = torch.linalg.det(V @ U.transpose(-1, -2))
        D = torch.diag_embed(torch.stack([torch.ones_like(d), torch.ones_like(d), d], dim=-1))
        R = (V @ D @ U.transpose(-1, -2)).to(x.dtype)
        pose = torch.zeros(x.shape[0], 4, 4, dtype=x.dtype, device=x.device)
        pose[:, :3, :3], pose[:, :3, 3], pose[:, 3, 3] = R, t, 1.0
        return pose


class Pi3(nn.Module):
    """The pi3 network; `forward(images [B,N,3,H,W] in [0,1])` returns a dict of per-frame outputs."""

    def __init__(self, cfg: Pi3Config | None = None, *, device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        super().__init__()
        cfg = cfg or Pi3Config()
        with torch.device(device) if device is not None else nullcontext():
            self._build(cfg)
        if dtype is not None:
            self.to(dtype)

    def _build(self, cfg: Pi3Config) -> None:
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.encoder = DinoVisionTransformer(
            img_size=cfg.img_size, patch_size=cfg.patch_size, embed_dim=cfg.enc_dim, depth=cfg.enc_depth,
            num_heads=cfg.enc_heads, mlp_ratio=cfg.mlp_ratio, num_register_tokens=cfg.enc_registers,
            init_values=1.0, norm_eps=1e-6, pos_embed_float32=cfg.float32_islands, mask_token=False)
        self.rope = RotaryPositionEmbedding2D(cfg.rope_freq, float32_table=cfg.float32_islands)
        self.decoder = nn.ModuleList([
            Block(cfg.dec_dim, cfg.dec_heads, cfg.mlp_ratio, init_values=0.01, norm_eps=1e-6, qk_norm=True,
                  qk_norm_eps=1e-5, rope=self.rope) for _ in range(cfg.dec_depth)])
        self.register_token = nn.Parameter(torch.zeros(1, 1, cfg.num_register_tokens, cfg.dec_dim))
        head_in = 2 * cfg.dec_dim
        make = lambda out: HeadDecoder(head_in, cfg.head_dim, cfg.head_depth, cfg.head_heads, out,  # noqa: E731
                                       cfg.mlp_ratio, self.rope)
        self.point_decoder, self.conf_decoder = make(cfg.point_out_dim), make(cfg.point_out_dim)
        self.camera_decoder = make(cfg.camera_out_dim)
        self.point_head = PixelShuffleHead(cfg.point_out_dim, 3, cfg.patch_size)
        self.conf_head = PixelShuffleHead(cfg.point_out_dim, 1, cfg.patch_size)
        self.camera_head = Pi3CameraHead(cfg.camera_head_dim)
        self.register_buffer("image_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("image_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor, intermediates: dict | None = None) -> dict[str, torch.Tensor]:
        B, N, _, H, W = images.shape
        h, w = H // self.patch_size, W // self.patch_size
        x = (images.reshape(B * N, 3, H, W) - self.image_mean) / self.image_std
        tokens = self.encoder(x)  # [BN, hw, C]
        regs = self.register_token.expand(B, N, -1, -1).reshape(B * N, -1, tokens.shape[-1]).to(tokens.dtype)
        x = torch.cat([regs, tokens], dim=1)
        n_reg, per_frame = regs.shape[1], regs.shape[1] + h * w
        pos = patch_positions(B * N, h, w, n_reg, device=images.device)
        pos_global = pos.reshape(B, N * per_frame, 2)
        max_pos = max(h, w)
        outputs = []
        for i, blk in enumerate(self.decoder):
            if i % 2 == 0:
                x = blk(x.reshape(B * N, per_frame, -1), pos=pos, max_position=max_pos)
            else:
                x = blk(x.reshape(B, N * per_frame, -1), pos=pos_global, max_position=max_pos)
            if intermediates is not None:
                intermediates[f"dec_block{i}_out"] = x
            outputs.append(x)
        hidden = torch.cat([outputs[-2].reshape(B * N, per_frame, -1), outputs[-1].reshape(B * N, per_frame, -1)], -1)
        pts_tok = self.point_decoder(hidden, pos)
        conf_tok = self.conf_decoder(hidden, pos)
        cam_tok = self.camera_decoder(hidden, pos)
        if intermediates is not None:
            intermediates.update(decode_hidden_out=hidden, decode_pos=pos, point_decoder_out=pts_tok,
                                 conf_decoder_out=conf_tok, camera_decoder_out=cam_tok)
        # The heads run outside autocast in the parameters' dtype (float32 normally), as the stock code's
        # `autocast(enabled=False)` + `.float()` does; the float64 run (islands off) stays float64.
        head_dtype = self.point_head.proj.weight.dtype
        with torch.autocast(images.device.type, enabled=False):
            pts_tok, conf_tok, cam_tok = (t.to(head_dtype) for t in (pts_tok, conf_tok, cam_tok))
            xyl = self.point_head(pts_tok[:, n_reg:], (h, w))
            z = torch.exp(xyl[..., 2:3])
            local = torch.cat([xyl[..., :2] * z, z], dim=-1).reshape(B, N, H, W, 3)
            conf = self.conf_head(conf_tok[:, n_reg:], (h, w)).reshape(B, N, H, W, 1)
            poses = self.camera_head(cam_tok[:, n_reg:], intermediates).reshape(B, N, 4, 4)
            points = torch.einsum("bnij,bnhwj->bnhwi", poses[..., :3, :3], local) + poses[..., None, None, :3, 3]
        return {"local_points": local, "conf": conf, "camera_poses": poses, "points": points}

    def config_dict(self) -> dict[str, Any]:
        return asdict(self.cfg)


def tiny_config() -> Pi3Config:
    """The golden fixture's tiny configuration (388,492 parameters): for tests and weight-free smoke runs."""
    return Pi3Config(enc_dim=48, enc_depth=2, enc_heads=3, dec_dim=48, dec_depth=4, dec_heads=3, head_dim=32,
                     head_depth=2, head_heads=2, point_out_dim=32, camera_out_dim=32, camera_head_dim=32)


class Pi3WindowModel:
    """pi3 as a LASER window model: images [n,3,H,W] in [0,1] -> WindowPrediction (frames filled by the caller).

    Runs the network under autocast on CUDA (bf16 where supported), the heads' outputs in float32.
    """

    default_width = 518

    def __init__(self, model: Pi3, device: torch.device, autocast_dtype: torch.dtype | None = None) -> None:
        self.model = model.eval()
        self.device = device
        self.autocast_dtype = autocast_dtype
        self.patch_size = model.patch_size

    def predict_window(self, images: torch.Tensor):  # noqa: ANN201 - recon.align.engine.WindowPrediction
        from recon.types import WindowPrediction

        x = images.to(self.device, non_blocking=True)[None]
        weights_dtype = next(self.model.parameters()).dtype
        enabled = self.autocast_dtype is not None and self.autocast_dtype != weights_dtype
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.bfloat16,
                                                    enabled=enabled):
            out = self.model(x.to(weights_dtype))
        return WindowPrediction([], out["local_points"][0].float().cpu(), out["camera_poses"][0].float().cpu(),
                                out["conf"][0, ..., 0].float().cpu())


def build_window_model(*, weights: str | None = None, model_config: str = "full", device: str | None = None,
                       dtype: str | None = None, weights_dtype: str | None = None, seed: int = 0) -> Pi3WindowModel:
    """Window model for the LASER backend.

    Args:
        weights: checkpoint path (else the Hugging Face cache; see `recon weights pull pi3`).
        model_config: "full" (published weights required) or "tiny" (the golden fixture's size: `weights` loaded
            strictly into it, else random weights, no download: smoke runs).
        device: "cpu", "cuda", ... (default: CUDA when available).
        dtype: compute dtype, as for every backend (`recon.models.weights.compute_dtype`): "auto" (bf16 on CUDA,
            fp32 elsewhere), "fp32", "bf16", "fp16".
        weights_dtype: storage dtype of the parameters, "fp32" (default), "bf16" or "fp16" (half the memory; the
            network then computes in it).
    """
    from recon.errors import ConfigError
    from recon.models.weights import compute_dtype, pick_device, resolve_dtype

    dev = pick_device(device)
    stored = resolve_dtype(weights_dtype)
    autocast = compute_dtype(dtype, dev, stored)
    if model_config not in ("full", "tiny"):
        raise ConfigError(f"pi3 model_config must be 'full' or 'tiny', got {model_config!r}")
    if model_config == "tiny" and weights is None:
        from recon.models.seeding import seeded

        with seeded(seed):
            model = Pi3(tiny_config())
        return Pi3WindowModel(model.to(device=dev, dtype=stored).eval(), dev, autocast)
    from recon.models.registry import tiny_variant
    from recon.models.weights import load_pretrained

    name = tiny_variant("pi3") if model_config == "tiny" else "pi3"
    model = load_pretrained(name, weights, device=dev, dtype=stored)
    return Pi3WindowModel(model, dev, autocast)
