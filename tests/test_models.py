"""Tests for the layer-sequence models in :mod:`lightning_regs.models`."""

from __future__ import annotations

import pickle
from collections.abc import Callable

import pytest
import torch
from torch import nn

from lightning_regs.models import (
    MLP,
    BasicBlock,
    CifarResNet,
    LayeredModel,
    PreActBlock,
    PreActResNet18,
    SmallCNN,
    layer_sequence,
    resnet20,
    resnet32,
    resnet44,
    resnet56,
    resnet110,
)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# (model factory, input shape, expected logits)
CASES: dict[str, tuple[Callable[[], LayeredModel], tuple[int, ...], int]] = {
    "resnet20": (lambda: resnet20(num_classes=10), (2, 3, 32, 32), 10),
    "resnet32-c100": (lambda: resnet32(num_classes=100), (2, 3, 32, 32), 100),
    "cifar-resnet-gray": (lambda: CifarResNet(depth=8, num_classes=5, in_channels=1), (2, 1, 32, 32), 5),
    "preact18-narrow": (lambda: PreActResNet18(num_classes=10, base_width=8), (2, 3, 32, 32), 10),
    "preact18-nobn": (
        lambda: PreActResNet18(num_classes=7, base_width=8, use_batchnorm=False),
        (2, 3, 32, 32),
        7,
    ),
    "mlp-image": (lambda: MLP(in_features=64, num_classes=10, width=32), (2, 1, 8, 8), 10),
    "mlp-flat": (lambda: MLP(in_features=64, num_classes=3, width=32, depth=4), (2, 64), 3),
    "smallcnn-digits": (lambda: SmallCNN(num_classes=10, in_channels=1), (2, 1, 8, 8), 10),
    "smallcnn-cifar": (lambda: SmallCNN(num_classes=10, in_channels=3), (2, 3, 32, 32), 10),
}


@pytest.mark.parametrize("case", list(CASES))
def test_output_shape_and_contract(case: str) -> None:
    factory, shape, num_classes = CASES[case]
    model = factory().eval()
    assert isinstance(model, LayeredModel)
    assert model.num_classes == num_classes
    x = torch.randn(*shape)
    with torch.no_grad():
        out = model(x)
        split = model.head(layer_sequence(model)(x))
    assert out.shape == (2, num_classes)
    assert torch.equal(out, split)


@pytest.mark.parametrize("case", list(CASES))
def test_contract_holds_in_train_mode(case: str) -> None:
    factory, shape, _ = CASES[case]
    model = factory().train()
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(model(x), model.head(model.layers(x)))


@pytest.mark.parametrize("case", list(CASES))
def test_models_pickle_round_trip(case: str) -> None:
    factory, shape, _ = CASES[case]
    model = factory().eval()
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(*shape)
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))


@pytest.mark.parametrize(
    ("factory", "n_layers"),
    [(resnet20, 10), (resnet32, 16), (resnet44, 22), (resnet56, 28), (resnet110, 55)],
)
def test_cifar_resnet_layer_names(factory: Callable[[], CifarResNet], n_layers: int) -> None:
    model = factory()
    n = (model.depth - 2) // 6
    expected = ("stem", *(f"s{s}b{b}" for s in (1, 2, 3) for b in range(n)))
    assert len(model.layers) == n_layers
    assert model.layer_names == expected
    assert all(isinstance(getattr(model.layers, name), BasicBlock) for name in expected[1:])


def test_resnet20_exact_parameter_count() -> None:
    # 269,722 for the option-A (zero-padding) shortcut of the paper, plus the two
    # 1x1-conv + BN projections: 16·32 + 2·32 + 32·64 + 2·64 = 2,752.
    assert n_params(resnet20()) == 272_474
    assert n_params(resnet20(num_classes=100)) == 272_474 + 90 * 65


