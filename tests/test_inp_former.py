"""INP-Former: the losses against their equations and the official computation, the network's blocks against the
official attention, and a real fit, test and mid-epoch resume on the MVTec-format toy."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint

from lightning_regs.datamodules.mvtec_toy import MVTecToyDataModule
from lightning_regs.functional.inp_former import (
    anomaly_map,
    coherence_loss,
    image_score,
    soft_mining_cosine_loss,
    soft_mining_factor,
)
from lightning_regs.tasks.anomaly_evaluation import METRICS
from lightning_regs.tasks.inp_former import INPFormer, WarmCosine
from lightning_regs.tasks.inp_former_model import AggregationBlock, DecoderBlock
from tests.helpers.doc_blocks import block, run_python
from tests.helpers.trainers import QUIET, CrashAtStep

TINY = {"encoder": "efficientnet_lite0", "encoder_weights": None, "encoder_layers": [1, 2], "num_decoder_blocks": 2}


# The losses: equations.
def test_coherence_is_zero_on_a_prototype_and_one_when_orthogonal() -> None:
    prototypes = torch.randn(2, 4, 8)
    tokens = prototypes[:, [1, 3, 3, 0]] * torch.rand(2, 4, 1).add(0.5)  # scaled copies: cosine 1
    assert float(coherence_loss(tokens, prototypes)) == pytest.approx(0.0, abs=1e-6)
    basis = torch.eye(8)
    assert float(coherence_loss(basis[None, 4:], basis[None, :4])) == pytest.approx(1.0, abs=1e-7)


def test_coherence_takes_the_nearest_prototype_per_token_then_the_mean() -> None:
    tokens, prototypes = torch.randn(3, 5, 6), torch.randn(3, 2, 6)
    expected = np.mean(
        [
            min(1 - F.cosine_similarity(tokens[b, n], prototypes[b, m], dim=0).item() for m in range(2))
            for b in range(3)
            for n in range(5)
        ]
    )
    assert float(coherence_loss(tokens, prototypes)) == pytest.approx(expected, abs=1e-6)


def _levels(seed: int = 0) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    encoder = [torch.randn(2, 6, 3, 4, generator=g) for _ in range(2)]
    decoder = [(e + torch.randn(e.shape, generator=g)).requires_grad_() for e in encoder]
    return encoder, decoder


def _gradients(gamma: float, seed: int = 0) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
    encoder, decoder = _levels(seed)
    loss = soft_mining_cosine_loss(encoder, decoder, gamma)
    loss.backward()
    return loss.detach(), encoder, [d.grad for d in decoder]


def _distance(e: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    return 1 - F.cosine_similarity(e, d.detach(), dim=1)  # (B, H, W)


def test_soft_mining_gradient_ratio_between_positions_is_the_distance_ratio_to_the_gamma() -> None:
    _, encoder, plain = _gradients(0.0)
    _, _, mined = _gradients(3.0)
    _, decoder = _levels()
    for e, d, g0, g3 in zip(encoder, decoder, plain, mined, strict=True):
        ratio = g3 / g0  # per element; constant over the channels of a position
        assert torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4)
        dist = _distance(e, d).flatten()
        r = ratio[:, 0].flatten()
        i, j = int(dist.argmax()), int(dist.argmin())
        assert float(r[i] / r[j]) == pytest.approx(float((dist[i] / dist[j]) ** 3), rel=1e-4)
        assert torch.allclose(r, (dist / dist.mean()) ** 3, rtol=1e-4)  # the mean over the batch and positions


def test_gamma_zero_is_exactly_the_plain_global_cosine_gradient_and_the_value_ignores_gamma() -> None:
    _, decoder = _levels()
    encoder, _ = _levels()
    plain = sum(
        (1 - F.cosine_similarity(e.flatten(1), d.flatten(1), dim=1)).mean()
        for e, d in zip(encoder, decoder, strict=True)
    )
    (plain / 2).backward()
    value0, _, grads0 = _gradients(0.0)
    for expected, got in zip([d.grad for d in decoder], grads0, strict=True):
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
    for gamma in (1.0, 3.0, 5.5):
        assert torch.equal(_gradients(gamma)[0], value0)
    assert float(value0) == pytest.approx(float(plain.detach() / 2), abs=0)


def test_the_factor_stays_finite_and_non_negative_where_reconstruction_is_exact() -> None:
    e = torch.randn(1, 3, 2, 2)
    factor = soft_mining_factor(e, e.clone(), 3.0)  # 1 - cos is +-1e-7 here: unclamped, the factor goes to +-inf
    assert bool(torch.isfinite(factor).all()) and bool((factor >= 0).all())
    assert torch.equal(soft_mining_factor(e, e.clone(), 0.0), torch.ones_like(factor))
    zero = torch.zeros(1, 1, 2, 2)
    assert torch.equal(soft_mining_factor(torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2), 3.0), zero)


# The official computation, re-derived (luow23/INP-Former utils.py: global_cosine_hm_adaptive with a tensor hook,
# cal_anomaly_maps, get_gaussian_kernel, evaluation_batch's top-1 % score; models/uad.py gather_loss).
def _official_soft_mining(a: list[torch.Tensor], b: list[torch.Tensor], y: float) -> torch.Tensor:
    cos = torch.nn.CosineSimilarity()
    loss = 0
    for item in range(len(a)):
        a_, b_ = a[item].detach(), b[item]
        with torch.no_grad():
            point = 1 - cos(a_, b_).unsqueeze(1).detach()
        factor = (point / point.mean()) ** y
        loss += torch.mean(1 - cos(a_.reshape(a_.shape[0], -1), b_.reshape(b_.shape[0], -1)))
        b_.register_hook(partial(lambda g, f: g * f.expand_as(g), f=factor))
    return loss / len(a)


def _official_kernel(kernel_size: int = 5, sigma: float = 4.0) -> torch.Tensor:
    coords = torch.arange(kernel_size)
    x = coords.repeat(kernel_size).view(kernel_size, kernel_size)
    grid = torch.stack([x, x.t()], dim=-1).float()
    mean, var = (kernel_size - 1) / 2.0, sigma**2.0
    k = (1.0 / (2.0 * math.pi * var)) * torch.exp(-torch.sum((grid - mean) ** 2.0, dim=-1) / (2 * var))
    return (k / k.sum()).view(1, 1, kernel_size, kernel_size)


def test_soft_mining_equals_the_official_hooked_loss_in_value_and_gradient() -> None:
    encoder, ours = _levels(3)
    _, official = _levels(3)
    mine, theirs = soft_mining_cosine_loss(encoder, ours, 3.0), _official_soft_mining(encoder, official, 3)
    torch.testing.assert_close(mine, theirs)
    mine.backward()
    theirs.backward()
    for d_ours, d_official in zip(ours, official, strict=True):
        torch.testing.assert_close(d_ours.grad, d_official.grad, rtol=1e-5, atol=1e-9)


def test_map_and_score_equal_the_official_evaluation_on_the_same_features() -> None:
    encoder, decoder = _levels(1)
    decoder = [d.detach() for d in decoder]
    maps = [F.interpolate((1 - F.cosine_similarity(e, d)).unsqueeze(1), size=32, mode="bilinear", align_corners=True)
            for e, d in zip(encoder, decoder, strict=True)]  # fmt: skip
    official = F.conv2d(torch.cat(maps, 1).mean(1, keepdim=True), _official_kernel(), padding=2)
    ours = anomaly_map(encoder, decoder, (32, 32))
    torch.testing.assert_close(ours, official, rtol=1e-5, atol=1e-6)
    flat = official.flatten(1)
    top = torch.sort(flat, dim=1, descending=True)[0][:, : int(flat.shape[1] * 0.01)].mean(1)
    torch.testing.assert_close(image_score(ours, 0.01), top, rtol=1e-5, atol=1e-6)


def test_the_schedule_equals_the_official_warm_cosine_scheduler() -> None:
    base, final, total, warm = 1e-3, 1e-4, 50, 10
    iters = np.arange(total - warm)
    official = np.concatenate(
        [np.linspace(0, base, warm), final + 0.5 * (base - final) * (1 + np.cos(np.pi * iters / len(iters)))]
    )
    schedule = WarmCosine(base, final, total, warm)
    np.testing.assert_allclose([schedule(i) * base for i in range(total + 3)], [*official, final, final, final])


# The blocks against the official attention (models/vision_transformer.py: Prototype_Block, Aggregation_Block).
def test_decoder_block_equals_the_official_prototype_block() -> None:
    torch.manual_seed(0)
    block, x, p = DecoderBlock(8, 2), torch.randn(2, 5, 8), torch.randn(2, 3, 8)
    block.scale.data = torch.tensor([0.5, 2.0]).view(2, 1, 1)
    B, N, C, H = 2, 5, 8, 2
    xn, pn = block.norm1(x), block.norm1(p)
    q = block.q(xn).reshape(B, N, 1, H, C // H).permute(2, 0, 3, 1, 4)[0]
    k, v = block.kv(pn).reshape(B, 3, 2, H, C // H).permute(2, 0, 3, 1, 4)
    attn = F.relu((F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)) * block.scale)
    y = block.proj((attn @ v).transpose(1, 2).reshape(B, N, C))
    torch.testing.assert_close(block(x, p), y + block.mlp(block.norm2(y)))


def test_aggregation_block_equals_the_official_one() -> None:
    torch.manual_seed(0)
    block, queries, tokens = AggregationBlock(8, 2), torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    B, T, C, H = 2, 3, 8, 2
    q = block.q(block.norm1(queries)).reshape(B, T, 1, H, C // H).permute(2, 0, 3, 1, 4)[0]
    k, v = block.kv(block.norm1(tokens)).reshape(B, 5, 2, H, C // H).permute(2, 0, 3, 1, 4)
    attn = ((q @ k.transpose(-2, -1)) * (C // H) ** -0.5).softmax(-1)
    x = queries + block.proj((attn @ v).transpose(1, 2).reshape(B, T, C))
    torch.testing.assert_close(block(queries, tokens), x + block.mlp(block.norm2(x)))


# The task: arguments, a real fit and test, resume.
@pytest.mark.parametrize(
    ("changes", "error", "words"),
    [
        ({"gamma": -1.0}, ValueError, "gamma"),
        ({"coherence_weight": "0.2"}, TypeError, "coherence_weight"),
        ({"num_decoder_blocks": 3, "num_groups": 2}, ValueError, "multiple of num_groups"),
        ({"top_ratio": 2.0}, ValueError, "top_ratio"),
        ({"num_heads": 5}, ValueError, "divide"),
    ],
)
def test_bad_arguments_are_named_errors(changes: dict, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        INPFormer(**{**TINY, **changes})


def test_a_vit_needs_layers_that_split_into_the_groups() -> None:
    with pytest.raises(ValueError, match="groups of equal size"):
        INPFormer("torchvision:vit_b_16", None, [0, 1, 2], image_size=32, num_groups=2, num_decoder_blocks=2)


def test_an_anomalous_training_image_is_a_named_error() -> None:
    task = INPFormer(**TINY)
    batch = {"image": torch.zeros(2, 3, 32, 32), "label": torch.tensor([0, 1])}
    with pytest.raises(ValueError, match="normal images only"):
        task.training_step(batch, 0)


def _fit(root, tmp_path, crash_at: int | None = None, ckpt_path=None, test: bool = False, validate: bool = False):
    seed_everything(0)
    task = INPFormer(**TINY, warmup_steps=2)
    data = MVTecToyDataModule(
        root, "stripes", batch_size=4, toy_size=32, num_train=12, num_test_good=4, num_test_defect=2
    )
    callbacks = [ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=1, save_last=True, save_top_k=-1)]
    callbacks += [CrashAtStep(crash_at)] if crash_at is not None else []
    trainer = Trainer(
        max_epochs=1, callbacks=callbacks, default_root_dir=tmp_path, limit_val_batches=1.0 if validate else 0,
        **{**QUIET, "enable_checkpointing": True},
    )  # fmt: skip
    try:
        trainer.fit(task, data, ckpt_path=ckpt_path)
    except RuntimeError as error:
        if "CRASH" not in str(error):
            raise
    if validate:
        assert torch.isfinite(trainer.callback_metrics["train/loss"])
        assert float(trainer.callback_metrics["val/num_images"]) == 10
    if test:
        trainer.test(task, data)
    return task, trainer


def test_fit_and_test_on_the_toy_log_every_metric_and_keep_the_encoder_frozen(tmp_path) -> None:
    seed_everything(0)
    before = {k: v.clone() for k, v in INPFormer(**TINY).net.encoder.state_dict().items() if torch.is_tensor(v)}
    task, trainer = _fit(tmp_path / "data", tmp_path / "run", test=True, validate=True)
    for name in (*METRICS, "num_images"):
        assert f"test/{name}" in trainer.callback_metrics, name
    assert float(trainer.callback_metrics["test/num_images"]) == 10
    after = task.net.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in task.net.encoder.parameters()}
    assert optimized == {id(p) for p in task.net.trainable()}
    out = trainer.predict(task, trainer.datamodule.test_dataloader())
    assert out[0]["anomaly_map"].shape[-2:] == (32, 32) and out[0]["score"].shape == (4,)


def test_a_run_stopped_mid_epoch_resumes_to_the_same_weights(tmp_path) -> None:
    root = tmp_path / "data"
    full, _ = _fit(root, tmp_path / "full")
    _fit(root, tmp_path / "part", crash_at=2)  # 3 steps in the epoch: the last checkpoint is step 2, mid-epoch
    assert torch.load(tmp_path / "part" / "last.ckpt", weights_only=True)["global_step"] == 2
    resumed, trainer = _fit(root, tmp_path / "part", ckpt_path=tmp_path / "part" / "last.ckpt")
    assert trainer.global_step == 3
    for (name, a), b in zip(full.net.named_parameters(), resumed.net.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_the_cards_own_code_block_runs_as_written(tmp_path, monkeypatch) -> None:
    code = block("docs/methods/inp_former.md")
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    namespace = run_python(code, "docs/methods/inp_former.md", "inp_former_card")
    assert namespace["trainer"].global_step == 2 and namespace["maps"].shape == (2, 1, 32, 32)
