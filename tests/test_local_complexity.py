"""local_complexity against closed forms and a brute-force per-vertex count; its side effects."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from lightning_regs.functional.local_complexity import (
    cross_polytope_vertices,
    find_piecewise_linear_layers,
    local_complexity,
    orthonormal_directions,
)
from lightning_regs.models import MLP, PreActResNet18


def test_first_layer_count_is_the_number_of_hyperplanes_within_reach():
    torch.manual_seed(1)
    layer = nn.Linear(6, 40)
    model = nn.Sequential(layer, nn.ReLU())
    points = torch.randn(50, 6)
    directions = torch.randn(4, 6)  # explicit, not orthonormal: the closed form holds for any directions
    radius = 0.3
    with torch.no_grad():
        distance = (points @ layer.weight.T + layer.bias).abs()  # (N, H)
        reach = radius * (directions @ layer.weight.T).abs().amax(dim=0)  # (H,)
    expected = (distance <= reach).sum(dim=1)
    for include_center in (False, True):
        result = local_complexity(model, points, radius, directions=directions, include_center=include_center)
        assert result.layer_names == ("1",) and result.num_neurons == (40,)
        torch.testing.assert_close(result.counts[:, 0], expected, rtol=0, atol=0)
    assert 0 < int(expected.sum()) < 50 * 40  # the test is not vacuous


class ResidualBlock(nn.Module):
    """A torchvision-style basic block: one in-place ReLU module called twice."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + x)


def small_residual_cnn() -> nn.Module:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(inplace=True),
        ResidualBlock(4),
        nn.MaxPool2d(2),
        ResidualBlock(4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 8),
        nn.LeakyReLU(0.1),
        nn.Linear(8, 3),
    )
    with torch.no_grad():  # non-trivial running statistics
        for _ in range(3):
            model(torch.randn(16, 1, 6, 6) * 2 + 0.5)
    return model


def captured_inputs(store: list[torch.Tensor]):
    def hook(module: nn.Module, args: tuple) -> None:
        store.append(args[0].clone())

    return hook


def brute_force(model: nn.Module, points: torch.Tensor, radius: float, directions: torch.Tensor) -> torch.Tensor:
    """One forward per vertex, every activation input cloned per call, signs compared afterwards."""
    activations = [m for m in model.modules() if isinstance(m, (nn.ReLU, nn.LeakyReLU))]
    model.eval()
    counts = []
    for point in points:
        per_vertex = []
        for sign in (1, -1):
            for direction in directions:
                captured: list[torch.Tensor] = []
                hook = captured_inputs(captured)
                handles = [m.register_forward_pre_hook(hook) for m in activations]
                with torch.no_grad():
                    model((point + sign * radius * direction).unsqueeze(0))
                for handle in handles:
                    handle.remove()
                per_vertex.append([(c > 0).flatten() for c in captured])
        row = []
        for layer in range(len(per_vertex[0])):
            signs = torch.stack([vertex[layer] for vertex in per_vertex])
            row.append(int((signs != signs[0]).any(dim=0).sum()))
        counts.append(row)
    return torch.tensor(counts)


def test_agrees_with_brute_force_on_a_cnn_with_batchnorm_residuals_and_reused_inplace_relu():
    model = small_residual_cnn()
    model.train()
    points = torch.randn(5, 1, 6, 6)
    directions = orthonormal_directions((1, 6, 6), 3, torch.Generator().manual_seed(3))
    result = local_complexity(model, points, 0.2, directions=directions, include_center=False, batch_size=2)
    expected = brute_force(model, points, 0.2, directions)
    assert result.layer_names == ("2", "3.relu", "3.relu#1", "5.relu", "5.relu#1", "9")
    assert result.num_neurons == (144, 144, 144, 36, 36, 8)
    torch.testing.assert_close(result.counts, expected, rtol=0, atol=0)
    assert int(expected.sum()) > 0


def test_counts_grow_with_the_radius_and_vanish_as_it_goes_to_zero():
    model = small_residual_cnn()
    points = torch.randn(6, 1, 6, 6)
    totals = []
    for radius in (0.0, 1e-7, 0.01, 0.1, 0.5, 2.0):
        result = local_complexity(model, points, radius, num_directions=4)
        totals.append(result.total())
    assert int(totals[0].sum()) == 0 and int(totals[1].sum()) == 0
    first_layer = [
        local_complexity(model, points, r, num_directions=4, layers=["2"]).counts[:, 0] for r in (0.01, 0.1, 0.5, 2.0)
    ]
    for small, large in itertools.pairwise(first_layer):
        assert bool((small <= large).all())  # exact for the first layer: a bigger polytope reaches more hyperplanes
    assert float(totals[-1].float().mean()) > float(totals[2].float().mean()) > 0


