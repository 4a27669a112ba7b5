"""lightning_regs: regularizers and training monitors from recent papers for PyTorch Lightning.

Callbacks and LightningModule mixins, each a method from a paper, over pure-torch functional cores,
with DataModules for the data sets those papers use. Importing the package does not import W&B.

Example::

    >>> import lightning_regs
    >>> lightning_regs.__version__
    '0.1.0.dev0'
"""

from lightning_regs.callbacks import MetricsSummary
from lightning_regs.datamodules import DigitsDataModule
from lightning_regs.tasks import ImageClassifier

__version__ = "0.1.0.dev0"

__all__ = ["DigitsDataModule", "ImageClassifier", "MetricsSummary", "__version__"]
