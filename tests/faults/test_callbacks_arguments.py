"""Every public constructor of the callbacks validates every argument (issue 22, kinds 3, 6, 7).

Each case is a bad argument and the named error it must get: the exception type and the words that name the
argument and the value (``pytest.raises(..., match=...)``). The shared monitor arguments are checked once, by
``ScheduledMonitor``, and proven here for every monitor.
"""

from __future__ import annotations

import math

import pytest

from lightning_regs.callbacks import (
    AdversarialRobustnessMonitor,
    CutMix,
    DiffusionSpectralEntropyMonitor,
    InformationPlaneMonitor,
    LabelSmoothing,
    LocalComplexityMonitor,
    LocalLearningCoefficientMonitor,
    MetricsSummary,
    MixUp,
    MixUpCutMix,
    NeuralCollapseMonitor,
)

NAN, INF = math.nan, math.inf
MONITORS = {
    "lc": LocalComplexityMonitor,
    "pgd": AdversarialRobustnessMonitor,
    "nc": NeuralCollapseMonitor,
    "dse": DiffusionSpectralEntropyMonitor,
    "llc": LocalLearningCoefficientMonitor,
    "ip": InformationPlaneMonitor,
}

# (argument, bad value, exception, words the message must hold) for the arguments every monitor shares.
SHARED = [
    ("num_measurements", True, TypeError, r"num_measurements.*True"),
    ("num_measurements", 2.5, TypeError, r"num_measurements.*2\.5"),
    ("num_measurements", 1, ValueError, r"num_measurements.*1"),
    ("every_n_steps", 0, ValueError, r"every_n_steps.*0"),
    ("every_n_steps", 1.5, TypeError, r"every_n_steps.*1\.5"),
    ("every_n_epochs", True, TypeError, r"every_n_epochs.*True"),
    ("num_points", True, TypeError, r"num_points.*True"),
    ("num_points", 0, ValueError, r"num_points.*0"),
    ("heldout_split", "train", ValueError, r"heldout_split.*'train'"),
    ("submodule", 3, TypeError, r"submodule.*3"),
    ("prefix", "", ValueError, r"prefix.*''"),
    ("prefix", None, TypeError, r"prefix.*None"),
    ("max_overhead", NAN, ValueError, r"max_overhead.*nan"),
    ("max_overhead", INF, ValueError, r"max_overhead.*inf"),
    ("max_overhead", -0.1, ValueError, r"max_overhead.*-0\.1"),
    ("wall_clock_overhead", INF, ValueError, r"wall_clock_overhead.*inf"),
    ("batch_size", 2.5, TypeError, r"batch_size.*2\.5"),
    ("batch_size", 0, ValueError, r"batch_size.*0"),
    ("plot", "yes", TypeError, r"plot.*'yes'"),
    ("seed", 1.5, TypeError, r"seed.*1\.5"),
    ("seed", -1, ValueError, r"seed.*-1"),
]
SHARED_NOT_TAKEN = {"llc": {"heldout_split", "batch_size"}}


SHARED_CASES = [
    (monitor, *case)
    for monitor in sorted(MONITORS)
    for case in SHARED
    if case[0] not in SHARED_NOT_TAKEN.get(monitor, ())
]


@pytest.mark.fault(area="callbacks", outcome="refused")
@pytest.mark.parametrize(("monitor", "argument", "value", "error", "words"), SHARED_CASES)
def test_every_monitor_refuses_a_bad_shared_argument(monitor, argument, value, error, words) -> None:
    with pytest.raises(error, match=words):
        MONITORS[monitor](**{argument: value})


