"""DataModules yielding the dict batch contract (``image``, ``target``, ``index``)."""

from lightning_regs.datamodules.batch import IMAGE, INDEX, TARGET, TensorDictDataset, unpack_batch
from lightning_regs.datamodules.digits import DigitsDataModule
from lightning_regs.datamodules.samplers import EpochShuffleSampler

__all__ = [
    "IMAGE",
    "INDEX",
    "TARGET",
    "DigitsDataModule",
    "EpochShuffleSampler",
    "TensorDictDataset",
    "unpack_batch",
]
