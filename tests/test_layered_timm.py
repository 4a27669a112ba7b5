"""timm models through :func:`lightning_regs.models.layered` and local learning: exact views, cut points at the
blocks, and a trained model whose state dict loads into a fresh ``timm.create_model`` (strict)."""

from __future__ import annotations

import pickle
import subprocess
import sys
import warnings

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_regs.local_learning import LocalLearningMixin
from lightning_regs.models import LayeredModel, layered
from lightning_regs.modes import eval_mode
from tests.helpers.trainers import QUIET

timm = pytest.importorskip("timm")

# Small inputs: ViTs are built for 32x32 images in 8x8 patches (16 tokens and the class token).
VIT_32 = {"img_size": 32, "patch_size": 8}
# name, create_model kwargs, the first layer names, the last layer name, number of layers
CASES = {
    "resnet18": ({}, ("stem", "layer1_0", "layer1_1", "layer2_0"), "layer4_1", 9),
    "convnext_atto": ({}, ("stem", "stages_0_blocks_0", "stages_0_blocks_1", "stages_1_downsample"),
                      "stages_3_blocks_1", 16),
    "vit_tiny_patch16_224": (VIT_32, ("embedding", "blocks_0", "blocks_1"), "blocks_11", 13),
    "deit_tiny_patch16_224": (VIT_32, ("embedding", "blocks_0", "blocks_1"), "blocks_11", 13),
    "deit_tiny_distilled_patch16_224": (VIT_32, ("embedding", "blocks_0"), "blocks_11", 13),
    "efficientnet_b0": ({}, ("stem", "blocks_0_0", "blocks_1_0", "blocks_1_1"), "conv_head", 18),
}  # fmt: skip


def create(name: str, **kwargs) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, num_classes=10, **{**CASES[name][0], **kwargs})


@pytest.fixture(params=list(CASES), scope="module")
def case(request: pytest.FixtureRequest) -> tuple[str, nn.Module, nn.Module]:
    # Dropout in the head and stochastic depth in the blocks: train-mode equality then needs the same draws.
    model = create(request.param, drop_rate=0.3, drop_path_rate=0.1)
    return request.param, model, layered(model)


def _forward_both(model: nn.Module, view: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        torch.manual_seed(1)
        expected = model(x)
        torch.manual_seed(1)
        return view(x), expected


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_the_view_computes_the_models_forward_exactly(case, train: bool) -> None:
    _, model, view = case
    model.train(train)
    x = torch.randn(4, 3, 32, 32)
    out, expected = _forward_both(model, view, x)
    assert not torch.equal(expected[0], expected[1])  # the comparison is not vacuous
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
    assert torch.equal(view.head(view.layers(x)), model(x)) or train  # train mode draws anew


@pytest.mark.parametrize("name", ["resnet18", "deit_tiny_distilled_patch16_224"])
def test_the_head_follows_the_mode_of_the_models_modules_and_leaves_the_models_flag(name: str) -> None:
    # timm's forward_head reads the model's own `training` (ResNet's dropout, DeiT's two heads).
    model = create(name, drop_rate=0.5).train()
    view = layered(model).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(view(x), view(x))
        assert model.training  # view.eval() reaches the model's modules, not the model's own flag
        assert torch.equal(view(x), model.eval()(x))
        with eval_mode(view):  # as local learning sizes its heads: every flag comes back
            view(x)
        assert not model.training
        model.train()
        torch.manual_seed(1)
        expected = model(x)  # dropout on: the view, set to train by the model, draws the same
        torch.manual_seed(1)
        assert torch.equal(view(x), expected)


def test_cut_points_are_the_blocks_named_by_their_module_path(case) -> None:
    name, _, view = case
    _, first, last, count = CASES[name]
    assert isinstance(view, LayeredModel)
    assert view.layer_names[: len(first)] == first
    assert view.layer_names[-1] == last and len(view.layer_names) == count
    assert view.num_classes == 10


def test_every_parameter_is_shared_exactly_once(case) -> None:
    _, model, view = case
    shared = [id(p) for _, p in view.named_parameters(remove_duplicate=False)]
    assert sorted(shared) == sorted(id(p) for p in model.parameters())


def test_the_view_pickles(case) -> None:
    _, model, view = case
    model.eval()
    clone = pickle.loads(pickle.dumps(view))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))


