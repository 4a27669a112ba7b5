"""One reader of what a model returned: logits_of / model_outputs, and every monitor, callback and task through it.

A model returning a dataclass with ``.logits``, a Hugging Face style ``ModelOutput`` (an ``OrderedDict`` with
attribute access, emulated here without transformers) or a dict must log exactly what the same model returning the
plain Tensor logs, with every monitor of ``lightning_regs.callbacks`` and with PS-KD, label smoothing and MixUp.
"""

from __future__ import annotations

import math
from collections import OrderedDict, namedtuple
from contextlib import ExitStack
from dataclasses import dataclass

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from torch import nn

from lightning_regs import tasks
from lightning_regs.callbacks import (
    AdversarialRobustnessMonitor,
    DiffusionSpectralEntropyMonitor,
    LabelSmoothing,
    LocalComplexityMonitor,
    MixUp,
    NeuralCollapseMonitor,
    ProgressiveSelfKD,
    ScheduledMonitor,
)
from lightning_regs.callbacks._features import FeatureTap
from lightning_regs.callbacks.soft_target_callback import logits_width
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.functional import logits_of, model_outputs, pgd_attack, predict
from lightning_regs.tasks import ImageClassifier

ACCEPTED = r"it must return a Tensor of \(B, C\) logits, a Mapping with a 'logits' entry"


@dataclass
class Output:
    logits: torch.Tensor
    features: torch.Tensor


class ModelOutput(OrderedDict):
    """How ``transformers.modeling_outputs.ModelOutput`` behaves: an OrderedDict whose entries are attributes too."""

    def __getattr__(self, name: str):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


Pair = namedtuple("Pair", ["logits", "hidden"])


