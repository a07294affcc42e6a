"""The VGGT alternating-attention aggregator: DINOv2 patch tokens + camera/register tokens, then
`depth` rounds of frame attention (within each frame) and global attention (across frames).

Behaviour: facebookresearch/vggt@44b3afb:vggt/models/aggregator.py (reference notes §1.2):
- images are normalised inside with the ImageNet mean/std (non-persistent float32 buffers, not in the
  checkpoint; a `.double()` model therefore uses the float32-rounded constants, as the reference does);
- per-frame token layout `[camera, registers, patches]`; frame 0 of a sequence (of a streaming session) uses
  `camera_token[:, 0]` / `register_token[:, 0]`, every other frame index 1: the only thing that makes the world
  frame equal camera 0;
- RoPE positions `(row+1, col+1)` for patches and `(0, 0)` for special tokens, identical for every frame;
- output entry i is `cat(frame block i output, global block i output)` on channels.

Global attention has three modes, chosen by the caller: full (VGGT), block-causal over frames (StreamVGGT batch,
a boolean mask equal to the reference's additive `finfo.min` mask) and cached streaming (`forward_step`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from recon.memory.kv_cache import StreamingMemory
from recon.models.layers.block import Block
from recon.models.layers.dinov2 import DinoVisionTransformer
from recon.models.layers.rope import RotaryPositionEmbedding2D, patch_positions

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def block_causal_mask(num_frames: int, tokens_per_frame: int, device: torch.device | None = None) -> torch.Tensor:
    """Boolean `[S*P, S*P]` mask (True = may attend): a token of frame i sees every token of frames 0..i."""
    frame = torch.arange(num_frames, device=device).repeat_interleave(tokens_per_frame)
    return frame[None, :] <= frame[:, None]


class Aggregator(nn.Module):
    """Alternating frame/global attention over the frames' tokens.

    Args:
        img_size, patch_size, embed_dim: DINO training size, patch size and token width.
        depth: number of frame blocks (= number of global blocks).
        num_heads, mlp_ratio, qkv_bias, proj_bias, ffn_bias, init_values, norm_eps: block settings.
        num_register_tokens: aggregator registers per frame (4); `patch_start_idx` = 1 + this.
        aa_order: order of attention types inside one round (("frame", "global")).
        aa_block_size: blocks of each type per round (1).
        qk_norm, qk_norm_eps, qk_norm_affine: per-head q/k LayerNorm.
        rope_freq: RoPE base frequency (<= 0 disables RoPE).
        patch_embed: keyword overrides of `DinoVisionTransformer` (depth, num_heads, mlp_ratio, init_values,
            norm_eps, num_register_tokens, interpolate_antialias, interpolate_offset, ...). Defaults: ViT-L/14
            with 4 registers, LayerScale 1.0.
        global_rope: position embedding of the global blocks when it differs from the frame blocks' 2D RoPE
            (LingBot-Map's 3D video RoPE); None: the same 2D RoPE everywhere (VGGT).
    """

    def __init__(self, img_size: int = 518, patch_size: int = 14, embed_dim: int = 1024, depth: int = 24,
                 num_heads: int = 16, mlp_ratio: float = 4.0, num_register_tokens: int = 4, qkv_bias: bool = True,
                 proj_bias: bool = True, ffn_bias: bool = True, aa_order: Sequence[str] = ("frame", "global"),
                 aa_block_size: int = 1, qk_norm: bool = True, qk_norm_eps: float = 1e-5,
                 qk_norm_affine: bool = True, rope_freq: float = 100.0, init_values: float = 0.01,
                 norm_eps: float = 1e-5, patch_embed: dict | None = None,
                 global_rope: RotaryPositionEmbedding2D | None = None) -> None:
        super().__init__()
        if depth % aa_block_size:
            raise ValueError(f"Aggregator: depth {depth} is not divisible by aa_block_size {aa_block_size}")
        bad = [a for a in aa_order if a not in ("frame", "global")]
        if bad:
            raise ValueError(f"Aggregator: unknown attention types in aa_order: {bad}")
        dino_kwargs = dict(img_size=img_size, patch_size=patch_size, embed_dim=embed_dim, depth=24, num_heads=16,
                           mlp_ratio=4.0, num_register_tokens=4, init_values=1.0, norm_eps=1e-6,
                           interpolate_antialias=True, interpolate_offset=0.0)
        dino_kwargs.update(patch_embed or {})
        self.patch_embed = DinoVisionTransformer(**dino_kwargs)
        self.rope = RotaryPositionEmbedding2D(rope_freq) if rope_freq > 0 else None

        def make_block(rope: RotaryPositionEmbedding2D | None) -> Block:
            return Block(embed_dim, num_heads, mlp_ratio, qkv_bias=qkv_bias, proj_bias=proj_bias,
                         ffn_bias=ffn_bias, init_values=init_values, norm_eps=norm_eps, qk_norm=qk_norm,
                         qk_norm_eps=qk_norm_eps, qk_norm_affine=qk_norm_affine, rope=rope)

        self.frame_blocks = nn.ModuleList([make_block(self.rope) for _ in range(depth)])
        global_rope = self.rope if global_rope is None else global_rope
        self.global_blocks = nn.ModuleList([make_block(global_rope) for _ in range(depth)])
        self.depth = depth
        self.aa_order = list(aa_order)
        self.aa_block_size = aa_block_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.camera_token = nn.Parameter(torch.zeros(1, 2, 1, embed_dim))
        self.register_token = nn.Parameter(torch.zeros(1, 2, num_register_tokens, embed_dim))
        self.patch_start_idx = 1 + num_register_tokens
        # float32 constants on purpose (see module docstring); not part of the state dict.
        self.register_buffer("_resnet_mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float32).view(1, 1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("_resnet_std", torch.tensor(IMAGENET_STD, dtype=torch.float32).view(1, 1, 3, 1, 1),
                             persistent=False)

    def _tokens(self, images: torch.Tensor, first_frame_is_zero: bool | Sequence[bool]
                ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Normalise and embed `images [B,S,3,H,W]` -> tokens `[B,S,P,C]`, RoPE positions `[B*S,P,2]`, max pos.

        `first_frame_is_zero` is one flag for the batch, or (one frame per element, S == 1) one flag per element:
        a batched step of several sessions mixes sessions at their first frame with sessions further on."""
        B, S, _, H, W = images.shape
        if H % self.patch_size or W % self.patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {self.patch_size}")
        images = (images - self._resnet_mean) / self._resnet_std
        patches = self.patch_embed(images.reshape(B * S, 3, H, W)).reshape(B, S, -1, self.embed_dim)
        if not isinstance(first_frame_is_zero, bool):
            if S != 1 or len(first_frame_is_zero) != B:
                raise ValueError(f"per-element first-frame flags need one frame per element, got S={S}, "
                                 f"{len(first_frame_is_zero)} flags for B={B}")
            index = torch.tensor([0 if f else 1 for f in first_frame_is_zero], device=images.device)
            camera = self.camera_token[0, index].unsqueeze(1)
            registers = self.register_token[0, index].unsqueeze(1)
        else:
            # Frame 0 of the sequence gets index 0, every other frame index 1.
            index = torch.ones(S, dtype=torch.long, device=images.device)
            if first_frame_is_zero:
                index[0] = 0
            camera = self.camera_token[0, index].unsqueeze(0).expand(B, -1, -1, -1)
            registers = self.register_token[0, index].unsqueeze(0).expand(B, -1, -1, -1)
        tokens = torch.cat([camera, registers, patches], dim=2)
        gh, gw = H // self.patch_size, W // self.patch_size
        pos = patch_positions(B * S, gh, gw, self.patch_start_idx, images.device)
        return tokens, pos, max(gh, gw)

    def _run(self, tokens: torch.Tensor, pos: torch.Tensor, max_pos: int, global_mask: torch.Tensor | None,
             memory: StreamingMemory | None, keep_layers: set[int] | None,
             global_pos: torch.Tensor | None = None) -> list[torch.Tensor | None]:
        """The alternating blocks; `global_pos` overrides the global blocks' positions (default: `pos` flattened
        over frames), e.g. the (t, h, w) positions of a `global_rope`. `memory[i]` is any per-layer cache with
        `update(k, v) -> (keys, values)`."""
        B, S, P, C = tokens.shape
        frame_pos = pos
        if global_pos is None:
            global_pos = pos.reshape(B, S * P, 2)
        frame_i = global_i = 0
        outputs: list[torch.Tensor | None] = []
        x = tokens
        for _ in range(self.depth // self.aa_block_size):
            inter: dict[str, list[torch.Tensor]] = {"frame": [], "global": []}
            for kind in self.aa_order:
                for _ in range(self.aa_block_size):
                    if kind == "frame":
                        x = self.frame_blocks[frame_i](x.reshape(B * S, P, C), pos=frame_pos, max_position=max_pos)
                        frame_i += 1
                    else:
                        cache = memory[global_i] if memory is not None else None
                        x = self.global_blocks[global_i](x.reshape(B, S * P, C), pos=global_pos,
                                                         attn_mask=global_mask, kv_cache=cache, max_position=max_pos)
                        global_i += 1
                    inter[kind].append(x.reshape(B, S, P, C))
            for f, g in zip(inter["frame"], inter["global"], strict=True):
                idx = len(outputs)
                outputs.append(torch.cat([f, g], dim=-1) if keep_layers is None or idx in keep_layers else None)
        return outputs

    def forward(self, images: torch.Tensor, causal: bool = False, keep_layers: set[int] | None = None
                ) -> tuple[list[torch.Tensor | None], int]:
        """All frames at once.

        Args:
            images: `[B, S, 3, H, W]` in [0, 1], H and W multiples of the patch size.
            causal: block-causal global attention (StreamVGGT batch mode) instead of full attention.
            keep_layers: output entries to keep (others are None), to save memory; None keeps all.

        Returns:
            (list of `depth` entries `[B, S, P, 2C]`, patch_start_idx)
        """
        tokens, pos, max_pos = self._tokens(images, first_frame_is_zero=True)
        S, P = tokens.shape[1:3]
        mask = block_causal_mask(S, P, images.device) if causal and S > 1 else None
        return self._run(tokens, pos, max_pos, mask, None, keep_layers), self.patch_start_idx

    def forward_step(self, images: torch.Tensor, memory: StreamingMemory, keep_layers: set[int] | None = None
                     ) -> tuple[list[torch.Tensor | None], int]:
        """One new frame per batch element, `images [B, 3, H, W]`, attending to `memory` (one cache per
        global block). The session's first frame uses the frame-0 special tokens. `memory` may be a
        `recon.models.batched.BatchedMemory` (one session per element, `first_frame` one flag each)."""
        if len(memory) != self.depth:
            raise ValueError(f"memory has {len(memory)} layers, the aggregator {self.depth} global blocks")
        # A flag, not the frame counter: a compiled step must not specialise on a number that changes every frame.
        tokens, pos, max_pos = self._tokens(images.unsqueeze(1), first_frame_is_zero=memory.first_frame)
        return self._run(tokens, pos, max_pos, None, memory, keep_layers), self.patch_start_idx
