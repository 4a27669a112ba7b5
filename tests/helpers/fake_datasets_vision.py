"""Tiny CIFAR-10/100 and CUB-200-2011 trees in their real on-disk formats, for tests and benchmarks.

CIFAR batches are written as Python 2 wrote them (pickle protocol 2, py2 ``str`` for every string
and for the array bytes, arrays reduced through ``numpy.core.multiarray._reconstruct``), so the
loader is exercised on the exact opcodes of the official files. CUB gets real JPEGs and the five
text files with 1-based ids.
"""

from __future__ import annotations

import pickle
import struct
import tarfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__all__ = ["dump_py2", "write_cifar", "write_cifar_tarball", "write_cub"]


class _Py2Pickler(pickle._Pickler):
    """Protocol-2 pickler that writes ``str``/``bytes`` as py2 strings and numpy's old module path."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def __init__(self, file: Any) -> None:
        super().__init__(file, protocol=2)

    def _save_py2_string(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[str] = _save_py2_string
    dispatch[bytes] = _save_py2_string

    def save_global(self, obj: Any, name: str | None = None) -> None:
        module = getattr(obj, "__module__", "")
        qualname = name or obj.__qualname__
        if module.startswith("numpy"):
            module = "numpy.core.multiarray" if qualname == "_reconstruct" else "numpy"
            self.write(pickle.GLOBAL + module.encode() + b"\n" + qualname.encode() + b"\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def dump_py2(obj: Any, path: Path) -> None:
    """Pickle ``obj`` to ``path`` as Python 2 did for the official CIFAR files."""
    with open(path, "wb") as handle:
        _Py2Pickler(handle).dump(obj)


def write_cifar(
    root: str | Path, num_classes: int = 10, train_per_batch: int = 6, num_test: int = 8, seed: int = 0
) -> dict[str, Any]:
    """Write ``cifar-10-batches-py`` (5 train batches) or ``cifar-100-python`` under ``root``.

    Returns what was written: ``train_images``/``test_images`` (N, 32, 32, 3) uint8 in loader order,
    ``train_labels``/``test_labels`` lists, ``class_names`` and the ``folder``.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    cifar100 = num_classes == 100
    folder = root / ("cifar-100-python" if cifar100 else "cifar-10-batches-py")
    folder.mkdir(parents=True, exist_ok=True)
    label_key = "fine_labels" if cifar100 else "labels"
    names = [f"class_{c:03d}" for c in range(num_classes)]

    def batch(n: int, title: str) -> tuple[np.ndarray, list[int], dict[str, Any]]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, num_classes, size=n)]
        content: dict[str, Any] = {"batch_label": title, label_key: labels, "data": data}
        content["filenames"] = [f"img_{title}_{i}.png" for i in range(n)]
        if cifar100:
            content["coarse_labels"] = [label // 5 for label in labels]
        return data, labels, content

    train_files = ["train"] if cifar100 else [f"data_batch_{i}" for i in range(1, 6)]
    train_data, train_labels = [], []
    for name in train_files:
        data, labels, content = batch(train_per_batch * (5 if cifar100 else 1), f"training batch {name}")
        dump_py2(content, folder / name)
        train_data.append(data)
        train_labels += labels
    test_data, test_labels, content = batch(num_test, "testing batch 1 of 1")
    dump_py2(content, folder / ("test" if cifar100 else "test_batch"))
    if cifar100:
        meta = {"fine_label_names": names, "coarse_label_names": [f"super_{c}" for c in range(20)]}
        dump_py2(meta, folder / "meta")
    else:
        dump_py2(
            {"label_names": names, "num_cases_per_batch": train_per_batch, "num_vis": 3072}, folder / "batches.meta"
        )

    def hwc(data: np.ndarray) -> np.ndarray:
        return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)

    return {
        "folder": folder,
        "train_images": hwc(np.concatenate(train_data)),
        "train_labels": train_labels,
        "test_images": hwc(test_data),
        "test_labels": test_labels,
        "class_names": names,
    }


def write_cifar_tarball(folder: str | Path, archive: str | Path) -> Path:
    """Pack a written CIFAR folder into a ``.tar.gz`` with the folder at the top, like the official tarball."""
    folder, archive = Path(folder), Path(archive)
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def write_cub(
    root: str | Path,
    num_classes: int = 4,
    per_class: int = 4,
    size: tuple[int, int] = (40, 30),
    seed: int = 0,
    grayscale_ids: tuple[int, ...] = (),
    textured: bool = False,
) -> dict[str, Any]:
    """Write ``root/CUB_200_2011`` with JPEGs and the text files (1-based ids, alternating train/test).

    Returns ``image_ids`` (1-based, file order), ``paths`` (relative to ``images/``), ``class_ids``
    (1-based), ``is_train`` (bools), ``boxes`` (x, y, w, h), ``class_names`` (without the number
    prefix) and the ``folder``. Image ``i`` has a solid colour that encodes its id, so a test can
    find which image a sample came from. ``textured=True`` writes smooth random photographs-like
    images instead (for benchmarks: a solid colour decodes unrealistically fast).
    """
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder = Path(root) / "CUB_200_2011"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    width, height = size
    written: dict[str, Any] = {"folder": folder, "image_ids": [], "paths": [], "class_ids": [], "is_train": []}
    written["boxes"], written["class_names"] = [], []
    classes, images, labels, split, boxes = [], [], [], [], []
    image_id = 0
    for class_id in range(1, num_classes + 1):
        name = f"Bird_{class_id}"
        class_folder = f"{class_id:03d}.{name}"
        classes.append(f"{class_id} {class_folder}")
        written["class_names"].append(name)
        (folder / "images" / class_folder).mkdir(exist_ok=True)
        for k in range(per_class):
            image_id += 1
            relative = f"{class_folder}/{name}_{image_id:04d}.jpg"
            colour = (image_id * 5 % 256, class_id * 40 % 256, 128)
            mode = "L" if image_id in grayscale_ids else "RGB"
            if textured:
                small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
                smooth = np.asarray(Image.fromarray(small).resize(size, Image.BILINEAR), dtype=np.int16)
                grain = rng.integers(-12, 13, size=smooth.shape, dtype=np.int16)
                picture = Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8)).convert(mode)
            else:
                picture = Image.new(mode, size, colour[0] if mode == "L" else colour)
            picture.save(folder / "images" / relative, quality=95)
            is_train = k % 2 == 0
            x, y = float(rng.integers(0, width // 2)), float(rng.integers(0, height // 2))
            box = (x, y, float(rng.integers(4, width - x)), float(rng.integers(4, height - y)))
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {class_id}")
            split.append(f"{image_id} {int(is_train)}")
            boxes.append(f"{image_id} " + " ".join(f"{v:.1f}" for v in box))
            for key, value in zip(
                ("image_ids", "paths", "class_ids", "is_train", "boxes"),
                (image_id, relative, class_id, is_train, box),
                strict=True,
            ):
                written[key].append(value)
    for filename, lines in (
        ("classes.txt", classes),
        ("images.txt", images),
        ("image_class_labels.txt", labels),
        ("train_test_split.txt", split),
        ("bounding_boxes.txt", boxes),
    ):
        (folder / filename).write_text("\n".join(lines) + "\n")
    return written
