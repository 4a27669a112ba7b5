"""Classifiers that follow the layer-sequence contract ``forward(x) == head(layers(x))``.

``layers`` is a named :class:`torch.nn.Sequential` that local learning splits and monitors hook;
``head`` turns its output into logits. See :mod:`lightning_regs.models.layered`.
"""

from __future__ import annotations

from lightning_regs.models.activations import CRReLU, replace_activations
from lightning_regs.models.adapters import layered
from lightning_regs.models.attention_mil import AttentionMIL, MILOutput
from lightning_regs.models.cifar_resnet import (
    BasicBlock,
    CifarResNet,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)
from lightning_regs.models.encoder_weights import EncoderDownloadError, EncoderWeightsError
from lightning_regs.models.frozen_encoder import EncoderFeatures, FrozenEncoder
from lightning_regs.models.layered import LayeredModel, layer_sequence
from lightning_regs.models.mlp import MLP
from lightning_regs.models.preact_resnet import PreActBlock, PreActResNet18
from lightning_regs.models.small_cnn import SmallCNN

__all__ = [
    "AttentionMIL",
    "MILOutput",
    "LayeredModel",
    "layer_sequence",
    "layered",
    "CifarResNet",
    "BasicBlock",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
    "PreActResNet18",
    "PreActBlock",
    "MLP",
    "SmallCNN",
    "CRReLU",
    "replace_activations",
    "FrozenEncoder",
    "EncoderFeatures",
    "EncoderWeightsError",
    "EncoderDownloadError",
]
