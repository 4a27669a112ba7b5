"""Ready LightningModules that honour the dict batch contract."""

from lightning_regs.tasks.aggregate_response import AggregateResponseTask
from lightning_regs.tasks.anomaly_evaluation import AnomalyEvaluation
from lightning_regs.tasks.attention_entropy_term import AttentionEntropyTerm
from lightning_regs.tasks.gcd_classifier import GCDClassifier
from lightning_regs.tasks.grokking_classifier import GrokkingClassifier
from lightning_regs.tasks.image_classifier import ImageClassifier
from lightning_regs.tasks.inp_former import INPFormer
from lightning_regs.tasks.lego_gcd_mixin import DualViewKLTerm, LegoGCDMixin, LegoGCDSettings, LocalEntropyTerm
from lightning_regs.tasks.local_learning_classifier import LocalLearningClassifier
from lightning_regs.tasks.loss_terms import LossTerm, model_outputs
from lightning_regs.tasks.mean_image_baseline import MeanImageAnomalyBaseline
from lightning_regs.tasks.mil_classifier import MILClassifier
from lightning_regs.tasks.musc import MuScZeroShot
from lightning_regs.tasks.optim import WarmupSchedule, build_optimizer

__all__ = [
    "AggregateResponseTask",
    "AnomalyEvaluation",
    "AttentionEntropyTerm",
    "DualViewKLTerm",
    "GCDClassifier",
    "GrokkingClassifier",
    "ImageClassifier",
    "INPFormer",
    "LegoGCDMixin",
    "LegoGCDSettings",
    "LocalEntropyTerm",
    "LocalLearningClassifier",
    "LossTerm",
    "MILClassifier",
    "MeanImageAnomalyBaseline",
    "MuScZeroShot",
    "WarmupSchedule",
    "build_optimizer",
    "model_outputs",
]
