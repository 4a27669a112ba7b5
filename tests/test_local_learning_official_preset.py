"""``preset="official"``: the official InfoPro and MAN behaviour where the library departs on purpose.

Each oracle is re-derived here from what the official code computes (InfoPro-Pytorch's ``SupConLoss`` and
``_image_restore`` + ``nn.BCELoss`` on the decoder's sigmoid; MAN's ``train.py``: the copies are taken before the
network's re-initialization, and the EMA moves after the local backward, before ``optimizer.step()``), written
independently and compared with ours on the same inputs. Each also shows the default differs, so it fails on the
old behaviour.
"""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, Trainer, seed_everything
from torch import nn

from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.functional.supcon import supervised_contrastive_loss
from lightning_regs.local_learning.heads import InfoProHead
from lightning_regs.local_learning.man import MomentumAuxiliaryHead
from lightning_regs.models import resnet20
from lightning_regs.tasks import LocalLearningClassifier
from tests.helpers.trainers import QUIET


def official_supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """SupContrast's one-view loss, anchor by anchor in float64: an anchor without positives adds 0 to the mean."""
    z = torch.nn.functional.normalize(features.double(), dim=1)
    total = torch.zeros((), dtype=torch.float64)
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        log_denominator = torch.logsumexp(torch.stack([z[i] @ z[a] / temperature for a in others]), dim=0)
        positives = [p for p in others if labels[p] == labels[i]]
        terms = [z[i] @ z[p] / temperature - log_denominator for p in positives]
        total = total + (torch.stack(terms).sum() / len(positives) if positives else 0.0)
    return -total / len(z)  # tau / tau_base = 1


def test_supcon_over_all_anchors_is_the_official_mean():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(12, 6, generator=generator)
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 3, 4, 5, 6, 6, 7])  # 5 anchors alone in their class
    ours = supervised_contrastive_loss(features, labels, anchors="all")
    torch.testing.assert_close(ours.double(), official_supcon(features, labels), rtol=1e-6, atol=0)
    default = supervised_contrastive_loss(features, labels)
    torch.testing.assert_close(ours, default * 7 / 12)  # the default averages over the 7 anchors with a positive


def test_supcon_anchor_modes_agree_when_every_anchor_has_a_positive_and_bad_mode_is_named():
    features, labels = torch.randn(8, 4), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    torch.testing.assert_close(
        supervised_contrastive_loss(features, labels, anchors="all"), supervised_contrastive_loss(features, labels)
    )
    with pytest.raises(ValueError, match="'with_positives' or 'all'"):
        supervised_contrastive_loss(features, labels, anchors="some")