OWN = [
    # local complexity
    ("lc", "radius", NAN, ValueError, r"radius.*nan"),
    ("lc", "radius", INF, ValueError, r"radius.*inf"),
    ("lc", "radius", 0.0, ValueError, r"radius.*0"),
    ("lc", "radius", [0.5, NAN], ValueError, r"radius.*nan"),
    ("lc", "radius", [], ValueError, r"radius.*\[\]"),
    ("lc", "radius", True, TypeError, r"radius.*True"),
    ("lc", "radius", [0.5, 0.5], ValueError, r"radius.*0\.5.*more than once"),
    ("lc", "num_directions", 0, ValueError, r"num_directions.*0"),
    ("lc", "num_directions", True, TypeError, r"num_directions.*True"),
    ("lc", "sets", [], ValueError, r"sets.*\[\]"),
    ("lc", "sets", ["train", "train"], ValueError, r"sets.*'train'.*more than once"),
    ("lc", "sets", ["val"], ValueError, r"sets.*'val'"),
    ("lc", "layers", [], ValueError, r"layers.*\[\]"),
    ("lc", "layers", ["1", "1"], ValueError, r"layers.*'1'.*more than once"),
    ("lc", "log_per_layer", "yes", TypeError, r"log_per_layer.*'yes'"),
    ("lc", "preset", "paper", ValueError, r"preset.*'paper'"),
    # PGD robustness
    ("pgd", "epsilon", NAN, ValueError, r"epsilon.*nan"),
    ("pgd", "epsilon", INF, ValueError, r"epsilon.*inf"),
    ("pgd", "epsilon", 0.0, ValueError, r"epsilon.*0"),
    ("pgd", "epsilon", True, TypeError, r"epsilon.*True"),
    ("pgd", "step_size", 0.0, ValueError, r"step_size.*0"),
    ("pgd", "step_size", NAN, ValueError, r"step_size.*nan"),
    ("pgd", "step_size", -0.1, ValueError, r"step_size.*-0\.1"),
    ("pgd", "step_size", INF, ValueError, r"step_size.*inf"),
    ("pgd", "steps", 0, ValueError, r"steps.*0"),
    ("pgd", "steps", 2.5, TypeError, r"steps.*2\.5"),
    ("pgd", "norm", "l1", ValueError, r"norm.*'l1'"),
    ("pgd", "random_start", "yes", TypeError, r"random_start.*'yes'"),
    ("pgd", "input_range", (1.0, -1.0), ValueError, r"input_range.*\(1\.0, -1\.0\)"),
    ("pgd", "input_range", (0.0, 0.0), ValueError, r"input_range.*\(0\.0, 0\.0\)"),
    ("pgd", "input_range", (0.0, NAN), ValueError, r"input_range.*nan"),
    ("pgd", "input_range", (0.0,), TypeError, r"input_range.*\(0\.0,\)"),
    ("pgd", "input_range", "image", ValueError, r"input_range.*'image'"),
    ("pgd", "preset", "paper", ValueError, r"preset.*'paper'"),
    # neural collapse
    ("nc", "feature_cache_mb", NAN, ValueError, r"feature_cache_mb.*nan"),
    ("nc", "feature_cache_mb", -1.0, ValueError, r"feature_cache_mb.*-1"),
    ("nc", "bootstrap", 1, ValueError, r"bootstrap.*1"),
    ("nc", "bootstrap", 2.5, TypeError, r"bootstrap.*2\.5"),
    ("nc", "sets", [], ValueError, r"sets.*\[\]"),
    ("nc", "sets", ["train", "train"], ValueError, r"sets.*'train'.*more than once"),
    # diffusion spectral entropy
    ("dse", "sigma", INF, ValueError, r"sigma.*inf"),
    ("dse", "sigma", NAN, ValueError, r"sigma.*nan"),
    ("dse", "sigma", 0.0, ValueError, r"sigma.*0"),
    ("dse", "t", 0, ValueError, r"\bt\b.*0"),
    ("dse", "t", 1.5, TypeError, r"\bt\b.*1\.5"),
    ("dse", "repeats", 0, ValueError, r"repeats.*0"),
    ("dse", "num_clusters", 1, ValueError, r"num_clusters.*1"),
    ("dse", "num_clusters", True, TypeError, r"num_clusters.*True"),
    ("dse", "subsamples", 1, ValueError, r"subsamples.*1"),
    ("dse", "labels", "yes", TypeError, r"labels.*'yes'"),
    ("dse", "inputs", None, TypeError, r"inputs.*None"),
    ("dse", "layers", [], ValueError, r"layers.*\[\]"),
    ("dse", "sets", [], ValueError, r"sets.*\[\]"),
    # local learning coefficient
    ("llc", "num_chains", 1, ValueError, r"num_chains.*1"),
    ("llc", "num_chains", True, TypeError, r"num_chains.*True"),
    ("llc", "num_draws", 0, ValueError, r"num_draws.*0"),
    ("llc", "num_burnin", -1, ValueError, r"num_burnin.*-1"),
    ("llc", "step_size", 0.0, ValueError, r"step_size.*0"),
    ("llc", "step_size", INF, ValueError, r"step_size.*inf"),
    ("llc", "localization", NAN, ValueError, r"localization.*nan"),
    ("llc", "n_beta", NAN, ValueError, r"n_beta.*nan"),
    ("llc", "n_beta", True, ValueError, r"n_beta.*True"),
    ("llc", "pool_size", 1, ValueError, r"pool_size.*1"),
    ("llc", "loss", "mse", TypeError, r"loss.*'mse'"),
    ("llc", "behavioural", "yes", TypeError, r"behavioural.*'yes'"),
    # information plane
    ("ip", "estimator", "kde", ValueError, r"estimator.*'kde'"),
    ("ip", "num_bins", 1, ValueError, r"num_bins.*1"),
    ("ip", "sigma", INF, ValueError, r"sigma.*inf"),
    ("ip", "noise_ratio", NAN, ValueError, r"noise_ratio.*nan"),
    ("ip", "k", 0, ValueError, r"\bk\b.*0"),
    ("ip", "subsamples", 1, ValueError, r"subsamples.*1"),
    ("ip", "layers", [], ValueError, r"layers.*\[\]"),
]


