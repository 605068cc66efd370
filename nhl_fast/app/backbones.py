"""Feature extractors in front of the NestedHashLayer.

Built in: ``identity`` (pre-extracted features: the NHL head alone, as in the
reference's feature mode), ``mlp`` and ``cnn`` (small, for digits and small images).
torchvision models (``resnet18``, ``resnet50``, ``alexnet``, ``vit_b_16``) are used
only when torchvision is installed; pretrained weights come from a local file
(``--weights``): nothing is ever downloaded.
"""
from __future__ import annotations

import importlib.util
import math
import os
from typing import Optional

import torch
from torch import nn

TORCHVISION = ("resnet18", "resnet50", "alexnet", "vit_b_16")
BUILTIN = ("identity", "mlp", "cnn")


class BackboneError(ValueError):
    """A backbone that cannot be built here; the message says why and what to do."""


class MLP(nn.Module):
    def __init__(self, in_features: int, hidden: int = 512, depth: int = 2, dropout: float = 0.1):
        super().__init__()
        layers, d = [nn.Flatten()], in_features
        for _ in range(depth):
            layers += [nn.Linear(d, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            d = hidden
        self.net, self.out_features = nn.Sequential(*layers), d

    def forward(self, x):
        return self.net(x)


class SmallCNN(nn.Module):
    """Three conv blocks + global pooling: works from 8x8 digits to 224x224 images."""

    def __init__(self, in_channels: int, width: int = 64, hidden: int = 256):
        super().__init__()

        def block(i, o, pool):
            return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)] + (
                [nn.MaxPool2d(2)] if pool else [])

        self.features = nn.Sequential(*block(in_channels, width, True), *block(width, 2 * width, True),
                                      *block(2 * width, 4 * width, False), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Sequential(nn.Linear(4 * width, hidden), nn.ReLU(inplace=True), nn.Dropout(0.1))
        self.out_features = hidden

    def forward(self, x):
        return self.fc(self.features(x))


class Identity(nn.Module):
    def __init__(self, in_features: int):
        super().__init__()
        self.out_features = in_features

    def forward(self, x):
        return x.flatten(1)


def _torchvision(name: str, weights: Optional[str]) -> nn.Module:
    if importlib.util.find_spec("torchvision") is None:
        raise BackboneError(
            f"--backbone {name} needs torchvision, which is not installed. Install the torchvision build that "
            f"matches your torch (pip install torchvision; the 'vision' extra), or use a built-in backbone: "
            f"{', '.join(BUILTIN)}")
    import torchvision

    model = getattr(torchvision.models, name)(weights=None)  # never download
    if weights:
        if not os.path.exists(weights):
            raise BackboneError(f"--weights {weights}: file not found (nothing is downloaded at run time)")
        if weights.endswith(".safetensors"):
            from safetensors.torch import load_file
            state = load_file(weights)
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
        missing, _ = model.load_state_dict(state, strict=False)
        if len(missing) == len(model.state_dict()):
            raise BackboneError(f"--weights {weights}: no parameter matches torchvision's {name}")
    if name.startswith("resnet"):
        out = model.fc.in_features
        model.fc = nn.Identity()
    elif name == "alexnet":
        out = model.classifier[-1].in_features
        model.classifier = model.classifier[:-1]
    else:  # vit
        out = model.heads.head.in_features
        model.heads = nn.Identity()
    model.out_features = out
    return model


def build_backbone(name: str, input_shape, weights: Optional[str] = None) -> nn.Module:
    """A module mapping a batch of inputs to (B, out_features) features (its `.out_features`)."""
    input_shape = tuple(input_shape)
    if name == "identity":
        return Identity(math.prod(input_shape))
    if name == "mlp":
        return MLP(math.prod(input_shape))
    if name == "cnn":
        if len(input_shape) != 3:
            raise BackboneError(f"--backbone cnn needs image inputs (C, H, W), got feature vectors of shape "
                                f"{input_shape}: use --backbone identity or mlp")
        return SmallCNN(input_shape[0])
    if name in TORCHVISION:
        if importlib.util.find_spec("torchvision") is None:
            return _torchvision(name, weights)  # raises the "install torchvision" message
        if len(input_shape) != 3 or input_shape[0] != 3:
            raise BackboneError(f"--backbone {name} needs RGB images, got inputs of shape {input_shape}")
        return _torchvision(name, weights)
    raise BackboneError(f"unknown backbone {name!r}; choose from {', '.join(BUILTIN + TORCHVISION)}")


def default_backbone(kind: str) -> str:
    return "identity" if kind == "features" else "cnn"
