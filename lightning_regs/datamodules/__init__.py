"""DataModules yielding the dict batch contract (``image``, ``target``, ``index``)."""

from lightning_regs.datamodules.batch import IMAGE, INDEX, TARGET, TensorDictDataset, unpack_batch
from lightning_regs.datamodules.digits import DigitsDataModule

__all__ = ["IMAGE", "INDEX", "TARGET", "DigitsDataModule", "TensorDictDataset", "unpack_batch"]