@pytest.mark.parametrize(("factory", "reference"), [(resnet32, 0.46e6), (resnet56, 0.85e6), (resnet110, 1.7e6)])
def test_cifar_resnet_parameter_counts_match_paper(factory: Callable[[], CifarResNet], reference: float) -> None:
    assert abs(n_params(factory()) - reference) / reference < 0.03


def test_cifar_resnet_stage_shapes() -> None:
    model = resnet20().eval()
    x = torch.randn(2, 3, 32, 32)
    shapes = {}
    with torch.no_grad():
        for name, layer in model.layers.named_children():
            x = layer(x)
            shapes[name] = tuple(x.shape[1:])
    assert shapes["stem"] == (16, 32, 32)
    assert shapes["s1b2"] == (16, 32, 32)
    assert shapes["s2b0"] == (32, 16, 16)
    assert shapes["s2b2"] == (32, 16, 16)
    assert shapes["s3b0"] == (64, 8, 8)
    assert shapes["s3b2"] == (64, 8, 8)


def test_cifar_resnet_base_width_and_shortcuts() -> None:
    model = CifarResNet(depth=14, base_width=8)
    assert model.head[-1].in_features == 32
    assert isinstance(model.layers.s1b0.shortcut, nn.Identity)
    projection = model.layers.s2b0.shortcut
    assert isinstance(projection, nn.Sequential)
    assert isinstance(projection[0], nn.Conv2d) and projection[0].kernel_size == (1, 1)
    assert projection[0].stride == (2, 2)
    assert isinstance(projection[1], nn.BatchNorm2d)


def test_cifar_resnet_initialisation() -> None:
    model = resnet20()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.equal(module.weight, torch.ones_like(module.weight))
            assert torch.equal(module.bias, torch.zeros_like(module.bias))
    conv = model.layers.s3b2.conv2
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.1)


def test_basic_block_relus_are_distinct_and_not_inplace() -> None:
    model = resnet20()
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 1 + 2 * 9
    assert len({id(m) for m in relus}) == len(relus)
    assert not any(m.inplace for m in relus)
    block = model.layers.s1b0
    assert isinstance(block.relu1, nn.ReLU) and isinstance(block.relu2, nn.ReLU)
    assert block.relu1 is not block.relu2


@pytest.mark.parametrize("depth", [0, 7, 21, 33, 100])
def test_cifar_resnet_rejects_bad_depth(depth: int) -> None:
    with pytest.raises(ValueError, match=r"6n \+ 2.*110"):
        CifarResNet(depth=depth)


def test_preact_resnet18_layers_and_parameter_count() -> None:
    model = PreActResNet18(num_classes=10)
    assert model.layer_names == ("stem", "s1b0", "s1b1", "s2b0", "s2b1", "s3b0", "s3b1", "s4b0", "s4b1")
    assert isinstance(model.layers.stem, nn.Conv2d)
    assert all(isinstance(model.layers[i], PreActBlock) for i in range(1, 9))
    # 11,171,146 is the widely quoted figure for the head without the final BN (kuangliu/pytorch-cifar);
    # the pre-activation head's BN(512) adds 2 · 512 parameters.
    assert n_params(model) == 11_171_146 + 2 * 512


def test_preact_resnet18_stage_shapes_and_shortcuts() -> None:
    model = PreActResNet18(base_width=4).eval()
    x = torch.randn(2, 3, 32, 32)
    shapes = {}
    with torch.no_grad():
        for name, layer in model.layers.named_children():
            x = layer(x)
            shapes[name] = tuple(x.shape[1:])
    assert shapes["stem"] == (4, 32, 32)
    assert shapes["s1b1"] == (4, 32, 32)
    assert shapes["s2b0"] == (8, 16, 16)
    assert shapes["s3b0"] == (16, 8, 8)
    assert shapes["s4b1"] == (32, 4, 4)
    assert model.layers.s1b0.shortcut is None
    assert model.layers.s1b1.shortcut is None
    assert isinstance(model.layers.s2b0.shortcut, nn.Conv2d)


