"""CRReLU (Sun et al., arXiv 2405.12954): the equation, its gradients, the module, replace_activations, a real fit.

CRReLU(x) = ReLU(x) + ε·x·exp(−x²/2), one learnable ε per module, initialized at 0.01.
"""

from __future__ import annotations

import copy
import math
import pickle
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything
from torch import nn
from torchvision.models import resnet18

from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.functional import crrelu
from lightning_regs.models import MLP, CRReLU, SmallCNN, layered, replace_activations
from lightning_regs.tasks import ImageClassifier
from tests.helpers.doc_blocks import block, run_python

ROOT = Path(__file__).resolve().parents[1]
HALF = math.exp(-0.5)  # x·exp(−x²/2) at x = 1


def f32(value: float) -> float:
    """``value`` rounded to float32, as an ε parameter stores it."""
    return float(torch.tensor(value, dtype=torch.float32))


def eps_of(model: nn.Module) -> list[CRReLU]:
    return [m for m in model.modules() if isinstance(m, CRReLU)]


# ---------------------------------------------------------------- the equation


def test_eps_zero_is_relu_exactly():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(10_000) * 3, torch.tensor([0.0, -0.0, 1e-30, -1e-30, 50.0, -50.0])])
    assert torch.equal(crrelu(x, 0.0), torch.relu(x))
    assert torch.equal(crrelu(x, torch.tensor(0.0)), torch.relu(x))
    assert torch.equal(CRReLU(eps=0.0)(x), torch.relu(x))
    assert torch.equal(CRReLU(eps=0.0, learnable=False)(x.double()), torch.relu(x.double()))


@pytest.mark.parametrize("eps", [0.01, 0.5, -0.3, 2.0])
def test_values_at_plus_and_minus_one(eps: float):
    x = torch.tensor([1.0, -1.0], dtype=torch.float64)
    expected = torch.tensor([1.0 + eps * HALF, -eps * HALF], dtype=torch.float64)
    torch.testing.assert_close(crrelu(x, eps), expected, rtol=0, atol=1e-15)
    act = CRReLU(eps).double()  # ε was stored in float32: use the stored value
    stored = act.eps.item()
    assert abs(stored - eps) < 1e-7
    torch.testing.assert_close(
        act(x), torch.tensor([1.0 + stored * HALF, -stored * HALF], dtype=torch.float64), rtol=0, atol=1e-15
    )


def test_the_correction_vanishes_far_from_zero_and_is_odd():
    x = torch.linspace(-6, 6, 121, dtype=torch.float64)
    correction = crrelu(x, 1.0) - torch.relu(x)
    torch.testing.assert_close(correction, -correction.flip(0), rtol=0, atol=1e-15)  # odd
    assert int(correction.abs().argmax()) in (50, 70)  # |x| = 1, where x·exp(−x²/2) peaks at e^{−1/2}
    assert correction.abs()[:5].max() < 1e-6  # x ≤ −5.6


def test_derivatives_with_respect_to_eps_and_x_are_the_closed_forms():
    torch.manual_seed(1)
    x = torch.randn(257, dtype=torch.float64) * 2
    eps = torch.tensor(0.37, dtype=torch.float64, requires_grad=True)
    d_eps = torch.autograd.functional.jacobian(lambda e: crrelu(x, e), eps)
    torch.testing.assert_close(d_eps, x * torch.exp(-x * x / 2), rtol=0, atol=1e-15)  # ∂f/∂ε = x·e^{−x²/2}
    d_x = torch.autograd.functional.jacobian(lambda v: crrelu(v, 0.37), x).diagonal()
    torch.testing.assert_close(d_x, (x > 0).double() + 0.37 * (1 - x * x) * torch.exp(-x * x / 2))
    # The module's ε gets the summed gradient through backward.
    act = CRReLU(0.37).double()
    act(x).sum().backward()
    torch.testing.assert_close(act.eps.grad, (x * torch.exp(-x * x / 2)).sum().reshape(1))


def test_gradcheck_in_float64_on_x_and_eps():
    torch.manual_seed(2)
    x = torch.randn(40, dtype=torch.float64) * 2
    x = torch.where(x.abs() < 0.05, x.sign() * 0.5 + 0.01, x).requires_grad_()  # away from ReLU's kink at 0
    eps = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(crrelu, (x, eps))
    assert torch.autograd.gradgradcheck(crrelu, (x, eps))


