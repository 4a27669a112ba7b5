"""LegoGCDMixin: the terms equal the functional LER/DKL, the loss weights them as LegoGCD, q̂ moves once per call."""

from __future__ import annotations

import pytest
import torch

from lightning_regs.functional import dual_view_kl, local_entropy_regularization
from lightning_regs.tasks import LegoGCDMixin, LegoGCDSettings


class Host(LegoGCDMixin):
    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.setup_lego_gcd(4, known_classes=[3, 1], prior_momentum=0.5, ler_threshold=0.3, **kwargs)


def _batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.rand(12, 4, generator=generator) * 2 - 1  # 6 images x 2 views, cosine range
    labelled = torch.tensor([True, False, False, True, False, False]).repeat(2)
    return logits, labelled


def test_terms_and_loss_are_legogcd_weighted_and_the_prior_moves_once():
    host = Host()
    logits, labelled = _batch()
    prior = host.prior_ema.prior.clone()
    expected_ler = local_entropy_regularization(logits, labelled, [3, 1], 0.3, prior=prior, lambda_ler=0.4)
    expected_dkl = dual_view_kl(*logits.chunk(2))
    assert float(expected_ler) > 0  # some unlabelled rows are confident and predicted known
    loss, terms = host.lego_gcd_loss(logits, labelled, unsupervised_weight=0.65)
    torch.testing.assert_close(terms["ler"], expected_ler)
    torch.testing.assert_close(terms["dkl"], expected_dkl)
    torch.testing.assert_close(loss, 2.0 * expected_ler + 0.65 * expected_dkl)
    torch.testing.assert_close(host.prior_ema.prior, 0.5 * prior + 0.5 * logits.softmax(dim=1).mean(dim=0))


def test_switches_and_the_plain_entropy_without_prior():
    logits, labelled = _batch(1)
    off = Host(ler_weight=0.0, dkl_weight=0.0)
    loss, terms = off.lego_gcd_loss(logits, labelled)
    assert float(loss) == 0.0 and float(terms["ler"]) == 0.0 and float(terms["dkl"]) == 0.0
    plain = Host(ler_prior=False)
    plain.prior_ema.prior.copy_(torch.tensor([0.7, 0.1, 0.1, 0.1]))  # ignored without the prior
    expected = local_entropy_regularization(logits, labelled, [3, 1], 0.3)
    torch.testing.assert_close(plain.lego_gcd_terms(logits, labelled)["ler"], expected)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="known_classes"):
        Host.__new__(Host).setup_lego_gcd(4, known_classes=[4])
    host = Host()
    with pytest.raises(ValueError, match="ler_threshold"):
        host.setup_lego_gcd(4, known_classes=[0], ler_threshold=1.5)


def test_the_prior_is_in_the_state_dict():
    host = Host()
    assert host.lego_gcd == LegoGCDSettings(known_classes=(3, 1), ler_threshold=0.3)  # the other choices: CUB's
    host.update_logit_prior(_batch()[0])
    assert "prior_ema.prior" in host.state_dict() and not torch.equal(host.prior_ema.prior, torch.full((4,), 0.25))


def test_the_official_preset_uses_the_released_codes_dkl():
    logits, labelled = _batch(2)
    official = Host(preset="official").lego_gcd_terms(logits, labelled)["dkl"]
    torch.testing.assert_close(official, dual_view_kl(*logits.chunk(2), form="official"))
    assert not torch.allclose(official, Host().lego_gcd_terms(logits, labelled)["dkl"])
    with pytest.raises(ValueError, match="preset must be 'library' or 'official'"):
        Host(preset="paper")
