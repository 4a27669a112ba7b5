"""Pure torch computations behind every method: no Lightning import, tested against equations.

State lives beside its user; two stateful classes that once lived here are still importable from here, looked up
on first use so that importing this package imports no Lightning module: ``PredictionTable``
(:mod:`lightning_regs.callbacks.prediction_table`) and ``LogitPriorEMA`` (:mod:`lightning_regs.tasks.logit_prior`).
``eval_mode``, ``all_gather_variable``, ``gather_unique_by_index`` and ``unique_by_index`` are plumbing, re-exported
from :mod:`lightning_regs.modes` and :mod:`lightning_regs.distributed`.
"""

import importlib
from typing import Any

from lightning_regs.distributed import all_gather_variable, gather_unique_by_index, unique_by_index
from lightning_regs.functional.activations import crrelu
from lightning_regs.functional.adversarial import pgd_attack, predict, random_perturbation, robust_accuracy
from lightning_regs.functional.aggregate import (
    AggregateLossTerms,
    aggregate_response_loss,
    aggregate_response_terms,
    bag_dispersion,
    bag_level_loss,
    bag_mean,
    instance_level_loss,
)
from lightning_regs.functional.anomaly import (
    auroc_from_counts,
    binned_auroc_counts,
    binned_auroc_error_bound,
    image_auroc,
    pixel_auroc,
    rank_auroc,
)
from lightning_regs.functional.anomaly_metrics import (
    F1Max,
    aupro,
    average_precision,
    f1_max,
    pixel_average_precision,
    pixel_f1_max,
    pro_curve,
)
from lightning_regs.functional.bootstrap import half_sample_errors, poisson_weights, replicate_standard_error
from lightning_regs.functional.classification import classification_loss, hard_labels, is_soft_target
from lightning_regs.functional.diffusion_entropy import (
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
)
from lightning_regs.functional.gcd import gcd_accuracy, gcd_accuracy_balanced, gcd_accuracy_v1
from lightning_regs.functional.information_plane import (
    InformationPlanePoint,
    adaptive_bin_codes,
    adaptive_binning,
    kde_entropy_upper,
    kde_upper,
)
from lightning_regs.functional.information_plane_knn import knn_entropy, lossy_knn
from lightning_regs.functional.inp_former import coherence_loss, soft_mining_cosine_loss, soft_mining_factor
from lightning_regs.functional.lego_gcd import (
    dual_view_kl,
    local_entropy_regularization,
    mean_entropy_maximization,
    self_distillation_loss,
    teacher_temperature,
    unsupervised_contrastive_loss,
)
from lightning_regs.functional.llc import LLCEstimate, default_n_beta, estimate_llc
from lightning_regs.functional.local_complexity import (
    LocalComplexity,
    cross_polytope_vertices,
    find_piecewise_linear_layers,
    local_complexity,
    orthonormal_directions,
)
from lightning_regs.functional.mil import (
    attention_entropy,
    attention_entropy_loss,
    masked_attention,
    normalized_attention_entropy,
)
from lightning_regs.functional.mixing import (
    box_masks,
    cutmix_boxes,
    draw_mix,
    interpolate_loss,
    mix_inputs,
    mix_targets,
    mixed_accuracy,
)
from lightning_regs.functional.musc import interval_average, lnamd_features, musc_anomaly_maps, mutual_scores, rscin
from lightning_regs.functional.neural_collapse import NeuralCollapseAccumulator, neural_collapse
from lightning_regs.functional.neural_collapse_bootstrap import NeuralCollapseBootstrap
from lightning_regs.functional.outputs import logits_of, model_outputs
from lightning_regs.functional.pskd import pskd_alpha, pskd_targets
from lightning_regs.functional.sampling_error import mean_and_standard_error
from lightning_regs.functional.soft_targets import label_smoothing_targets, target_distribution
from lightning_regs.functional.supcon import supervised_contrastive_loss
from lightning_regs.modes import eval_mode

__all__ = [
    "aggregate_response_loss",
    "aggregate_response_terms",
    "AggregateLossTerms",
    "adaptive_bin_codes",
    "adaptive_binning",
    "all_gather_variable",
    "attention_entropy",
    "attention_entropy_loss",
    "aupro",
    "auroc_from_counts",
    "average_precision",
    "bag_dispersion",
    "bag_level_loss",
    "bag_mean",
    "binned_auroc_counts",
    "binned_auroc_error_bound",
    "box_masks",
    "classification_loss",
    "coherence_loss",
    "cross_polytope_vertices",
    "crrelu",
    "cutmix_boxes",
    "default_n_beta",
    "diffusion_spectral_entropy",
    "diffusion_spectral_mutual_information",
    "draw_mix",
    "dual_view_kl",
    "estimate_llc",
    "F1Max",
    "f1_max",
    "eval_mode",
    "find_piecewise_linear_layers",
    "gather_unique_by_index",
    "gcd_accuracy",
    "gcd_accuracy_balanced",
    "gcd_accuracy_v1",
    "half_sample_errors",
    "hard_labels",
    "image_auroc",
    "InformationPlanePoint",
    "instance_level_loss",
    "interpolate_loss",
    "is_soft_target",
    "kde_entropy_upper",
    "kde_upper",
    "knn_entropy",
    "label_smoothing_targets",
    "LLCEstimate",
    "local_complexity",
    "local_entropy_regularization",
    "LocalComplexity",
    "LogitPriorEMA",
    "logits_of",
    "lossy_knn",
    "masked_attention",
    "mean_and_standard_error",
    "mean_entropy_maximization",
    "mix_inputs",
    "mix_targets",
    "musc_anomaly_maps",
    "mutual_scores",
    "lnamd_features",
    "interval_average",
    "rscin",
    "mixed_accuracy",
    "model_outputs",
    "neural_collapse",
    "NeuralCollapseAccumulator",
    "NeuralCollapseBootstrap",
    "normalized_attention_entropy",
    "orthonormal_directions",
    "poisson_weights",
    "pgd_attack",
    "pixel_auroc",
    "pixel_average_precision",
    "pixel_f1_max",
    "predict",
    "PredictionTable",
    "pro_curve",
    "pskd_alpha",
    "pskd_targets",
    "replicate_standard_error",
    "random_perturbation",
    "rank_auroc",
    "robust_accuracy",
    "self_distillation_loss",
    "soft_mining_cosine_loss",
    "soft_mining_factor",
    "supervised_contrastive_loss",
    "target_distribution",
    "teacher_temperature",
    "unique_by_index",
    "unsupervised_contrastive_loss",
]

_MOVED = {
    "LogitPriorEMA": "lightning_regs.tasks.logit_prior",
    "PredictionTable": "lightning_regs.callbacks.prediction_table",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