def test_a_zero_dim_eps_keeps_the_inputs_dtype():
    act = CRReLU()
    assert act(torch.randn(4, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert act(torch.randn(4, dtype=torch.float64)).dtype == torch.float64
    assert act.double().eps.dtype == torch.float64
    assert act(torch.tensor(1.0, dtype=torch.float64)).shape == ()  # ε is stored as (1,) but used as 0-dim


# ---------------------------------------------------------------- the module


def test_module_parameter_buffer_state_dict_and_repr():
    act = CRReLU()
    (param,) = act.parameters()
    assert isinstance(act.eps, nn.Parameter) and param is act.eps and param.shape == (1,) and param.item() == f32(0.01)
    assert repr(act) == "CRReLU(eps=0.01, learnable=True)"
    fixed = CRReLU(eps=0.25, learnable=False)
    assert list(fixed.parameters()) == [] and "eps" in dict(fixed.named_buffers())
    assert repr(fixed) == "CRReLU(eps=0.25, learnable=False)"
    assert list(act.state_dict()) == list(fixed.state_dict()) == ["eps"]  # the same key either way
    fixed.load_state_dict(act.state_dict())
    assert fixed.eps.item() == f32(0.01)
    with torch.device("meta"):
        assert repr(CRReLU()) == "CRReLU(eps=<meta>, learnable=True)"  # deferred init: nothing to read
    restored = pickle.loads(pickle.dumps(act))  # ddp_spawn pickles the model
    assert isinstance(restored.eps, nn.Parameter) and restored.eps.item() == f32(0.01)


def test_every_instance_has_its_own_eps():
    a, b = CRReLU(), CRReLU()
    assert a.eps is not b.eps
    with torch.no_grad():
        a.eps.fill_(0.5)
    assert b.eps.item() == f32(0.01)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": float("inf")}, ValueError, "finite"),
        ({"eps": float("nan")}, ValueError, "finite"),
        ({"eps": "0.01"}, TypeError, "real number"),
        ({"eps": True}, TypeError, "real number"),
    ],
)
def test_crrelu_refuses_bad_eps(kwargs, error, match):
    with pytest.raises(error, match=match):
        CRReLU(**kwargs)


# ---------------------------------------------------------------- replace_activations: torchvision


def test_resnet18_replacement_keeps_keys_sharing_and_equals_the_original_at_eps_zero():
    torch.manual_seed(3)
    original = resnet18(num_classes=10).eval()
    net = copy.deepcopy(original)
    relus = {id(m) for m in net.modules() if isinstance(m, nn.ReLU)}
    assert replace_activations(net, eps=0.0) == len(relus) == 9  # the stem's and one per BasicBlock
    assert not any(isinstance(m, nn.ReLU) for m in net.modules())
    assert len(eps_of(net)) == 9 and sum(n.endswith(".eps") for n, _ in net.named_parameters()) == 9

    before, after = original.state_dict(), net.state_dict()
    added = set(after) - set(before)
    assert set(before) <= set(after)
    assert added == {"relu.eps"} | {f"layer{i}.{j}.relu.eps" for i in range(1, 5) for j in range(2)}
    assert all(torch.equal(before[k], after[k]) for k in before)

    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), original(x))

    # A BasicBlock calls its one self.relu twice: the replacement is one CRReLU called twice.
    calls: dict[int, int] = {}
    for m in eps_of(net):
        m.register_forward_hook(lambda mod, i, o: calls.__setitem__(id(mod), calls.get(id(mod), 0) + 1))
    with torch.no_grad():
        net(x)
    assert sorted(calls.values()) == [1] + [2] * 8

    # The original checkpoint loads; only the new ε entries are missing (they keep their initial value).
    fresh = resnet18(num_classes=10)
    replace_activations(fresh, eps=0.01)
    result = fresh.load_state_dict(before, strict=False)
    assert set(result.missing_keys) == added and result.unexpected_keys == []
    assert all(m.eps.item() == f32(0.01) for m in eps_of(fresh))
    with torch.no_grad():
        assert not torch.allclose(fresh.eval()(x), original(x))  # ε = 0.01 changes the function


