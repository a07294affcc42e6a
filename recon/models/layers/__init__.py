"""recon.models.layers: the shared building blocks of the VGGT family (and of pi3 / HorizonStream later).

One implementation of each block, small single-purpose modules, official checkpoint key names.
"""

from recon.models.layers.aggregator import Aggregator, block_causal_mask
from recon.models.layers.attention import Attention
from recon.models.layers.block import Block
from recon.models.layers.camera_head import CameraHead
from recon.models.layers.dinov2 import DinoVisionTransformer, PatchEmbed
from recon.models.layers.dpt_head import DPTHead, FeatureFusionBlock, ResidualConvUnit
from recon.models.layers.layer_scale import LayerScale
from recon.models.layers.mlp import Mlp
from recon.models.layers.rope import RotaryPositionEmbedding2D, patch_positions

__all__ = [
    "Aggregator", "Attention", "Block", "CameraHead", "DPTHead", "DinoVisionTransformer", "FeatureFusionBlock",
    "LayerScale", "Mlp", "PatchEmbed", "ResidualConvUnit", "RotaryPositionEmbedding2D", "block_causal_mask",
    "patch_positions",
]