@pytest.mark.fault(area="callbacks", outcome="refused")
@pytest.mark.parametrize(("monitor", "argument", "value", "error", "words"), OWN)
def test_every_monitor_refuses_a_bad_argument_of_its_own(monitor, argument, value, error, words) -> None:
    with pytest.raises(error, match=words):
        MONITORS[monitor](**{argument: value})


CALLBACKS = {"mixup": MixUp, "cutmix": CutMix, "mixup_cutmix": MixUpCutMix, "label_smoothing": LabelSmoothing}
OTHERS = [
    ("mixup", "alpha", NAN, ValueError, r"alpha.*nan"),
    ("mixup", "alpha", INF, ValueError, r"alpha.*inf"),
    ("mixup", "alpha", 0.0, ValueError, r"alpha.*0"),
    ("mixup", "alpha", True, TypeError, r"alpha.*True"),
    ("mixup", "per_sample", "yes", TypeError, r"per_sample.*'yes'"),
    ("mixup", "prob", NAN, ValueError, r"prob.*nan"),
    ("mixup", "prob", 1.5, ValueError, r"prob.*1\.5"),
    ("mixup", "mode", "inputs", ValueError, r"mode.*'inputs'"),
    ("mixup", "seed", 1.5, ValueError, r"seed.*1\.5"),
    ("mixup", "num_classes", 1, ValueError, r"num_classes.*1"),
    ("mixup", "num_classes", True, TypeError, r"num_classes.*True"),
    ("cutmix", "alpha", INF, ValueError, r"alpha.*inf"),
    ("cutmix", "alpha", -1.0, ValueError, r"alpha.*-1"),
    ("cutmix", "num_classes", 2.5, TypeError, r"num_classes.*2\.5"),
    ("mixup_cutmix", "mixup_alpha", INF, ValueError, r"mixup_alpha.*inf"),
    ("mixup_cutmix", "cutmix_alpha", NAN, ValueError, r"cutmix_alpha.*nan"),
    ("mixup_cutmix", "switch_prob", NAN, ValueError, r"switch_prob.*nan"),
    ("mixup_cutmix", "switch_prob", True, TypeError, r"switch_prob.*True"),
    ("label_smoothing", "smoothing", NAN, ValueError, r"smoothing.*nan"),
    ("label_smoothing", "smoothing", -0.1, ValueError, r"smoothing.*-0\.1"),
    ("label_smoothing", "smoothing", "0.1", TypeError, r"smoothing.*'0\.1'"),
    ("label_smoothing", "num_classes", 0, ValueError, r"num_classes.*0"),
    ("label_smoothing", "num_classes", True, TypeError, r"num_classes.*True"),
]


@pytest.mark.fault(area="callbacks", outcome="refused")
@pytest.mark.parametrize(("callback", "argument", "value", "error", "words"), OTHERS)
def test_target_and_input_rewriting_callbacks_refuse_a_bad_argument(callback, argument, value, error, words) -> None:
    with pytest.raises(error, match=words):
        CALLBACKS[callback](**{argument: value})


@pytest.mark.fault(area="callbacks", outcome="refused")
@pytest.mark.parametrize(
    ("prefixes", "error", "words"),
    [
        ([3], TypeError, r"prefixes.*3"),
        (["val/", ""], ValueError, r"prefixes.*''"),
        (None, TypeError, r"prefixes.*None"),
    ],
)
def test_metrics_summary_refuses_prefixes_that_are_not_strings(prefixes, error, words) -> None:
    with pytest.raises(error, match=words):
        MetricsSummary(prefixes=prefixes)


@pytest.mark.fault(area="callbacks", outcome="handled")
def test_metrics_summary_takes_a_string_as_one_prefix() -> None:
    assert MetricsSummary(prefixes="val/").prefixes == ("val/",)


@pytest.mark.fault(area="callbacks", outcome="handled")
@pytest.mark.parametrize("monitor", ["lc", "nc", "dse", "ip"])
def test_a_string_of_sets_is_one_set(monitor) -> None:
    assert tuple(MONITORS[monitor](sets="train").sets) == ("train",)
