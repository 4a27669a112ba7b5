"""Pure torch computations behind every method: no Lightning import, tested against equations."""

from lightning_regs.functional.activations import crrelu
from lightning_regs.functional.adversarial import pgd_attack, predict, random_perturbation, robust_accuracy
from lightning_regs.functional.anomaly import (
    auroc_from_counts,
    binned_auroc_counts,
    binned_auroc_error_bound,
    image_auroc,
    pixel_auroc,
    rank_auroc,
)
from lightning_regs.functional.classification import classification_loss, hard_labels, is_soft_target
from lightning_regs.functional.diffusion_entropy import (
    diffusion_spectral_entropy,
    diffusion_spectral_mutual_information,
)
from lightning_regs.functional.distributed import all_gather_variable, gather_unique_by_index, unique_by_index
from lightning_regs.functional.gcd import gcd_accuracy, gcd_accuracy_balanced, gcd_accuracy_v1
from lightning_regs.functional.lego_gcd import (
    LogitPriorEMA,
    dual_view_kl,
    local_entropy_regularization,
    mean_entropy_maximization,
    self_distillation_loss,
    teacher_temperature,
    unsupervised_contrastive_loss,
)
from lightning_regs.functional.local_complexity import (
    LocalComplexity,
    cross_polytope_vertices,
    find_piecewise_linear_layers,
    local_complexity,
    orthonormal_directions,
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
from lightning_regs.functional.modes import eval_mode
from lightning_regs.functional.neural_collapse import NeuralCollapseAccumulator, neural_collapse
from lightning_regs.functional.outputs import logits_of, model_outputs
from lightning_regs.functional.prediction_table import PredictionTable
from lightning_regs.functional.pskd import pskd_alpha, pskd_targets
from lightning_regs.functional.soft_targets import label_smoothing_targets, target_distribution
from lightning_regs.functional.supcon import supervised_contrastive_loss

__all__ = [
    "crrelu",
    "LocalComplexity",
    "cross_polytope_vertices",
    "find_piecewise_linear_layers",
    "local_complexity",
    "orthonormal_directions",
    "pgd_attack",
    "predict",
    "random_perturbation",
    "robust_accuracy",
    "supervised_contrastive_loss",
    "PredictionTable",
    "all_gather_variable",
    "auroc_from_counts",
    "binned_auroc_counts",
    "binned_auroc_error_bound",
    "gather_unique_by_index",
    "image_auroc",
    "pixel_auroc",
    "rank_auroc",
    "unique_by_index",
    "classification_loss",
    "eval_mode",
    "logits_of",
    "model_outputs",
    "box_masks",
    "cutmix_boxes",
    "draw_mix",
    "interpolate_loss",
    "mix_inputs",
    "mix_targets",
    "mixed_accuracy",
    "gcd_accuracy",
    "gcd_accuracy_balanced",
    "gcd_accuracy_v1",
    "LogitPriorEMA",
    "dual_view_kl",
    "local_entropy_regularization",
    "mean_entropy_maximization",
    "self_distillation_loss",
    "teacher_temperature",
    "unsupervised_contrastive_loss",
    "hard_labels",
    "is_soft_target",
    "pskd_alpha",
    "pskd_targets",
    "label_smoothing_targets",
    "target_distribution",
    "NeuralCollapseAccumulator",
    "neural_collapse",
    "diffusion_spectral_entropy",
    "diffusion_spectral_mutual_information",
]
