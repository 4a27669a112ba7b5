"""DataModules yielding the dict batch contract (``image``, ``target``, ``index``)."""

from lightning_regs.datamodules.aggregate_toys import (
    AggregateDataset,
    AggregateRegressionDataModule,
    LabelProportionsDataModule,
    random_bags,
)
from lightning_regs.datamodules.bag_sampler import BagBatchSampler, BatchedView, bag_dataloader
from lightning_regs.datamodules.bags import collate_bags
from lightning_regs.datamodules.base import NumClassesUnknownError, SplitDataModule, hparam
from lightning_regs.datamodules.batch import (
    HARD_TARGET,
    IMAGE,
    INDEX,
    TARGET,
    TensorDictDataset,
    class_ids,
    unpack_batch,
)
from lightning_regs.datamodules.cifar import CIFAR10DataModule, CIFAR100DataModule
from lightning_regs.datamodules.cub import CUB200DataModule
from lightning_regs.datamodules.digits import DigitsDataModule
from lightning_regs.datamodules.digits_bags import DigitsBagsDataModule
from lightning_regs.datamodules.digits_subset import DigitsSubsetDataModule
from lightning_regs.datamodules.download import (
    ArchiveSecurityError,
    CorruptArchiveError,
    DownloadError,
    download_file,
    extract_archive,
    remove_interrupted,
)
from lightning_regs.datamodules.feature_bags import FeatureBagDataModule
from lightning_regs.datamodules.gcd_data import GCDDataset
from lightning_regs.datamodules.indexed import IndexedDataset
from lightning_regs.datamodules.mvtec import MVTecADDataModule
from lightning_regs.datamodules.mvtec_toy import MVTecToyDataModule, write_mvtec_toy
from lightning_regs.datamodules.own_data import DatasetDataModule
from lightning_regs.datamodules.radimagenet import RadImageNetDataModule
from lightning_regs.datamodules.samplers import EpochShuffleSampler

__all__ = [
    "AggregateDataset",
    "AggregateRegressionDataModule",
    "BagBatchSampler",
    "BatchedView",
    "LabelProportionsDataModule",
    "bag_dataloader",
    "random_bags",
    "DigitsBagsDataModule",
    "FeatureBagDataModule",
    "collate_bags",
    "ArchiveSecurityError",
    "CorruptArchiveError",
    "DownloadError",
    "remove_interrupted",
    "HARD_TARGET",
    "IMAGE",
    "INDEX",
    "TARGET",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "CUB200DataModule",
    "DatasetDataModule",
    "DigitsDataModule",
    "DigitsSubsetDataModule",
    "EpochShuffleSampler",
    "GCDDataset",
    "IndexedDataset",
    "MVTecADDataModule",
    "MVTecToyDataModule",
    "NumClassesUnknownError",
    "RadImageNetDataModule",
    "SplitDataModule",
    "TensorDictDataset",
    "class_ids",
    "download_file",
    "extract_archive",
    "hparam",
    "unpack_batch",
    "write_mvtec_toy",
]
