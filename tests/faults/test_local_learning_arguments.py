"""Local learning's arguments and batches that would train on nothing meaningful are named errors (issue 22)."""

from __future__ import annotations

import math

import pytest
import torch
from lightning.pytorch import LightningModule
from torch import nn

from lightning_regs.local_learning import DGLHead, InfoProHead, LocalLearningMixin

NAN, INF = math.nan, math.inf


class _Host(LocalLearningMixin, LightningModule):
    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3)
        )
        self.setup_local_learning(self.net, num_classes=3, K=2, input_shape=(16,), **kwargs)


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize(
    ("argument", "value", "error", "words"),
    [
        ("gradient_clip_val", -1.0, ValueError, r"gradient_clip_val.*-1"),
        ("gradient_clip_val", 0.0, ValueError, r"gradient_clip_val.*0"),
        ("gradient_clip_val", NAN, ValueError, r"gradient_clip_val.*nan"),
        ("gradient_clip_val", INF, ValueError, r"gradient_clip_val.*inf"),
        ("gradient_clip_val", "1", TypeError, r"gradient_clip_val.*'1'"),
        ("gradient_clip_algorithm", "l2", ValueError, r"gradient_clip_algorithm.*'l2'"),
    ],
)
def test_setup_local_learning_refuses_a_bad_clipping(argument, value, error, words) -> None:
    with pytest.raises(error, match=words):
        _Host(**{argument: value})


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize(
    ("factory", "words"),
    [
        (lambda: DGLHead((0, 4, 4), 3), r"in_shape.*0"),
        (lambda: DGLHead((8,), 0), r"num_classes.*0"),
        (lambda: DGLHead((8,), 3, hidden=0), r"hidden.*0"),
        (lambda: DGLHead((8,), 3, norm="yes"), r"norm.*'yes'"),
        (lambda: InfoProHead((4, 4, 4), 3, (1, 8, 8), lambda_recon=NAN), r"lambda_recon.*nan"),
        (lambda: InfoProHead((4, 4, 4), 3, (1, 8, 8), lambda_task=INF), r"lambda_task.*inf"),
        (lambda: InfoProHead((4, 4, 4), 3, (1, 8, 8), temperature=0.0), r"temperature.*0"),
        (lambda: InfoProHead((4, 4, 4), 3, (1, 8, 8), feature_dim=0), r"feature_dim.*0"),
    ],
)
def test_local_learning_heads_refuse_a_bad_argument(factory, words) -> None:
    with pytest.raises((ValueError, TypeError), match=words):
        factory()


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize("in_shape", [(8,), (4, 8)])
def test_a_dgl_head_with_batch_normalization_refuses_a_batch_of_one(in_shape) -> None:
    head = DGLHead(in_shape, 3).train()
    with pytest.raises(ValueError, match=r"DGLHead.*batch of 1 sample.*batch_size >= 2.*head_norm=False"):
        head(torch.randn(1, *in_shape), torch.tensor([0]))


@pytest.mark.fault(area="tasks", outcome="handled")
def test_a_dgl_head_without_normalization_trains_on_a_batch_of_one() -> None:
    head = DGLHead((8,), 3, norm=False).train()
    assert torch.isfinite(head(torch.randn(1, 8), torch.tensor([0])))
