"""The local-learning example configs build what their headers promise (each runs in test_example_configs.py)."""

import sys
from pathlib import Path

import pytest
import torch
import yaml

from lightning_regs.cli import LightningRegsCLI
from lightning_regs.datamodules.cifar import CIFAR10DataModule
from lightning_regs.local_learning import AugLocalHead, DGLHead, InfoProHead, MomentumAuxiliaryHead
from lightning_regs.tasks.local_learning_classifier import LocalLearningClassifier

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# name -> (K, aux head type of module 0, epochs, with the MAN callback)
EXPECTED = {
    "dgl": (4, DGLHead, 160, False),
    "infopro": (4, InfoProHead, 160, False),
    "auglocal": (14, AugLocalHead, 400, False),
    "man": (16, MomentumAuxiliaryHead, 400, True),
}


@pytest.fixture(autouse=True)
def bare_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["lightning-regs"])


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_cifar10_example_has_the_papers_recipe(name, tmp_path):
    cli = LightningRegsCLI(
        args=["--config", str(EXAMPLES / f"{name}_cifar10.yaml"), f"--data.init_args.root={tmp_path}"], run=False
    )
    K, head_type, epochs, with_man = EXPECTED[name]
    task = cli.model
    assert isinstance(task, LocalLearningClassifier) and isinstance(cli.datamodule, CIFAR10DataModule)
    assert task.num_local_modules == K and isinstance(task.aux_heads["0"], head_type)
    assert cli.trainer.max_epochs == epochs and cli.datamodule.batch_size == 1024
    hp = task.hparams
    assert (hp.optimizer, hp.lr, hp.momentum, hp.nesterov, hp.weight_decay) == ("sgd", 0.8, 0.9, True, 1e-4)
    assert (hp.scheduler, hp.warmup_epochs) == ("cosine", 10)
    heads = [m for m in task.modules() if isinstance(m, MomentumAuxiliaryHead)]
    assert bool(heads) == with_man and all(head.momentum == 0.995 for head in heads)  # the yaml's value
    if with_man:
        assert "man_momentum: 0.995" in (EXAMPLES / f"{name}_cifar10.yaml").read_text()
    if name == "infopro":
        assert task.aux_heads["0"].task_loss == "contrast"  # the paper's best setting
    if name == "man":
        heads = [task.aux_heads[str(j)].head for j in range(K - 1)]
        weights = [(h.lambda_recon, h.lambda_task) for h in heads]
        assert weights[0] == pytest.approx((4.64, 0.464)) and weights[-1] == pytest.approx((3.93, 0.393))


def test_the_man_card_digits_command_runs(tmp_path):
    # docs/methods/man.md's command (dgl_digits.yaml + man=true), with a non-default momentum so that the override
    # is seen to apply.
    cli = LightningRegsCLI(
        args=[
            "fit",
            "--config",
            str(EXAMPLES / "dgl_digits.yaml"),
            "--model.init_args.man=true",
            "--model.init_args.man_momentum=0.99",
            "--trainer.max_epochs=1",
            "--trainer.limit_train_batches=3",
            "--trainer.limit_val_batches=1",
            f"--trainer.default_root_dir={tmp_path}",
            "--trainer.enable_progress_bar=false",
        ]
    )
    heads = [m for m in cli.model.modules() if isinstance(m, MomentumAuxiliaryHead)]
    assert cli.trainer.global_step == 3 and len(heads) == 3 and all(head.momentum == 0.99 for head in heads)
    # The checkpoint rebuilds the task from its saved arguments, forwarded ImageClassifier ones included.
    (checkpoint,) = tmp_path.rglob("*.ckpt")
    loaded = LocalLearningClassifier.load_from_checkpoint(checkpoint, weights_only=True)
    assert loaded.hparams.man is True and loaded.hparams.lr == 0.05 and loaded.hparams.warmup_epochs == 1
    assert loaded.num_local_modules == 4 and sum(isinstance(m, MomentumAuxiliaryHead) for m in loaded.modules()) == 3
    state = cli.model.state_dict()
    assert all(torch.equal(value, state[key]) for key, value in loaded.state_dict().items())
    # The EMA lags the block it tracks (it started as an exact copy).
    for head in heads:
        ema, block = dict(head.ema.named_parameters()), dict(head.tracked.named_parameters())
        assert any(not torch.equal(ema[name], block[name]) for name in ema)


@pytest.mark.parametrize(
    ("name", "task_args"), [("dgl_digits.yaml", ["K", "head"]), ("grokking_digits.yaml", ["loss"])]
)
def test_print_config_lists_the_forwarded_image_classifier_arguments(name, task_args, capsys):
    with pytest.raises(SystemExit) as exit_info:
        LightningRegsCLI(
            args=["fit", "--config", str(EXAMPLES / name), "--model.init_args.ece_bins=7", "--print_config"]
        )
    assert exit_info.value.code == 0
    init_args = yaml.safe_load(capsys.readouterr().out)["model"]["init_args"]
    assert init_args["ece_bins"] == 7  # an ImageClassifier argument, reached through **kwargs
    assert {"momentum", "nesterov", "milestones", "gamma", "min_lr_ratio", "label_smoothing", *task_args} <= set(
        init_args
    )