def test_resnet18_trains_eps_with_sgd():
    torch.manual_seed(4)
    net = resnet18(num_classes=10)
    replace_activations(net)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    F.cross_entropy(net(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    grads = [m.eps.grad for m in eps_of(net)]
    assert all(g is not None and g != 0 for g in grads)
    optimizer.step()
    assert all(m.eps.item() != f32(0.01) for m in eps_of(net))


# ---------------------------------------------------------------- replace_activations: nn.Sequential and our models


def test_sequential_inplace_relus_nested_containers_tuples_and_subclasses():
    class MyReLU(nn.ReLU):
        pass

    net = nn.Sequential(
        nn.Linear(4, 8),
        nn.ReLU(inplace=True),
        nn.Sequential(nn.Linear(8, 8), MyReLU()),
        nn.ModuleList([nn.GELU(), nn.Tanh()]),
        nn.ModuleDict({"act": nn.ReLU()}),
    )
    assert replace_activations(net, old=[nn.ReLU, nn.GELU], new=CRReLU, eps=0.2) == 4
    assert [type(m).__name__ for m in (net[1], net[2][1], net[3][0], net[3][1], net[4]["act"])] == [
        "CRReLU", "CRReLU", "CRReLU", "Tanh", "CRReLU",
    ]  # fmt: skip
    assert {m.eps.item() for m in eps_of(net)} == {f32(0.2)}
    assert sorted(n for n, _ in net.named_parameters() if n.endswith("eps")) == [
        "1.eps",
        "2.1.eps",
        "3.0.eps",
        "4.act.eps",
    ]


def test_one_module_registered_twice_stays_one():
    shared = nn.ReLU()
    net = nn.Sequential(nn.Linear(3, 5), shared, nn.Linear(5, 5), shared, nn.Linear(5, 2))
    assert replace_activations(net) == 1
    assert net[1] is net[3] and isinstance(net[1], CRReLU)
    assert len([p for p in net.parameters() if p.shape == (1,)]) == 1  # one ε
    assert {"1.eps", "3.eps"} <= set(net.state_dict())  # both registrations keep a key, as before


def test_sequential_output_at_eps_zero_equals_the_original():
    torch.manual_seed(5)
    original = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(inplace=True), nn.Linear(16, 3))
    net = copy.deepcopy(original)
    assert replace_activations(net, nn.ReLU, CRReLU, eps=0.0) == 2
    x = torch.randn(9, 6)
    assert torch.equal(net(x), original(x))
    assert replace_activations(net, CRReLU, nn.ReLU) == 2  # and back: any activation factory
    assert not eps_of(net) and torch.equal(net(x), original(x))


def test_replacement_with_a_factory_function():
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2), nn.ReLU())
    assert replace_activations(net, new=lambda: CRReLU(eps=0.05, learnable=False)) == 2
    assert [m.eps.item() for m in eps_of(net)] == [f32(0.05)] * 2 and not any(p.shape == (1,) for p in net.parameters())


def test_the_librarys_mlp_and_small_cnn_keep_their_layer_contract():
    torch.manual_seed(6)
    mlp = MLP(in_features=64, width=16, depth=4)
    reference = copy.deepcopy(mlp)
    assert replace_activations(mlp, eps=0.0) == 3
    assert mlp.layer_names == ("fc1", "fc2", "fc3") and layered(mlp) is mlp
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(mlp(x), reference(x)) and torch.equal(mlp.head(mlp.layers(x)), mlp(x))

    cnn = SmallCNN(width=8).eval()
    reference = copy.deepcopy(cnn)
    assert replace_activations(cnn, eps=0.0) == 3
    assert cnn.layer_names == ("block1", "block2", "block3")
    assert sorted(set(cnn.state_dict()) - set(reference.state_dict())) == [f"layers.block{i}.2.eps" for i in (1, 2, 3)]
    with torch.no_grad():
        assert torch.equal(cnn(x), reference(x))


def test_mlp_activation_crrelu_and_init_scale_leaves_eps_alone():
    model = MLP(in_features=8, width=4, depth=4, activation="crrelu")
    acts = eps_of(model)
    assert len(acts) == 3 and len({id(a.eps) for a in acts}) == 3 and model.activation == "crrelu"
    torch.manual_seed(7)
    relu = MLP(in_features=8, width=4, depth=3, activation="relu", init_scale=8.0)
    torch.manual_seed(7)
    cr = MLP(in_features=8, width=4, depth=3, activation="crrelu", init_scale=8.0)
    assert [a.eps.item() for a in eps_of(cr)] == [f32(0.01)] * 2  # Omnigrok's alpha scales the Linear weights only
    weights = [p for n, p in cr.named_parameters() if not n.endswith("eps")]
    assert all(torch.equal(a, b) for a, b in zip(relu.parameters(), weights, strict=True))