def test_the_view_trains_the_models_own_parameters() -> None:
    model = create("resnet18")
    view = layered(model)
    view(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.conv1.weight.grad is not None and model.fc.weight.grad is not None
    assert view.layers.layer3_1 is model.layer3[1]


def test_print_shows_the_cut_points_compactly() -> None:
    text = repr(layered(create("vit_tiny_patch16_224")))
    lines = text.splitlines()
    assert lines[0].startswith("LayeredModel(num_classes=10, 13 layers;")
    assert lines[1] == "  (0) embedding: TimmViTEmbedding(PatchEmbed, Dropout)"
    assert lines[2] == "  (1) blocks_0: Block"
    assert lines[-2] == "  head: TimmHead(LayerNorm, Dropout, Linear)"
    assert len(lines) == 13 + 3  # one line per layer, the head, the brackets: not the module tree
    assert "qkv" not in text


class OverridesForwardFeatures(timm.models.resnet.ResNet):
    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward_features(x) * 2


def test_a_timm_subclass_that_changes_forward_features_is_refused() -> None:
    model = OverridesForwardFeatures(timm.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10)
    with pytest.raises(TypeError, match=r"overrides forward_features.*LayeredModel\(layers="):
        layered(model)


def test_another_timm_family_is_named_with_the_supported_ones() -> None:
    model = timm.create_model("mobilenetv3_small_050", num_classes=10)
    with pytest.raises(TypeError, match=r"does not know how to split MobileNetV3.*timm ResNet, ConvNeXt"):
        layered(model)


def test_the_library_neither_imports_nor_needs_timm_for_other_models() -> None:
    code = (
        "import sys; import lightning_regs, lightning_regs.models, lightning_regs.local_learning; "
        "assert 'timm' not in sys.modules; sys.modules['timm'] = None; "  # None: `import timm` now fails
        "import torchvision; from lightning_regs.models import layered; "
        "print(layered(torchvision.models.resnet18()).layer_names[0])"
    )
    assert subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout == "stem\n"


class TimmLocal(LocalLearningMixin, LightningModule):
    """The README's own-model module, on a timm backbone."""

    def __init__(self, name: str, split: list[str]) -> None:
        super().__init__()
        self.net = create(name)
        self.setup_local_learning(self.net, split=split, head="dgl")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss, logits, _ = self.local_training_step(x, y)
        return {"loss": loss, "logits": logits}

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


# timm's dotted module paths name the cut as well as the layer names do.
@pytest.mark.parametrize(
    ("name", "split", "key"),
    [
        ("resnet18", ["layer2.1"], "net.layer1.0.conv1.weight"),
        ("convnext_atto", ["stages.1.blocks.1"], "net.stages.0.blocks.0.conv_dw.weight"),
        ("vit_tiny_patch16_224", ["blocks_5"], "net.blocks.0.attn.qkv.weight"),
    ],
)
def test_local_learning_keeps_timms_own_state_dict_keys(name: str, split: list[str], key: str) -> None:
    seed_everything(0)
    module = TimmLocal(name, split)
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 10, (8,), generator=generator)
    data = TensorDataset(images, labels)
    before = {k: v.clone() for k, v in module.net.state_dict().items()}
    with warnings.catch_warnings():  # sizing the heads leaves every module's mode as it was
        warnings.filterwarnings("error", message=".*in eval mode at the start of training")
        Trainer(max_steps=2, **QUIET).fit(module, DataLoader(data, batch_size=4))
    assert module.num_local_modules == 2
    state = module.export_state_dict()
    assert key in state
    assert sorted(state) == sorted(f"net.{k}" for k in before)
    assert sorted(k for k in module.state_dict() if not k.startswith("net.")) == sorted(
        f"aux_heads.{k}" for k in module.aux_heads.state_dict()
    )
    fresh = timm.create_model(name, num_classes=10, **CASES[name][0])
    fresh.load_state_dict({k.removeprefix("net."): v for k, v in state.items()}, strict=True)
    trained = [k for k, v in fresh.state_dict().items() if k.endswith("weight") and not torch.equal(v, before[k])]
    # Both modules trained: a weight in front of the cut (by the auxiliary head) and the classifier.
    assert key.removeprefix("net.") in trained
    assert any(k.startswith(("fc.", "head.")) for k in trained)
