"""Backbone + NestedHashLayer: the model the `nhl-fast` command trains, saves and encodes with."""
from __future__ import annotations

import torch
from torch import nn

from nhl_fast.app.backbones import build_backbone
from nhl_fast.layers import NestedHashLayer


class HashModel(nn.Module):
    def __init__(self, backbone: nn.Module, bit_list):
        super().__init__()
        self.backbone = backbone
        self.head = NestedHashLayer(backbone.out_features, bit_list=tuple(bit_list))

    def forward(self, x: torch.Tensor):
        """(layer input features, list of relaxed codes u_k)."""
        feats = self.backbone(x)
        return feats, self.head(feats)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Packed codes (B, ceil(b_max/64)) int64: every length is a prefix of these bits."""
        return self.head.encode(self.backbone(x))


def build_model(config: dict, weights=None) -> HashModel:
    """The model a config describes (weights, if any, are loaded by the caller)."""
    return HashModel(build_backbone(config["backbone"], config["input_shape"], weights=weights), config["bits"])
