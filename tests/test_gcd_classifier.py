"""GCDClassifier in real Trainer runs: losses and logs, 2-rank evaluation equals one rank, exact resume."""

from __future__ import annotations

import torch
from lightning.pytorch import LightningDataModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from lightning_regs.functional import gcd_accuracy
from lightning_regs.tasks import GCDClassifier
from tests.helpers.ddp import DDP_SPAWN_CPU
from tests.helpers.trainers import QUIET

KNOWN = (2, 3)  # the known classes are not the first ids


class ToyGCD(Dataset):
    """Fixed two-view samples of 4 classes (16-d Gaussian blobs as 1x4x4 images); half of the known rows labelled."""

    def __init__(self, rows: int = 41, train: bool = True) -> None:
        generator = torch.Generator().manual_seed(0 if train else 1)
        self.truth = torch.arange(rows) % 4
        centres = torch.randn(4, 16, generator=torch.Generator().manual_seed(7)) * 2
        base = centres[self.truth] + torch.randn(rows, 16, generator=generator)
        noise = 0.3 * torch.randn(rows, 2, 16, generator=generator)
        self.views = (base[:, None] + noise).view(rows, 2, 1, 4, 4)
        self.labeled = torch.isin(self.truth, torch.tensor(KNOWN)) & (torch.arange(rows) % 8 < 4) & train
        self.train = train

    def __len__(self) -> int:
        return len(self.truth)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        target = self.truth[i] if self.labeled[i] or not self.train else torch.tensor(-1)
        image = self.views[i] if self.train else self.views[i, 0]
        return {"image": image, "target": target, "index": torch.tensor(i), "labeled": self.labeled[i]}


class ToyGCDData(LightningDataModule):
    def __init__(self, batch_size: int = 8, rank_strided: bool = False) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.rank_strided = rank_strided  # rank r reads rows r, r + W, ... (with use_distributed_sampler=False)

    def train_dataloader(self) -> DataLoader:
        data: Dataset = ToyGCD()
        if self.rank_strided:
            data = Subset(data, range(self.trainer.global_rank, len(data), self.trainer.world_size))
        return DataLoader(data, batch_size=self.batch_size, shuffle=False, drop_last=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(ToyGCD(41, train=False), batch_size=6)


def make_task(**kwargs) -> GCDClassifier:
    """A small GCDClassifier on the 16-d toy (the factory a harness entry can use)."""
    seed_everything(0, verbose=False)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(16, 8))
    defaults = {"proj_hidden": 16, "proj_dim": 8, "known_classes": KNOWN, "teacher_warmup_epochs": 4, "lr": 0.05}
    return GCDClassifier(backbone, feature_dim=8, num_known=2, num_novel=2, **(defaults | kwargs))


def test_fit_logs_all_old_new_and_updates_the_prior():
    task = make_task()
    trainer = Trainer(max_epochs=2, accelerator="cpu", devices=1, **QUIET)
    trainer.fit(task, ToyGCDData())
    metrics = trainer.callback_metrics
    for name in ("gcd/all", "gcd/old", "gcd/new", "gcd/v1_all", "gcd/v2b_new", "gcd/train_ler", "gcd/train_dkl"):
        assert name in metrics, name
    assert 0 <= float(metrics["gcd/all"]) <= 1
    prior = task.state_dict()["prior_ema.prior"]
    assert not torch.allclose(prior, torch.full((4,), 0.25)) and abs(float(prior.sum()) - 1) < 1e-5
    assert float(metrics["gcd/teacher_temp"]) < 0.07


def test_switches_turn_the_legogcd_terms_off():
    batch = next(iter(ToyGCDData().train_dataloader()))
    base = make_task(ler_weight=0.0, dkl_weight=0.0)
    lego = make_task(ler_weight=2.0, dkl_weight=1.0, ler_threshold=0.0)  # same weights: same seed
    terms_base, _ = base.compute_losses(batch)
    terms_lego, _ = lego.compute_losses(batch)
    assert terms_base["ler"].item() == 0 and terms_base["dkl"].item() == 0
    expected = terms_base["loss"] + 0.65 * terms_lego["dkl"] + 2.0 * terms_lego["ler"]
    torch.testing.assert_close(terms_lego["loss"], expected)


