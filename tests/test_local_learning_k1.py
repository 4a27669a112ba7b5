"""One local module (K = 1) is plain end-to-end training: every way to ask for it warns, and says what to change."""

from __future__ import annotations

import warnings

import pytest
import torch
from lightning.pytorch import LightningModule
from torch import nn

from lightning_regs.local_learning import EndToEndWarning, LocalLearningMixin
from lightning_regs.local_learning.builder import LocalLearningSpec
from lightning_regs.models import MLP, LayeredModel
from lightning_regs.tasks import LocalLearningClassifier

END_TO_END = r"plain end-to-end training .* Set K >= 2"


def mlp() -> MLP:
    return MLP(in_features=16, num_classes=3, width=8, depth=4)


def two_layers() -> LayeredModel:
    return LayeredModel([("fc1", nn.Linear(16, 8)), ("fc2", nn.Linear(8, 8))], nn.Linear(8, 3), 3)


@pytest.mark.parametrize(
    ("kwargs", "detail"),
    [
        ({"K": 1}, r"K=1: one module"),
        ({"K": 1, "split": "paper"}, r"K=1: one module"),
        ({"split": []}, r"split=\[\] gives K=1"),
        ({"K": 1, "head": "infopro"}, r"K=1: one module"),
    ],
    ids=["K1", "K1-preset", "no-points", "infopro"],
)
def test_one_module_warns_that_it_is_end_to_end(kwargs: dict, detail: str) -> None:
    with pytest.warns(EndToEndWarning, match=f"{detail}.*{END_TO_END}"):
        task = LocalLearningClassifier(mlp(), 3, input_shape=(16,), **kwargs)
    assert task.num_local_modules == 1 and len(task.aux_heads) == 0


def test_auglocal_whose_d_leaves_one_module_warns_with_the_d_that_does_not() -> None:
    with pytest.warns(EndToEndWarning, match=r"d=1 on a model of 2 layers gives K = L - d = 1 \(AugLocal needs 3"):
        LocalLearningSpec.check(two_layers(), head="auglocal", d=1)
    with pytest.warns(EndToEndWarning, match=r"d=3 on a model of 4 layers .* \(d <= 2 gives K >= 2\)"):
        task = LocalLearningClassifier(
            LayeredModel([(f"fc{i}", nn.Linear(16, 16)) for i in range(4)], nn.Linear(16, 3), 3),
            3, head="auglocal", d=3, input_shape=(16,),
        )  # fmt: skip
    assert task.num_local_modules == 1


@pytest.mark.parametrize(
    "kwargs", [{"K": 2}, {"split": [1]}, {"head": "auglocal", "d": 1}], ids=["K2", "one-point", "auglocal-d1"]
)
def test_two_or_more_modules_do_not_warn(kwargs: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", EndToEndWarning)
        task = LocalLearningClassifier(mlp(), 3, input_shape=(16,), **kwargs)
    assert task.num_local_modules >= 2


def test_k1_that_disagrees_with_the_split_points_is_an_error_not_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", EndToEndWarning)
        with pytest.raises(ValueError, match="K=1 but 1 split points give 2 modules"):
            LocalLearningClassifier(mlp(), 3, K=1, split=[0], input_shape=(16,))


class ByHand(LocalLearningMixin, LightningModule):
    def __init__(self, points: tuple[int, ...]) -> None:
        super().__init__()
        self.net = mlp()
        heads = [nn.Identity() for _ in points]
        self.configure_local_learning(self.net.layers, self.net.head, points, heads)


def test_configure_local_learning_without_points_warns_once() -> None:
    with pytest.warns(EndToEndWarning, match=f"configure_local_learning with no split points.*{END_TO_END}") as record:
        ByHand(())
    assert len([w for w in record if issubclass(w.category, EndToEndWarning)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error", EndToEndWarning)
        assert ByHand((0,)).num_local_modules == 2


def test_setup_local_learning_warns_once_also_when_the_heads_are_built_later() -> None:
    class Mine(LocalLearningMixin, LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = mlp()
            self.setup_local_learning(self.net, K=1)  # no input_shape: configure_local_learning runs at setup

    with pytest.warns(EndToEndWarning) as record:
        module = Mine()
        module._build_local_learning((16,))
    assert len([w for w in record if issubclass(w.category, EndToEndWarning)]) == 1
    assert torch.equal(module.net(torch.zeros(2, 16)), module.net(torch.zeros(2, 16)))