# ---------------------------------------------------------------- replace_activations: errors


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"old": nn.ReLU()}, TypeError, r"`old` must be an nn.Module subclass or a tuple"),
        ({"old": int}, TypeError, r"`old` must be an nn.Module subclass"),
        ({"old": ()}, TypeError, r"`old` must be an nn.Module subclass"),
        ({"old": (nn.ReLU, "GELU")}, TypeError, r"`old` must be an nn.Module subclass"),
        ({"new": CRReLU()}, TypeError, r"pass the class \(CRReLU\).*not an instance"),
        ({"new": int}, TypeError, r"nn.Module class or factory; int is not one"),
        ({"new": "CRReLU"}, TypeError, r"nn.Module class or a function returning one"),
        ({"new": lambda: 3}, TypeError, r"returned a int, not an nn.Module"),
        ({"eps": float("nan")}, ValueError, "finite"),
    ],
)
def test_replace_activations_refuses_bad_arguments_and_changes_nothing(kwargs, error, match):
    net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    keys = list(net.state_dict())
    with pytest.raises(error, match=match):
        replace_activations(net, **kwargs)
    assert isinstance(net[1], nn.ReLU) and list(net.state_dict()) == keys


def test_no_match_is_an_error_that_names_what_was_searched_and_what_is_there():
    net = nn.Sequential(nn.Linear(2, 2), nn.GELU(), nn.Dropout(), nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"no ReLU, SiLU module in Sequential.*Dropout, GELU.*`old=`.*F\.relu"):
        replace_activations(net, old=(nn.ReLU, nn.SiLU))
    assert isinstance(net[1], nn.GELU)


def test_the_model_itself_or_a_non_module_is_refused():
    with pytest.raises(TypeError, match=r"itself a ReLU.*Build the new activation directly"):
        replace_activations(nn.ReLU())
    with pytest.raises(TypeError, match=r"needs an nn\.Module, got list"):
        replace_activations([nn.ReLU()])  # type: ignore[arg-type]


# ---------------------------------------------------------------- timm


def test_a_timm_model_with_its_act_layers():
    timm = pytest.importorskip("timm")
    torch.manual_seed(8)
    original = timm.create_model("resnet10t", pretrained=False, num_classes=10).eval()
    net = copy.deepcopy(original)
    count = replace_activations(net, eps=0.0)
    assert count == len(eps_of(net)) > 0 and not any(isinstance(m, nn.ReLU) for m in net.modules())
    assert set(original.state_dict()) <= set(net.state_dict())
    assert all(k.endswith(".eps") for k in set(net.state_dict()) - set(original.state_dict()))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x), original(x))


# ---------------------------------------------------------------- Lightning


class RecordEpsGrad(Callback):
    def __init__(self) -> None:
        self.grads: list[list[float]] = []

    def on_after_backward(self, trainer, pl_module) -> None:
        self.grads.append([float(m.eps.grad) for m in eps_of(pl_module)])


def test_image_classifier_fit_on_digits_trains_eps():
    seed_everything(0, verbose=False)
    backbone = SmallCNN(width=8)
    assert replace_activations(backbone) == 3
    task = ImageClassifier(backbone, num_classes=10, lr=0.1)
    record = RecordEpsGrad()
    trainer = Trainer(
        max_epochs=1, limit_train_batches=3, limit_val_batches=0, callbacks=[record], accelerator="cpu",
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(task, DigitsDataModule(batch_size=32))
    assert trainer.global_step == 3 and len(record.grads) == 3
    assert all(g != 0.0 and math.isfinite(g) for step in record.grads for g in step)
    assert all(abs(m.eps.item() - 0.01) > 1e-6 for m in eps_of(task))


def test_the_cards_cli_line_gives_the_relu_baseline(monkeypatch):
    from lightning_regs.cli import LightningRegsCLI

    monkeypatch.setattr(sys, "argv", ["lightning-regs"])
    config = str(ROOT / "examples" / "crrelu_digits.yaml")
    cli = LightningRegsCLI(args=["--config", config, "--model.init_args.backbone.init_args.activation=relu"], run=False)
    assert not eps_of(cli.model) and sum(isinstance(m, nn.ReLU) for m in cli.model.modules()) == 2


def test_the_card_block_runs_as_written(tmp_path, monkeypatch):
    code = block("docs/methods/crrelu.md")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = run_python(code, "docs/methods/crrelu.md", "crrelu_example")
    trainer = namespace["trainer"]
    acts = eps_of(trainer.lightning_module)
    assert trainer.global_step == 2 and len(acts) == 9
    assert all(a.eps.item() != f32(0.01) for a in acts)


def test_layered_keeps_each_crrelu_with_the_layer_before_it():
    from lightning_regs.models import layered

    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 32), nn.PReLU(), nn.Linear(32, 10))
    replace_activations(net, new=CRReLU)
    view = layered(net)
    assert [name for name, _ in view.layers.named_children()] == ["0-2", "3-4"]
    x = torch.randn(3, 1, 8, 8)
    torch.testing.assert_close(view.head(view.layers(x)), net(x))