def test_preact_block_shortcut_uses_preactivated_input() -> None:
    block = PreActBlock(2, 4, stride=1).eval()
    x = torch.randn(1, 2, 5, 5)
    with torch.no_grad():
        pre = block.relu1(block.bn1(x))
        residual = block.conv2(block.relu2(block.bn2(block.conv1(pre))))
        assert torch.allclose(block(x), residual + block.shortcut(pre))
        assert not torch.allclose(block(x), residual + block.shortcut(x))


def test_preact_relus_are_distinct_and_not_inplace() -> None:
    model = PreActResNet18(base_width=4)
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    assert len(relus) == 2 * 8 + 1
    assert len({id(m) for m in relus}) == len(relus)
    assert not any(m.inplace for m in relus)


def test_no_batchnorm_mode_has_no_batchnorm() -> None:
    without = PreActResNet18(base_width=16, use_batchnorm=False)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in without.modules())
    with_bn = PreActResNet18(base_width=16)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in with_bn.modules()) == 2 * 8 + 1
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in MLP().modules())


def test_mlp_layers_and_depth() -> None:
    model = MLP(in_features=64, width=16, depth=3)
    assert model.layer_names == ("fc1", "fc2")
    assert isinstance(model.layers.fc1[0], nn.Flatten)
    assert isinstance(model.head, nn.Linear) and model.head.out_features == 10
    assert sum(isinstance(m, nn.Linear) for m in model.modules()) == 3
    deeper = MLP(in_features=64, width=16, depth=5)
    assert deeper.layer_names == ("fc1", "fc2", "fc3", "fc4")
    assert n_params(MLP(in_features=784, width=200, depth=3)) == 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10
    assert n_params(MLP(in_features=64, width=16, depth=2, bias=False)) == 64 * 16 + 16 * 10


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("relu", nn.ReLU),
        ("gelu", nn.GELU),
        ("tanh", nn.Tanh),
        ("leaky_relu", nn.LeakyReLU),
        ("silu", nn.SiLU),
    ],
)
def test_mlp_activations_are_separate_instances(name: str, cls: type[nn.Module]) -> None:
    model = MLP(in_features=8, width=4, depth=4, activation=name)
    acts = [m for m in model.modules() if isinstance(m, cls)]
    assert len(acts) == 3
    assert len({id(m) for m in acts}) == 3


def test_mlp_init_scale_multiplies_every_parameter_exactly() -> None:
    torch.manual_seed(123)
    base = MLP(in_features=64, width=32, depth=3, init_scale=1.0)
    torch.manual_seed(123)
    scaled = MLP(in_features=64, width=32, depth=3, init_scale=8.0)
    pairs = list(zip(base.parameters(), scaled.parameters(), strict=True))
    assert len(pairs) == 6
    for p_base, p_scaled in pairs:
        assert torch.equal(p_scaled, 8.0 * p_base)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"depth": 1}, "depth"),
        ({"depth": 0}, "depth"),
        ({"activation": "swish"}, "gelu.*leaky_relu.*relu.*silu"),
    ],
)
def test_mlp_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MLP(**kwargs)


def test_small_cnn_structure() -> None:
    model = SmallCNN(width=32)
    assert model.layer_names == ("block1", "block2", "block3")
    assert isinstance(model.layers.block2[-1], nn.MaxPool2d)
    assert model.head[-1].in_features == 64
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert n_params(model) == 56_554
    with torch.no_grad():
        assert model.layers(torch.zeros(2, 1, 8, 8)).shape == (2, 64, 4, 4)


def test_layer_sequence_rejects_plain_module() -> None:
    with pytest.raises(TypeError, match="`layers`"):
        layer_sequence(nn.Linear(3, 2))


def test_layer_sequence_returns_the_layers() -> None:
    model = resnet20()
    assert layer_sequence(model) is model.layers