def test_evaluation_matches_a_direct_hungarian_score():
    task = make_task()
    trainer = Trainer(accelerator="cpu", devices=1, **QUIET)
    trainer.validate(task, ToyGCDData(), verbose=False)
    data = ToyGCD(41, train=False)
    with torch.no_grad():
        predictions = task(data.views[:, 0]).argmax(1)
    expected = gcd_accuracy(predictions, data.truth, KNOWN)
    for group in ("all", "old", "new"):
        assert float(trainer.callback_metrics[f"gcd/{group}"]) == float(torch.tensor(expected[group]).float())


def test_two_rank_evaluation_equals_one_rank():
    # 41 rows on 2 ranks: DistributedSampler pads one duplicate, which must not be counted
    single = Trainer(accelerator="cpu", devices=1, **QUIET)
    single.validate(make_task(), ToyGCDData(), verbose=False)
    ddp = Trainer(**DDP_SPAWN_CPU, **QUIET)
    ddp.validate(make_task(), ToyGCDData(), verbose=False)
    for name in ("gcd/all", "gcd/old", "gcd/new", "gcd/v1_all", "gcd/v2b_all"):
        assert float(ddp.callback_metrics[name]) == float(single.callback_metrics[name]), name


def test_two_ranks_update_the_prior_with_the_mean_over_the_global_batch():
    """q̂'s batch mean is averaged over ranks; without it rank 0 would keep the mean of its own half of the batch."""
    settings = {"max_steps": 1, "limit_val_batches": 0, **QUIET}
    single = make_task(lr=0.0, prior_momentum=0.5)  # lr=0: both runs score the same initial weights
    Trainer(accelerator="cpu", devices=1, **settings).fit(single, ToyGCDData(batch_size=16))
    ddp = make_task(lr=0.0, prior_momentum=0.5)  # rank r reads rows r, r + 2, ...: the same 16 rows in all
    Trainer(**DDP_SPAWN_CPU, use_distributed_sampler=False, **settings).fit(ddp, ToyGCDData(8, rank_strided=True))
    uniform = torch.full((4,), 0.25)
    assert (single.prior_ema.prior - uniform).abs().max() > 1e-3
    torch.testing.assert_close(ddp.prior_ema.prior, single.prior_ema.prior, rtol=0, atol=1e-7)


def test_resume_continues_the_prior_and_the_teacher_schedule(tmp_path):
    settings = {"accelerator": "cpu", "devices": 1, **QUIET, "enable_checkpointing": True}
    full = make_task()
    checkpoints = ModelCheckpoint(dirpath=tmp_path, save_top_k=-1, every_n_epochs=1, filename="{epoch}")
    Trainer(max_epochs=4, callbacks=[checkpoints], **settings).fit(full, ToyGCDData())
    resumed = make_task()
    trainer = Trainer(max_epochs=4, callbacks=[ModelCheckpoint(dirpath=tmp_path / "r")], **settings)
    trainer.fit(resumed, ToyGCDData(), ckpt_path=tmp_path / "epoch=1.ckpt")
    assert resumed.current_teacher_temperature() == full.current_teacher_temperature() < 0.07
    for name, value in full.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], value, rtol=0, atol=0, msg=name)
    # the checkpoint carries q̂, so a run restarted from scratch would not match
    saved = torch.load(tmp_path / "epoch=1.ckpt", weights_only=True)["state_dict"]["prior_ema.prior"]
    assert not torch.equal(saved, torch.full((4,), 0.25))


def test_harness_factory_trains_on_the_two_view_digits(tmp_path):
    from tests.helpers.gcd import gcd_classifier, sequential_gcd_digits

    data = sequential_gcd_digits(tmp_path, 16)
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape[1] == 2 and bool((batch["target"] == -1).any())
    trainer = Trainer(max_epochs=1, limit_train_batches=3, limit_val_batches=2, accelerator="cpu", devices=1, **QUIET)
    trainer.fit(gcd_classifier(), data)
    assert "gcd/all" in trainer.callback_metrics


def test_the_official_preset_reaches_the_dkl_term():
    batch = next(iter(ToyGCDData().train_dataloader()))
    library, official = make_task(), make_task(preset="official")  # same seed: same weights
    terms_library, _ = library.compute_losses(batch)
    terms_official, _ = official.compute_losses(batch)
    assert official.lego_gcd.preset == "official" and official.hparams.preset == "official"
    assert float(terms_official["dkl"]) < float(terms_library["dkl"])
    torch.testing.assert_close(terms_official["ler"], terms_library["ler"])