def test_infopro_official_target_is_the_unnormalized_image():
    torch.manual_seed(0)
    mean, std = (0.49, 0.48, 0.45), (0.25, 0.24, 0.26)
    head = InfoProHead((4, 8, 8), 10, (3, 8, 8), lambda_recon=1.0, lambda_task=0.0, image_mean=mean, image_std=std)
    raw = torch.rand(5, 3, 8, 8)  # what the official loader holds before Normalize
    image = (raw - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    h = torch.randn(5, 4, 8, 8)
    expected = nn.BCELoss()(torch.sigmoid(head.decoder(h)), raw)  # official: BCE(decoder(x), _image_restore(img))
    torch.testing.assert_close(head(h, torch.zeros(5, dtype=torch.long), image), expected, rtol=1e-5, atol=0)
    default = InfoProHead((4, 8, 8), 10, (3, 8, 8), lambda_recon=1.0, lambda_task=0.0)
    default.load_state_dict(head.state_dict())
    with torch.no_grad():
        assert abs(float(default(h, torch.zeros(5, dtype=torch.long), image)) - float(expected)) > 1e-3


def test_infopro_head_checks_its_normalization():
    with pytest.raises(ValueError, match="both image_mean and image_std"):
        InfoProHead((4, 8, 8), 10, (3, 8, 8), image_mean=(0.5, 0.5, 0.5))
    with pytest.raises(ValueError, match="one value per input channel"):
        InfoProHead((4, 8, 8), 10, (3, 8, 8), image_mean=(0.5,), image_std=(0.2,))


def test_man_random_init_gives_independent_copies_and_the_default_copies_the_block():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    copied = MomentumAuxiliaryHead(nn.Identity(), block)
    fresh = MomentumAuxiliaryHead(nn.Identity(), block, init="random")
    conv = [m[0].weight for m in (block, fresh.ema, fresh.correction)]
    assert not torch.equal(conv[0], conv[1]) and not torch.equal(conv[0], conv[2]) and not torch.equal(*conv[1:])
    assert torch.equal(copied.ema[0].weight, block[0].weight) and torch.equal(copied.correction[0].weight, conv[0])
    assert not fresh.ema[0].weight.requires_grad and fresh.correction[0].weight.requires_grad
    with pytest.raises(ValueError, match="'copy' or 'random'"):
        MomentumAuxiliaryHead(nn.Identity(), block, init="zeros")


class RecordTracked(Callback):
    """The tracked block's weights just before each optimizer step and just after it."""

    def __init__(self) -> None:
        self.before: list[list[torch.Tensor]] = []
        self.after: list[list[torch.Tensor]] = []

    def _weights(self, pl_module) -> list[torch.Tensor]:
        return [p.detach().clone() for p in pl_module.aux_heads["0"].tracked.parameters()]

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.before.append(self._weights(pl_module))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append(self._weights(pl_module))


def _ema_run(tmp_path, preset: str) -> tuple[list[torch.Tensor], RecordTracked, list[torch.Tensor]]:
    seed_everything(0)
    task = LocalLearningClassifier(
        resnet20(), 10, K=2, split=["s1b1"], man=True, man_momentum=0.8, input_shape=(3, 8, 8), preset=preset
    )
    start = [p.detach().clone() for p in task.aux_heads["0"].ema.parameters()]
    recorder = RecordTracked()
    Trainer(max_steps=3, default_root_dir=tmp_path, callbacks=[recorder], **QUIET).fit(
        task, DigitsDataModule(batch_size=32, channels=3)
    )
    return start, recorder, list(task.aux_heads["0"].ema.parameters())


def _recursion(start: list[torch.Tensor], history: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    ema = start
    for tracked in history:
        ema = [0.8 * e + 0.2 * p for e, p in zip(ema, tracked, strict=True)]
    return ema


@pytest.mark.parametrize(("preset", "follows"), [("official", "before"), ("library", "after")])
def test_man_ema_follows_the_weights_before_the_step_officially_and_after_it_by_default(tmp_path, preset, follows):
    start, recorder, ema = _ema_run(tmp_path, preset)
    assert len(recorder.before) == len(recorder.after) == 3
    expected = _recursion(start, getattr(recorder, follows))
    other = _recursion(start, recorder.after if follows == "before" else recorder.before)
    for actual, want in zip(ema, expected, strict=True):
        torch.testing.assert_close(actual, want, rtol=0, atol=1e-6)
    assert max(float((a - b).abs().max()) for a, b in zip(ema, other, strict=True)) > 1e-4


def test_the_official_preset_reaches_every_head(tmp_path):
    seed_everything(0)
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    task = LocalLearningClassifier(
        resnet20(), 10, K=2, split=["s1b1"], head="infopro", man=True, task_loss="contrast", input_shape=(3, 8, 8),
        preset="official", image_mean=mean, image_std=std,
    )  # fmt: skip
    head = task.aux_heads["0"]
    assert head.head.unnormalized_target and head.head.supcon_anchors == "all"
    assert torch.equal(head.head.image_mean, torch.tensor(mean))
    assert not torch.equal(head.ema.conv1.weight, head.tracked.conv1.weight)
    library = LocalLearningClassifier(resnet20(), 10, K=2, split=["s1b1"], head="infopro", man=True,
                                      input_shape=(3, 8, 8))  # fmt: skip
    assert not library.aux_heads["0"].head.unnormalized_target
    assert library.aux_heads["0"].head.supcon_anchors == "with_positives"
    assert torch.equal(library.aux_heads["0"].ema.conv1.weight, library.aux_heads["0"].tracked.conv1.weight)


def test_preset_errors_name_the_fix():
    with pytest.raises(ValueError, match="image_mean and image_std"):
        LocalLearningClassifier(resnet20(), 10, K=2, split=["s1b1"], head="infopro", preset="official",
                                input_shape=(3, 8, 8))  # fmt: skip
    with pytest.raises(ValueError, match="head='infopro' and preset='official' only"):
        LocalLearningClassifier(resnet20(), 10, K=2, split=["s1b1"], image_mean=(0.5,) * 3, image_std=(0.2,) * 3,
                                input_shape=(3, 8, 8))  # fmt: skip
    with pytest.raises(ValueError, match="'library' or 'official'"):
        LocalLearningClassifier(resnet20(), 10, K=2, split=["s1b1"], preset="paper", input_shape=(3, 8, 8))
