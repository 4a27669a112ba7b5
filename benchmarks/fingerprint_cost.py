"""What the data fingerprint (``datamodules.fingerprint.data_fingerprint``) costs at every ``setup``.

Two synthetic data sets, built in a temporary folder:

* CIFAR-sized: 50,000 uint8 32×32×3 images in memory (the ``images`` tensor the CIFAR DataModule holds): hashed whole;
* RadImageNet-sized: 1.35 M CSV rows ``(file, label)`` over a pool of small PNG files (the rows cycle over the pool:
  1.35 M distinct files would take the benchmark longer to write than to measure); past ``FULL_BYTES`` the digest
  takes every file's size (one ``stat`` per row) and the bytes of a seeded sample.

Run: ``python benchmarks/fingerprint_cost.py`` (``--rows`` and ``--pool`` to change the sizes).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from lightning_regs.datamodules.fingerprint import data_fingerprint


class _Images:
    def __init__(self, images: torch.Tensor, targets: torch.Tensor) -> None:
        self.images, self.targets = images, targets

    def __len__(self) -> int:
        return len(self.targets)


class _Rows:
    def __init__(self, items: list[tuple[Path, int]]) -> None:
        self.items = items
        self.targets = torch.tensor([t for _, t in items])

    def __len__(self) -> int:
        return len(self.items)


def _time(dataset, repeats: int = 3) -> tuple[float, dict]:
    best, fingerprint = float("inf"), {}
    for _ in range(repeats):
        start = time.perf_counter()
        fingerprint = data_fingerprint(dataset)
        best = min(best, time.perf_counter() - start)
    return best, fingerprint


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--rows", type=int, default=1_350_000)
    parser.add_argument("--pool", type=int, default=20_000)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    cifar = _Images(
        torch.randint(0, 256, (args.images, 3, 32, 32), dtype=torch.uint8, generator=generator),
        torch.randint(0, 10, (args.images,), generator=generator),
    )
    seconds, fingerprint = _time(cifar)
    print(f"CIFAR-sized, {args.images} images in memory: {seconds:.3f} s ({fingerprint['content_read']})")
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        rng = np.random.default_rng(0)
        pool = []
        for i in range(args.pool):
            path = root / f"CT/abd/c{i % 165}/{i:06d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(path)
            pool.append(path)
        rows = [(pool[i % args.pool], i % 165) for i in range(args.rows)]
        radimagenet = _Rows(rows)
        seconds, fingerprint = _time(radimagenet, repeats=2)
        print(
            f"RadImageNet-sized, {args.rows} CSV rows over {args.pool} files: {seconds:.3f} s "
            f"({fingerprint['content_read']})"
        )
        small = _Rows(rows[:2000])
        seconds, fingerprint = _time(small)
        print(f"  the same format, 2000 rows: {seconds:.3f} s ({fingerprint['content_read']})")


if __name__ == "__main__":
    main()
