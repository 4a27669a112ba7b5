"""InfoPro/DGL heads against their equations; the MAN EMA against a hand computation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, Trainer, seed_everything
from torch import nn

from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.functional.supcon import supervised_contrastive_loss
from lightning_regs.local_learning.heads import DGLHead, InfoProHead, infopro_lambdas, unit_range
from lightning_regs.local_learning.man import MomentumAuxiliaryHead
from lightning_regs.models import resnet20
from lightning_regs.models.cifar_resnet import BasicBlock
from lightning_regs.tasks.local_learning_classifier import LocalLearningClassifier
from tests.helpers.ddp import run_in_ddp
from tests.helpers.trainers import QUIET


def test_lambdas_interpolate_over_the_module_index_and_never_go_negative():
    expected = [(5.0, 0.0), (11 / 3, 2 / 3), (7 / 3, 4 / 3), (1.0, 2.0)]
    torch.testing.assert_close(torch.tensor(infopro_lambdas(5, (5, 0, 1, 2))), torch.tensor(expected))
    assert infopro_lambdas(3, (2, -1, -2, 1)) == [(2.0, 0.0), (0.0, 1.0)]
    assert infopro_lambdas(1) == []
    with pytest.raises(ValueError, match="recon_first"):
        infopro_lambdas(3, (1, 2))


def test_infopro_loss_is_weighted_bce_plus_ce():
    torch.manual_seed(0)
    head = InfoProHead((16, 8, 8), 10, image_shape=(3, 16, 16), lambda_recon=2.0, lambda_task=0.5)
    h, image, target = torch.randn(4, 16, 8, 8), torch.randn(4, 3, 16, 16), torch.tensor([1, 2, 3, 4])
    decoded = torch.sigmoid(head.decoder(h))
    lo = image.flatten(1).min(1).values.view(-1, 1, 1, 1)
    hi = image.flatten(1).max(1).values.view(-1, 1, 1, 1)
    expected = 2.0 * F.binary_cross_entropy(decoded, (image - lo) / (hi - lo)) + 0.5 * F.cross_entropy(
        head.classifier(h), target
    )
    torch.testing.assert_close(head(h, target, image), expected)
    assert unit_range(image).min() == 0 and unit_range(image).max() == 1


def test_infopro_contrast_head_is_weighted_bce_plus_supcon_on_its_embedding():
    torch.manual_seed(0)
    head = InfoProHead((16, 8, 8), 10, (3, 16, 16), lambda_recon=2.0, lambda_task=0.5, task_loss="contrast")
    assert head.classifier[-1].out_features == 128
    h, image, target = torch.randn(6, 16, 8, 8), torch.randn(6, 3, 16, 16), torch.tensor([1, 2, 1, 2, 3, 3])
    recon = F.binary_cross_entropy(torch.sigmoid(head.decoder(h)), unit_range(image))
    expected = 2.0 * recon + 0.5 * supervised_contrastive_loss(head.classifier(h), target, 0.07, 0.07)
    torch.testing.assert_close(head(h, target, image), expected)
    soft = F.one_hot(target, 10).float() * 0.9 + 0.01  # soft targets contrast by their arg-max
    torch.testing.assert_close(head(h, soft, image), expected)
    with pytest.raises(ValueError, match="'cross_entropy' or 'contrast'"):
        InfoProHead((16, 8, 8), 10, (3, 16, 16), task_loss="supcon")


def test_infopro_head_shapes_and_bad_inputs():
    head = InfoProHead((16, 32, 32), 10, (3, 32, 32))
    assert head.classifier[0].stride == (2, 2) and head.classifier[0].out_channels == 32
    assert InfoProHead((64, 8, 8), 10, (3, 32, 32)).classifier[0].stride == (1, 1)
    with pytest.raises(ValueError, match="dgl"):
        InfoProHead((64,), 10, (3, 32, 32))
    with pytest.raises(ValueError, match=r"lambda_recon must be a finite number >= 0"):
        InfoProHead((16, 8, 8), 10, (3, 8, 8), lambda_recon=-1.0)
    with pytest.raises(ValueError, match=r"\(C, H, W\), \(F,\) or \(N, D\)"):
        DGLHead((2, 3, 4, 5), 10)


def test_dgl_head_averages_token_features() -> None:
    head = DGLHead((5, 8), 10, norm=False)
    tokens = torch.randn(4, 5, 8)
    expected = head.classifier(tokens.mean(dim=1))
    torch.testing.assert_close(head.logits(tokens), expected, rtol=0, atol=0)
    # Reordering the tokens leaves the mean, hence the logits, unchanged (up to summation order).
    torch.testing.assert_close(head.logits(tokens[:, [4, 3, 2, 1, 0]]), expected)


def test_dgl_head_is_cross_entropy_of_its_logits():
    head = DGLHead((16, 9, 9), 5, hidden=32)
    assert head.features[0].output_size == (3, 3)
    h, target = torch.randn(6, 16, 9, 9), torch.arange(6) % 5
    torch.testing.assert_close(head(h, target), F.cross_entropy(head.logits(h), target))


def make_man() -> tuple[MomentumAuxiliaryHead, BasicBlock]:
    torch.manual_seed(0)
    block = BasicBlock(16, 16)
    return MomentumAuxiliaryHead(DGLHead((16, 8, 8), 10), block), block


def perturb(block: nn.Module) -> None:
    with torch.no_grad():
        for p in block.parameters():
            p.add_(torch.randn_like(p))
        for b in block.buffers():
            if b.is_floating_point():
                b.add_(1.0)


def test_man_starts_as_the_tracked_block_and_is_not_duplicated_in_the_state_dict():
    man, block = make_man()
    for e, c, p in zip(man.ema.parameters(), man.correction.parameters(), block.parameters(), strict=True):
        assert torch.equal(e, p) and torch.equal(c, p)
        assert not e.requires_grad and c.requires_grad
    assert not any(k.startswith("_tracked") for k in man.state_dict())


@pytest.mark.parametrize("momentum", [0.0, 1.0, 0.9])
def test_ema_update_matches_the_hand_computation(momentum):
    man, block = make_man()
    perturb(block)
    old = [p.clone() for p in man.ema.parameters()]
    old_buffers = [b.clone() for b in man.ema.buffers()]
    man.update_ema(momentum)
    for e, o, p in zip(man.ema.parameters(), old, block.parameters(), strict=True):
        torch.testing.assert_close(e, momentum * o + (1 - momentum) * p, rtol=0, atol=1e-6)
        if momentum == 0.0:
            assert torch.equal(e, p)
        if momentum == 1.0:
            assert torch.equal(e, o)
    for b, o in zip(man.ema.buffers(), old_buffers, strict=True):
        assert torch.equal(b, o)  # BN statistics are not averaged


def test_ema_after_several_updates_is_the_closed_form_recursion():
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).double()
    man = MomentumAuxiliaryHead(DGLHead((3,), 2), block)
    m = 0.9
    expected = [p.detach().clone() for p in man.ema.parameters()]
    for _ in range(5):
        perturb(block)
        man.update_ema(m)
        expected = [m * e + (1 - m) * p for e, p in zip(expected, block.parameters(), strict=True)]
        for got, want in zip(man.ema.parameters(), expected, strict=True):
            assert got.dtype == torch.float64
            torch.testing.assert_close(got, want, rtol=0, atol=1e-14)


def _man_update_on_fully_sharded_parameters(rank: int, world_size: int) -> dict[str, torch.Tensor]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor

    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    man = MomentumAuxiliaryHead(DGLHead((4,), 2), block)
    expected = [0.75 * e + 0.25 * (p + 1) for e, p in zip(man.ema.parameters(), block.parameters(), strict=True)]
    mesh = init_device_mesh("cpu", (world_size,))
    fully_shard(block, mesh=mesh)
    fully_shard(man, mesh=mesh)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(1.0)
    man.update_ema(0.75)
    ema = list(man.ema.parameters())
    assert all(isinstance(p, DTensor) for p in [*ema, *man.tracked.parameters()])
    return {"ema": [p.full_tensor() for p in ema], "expected": expected}


def test_ema_update_works_shard_by_shard_on_fsdp2_dtensor_parameters():
    for result in run_in_ddp(_man_update_on_fully_sharded_parameters):
        for got, want in zip(result["ema"], result["expected"], strict=True):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_gradient_reaches_the_input_through_both_branches_only_correction_learns():
    man, _ = make_man()
    h = torch.randn(2, 16, 8, 8, requires_grad=True)
    man(h, torch.tensor([0, 1])).backward()
    assert h.grad is not None and h.grad.abs().sum() > 0
    assert all(p.grad is None for p in man.ema.parameters())
    assert all(p.grad is not None for p in man.correction.parameters())


class RecordTracked(Callback):
    def __init__(self) -> None:
        self.history = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        head = pl_module.aux_heads["0"]
        self.history.append([p.detach().clone() for p in head.tracked.parameters()])


def _man_task(**kwargs) -> LocalLearningClassifier:
    seed_everything(0)
    return LocalLearningClassifier(resnet20(), 10, K=2, split=["s1b1"], man=True, input_shape=(3, 8, 8), **kwargs)


def _fit_recording(task, tmp_path, callbacks=()) -> RecordTracked:
    recorder = RecordTracked()
    trainer = Trainer(max_steps=3, default_root_dir=tmp_path, callbacks=[recorder, *callbacks], **QUIET)
    trainer.fit(task, DigitsDataModule(batch_size=32, channels=3))
    return recorder


def _assert_ema_recursion(head, start, history, momentum: float) -> None:
    ema = start
    for tracked in history:
        ema = [momentum * e + (1 - momentum) * p for e, p in zip(ema, tracked, strict=True)]
    for e, expected in zip(head.ema.parameters(), ema, strict=True):
        torch.testing.assert_close(e, expected, rtol=0, atol=1e-6)


def test_man_true_alone_moves_the_ema_once_per_optimizer_step_with_the_stepped_weights(tmp_path):
    task = _man_task(man_momentum=0.8)
    head = task.aux_heads["0"]
    assert head.tracked is task.backbone.layers.s1b2 and head.momentum == 0.8
    start = [p.detach().clone() for p in head.ema.parameters()]
    recorder = _fit_recording(task, tmp_path)
    assert len(recorder.history) == 3
    _assert_ema_recursion(head, start, recorder.history, 0.8)


@pytest.mark.parametrize("bad", [1.5, -0.1, float("nan"), float("inf")])
def test_a_man_momentum_outside_zero_one_is_named(bad):
    with pytest.raises(ValueError, match=r"MAN momentum must be a number in \[0, 1\].*0.995"):
        _man_task(man_momentum=bad)


def test_man_momentum_without_man_is_refused():
    with pytest.raises(ValueError, match=r"man_momentum=0.9 .* man=False builds none: set man=True"):
        LocalLearningClassifier(resnet20(), 10, K=2, split=["s1b1"], man_momentum=0.9, input_shape=(3, 8, 8))


@pytest.mark.parametrize("channels", [16, 32, 64])
def test_the_infopro_decoder_has_the_official_parameters(channels):
    head = InfoProHead((channels, 8, 8), 10, (3, 32, 32), 1.0, 1.0)
    # conv3x3(C→12) with bias, BN(12), ReLU, conv3x3(12→3) with bias (InfoPro's CIFAR decoder)
    official = (channels * 12 * 9 + 12) + 2 * 12 + (12 * 3 * 9 + 3)
    assert sum(p.numel() for p in head.decoder.parameters()) == official


def test_a_step_skipped_for_a_non_finite_loss_moves_no_ema(tmp_path):
    task = _man_task(man_momentum=0.5, nonfinite="skip")
    task.compute_loss = lambda logits, batch: logits.sum() * float("nan")  # every final loss is NaN
    head = task.aux_heads["0"]
    start = [p.detach().clone() for p in head.ema.parameters()]
    with pytest.warns(UserWarning, match="not finite"):
        _fit_recording(task, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(start, head.ema.parameters(), strict=True))


def test_heads_of_ones_own_configure_local_learning_move_too(tmp_path):
    from lightning_regs.local_learning import LocalLearningMixin
    from lightning_regs.models import MLP

    class Own(LocalLearningMixin):
        def __init__(self):
            super().__init__()
            self.net = MLP(in_features=3 * 8 * 8, num_classes=10, width=16, depth=3)
            man = MomentumAuxiliaryHead(DGLHead((16,), 10, norm=False), self.net.layers[1], momentum=0.5)
            self.configure_local_learning(self.net.layers, self.net.head, (0,), [man])

        def training_step(self, batch, batch_idx):
            return self.local_training_step(batch["image"].flatten(1), batch["target"])[0]

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    seed_everything(0)
    task = Own()
    head = task.aux_heads["0"]
    start = [p.detach().clone() for p in head.ema.parameters()]
    recorder = _fit_recording(task, tmp_path)
    _assert_ema_recursion(head, start, recorder.history, 0.5)