def test_explicit_layers_read_activation_inputs_and_other_modules_outputs():
    torch.manual_seed(4)
    model = MLP(in_features=5, num_classes=3, width=12, depth=3)
    points = torch.randn(7, 5)
    default = local_complexity(model, points, 0.5, num_directions=3)
    linears = local_complexity(model, points, 0.5, num_directions=3, layers=["layers.fc1.1", "layers.fc2.0"])
    torch.testing.assert_close(default.counts, linears.counts, rtol=0, atol=0)  # Linear output == ReLU input here
    assert default.layer_names == ("layers.fc1.2", "layers.fc2.1")


def test_finds_every_activation_of_preact_resnet18():
    names = [name for name, _ in find_piecewise_linear_layers(PreActResNet18(base_width=4))]
    assert len(names) == 8 * 2 + 1 and names[-1] == "head.1"


def test_vertices_lie_at_the_radius_along_orthonormal_directions():
    directions = orthonormal_directions((2, 3), 4, torch.Generator().manual_seed(0))
    flat = directions.flatten(1)
    torch.testing.assert_close(flat @ flat.T, torch.eye(4), atol=1e-6, rtol=0)
    points = torch.randn(3, 2, 3)
    vertices = cross_polytope_vertices(points, 0.7, directions, include_center=True)
    assert vertices.shape == (3, 9, 2, 3)
    torch.testing.assert_close(vertices[:, 0], points)
    distances = (vertices[:, 1:] - points.unsqueeze(1)).flatten(2).norm(dim=2)
    torch.testing.assert_close(distances, torch.full((3, 8), 0.7), atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="do not fit"):
        orthonormal_directions((2,), 3)


class ExplodingReLU(nn.ReLU):
    """Raises on its second call of a forward pass batch, as a model failing mid-measurement."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("BOOM")
        return super().forward(x)


@pytest.mark.parametrize("explode", [False, True])
def test_leaves_modes_hooks_rng_and_gradients_as_found(explode):
    torch.manual_seed(5)
    activation = ExplodingReLU() if explode else nn.ReLU()
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), activation, nn.Linear(8, 2))
    model.train()
    model[1].eval()  # a deliberately frozen BatchNorm stays frozen
    model(torch.randn(3, 4)).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    state = [p.detach().clone() for p in model.parameters()] + [b.clone() for b in model.buffers()]
    points = torch.randn(10, 4)
    rng = torch.random.get_rng_state()
    if explode:
        with pytest.raises(RuntimeError, match="BOOM"):
            local_complexity(model, points, 0.1, num_directions=2, batch_size=4)
    else:
        local_complexity(model, points, 0.1, num_directions=2, batch_size=4)
    assert [m.training for m in model] == [True, False, True, True]
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert torch.equal(torch.random.get_rng_state(), rng)
    for before, p in zip(grads, model.parameters(), strict=True):
        assert torch.equal(before, p.grad)
    for before, after in zip(state, [*model.parameters(), *model.buffers()], strict=True):
        assert torch.equal(before, after)


def test_measures_in_float32_inside_autocast():
    model = small_residual_cnn()
    points = torch.randn(4, 1, 6, 6)
    plain = local_complexity(model, points, 0.05, num_directions=3)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = local_complexity(model, points.bfloat16(), 0.05, num_directions=3)
    # bf16 points are rounded before measuring; the measurement itself is float32
    reference = local_complexity(model, points.bfloat16().float(), 0.05, num_directions=3)
    torch.testing.assert_close(mixed.counts, reference.counts, rtol=0, atol=0)
    assert plain.counts.shape == mixed.counts.shape


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="piecewise-linear"):
        local_complexity(nn.Linear(3, 2), torch.randn(2, 3), 0.1, num_directions=1)
    with pytest.raises(ValueError, match="num_directions"):
        local_complexity(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), torch.randn(2, 3), 0.1)
    with pytest.raises(ValueError, match="not a submodule"):
        local_complexity(nn.Sequential(nn.Linear(3, 2)), torch.randn(2, 3), 0.1, num_directions=1, layers=["x"])


def test_wide_layers_take_the_bool_path_and_count_the_same():
    torch.manual_seed(6)
    layer = nn.Linear(8, 4096)  # 50 points x 21 inputs x 4096 neurons > 2**22 values: the uint8-sum path
    model = nn.Sequential(layer, nn.ReLU(inplace=True))
    points, directions, radius = torch.randn(50, 8), torch.randn(10, 8), 0.05
    with torch.no_grad():
        distance = (points @ layer.weight.T + layer.bias).abs()
        reach = radius * (directions @ layer.weight.T).abs().amax(dim=0)
    result = local_complexity(model, points, radius, directions=directions)
    torch.testing.assert_close(result.counts[:, 0], (distance <= reach).sum(dim=1), rtol=0, atol=0)
    small = local_complexity(model, points, radius, directions=directions, batch_size=5)  # the float path
    torch.testing.assert_close(small.counts, result.counts, rtol=0, atol=0)
