"""Tests for :func:`lightning_regs.models.layered`, the layered views of common architectures."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.convnext import CNBlockConfig, ConvNeXt
from torchvision.models.vgg import VGG, make_layers
from torchvision.models.vision_transformer import VisionTransformer

from lightning_regs.local_learning.splits import split_points
from lightning_regs.models import MLP, LayeredModel, layer_sequence, layered


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def sequential_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 10),
    )


def sequential_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(3 * 8 * 8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 10)
    )


def small_vgg() -> VGG:
    model = VGG(make_layers([8, "M", 16, "M"], batch_norm=True), num_classes=10)
    # VGG's classifier expects 512 channels; shrink it to these 16, keeping its shape of layers.
    model.classifier = nn.Sequential(
        nn.Linear(16 * 7 * 7, 32),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(32, 32),
        nn.ReLU(),
        nn.Dropout(),
        nn.Linear(32, 10),
    )
    return model


def small_convnext() -> ConvNeXt:
    return ConvNeXt([CNBlockConfig(8, 16, 1), CNBlockConfig(16, None, 1)], num_classes=10)


def small_vit() -> VisionTransformer:
    model = VisionTransformer(
        image_size=16, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
    )
    nn.init.normal_(model.heads.head.weight)  # zero-initialized: the logits would not depend on the input
    return model


RESNET18_NAMES = ("stem", *(f"layer{s}_{b}" for s in range(1, 5) for b in range(2)))

# factory, input shape, expected entry names
CASES: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...], tuple[str, ...]]] = {
    "resnet18": (lambda: torchvision.models.resnet18(num_classes=10), (2, 3, 32, 32), RESNET18_NAMES),
    "vgg": (small_vgg, (2, 3, 32, 32), ("features_0-3", "features_4-7")),
    "convnext": (small_convnext, (2, 3, 32, 32), ("features_0", "features_1_0", "features_2", "features_3_0")),
    "vit": (small_vit, (2, 3, 16, 16), ("embedding", "encoder_layer_0", "encoder_layer_1")),
    "sequential_cnn": (sequential_cnn, (2, 3, 8, 8), ("0-3", "4-6")),
    "sequential_mlp": (sequential_mlp, (2, 3, 8, 8), ("0-2", "3-5")),
}


@pytest.fixture(params=list(CASES), scope="module")
def case(request: pytest.FixtureRequest) -> tuple[nn.Module, nn.Module, tuple[int, ...], tuple[str, ...]]:
    torch.manual_seed(0)
    factory, shape, names = CASES[request.param]
    model = factory().eval()
    return model, layered(model), shape, names


def test_output_equals_the_original(case) -> None:
    model, view, shape, _ = case
    x = torch.randn(shape)
    with torch.no_grad():
        out = model(x)
        assert not torch.equal(out[0], out[1])  # the comparison is not vacuous
        torch.testing.assert_close(view(x), out, rtol=0, atol=0)
        assert torch.equal(view.head(layer_sequence(view)(x)), model(x))


def test_entry_names_and_num_classes(case) -> None:
    _, view, _, names = case
    assert isinstance(view, LayeredModel)
    assert view.layer_names == names
    assert view.num_classes == 10


def test_every_parameter_is_shared_exactly_once(case) -> None:
    model, view, _, _ = case
    shared = [id(p) for _, p in view.named_parameters(remove_duplicate=False)]
    assert sorted(shared) == sorted(id(p) for p in model.parameters())


def test_no_entry_is_only_norms_or_activations(case) -> None:
    _, view, _, _ = case
    for name, entry in view.layers.named_children():
        assert any(isinstance(m, (nn.Conv2d, nn.Linear)) for m in entry.modules()), name


def test_the_view_pickles(case) -> None:
    model, view, shape, _ = case
    clone = pickle.loads(pickle.dumps(view))
    x = torch.randn(shape)
    with torch.no_grad():
        assert torch.equal(clone(x), model(x))


def test_resnet_view_trains_the_original() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    view = layered(model)
    view(torch.randn(2, 3, 32, 32)).sum().backward()
    assert model.conv1.weight.grad is not None
    assert view.layers.stem.conv1 is model.conv1
    assert view.layers.layer3_1 is model.layer3[1]


@pytest.mark.parametrize("factory", [sequential_cnn, small_vgg], ids=["sequential", "vgg"])
def test_conv_keeps_its_batch_norm_and_pooling(factory: Callable[[], nn.Module]) -> None:
    for entry in layered(factory()).layers:
        assert [type(m) for m in entry] == [nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d][: len(entry)]


def test_the_sequential_head_takes_the_global_pooling_but_not_the_activation_or_dropout() -> None:
    assert [type(m) for m in layered(sequential_cnn()).head] == [nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear]
    mlp = layered(sequential_mlp())
    assert [type(m) for m in mlp.layers[-1]] == [nn.Linear, nn.ReLU, nn.Dropout]
    assert [type(m) for m in mlp.head] == [nn.Linear]


def test_sequential_leading_parameter_free_children_join_the_first_entry() -> None:
    view = layered(nn.Sequential(nn.Flatten(), nn.Identity(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)))
    assert view.layer_names == ("0-3",)
    assert [type(m) for m in view.head] == [nn.Linear]
    assert view.num_classes == 2


def test_sequential_without_a_final_linear_has_an_identity_head() -> None:
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 5), nn.LogSoftmax(dim=1))
    view = layered(model, num_classes=5)
    assert view.layer_names == ("0-1", "2-3")
    assert isinstance(view.head, nn.Identity)
    x = torch.randn(2, 4)
    assert torch.equal(view(x), model(x))


def test_num_classes_can_be_given() -> None:
    assert layered(sequential_cnn(), num_classes=7).num_classes == 7


def test_a_layered_model_is_returned_as_is() -> None:
    model = MLP(in_features=4, num_classes=2, width=8, depth=3)
    assert layered(model) is model


def test_a_compiled_model_is_unwrapped() -> None:
    model = torchvision.models.resnet18(num_classes=10)
    view = layered(torch.compile(model))
    assert view.layers.stem.conv1 is model.conv1
    assert {id(p) for p in view.parameters()} == {id(p) for p in model.parameters()}


class Custom(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class SequentialWithForward(nn.Sequential):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


@pytest.mark.parametrize("model", [Custom(), SequentialWithForward(nn.Linear(3, 2), nn.Linear(2, 2))])
def test_an_unknown_model_is_named_with_the_families_and_the_manual_wrap(model: nn.Module) -> None:
    with pytest.raises(TypeError) as info:
        layered(model)
    message = str(info.value)
    assert type(model).__name__ in message
    for family in ("nn.Sequential", "ResNet", "VGG", "ConvNeXt", "VisionTransformer", "timm", "EfficientNet"):
        assert family in message
    assert "LayeredModel(layers=[(name, module), ...], head=" in message


def test_a_sequential_without_linear_needs_num_classes() -> None:
    with pytest.raises(ValueError, match="num_classes"):
        layered(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


def test_layer_sequence_suggests_layered_and_its_families() -> None:
    with pytest.raises(TypeError, match=r"lightning_regs\.models\.layered\(model\)` \(nn\.Sequential.*timm ResNet"):
        layer_sequence(Custom())


def test_split_points_accept_torchvision_dotted_names() -> None:
    layers = layered(torchvision.models.resnet18()).layers
    assert split_points(layers, ["layer2.1", "layer3_0", "layer4.0"]) == (4, 5, 7)
    with pytest.raises(ValueError, match=r"'layer5\.0' is not a layer name.*'stem'"):
        split_points(layers, ["layer5.0"])


def test_print_shows_the_cut_points_and_the_head_not_the_module_tree() -> None:
    text = repr(layered(torchvision.models.resnet18(num_classes=10)))
    assert text.splitlines() == [
        "LayeredModel(num_classes=10, 9 layers; a split cuts after any but the last, by index or name:",
        "  (0) stem: Sequential(Conv2d, BatchNorm2d, ReLU, MaxPool2d)",
        *(f"  ({i + 1}) {name}: BasicBlock" for i, name in enumerate(RESNET18_NAMES[1:])),
        "  head: Sequential(AdaptiveAvgPool2d, Flatten, Linear)",
        ")",
    ]


def test_print_names_the_parts_and_counts_long_sequentials() -> None:
    vit = repr(layered(small_vit()))
    assert "  (0) embedding: ViTEmbedding(Conv2d, Dropout)" in vit
    assert "  head: Sequential(LayerNorm, ClassToken, Sequential)" in vit
    wide = LayeredModel([("block", nn.Sequential(*[nn.Linear(2, 2) for _ in range(9)]))], nn.Linear(2, 2), 2)
    assert "  (0) block: Sequential(Linear, Linear, Linear, Linear, Linear, ... 4 more)" in repr(wide)


def test_print_nests_inside_the_module_that_holds_it() -> None:
    holder = nn.ModuleDict({"net": layered(sequential_cnn())})
    assert "(net): LayeredModel(num_classes=10, 2 layers;" in repr(holder)
    assert "    (0) 0-3: Sequential(Conv2d, BatchNorm2d, ReLU, MaxPool2d)" in repr(holder)
