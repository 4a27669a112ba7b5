"""GCD set-ups that label nothing, and GCD arguments that make the results meaningless, are named errors (issue 22)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lightning_regs.datamodules import GCDDataset
from lightning_regs.datamodules.digits_gcd import DigitsGCDDataModule
from lightning_regs.tasks import GCDClassifier

NAN, INF = math.nan, math.inf


def _task(**kwargs) -> GCDClassifier:
    arguments = {"feature_dim": 8, "num_known": 2, "num_novel": 2, "proj_hidden": 16, "proj_dim": 4, **kwargs}
    return GCDClassifier(nn.Sequential(nn.Flatten(), nn.Linear(16, 8)), **arguments)


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize(
    ("argument", "value", "error", "words"),
    [
        ("known_classes", [], ValueError, r"known_classes.*\[\]"),
        ("known_classes", [0, 0], ValueError, r"known_classes.*\[0\].*more than once"),
        ("known_classes", [0.5, 1], TypeError, r"known_classes.*0\.5"),
        ("known_classes", [True, 2], TypeError, r"known_classes.*True"),
        ("known_classes", [0, 7], ValueError, r"known_classes.*\[7\] lie outside"),
        ("sup_weight", -1.0, ValueError, r"sup_weight.*-1"),
        ("sup_weight", NAN, ValueError, r"sup_weight.*nan"),
        ("sup_weight", 1.5, ValueError, r"sup_weight.*1\.5"),
        ("student_temp", 0.0, ValueError, r"student_temp.*0"),
        ("student_temp", INF, ValueError, r"student_temp.*inf"),
        ("teacher_temp", -0.04, ValueError, r"teacher_temp.*-0\.04"),
        ("teacher_temp_start", NAN, ValueError, r"teacher_temp_start.*nan"),
        ("supcon_temperature", 0.0, ValueError, r"supcon_temperature.*0"),
        ("infonce_temperature", NAN, ValueError, r"infonce_temperature.*nan"),
        ("memax_weight", -2.0, ValueError, r"memax_weight.*-2"),
        ("ler_weight", NAN, ValueError, r"ler_weight.*nan"),
        ("ler_threshold", NAN, ValueError, r"ler_threshold.*nan"),
        ("ler_lambda", INF, ValueError, r"ler_lambda.*inf"),
        ("ler_prior", "yes", TypeError, r"ler_prior.*'yes'"),
        ("prior_momentum", 1.0, ValueError, r"prior_momentum.*1"),
        ("dkl_weight", -1.0, ValueError, r"dkl_weight.*-1"),
        ("teacher_warmup_epochs", -1, ValueError, r"teacher_warmup_epochs.*-1"),
        ("teacher_warmup_epochs", 2.5, TypeError, r"teacher_warmup_epochs.*2\.5"),
        ("proj_layers", 0, ValueError, r"proj_layers.*0"),
        ("lr", NAN, ValueError, r"\blr\b.*nan"),
        ("momentum", 1.0, ValueError, r"momentum.*1"),
        ("weight_decay", NAN, ValueError, r"weight_decay.*nan"),
        ("num_known", True, TypeError, r"num_known.*True"),
        ("num_novel", -1, ValueError, r"num_novel.*-1"),
        ("feature_dim", 0, ValueError, r"feature_dim.*0"),
    ],
)
def test_gcd_classifier_refuses_a_bad_argument(argument, value, error, words) -> None:
    with pytest.raises(error, match=words):
        _task(**{argument: value})


@pytest.mark.fault(area="tasks", outcome="refused")
def test_a_labelled_row_of_a_novel_class_is_refused() -> None:
    task = _task(known_classes=[0, 1])
    batch = {
        "image": torch.randn(4, 2, 1, 4, 4),
        "target": torch.tensor([0, 3, -1, -1]),
        "labeled": torch.tensor([True, True, False, False]),
    }
    with pytest.raises(ValueError, match=r"labelled rows of classes \[3\].*known_classes=\[0, 1\]"):
        task.training_step(batch, 0)


@pytest.mark.fault(area="tasks", outcome="handled")
def test_labelled_rows_of_known_classes_train() -> None:
    task = _task(known_classes=[0, 1])
    batch = {"image": torch.randn(4, 2, 1, 4, 4), "target": torch.tensor([0, 1, -1, -1])}
    assert torch.isfinite(task.training_step(batch, 0)["loss"])


_IMAGES, _TARGETS = torch.randn(40, 1, 4, 4), torch.arange(40) % 4


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize(
    ("argument", "value", "error", "words"),
    [
        ("known_classes", [], ValueError, r"known_classes.*\[\]"),
        ("known_classes", [0, 0], ValueError, r"known_classes.*more than once"),
        ("known_classes", [0.5], TypeError, r"known_classes.*0\.5"),
        ("known_classes", [False], TypeError, r"known_classes.*False"),
        ("labeled_fraction", 0.01, ValueError, r"labeled_fraction=0\.01 labels no image of known classes \[0\]"),
        ("labeled_fraction", NAN, ValueError, r"labeled_fraction.*nan"),
        ("labeled_fraction", 0.0, ValueError, r"labeled_fraction.*0"),
    ],
)
def test_gcd_dataset_refuses_a_set_up_that_labels_nothing(argument, value, error, words) -> None:
    arguments = {"known_classes": [0], "labeled_fraction": 0.5, argument: value}
    with pytest.raises(error, match=words):
        GCDDataset(_IMAGES, _TARGETS, **arguments)


@pytest.mark.fault(area="tasks", outcome="refused")
@pytest.mark.parametrize(
    ("argument", "value", "error", "words"),
    [
        ("known_classes", [], ValueError, r"known_classes.*\[\]"),
        ("known_classes", [1, 1, 2], ValueError, r"known_classes.*\[1\].*more than once"),
        ("known_classes", [True], TypeError, r"known_classes.*True"),
        ("known_classes", [10], ValueError, r"known_classes.*\[10\] lie outside"),
        ("labeled_fraction", 0.001, ValueError, r"labeled_fraction=0\.001 labels no training image"),
        ("labeled_fraction", INF, ValueError, r"labeled_fraction.*inf"),
        ("test_fraction", 1.0, ValueError, r"test_fraction.*1"),
        ("test_fraction", NAN, ValueError, r"test_fraction.*nan"),
        ("batch_size", 0, ValueError, r"batch_size.*0"),
        ("seed", 1.5, TypeError, r"seed.*1\.5"),
    ],
)
def test_digits_gcd_refuses_a_set_up_that_labels_nothing(argument, value, error, words) -> None:
    with pytest.raises(error, match=words):
        DigitsGCDDataModule(**{argument: value})
