"""ShapeViT: a small vision transformer classifier (patches, transformer encoder, linear head)."""

from __future__ import annotations

import torch
from torch import nn


class ShapeViT(nn.Module):
    """Images [B, 3, S, S] -> class logits [B, num_classes]; ``encoder.layers`` are the blocks FSDP2 shards."""

    def __init__(
        self, image_size: int, patch_size: int, hidden: int, layers: int, heads: int, num_classes: int
    ) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(3, hidden, kernel_size=patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden))
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + (image_size // patch_size) ** 2, hidden) * 0.02)
        layer = nn.TransformerEncoderLayer(hidden, heads, 4 * hidden, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Class logits of each image."""
        patches = self.patch_embed(image).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(patches), -1, -1), patches], dim=1) + self.pos_embed
        return self.head(self.norm(self.encoder(tokens)[:, 0]))