class TinyNet(nn.Module):
    """An MLP on 8×8 digits whose forward returns its logits in the form ``form``."""

    def __init__(self, form: str = "tensor") -> None:
        super().__init__()
        self.form = form
        self.layers = nn.Sequential(nn.Flatten(), nn.Linear(64, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(16, 10))

    def forward(self, x: torch.Tensor):
        features = self.layers(x)
        logits = self.head(features)
        if self.form == "dataclass":
            return Output(logits, features)
        if self.form == "model_output":
            return ModelOutput(logits=logits, hidden_states=features)
        if self.form == "dict":
            return {"logits": logits, "features": features}
        if self.form == "tuple":
            return logits, features
        return logits


# -- the helper ------------------------------------------------------------------------------------------------


def test_logits_of_reads_every_accepted_form():
    logits, features = torch.randn(2, 3), torch.randn(2, 4)
    for output in (
        logits,
        {"logits": logits, "features": features},
        Output(logits, features),
        ModelOutput(logits=logits, hidden_states=features),
        Pair(logits, features),
    ):
        assert logits_of(output) is logits, type(output).__name__


def test_model_outputs_keeps_the_other_tensors_of_every_form():
    logits, features = torch.randn(2, 3), torch.randn(2, 4)
    assert model_outputs(logits) == {"logits": logits}
    given = {"logits": logits, "features": features}
    assert model_outputs(given) is given
    assert model_outputs(Output(logits, features)) == {"logits": logits, "features": features}
    hf = model_outputs(ModelOutput(logits=logits, hidden_states=features))
    assert type(hf) is dict and hf == {"logits": logits, "hidden_states": features}
    assert tasks.model_outputs is model_outputs  # the tasks' public name is the one helper


@pytest.mark.parametrize(
    ("output", "named"),
    [
        ((torch.zeros(2, 3), torch.zeros(2, 4)), r"returned a tuple of 2 items \(Tensor \(2, 3\), Tensor \(2, 4\)\)"),
        ({"features": torch.zeros(2, 4)}, r"returned a dict with keys \['features'\]"),
        (ModelOutput(loss=torch.zeros(())), r"returned a ModelOutput with keys \['loss'\]"),
        ([torch.zeros(2, 3)], r"returned a list of 1 items"),
        (None, r"returned a NoneType"),
        ({"logits": [0.0, 1.0]}, r"whose 'logits' is a list, not a Tensor"),
        (Pair([0.0], None), r"returned a Pair of 2 items \(list, NoneType\) whose 'logits' is a list"),
    ],
)
def test_an_output_without_logits_is_an_error_naming_what_came_back_and_what_is_accepted(output, named):
    for read in (logits_of, model_outputs):
        with pytest.raises(TypeError, match=named + ".*" + ACCEPTED):
            read(output, "MyNet")
    with pytest.raises(TypeError, match=r"^MyNet returned"):
        logits_of(output, "MyNet")


# -- the functional and callback readers, one by one ----------------------------------------------------------


def test_pgd_and_predict_read_object_outputs_and_name_a_tuple():
    torch.manual_seed(0)
    x, y = torch.randn(6, 1, 8, 8), torch.randint(0, 10, (6,))
    plain, wrapped = TinyNet("tensor"), TinyNet("dataclass")
    wrapped.load_state_dict(plain.state_dict())
    attack = {"epsilon": 0.3, "step_size": 0.1, "steps": 3, "random_start": False}
    torch.testing.assert_close(pgd_attack(wrapped, x, y, **attack), pgd_attack(plain, x, y, **attack))
    assert torch.equal(predict(wrapped, x), predict(plain, x))
    pair = TinyNet("tuple")
    with pytest.raises(TypeError, match=r"pgd_attack's model returned a tuple of 2 items.*" + ACCEPTED):
        pgd_attack(pair, x, y, **attack)
    with pytest.raises(TypeError, match=r"predict's model returned a tuple.*" + ACCEPTED):
        predict(pair, x)


def test_logits_width_reads_object_outputs_and_gives_up_on_others():
    batch = {"image": torch.randn(3, 1, 8, 8)}
    for form in ("tensor", "dataclass", "model_output", "dict"):
        assert logits_width(TinyNet(form), batch) == 10, form
    assert logits_width(TinyNet("tuple"), batch) is None  # the caller then asks for num_classes


def test_the_neural_collapse_check_names_an_output_without_logits():
    def check(net: TinyNet, name: str) -> None:
        tap = FeatureTap(name, net.get_submodule(name), "input")
        with ExitStack() as stack:
            tap.attach(stack)
            NeuralCollapseMonitor(plot=False)._check_classifier(tap, net(torch.randn(2, 1, 8, 8)))

    check(TinyNet("dataclass"), "head.0")  # the classifier's output is the object's .logits: accepted
    with pytest.raises(TypeError, match=r"'head.0'.*the LightningModule returned a tuple.*submodule='\.\.\.'"):
        check(TinyNet("tuple"), "head.0")
    with pytest.raises(ValueError, match=r"its output is not the LightningModule's output"):
        check(TinyNet("dataclass"), "layers.3")


# -- a real fit with every monitor, PS-KD, label smoothing and MixUp ------------------------------------------


def monitors() -> list[ScheduledMonitor]:
    shared = {"every_n_steps": 3, "max_overhead": None, "plot": False}
    return [
        AdversarialRobustnessMonitor(epsilon=0.2, steps=2, num_points=32, **shared),
        LocalComplexityMonitor(radius=0.5, num_directions=4, num_points=12, sets=("train", "heldout"), **shared),
        NeuralCollapseMonitor(num_points=40, batch_size=16, **shared),
        DiffusionSpectralEntropyMonitor(layers="penultimate", sets=["train"], num_points=30, num_clusters=3, **shared),
    ]


def fit(form: str, tmp_path) -> tuple[Trainer, ImageClassifier]:
    seed_everything(0, workers=True)
    task = ImageClassifier(TinyNet(form), num_classes=10, lr=0.05)
    callbacks = [*monitors(), MixUp(alpha=0.4), ProgressiveSelfKD(alpha_T=0.8), LabelSmoothing(0.1)]
    trainer = Trainer(
        max_epochs=2, limit_train_batches=3, limit_val_batches=1, callbacks=callbacks, default_root_dir=tmp_path,
        accelerator="cpu", enable_progress_bar=False, logger=False, enable_checkpointing=False,
        enable_model_summary=False, deterministic=True,
    )  # fmt: skip
    trainer.fit(task, DigitsDataModule(batch_size=32))
    return trainer, task


def measured(trainer: Trainer) -> dict[str, list[float]]:
    """Every monitor's logged values (not its wall-clock overhead), by metric name."""
    values: dict[str, list[float]] = {}
    for callback in trainer.callbacks:
        if isinstance(callback, ScheduledMonitor):
            assert callback.measured_steps, f"{type(callback).__name__} measured nothing"
            values.update({k: v for k, v in callback.history.items() if not k.endswith("/overhead")})
    return values


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    return fit("tensor", tmp_path_factory.mktemp("tensor"))


@pytest.mark.parametrize("form", ["dataclass", "model_output", "dict"])
def test_a_model_returning_an_object_logs_what_the_plain_tensor_model_logs(form, plain_run, tmp_path):
    plain_trainer, plain_task = plain_run
    trainer, task = fit(form, tmp_path)
    expected, got = measured(plain_trainer), measured(trainer)
    prefixes = {name.split("/")[0] for name in expected}
    assert {"robust", "lc", "nc", "dse"} <= prefixes, f"a monitor logged nothing: {sorted(prefixes)}"
    assert all(math.isfinite(x) for values in expected.values() for x in values)
    assert got.keys() == expected.keys()
    for name, values in expected.items():
        assert got[name] == pytest.approx(values, rel=1e-5, abs=1e-7), name
    pskd = next(c for c in trainer.callbacks if isinstance(c, ProgressiveSelfKD))
    plain_pskd = next(c for c in plain_trainer.callbacks if isinstance(c, ProgressiveSelfKD))
    assert bool(pskd.table.seen.any())  # PS-KD predicted the unmixed images with the object-returning forward
    rows = torch.arange(pskd.table.num_samples)
    torch.testing.assert_close(pskd.table.read(rows), plain_pskd.table.read(rows))
    for (name, value), (_, plain_value) in zip(task.state_dict().items(), plain_task.state_dict().items(), strict=True):
        torch.testing.assert_close(value, plain_value, msg=name)  # the same targets, so the same training
    for metric in ("train/loss", "val/acc"):
        torch.testing.assert_close(trainer.callback_metrics[metric], plain_trainer.callback_metrics[metric])
