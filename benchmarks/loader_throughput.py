"""Loader throughput (images/s, 2 workers): our CIFAR-10 and CUB loaders against torchvision's on the same files.

Generates, in a temporary folder, CIFAR-10 python batches (real format) and CUB-200-2011-style JPEGs,
then times full passes of

* ``CIFAR10DataModule.train_dataloader()`` vs ``torchvision.datasets.CIFAR10`` (same batches, same
  transforms: torchvision's yields PIL images, so its pipeline starts with ``v2.ToImage()``);
* ``CUB200DataModule.train_dataloader()`` vs ``torchvision.datasets.ImageFolder`` over the same
  ``images/`` folder (same transforms; every image is marked as a training image so both read
  the same files),

with the same batch size and 2 workers, alternating ours/theirs ``--repeats`` times in one run, and
prints the median images/s of each and the ratio ours/theirs (goal: >= 0.95).

    python benchmarks/loader_throughput.py [--repeats 5] [--cifar-images 10000] [--cub-images 1000]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision.transforms import v2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the fake-data writers live in tests/helpers

from lightning_regs.datamodules.cifar import CIFAR10DataModule
from lightning_regs.datamodules.cub import CUB200DataModule
from tests.helpers.fake_datasets_vision import write_cifar, write_cub


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class GeneratedCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR10 told the md5s of the generated files (it checks them on construction)."""

    def __init__(self, folder: Path, transform: v2.Transform) -> None:
        self.train_list = [[f"data_batch_{i}", _md5(folder / f"data_batch_{i}")] for i in range(1, 6)]
        self.test_list = [["test_batch", _md5(folder / "test_batch")]]
        self.meta = {**datasets.CIFAR10.meta, "md5": _md5(folder / "batches.meta")}
        super().__init__(str(folder.parent), train=True, transform=transform)


def _images_per_second(loader: DataLoader) -> float:
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch["image"] if isinstance(batch, dict) else batch[0])
    return count / (time.perf_counter() - start)


def _compare(name: str, ours: DataLoader, theirs: DataLoader, repeats: int) -> float:
    rates: dict[str, list[float]] = {"ours": [], "torchvision": []}
    for _ in range(repeats):
        rates["ours"].append(_images_per_second(ours))
        rates["torchvision"].append(_images_per_second(theirs))
    median = {key: statistics.median(values) for key, values in rates.items()}
    ratio = median["ours"] / median["torchvision"]
    print(
        f"{name}: ours {median['ours']:.0f} img/s, torchvision {median['torchvision']:.0f} img/s, "
        f"ratio {ratio:.3f} (median of {repeats} interleaved passes; all ours {[round(r) for r in rates['ours']]}, "
        f"all torchvision {[round(r) for r in rates['torchvision']]})"
    )
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--cifar-images", type=int, default=10_000)
    parser.add_argument("--cub-images", type=int, default=1_000)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--datasets", default="cifar,cub", help="comma-separated subset of cifar,cub")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, {args.workers} workers, batch {args.batch_size}")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        if "cifar" in args.datasets:
            _cifar(root, args)
        if "cub" in args.datasets:
            _cub(root, args)


def _cifar(root: Path, args: argparse.Namespace) -> None:
    written = write_cifar(root / "cifar", train_per_batch=args.cifar_images // 5, num_test=10)
    dm = CIFAR10DataModule(root=str(root / "cifar"), batch_size=args.batch_size, num_workers=args.workers)
    tv = GeneratedCIFAR10(written["folder"], v2.Compose([v2.ToImage(), dm.train_transform]))
    theirs = DataLoader(tv, batch_size=args.batch_size, shuffle=True, num_workers=args.workers)
    _compare("CIFAR-10 train loader", dm.train_dataloader(), theirs, args.repeats)


def _cub(root: Path, args: argparse.Namespace) -> None:
    per_class = 25
    num_classes = max(1, args.cub_images // per_class)
    write_cub(root / "cub", num_classes=num_classes, per_class=per_class, size=(500, 375), textured=True)
    split = root / "cub" / "CUB_200_2011" / "train_test_split.txt"  # every image a training image: same files
    split.write_text("".join(f"{line.split()[0]} 1\n" for line in split.read_text().splitlines()))
    cub = CUB200DataModule(root=str(root / "cub"), batch_size=64, num_workers=args.workers)
    transform = v2.Compose([v2.ToImage(), cub.train_transform])
    folder = datasets.ImageFolder(str(root / "cub" / "CUB_200_2011" / "images"), transform=transform)
    theirs = DataLoader(folder, batch_size=64, shuffle=True, num_workers=args.workers)
    _compare("CUB-200 train loader (500x375 JPEGs -> 224)", cub.train_dataloader(), theirs, args.repeats)


if __name__ == "__main__":
    main()
