"""MILClassifier in a real Trainer: its bag and attention metrics against sklearn, AEM raising the entropy."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Trainer, seed_everything
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, Dataset

from lightning_regs.datamodules.bags import collate_bags
from lightning_regs.functional import normalized_attention_entropy
from lightning_regs.models import AttentionMIL
from lightning_regs.tasks import AttentionEntropyTerm, MILClassifier
from tests.helpers.ddp import spawn_ddp
from tests.helpers.trainers import QUIET


class KeyInstanceBags(Dataset):
    """Bags of 3..9 Gaussian instances; a bag is positive iff one of them is shifted (the key instance)."""

    def __init__(self, num_bags: int, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.bags = []
        for index in range(num_bags):
            size = int(torch.randint(3, 10, (), generator=generator))
            image = torch.randn(size, 6, generator=generator)
            label = index % 2
            instance_target = torch.zeros(size, dtype=torch.long)
            if label:
                key = int(torch.randint(0, size, (), generator=generator))
                image[key] += 2.5
                instance_target[key] = 1
            self.bags.append(
                {"image": image, "target": torch.tensor(label), "index": torch.tensor(index),
                 "instance_target": instance_target}
            )  # fmt: skip

    def __len__(self) -> int:
        return len(self.bags)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.bags[index]


def loader(num_bags: int, seed: int, batch_size: int) -> DataLoader:
    return DataLoader(KeyInstanceBags(num_bags, seed), batch_size=batch_size, collate_fn=collate_bags)


def test_validation_metrics_equal_sklearn_on_the_same_outputs() -> None:
    seed_everything(0)
    task = MILClassifier(AttentionMIL(in_features=6, embed_dim=8, attention_dim=8, heads=2))
    trainer = Trainer(accelerator="cpu", **QUIET)
    logged = trainer.validate(task, loader(24, seed=1, batch_size=5), verbose=False)[0]
    probabilities, labels, scores, keys, entropies = [], [], [], [], []
    task.eval()
    with torch.no_grad():
        for batch in loader(24, seed=1, batch_size=5):
            out = task(batch["image"], batch["instance_mask"])
            probabilities.append(out.logits.softmax(-1)[:, 1])
            labels.append(batch["target"])
            entropies.append(normalized_attention_entropy(out.attention, batch["instance_mask"]))
            for row in range(len(batch["target"])):
                if batch["target"][row] == 1:
                    real = batch["instance_mask"][row]
                    weights = out.attention[row][:, real].softmax(dim=-1).mean(dim=0)  # this bag's heads, averaged
                    scores.append(weights * int(real.sum()))  # relative to uniform
                    keys.append(batch["instance_target"][row][real])
    assert logged["val/auroc"] == pytest.approx(roc_auc_score(torch.cat(labels), torch.cat(probabilities)), abs=1e-6)
    assert logged["val/instance_auroc"] == pytest.approx(roc_auc_score(torch.cat(keys), torch.cat(scores)), abs=1e-6)
    assert logged["val/attention_entropy"] == pytest.approx(torch.cat(entropies).mean().item(), abs=1e-6)


def fit(aem_weight: float | None, batch_size: int, epochs: int = 30) -> tuple[MILClassifier, dict[str, float]]:
    seed_everything(0)
    terms = [] if aem_weight is None else [AttentionEntropyTerm(weight=aem_weight)]
    task = MILClassifier(AttentionMIL(in_features=6, embed_dim=16, attention_dim=16), lr=3e-3, loss_terms=terms)
    trainer = Trainer(accelerator="cpu", max_epochs=epochs, **QUIET)
    trainer.fit(task, loader(40, seed=2, batch_size=batch_size), loader(40, seed=3, batch_size=batch_size))
    return task, {k: float(v) for k, v in trainer.callback_metrics.items()}


def test_abmil_learns_the_key_instance_and_aem_spreads_its_attention() -> None:
    _, baseline = fit(None, batch_size=4)
    _, aem = fit(1.0, batch_size=4)
    assert baseline["val/auroc"] > 0.9 and baseline["val/instance_auroc"] > 0.9  # the task is learnt and localised
    assert aem["val/attention_entropy"] > baseline["val/attention_entropy"] + 0.05
    assert "train/aem" in aem and aem["train/aem"] < 0  # -H, logged unweighted


def test_one_bag_per_batch_trains_as_the_paper_does() -> None:
    task, metrics = fit(0.1, batch_size=1, epochs=2)
    assert {"train/loss", "train/aem", "val/auroc", "val/attention_entropy", "val/instance_auroc"} <= set(metrics)
    assert all(torch.isfinite(p).all() for p in task.parameters())


class ShiftedAttention(torch.nn.Module):
    """AttentionMIL whose scores get a per-bag offset: the softmax, the bag logits and the localisation ignore it."""

    def __init__(self, model: AttentionMIL, shift: float) -> None:
        super().__init__()
        self.model, self.shift = model, shift

    def forward(self, bags, instance_mask=None):
        out = self.model(bags, instance_mask)
        offsets = self.shift * torch.arange(len(bags), dtype=out.attention.dtype)[:, None, None]
        return {"logits": out.logits, "attention": out.attention + offsets}


def test_instance_localisation_ignores_a_shift_of_a_bags_scores() -> None:
    seed_everything(0)
    model = AttentionMIL(in_features=6, embed_dim=8, attention_dim=8)
    results = []
    for shift in (0.0, 5.0):
        trainer = Trainer(accelerator="cpu", **QUIET)
        task = MILClassifier(ShiftedAttention(model, shift))
        results.append(trainer.validate(task, loader(24, seed=1, batch_size=6), verbose=False)[0])
    assert results[0]["val/instance_auroc"] == results[1]["val/instance_auroc"]
    assert results[0]["val/attention_entropy"] == pytest.approx(results[1]["val/attention_entropy"], abs=1e-6)


def test_mixup_on_bags_is_refused_before_training(tmp_path) -> None:
    from lightning_regs.callbacks import MixUp

    task = MILClassifier(AttentionMIL(in_features=6))
    trainer = Trainer(accelerator="cpu", max_epochs=1, callbacks=[MixUp(alpha=1.0)], **QUIET)
    with pytest.raises(ValueError, match="MixUp rewrites batch\\['image'\\] row by row"):
        trainer.fit(task, loader(8, seed=0, batch_size=4))
    assert trainer.global_step == 0


def test_image_classifier_refuses_padded_bags_it_would_attend_to() -> None:
    from lightning_regs.tasks import ImageClassifier

    task = ImageClassifier(AttentionMIL(in_features=6), 2, loss_terms=[AttentionEntropyTerm(0.1)])
    batch = next(iter(loader(8, seed=0, batch_size=4)))
    with pytest.raises(ValueError, match=r"Use lightning_regs\.tasks\.MILClassifier for bags"):
        task.training_step(batch, 0)


def ddp_validate(world: int) -> dict[str, float]:
    """Validate on 4 bags where the positive ones (1, 3) all land on rank 1 of 2 (DistributedSampler, no shuffle)."""
    from datetime import timedelta

    seed_everything(0)
    task = MILClassifier(AttentionMIL(in_features=6, embed_dim=8, attention_dim=8))
    strategy = spawn_ddp(timeout=timedelta(seconds=60)) if world > 1 else "auto"
    trainer = Trainer(accelerator="cpu", devices=world, strategy=strategy, **QUIET)
    return trainer.validate(task, loader(4, seed=1, batch_size=1), verbose=False)[0]


@pytest.mark.slow
def test_under_ddp_a_rank_without_positive_bags_logs_what_one_process_logs() -> None:
    bags = KeyInstanceBags(4, seed=1)
    assert [int(b["target"]) for b in bags] == [0, 1, 0, 1]  # rank 0 takes bags 0 and 2: no key instance
    one, two = ddp_validate(1), ddp_validate(2)
    assert set(one) == set(two)
    for name in one:
        assert two[name] == pytest.approx(one[name], abs=1e-6), name
