"""MVTec AD (Bergmann et al., CVPR 2019) as a LightningDataModule: one category, image labels and pixel masks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

from lightning_regs.batch import IMAGE, INDEX, LABEL, MASK, TARGET
from lightning_regs.datamodules.base import SplitDataModule, hparam
from lightning_regs.datamodules.files import RootGuard, open_image

__all__ = ["CATEGORIES", "MVTecADDataModule"]

CATEGORIES = (
    "bottle",
    "cable",
    "capsule",
    "carpet",
    "grid",
    "hazelnut",
    "leather",
    "metal_nut",
    "pill",
    "screw",
    "tile",
    "toothbrush",
    "transistor",
    "wood",
    "zipper",
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_URL = "https://www.mvtec.com/company/research/datasets/mvtec-ad"
_LAYOUT = (
    "Expected the MVTec AD layout (one folder per category under root):\n"
    "  <root>/<category>/train/good/000.png ...\n"
    "  <root>/<category>/test/good/000.png ...\n"
    "  <root>/<category>/test/<defect>/000.png ...\n"
    "  <root>/<category>/ground_truth/<defect>/000_mask.png ...  (one mask per anomalous test image)\n"
    f"Get the data by hand from {_URL} (licence CC BY-NC-SA 4.0, non-commercial; the download address has "
    "moved before, so it is not fetched automatically) and extract <category>.tar.xz (or the full archive) into root."
)


def read_png(path: Path, mode: str) -> torch.Tensor:
    """Decode an image file to a ``(C, H, W)`` uint8 tensor in PIL ``mode`` ("RGB" or "L").

    Raises:
        UnreadableImageError: (an ``OSError``) the file is truncated, damaged or not an image; names the file.
    """
    return v2.functional.pil_to_tensor(open_image(path, mode))


def _pngs(folder: Path, guard: RootGuard, what: str) -> list[tuple[Path, Path]]:
    """``(path, resolved path)`` of the ``.png`` files of ``folder``, sorted by name, held inside the guard's root."""
    found = []
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() != ".png":
            continue
        real = guard.contain(path, what)  # before is_file(): a symlink out of the root is refused, not skipped
        if real.is_file():
            found.append((path, real))
    return found


def scan_category(
    category_dir: Path, root: Path | None = None
) -> tuple[list[Path], list[tuple[Path, Path | None, str]]]:
    """The train images and ``(image, mask or None, defect)`` test triples of one category folder.

    Masks are paired with images by file stem (``000.png`` with ``000_mask.png``); every problem found
    is listed in one ``FileNotFoundError``/``ValueError`` with the expected layout. Every folder and
    file is resolved and must stay inside ``root`` (default: the category folder's parent): a symlink
    that leads out of it (category, split, defect or mask folder, image or mask file) is an
    :class:`~lightning_regs.datamodules.files.OutsideRootError` naming the path and the root. The
    returned paths are the resolved ones, so that what is read is what was checked.
    """
    category_dir = Path(category_dir)
    guard = RootGuard(category_dir.parent if root is None else root)
    guard.contain(category_dir, "The MVTec AD category folder")
    problems: list[str] = []
    train_dir, test_dir, truth_dir = (
        category_dir / "train" / "good",
        category_dir / "test",
        category_dir / "ground_truth",
    )
    for folder in (category_dir / "train", train_dir, test_dir, truth_dir):
        if folder.exists() or folder.is_symlink():
            guard.contain(folder, "The MVTec AD folder")
    train = [real for _, real in _pngs(train_dir, guard, "The MVTec AD training image")] if train_dir.is_dir() else []
    if not train:
        problems.append(f"no training images: {train_dir} is missing or holds no .png files")
    test: list[tuple[Path, Path | None, str]] = []
    defects = []
    if test_dir.is_dir():
        for folder in sorted(test_dir.iterdir()):
            if folder.is_symlink():
                guard.contain(folder, "The MVTec AD test folder")
            if folder.is_dir():
                defects.append(folder.name)
    if not test_dir.is_dir():
        problems.append(f"{test_dir} is missing")
    elif "good" not in defects:
        problems.append(f"{test_dir / 'good'} is missing (the normal test images)")
    if test_dir.is_dir() and not [d for d in defects if d != "good"]:
        problems.append(f"{test_dir} has no defect folder besides 'good'")
    for defect in defects:
        images = _pngs(test_dir / defect, guard, "The MVTec AD test image")
        if not images:
            problems.append(f"{test_dir / defect} holds no .png images")
        if defect == "good":
            test.extend((real, None, defect) for _, real in images)
            continue
        mask_dir = truth_dir / defect
        if mask_dir.is_symlink():
            guard.contain(mask_dir, "The MVTec AD mask folder")
        if not mask_dir.is_dir():
            problems.append(f"{mask_dir} is missing (the masks of test/{defect})")
            continue
        masks = {mask.stem: (mask, real) for mask, real in _pngs(mask_dir, guard, "The MVTec AD mask")}
        for image, real in images:
            mask = masks.pop(f"{image.stem}_mask", None)
            if mask is None:
                problems.append(f"no mask for {image}: expected {mask_dir / (image.stem + '_mask.png')}")
            test.append((real, None if mask is None else mask[1], defect))
        problems.extend(
            f"mask {mask} has no test image (expected {test_dir / defect / (stem.removesuffix('_mask') + '.png')})"
            for stem, (mask, _) in sorted(masks.items())
        )
    if truth_dir.is_dir():
        problems.extend(
            f"{truth_dir / d.name} has no matching test folder {test_dir / d.name}"
            for d in sorted(truth_dir.iterdir())
            if d.is_dir() and d.name not in defects
        )
    if problems:
        raise ValueError(f"MVTec AD category {category_dir} is malformed:\n- " + "\n- ".join(problems) + "\n" + _LAYOUT)
    return train, test


class _MVTecImages(Dataset):
    """Decodes one sample: RGB image and binary mask (zeros for good images) through a joint v2 transform."""

    def __init__(self, items: Sequence[tuple[Path, Path | None, int]], transform: Callable[..., Any]) -> None:
        self.items = list(items)
        self.labels = torch.tensor([label for _, _, label in self.items], dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image_path, mask_path, label = self.items[index]
        image = read_png(image_path, "RGB")
        if mask_path is None:
            mask = torch.zeros((1, *image.shape[1:]), dtype=torch.uint8)
        else:
            mask = (read_png(mask_path, "L") > 0).to(torch.uint8)
            if mask.shape[1:] != image.shape[1:]:
                raise ValueError(
                    f"Mask {mask_path} is {tuple(mask.shape[1:])} but image {image_path} is {tuple(image.shape[1:])}; "
                    "re-extract the MVTec AD archive (masks have the size of their images)."
                )
            if not mask.any():  # a pixel AUROC would count every pixel of this anomalous image as good
                raise ValueError(
                    f"Mask {mask_path} of the anomalous image {image_path} marks no pixel (all zeros), so every pixel "
                    "would be scored as good. MVTec AD masks mark the defect with 255: re-extract the archive, or move "
                    "the image to test/good if it holds no defect."
                )
        image, mask = self.transform(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return {
            IMAGE: image.as_subclass(torch.Tensor),
            MASK: mask.as_subclass(torch.Tensor).to(torch.float32),
            LABEL: torch.tensor(label, dtype=torch.long),
            TARGET: torch.tensor(label, dtype=torch.long),
            INDEX: torch.tensor(index, dtype=torch.long),
        }


def default_transform(
    image_size: int | tuple[int, int] | None, mean: Sequence[float], std: Sequence[float]
) -> v2.Compose:
    """Resize (bilinear for the image, nearest for the mask), scale to [0, 1], normalize the image."""
    steps: list[Any] = []
    if image_size is not None:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        steps.append(v2.Resize(size, antialias=True))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(steps)


class MVTecADDataModule(SplitDataModule):
    """One MVTec AD category: train on ``train/good``, evaluate on ``test/<defect>`` with pixel masks.

    Batches are dicts with ``image`` (normalized float ``(B, 3, H, W)``; grey categories are
    repeated to RGB), ``mask`` (float ``(B, 1, H, W)`` in {0, 1}, resized with nearest neighbour,
    zeros for good images), ``label`` (0 good, 1 anomalous), ``target`` (= ``label``) and ``index``
    (position in the stage's set). Masks are paired with test images by file stem; a missing or
    extra mask is an error naming the file. ``setup`` validates the tree and names the expected
    layout; there is no download (licence CC BY-NC-SA 4.0; get the data from the MVTec site).

    Validation: MVTec AD has no validation split and its training set holds only good images, so by
    default (``val_split="test"``) validation runs on the test set, as anomalib's ``SAME_AS_TEST``.
    With ``val_split="from_test"`` a seeded, per-label share ``val_fraction`` of the test images
    is held out for validation and the test set is the rest (indices kept in :meth:`state_dict`).
    ``predict`` uses the test set. A resumed run adopts the checkpoint's ``val_split``, split and seed
    (with a warning if they differ from this module's), so it continues on the same data. The validation and test
    sets must hold good and anomalous images (their AUROC needs both): ``setup`` refuses a one-sided one
    (:class:`~lightning_regs.datamodules.base.SplitError`), and loading an anomalous image whose mask marks no
    pixel is a named error.

    Args:
        root: the folder holding the category folders (``<root>/<category>/train/good/...``).
        category: one of the 15 categories (:data:`CATEGORIES`).
        image_size: side (or ``(H, W)``) the images and masks are resized to; ``None`` keeps the originals.
        batch_size: training samples per batch on each process.
        eval_batch_size: validation/test/predict batch size (default ``batch_size``).
        val_split: ``"test"`` (validate on the test set) or ``"from_test"`` (a seeded split of it).
        val_fraction: share of each label's test images held out for validation with ``"from_test"``.
        seed: seed of the training order and of the ``"from_test"`` split.
        mean: normalization mean (ImageNet by default).
        std: normalization standard deviation (ImageNet by default).
        transform: replaces the default; called as ``transform(image, mask)`` on a
            ``tv_tensors.Image`` (uint8) and ``tv_tensors.Mask``, returns both (a torchvision v2 transform).
        num_workers: DataLoader workers.
        pin_memory: DataLoader ``pin_memory``.
        persistent_workers: DataLoader ``persistent_workers`` (only with ``num_workers > 0``).

    Example::

        >>> import tempfile
        >>> tmp = tempfile.TemporaryDirectory()
        >>> from tests.helpers.fake_datasets_medical import make_mvtec
        >>> root = make_mvtec(tmp.name)
        >>> dm = MVTecADDataModule(root, "bottle", image_size=16, batch_size=2)
        >>> dm.setup("test")
        >>> batch = next(iter(dm.test_dataloader()))
        >>> batch["image"].shape, batch["mask"].shape, dm.defect_types
        (torch.Size([2, 3, 16, 16]), torch.Size([2, 1, 16, 16]), ('broken_large', 'contamination'))
        >>> tmp.cleanup()
    """

    num_classes: int = 2
    class_names: tuple[str, ...] = ("good", "anomalous")
    categories: tuple[str, ...] = CATEGORIES  # the category names __init__ accepts (the toy's subclass: its own)
    split_arguments = ("val_split", "val_fraction")
    two_class_splits = ("val", "test")

    category = hparam()
    val_split = hparam()
    val_fraction = hparam()

    def __init__(
        self,
        root: str | Path,
        category: str,
        image_size: int | tuple[int, int] | None = 256,
        batch_size: int = 32,
        eval_batch_size: int | None = None,
        val_split: Literal["test", "from_test"] = "test",
        val_fraction: float = 0.5,
        seed: int = 0,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        transform: Callable[..., Any] | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
    ) -> None:
        super().__init__()
        if category not in self.categories:
            raise ValueError(f"Unknown MVTec AD category {category!r}; choose one of {', '.join(self.categories)}.")
        if val_split not in ("test", "from_test"):
            raise ValueError(f"val_split must be 'test' or 'from_test', got {val_split!r}.")
        if val_split == "from_test" and not 0 < val_fraction < 1:
            raise ValueError(f"val_fraction must lie in (0, 1) with val_split='from_test', got {val_fraction}.")
        if batch_size < 1 or (eval_batch_size is not None and eval_batch_size < 1):
            raise ValueError(f"batch sizes must be at least 1, got {batch_size} and {eval_batch_size}.")
        if len(mean) != 3 or len(std) != 3:
            raise ValueError(f"mean and std need 3 values (RGB), got {list(mean)} and {list(std)}.")
        self.save_hyperparameters(ignore=["transform"])
        self.transform = transform if transform is not None else default_transform(image_size, mean, std)
        self.defect_types: tuple[str, ...] = ()
        self.num_test_files: int | None = None

    @property
    def category_dir(self) -> Path:
        return self.root / self.category

    def _check_root(self) -> None:
        if self.category_dir.is_dir():
            return
        hint = f" {self.root} does not exist."
        if (self.root / "train").is_dir() and (self.root / "test").is_dir():
            hint = f" root looks like a category folder itself; pass its parent {self.root.parent} as root."
        elif self.root.is_dir():
            found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name in CATEGORIES)
            hint = f" root holds the categories {found}." if found else " root holds no MVTec AD category folder."
        raise FileNotFoundError(f"MVTec AD category folder {self.category_dir} not found.{hint}\n{_LAYOUT}")

    def draw_split(self, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Seeded per-label split of the test set into ``val`` and ``test`` positions (``"from_test"`` mode)."""
        generator = torch.Generator().manual_seed(self.seed)
        val_parts, test_parts = [], []
        for label in (0, 1):
            members = (labels == label).nonzero().flatten()
            members = members[torch.randperm(len(members), generator=generator)]
            num_val = min(max(round(len(members) * self.val_fraction), 1), len(members) - 1)
            val_parts.append(members[:num_val])
            test_parts.append(members[num_val:])
        return {"val": torch.cat(val_parts).sort().values, "test": torch.cat(test_parts).sort().values}

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self._check_root()
        train, test = scan_category(self.category_dir, self.root)
        self.defect_types = tuple(sorted({defect for _, _, defect in test} - {"good"}))
        test_items = [(image, mask, int(defect != "good")) for image, mask, defect in test]
        all_test = _MVTecImages(test_items, self.transform)
        if self.num_test_files is not None and self.num_test_files != len(test_items):
            raise ValueError(
                f"The checkpoint's val/test split was drawn over {self.num_test_files} test images but "
                f"{self.category_dir / 'test'} now holds {len(test_items)}: the data changed since the checkpoint."
            )
        self.num_test_files = len(test_items)
        self.datasets = {"train": _MVTecImages([(image, None, 0) for image in train], self.transform)}
        if self.val_split == "test":
            self.datasets["val"] = self.datasets["test"] = all_test
            return
        if not self.split_indices:
            self.split_indices = self.draw_split(all_test.labels)
        for split in ("val", "test"):
            self.datasets[split] = _MVTecImages(
                [test_items[i] for i in self.split_indices[split].tolist()], self.transform
            )

    def one_sided_split_fix(self, split: str) -> str:
        where = self.category_dir / "test"
        if self.val_split == "from_test":
            return (
                f"With val_split='from_test' each of {where}'s two kinds (good, defect folders) needs at least 2 "
                f"images, one for val and one for test (val_fraction={self.val_fraction}); add images, or use "
                "val_split='test'."
            )
        return f"Add images to {where}: test/good and at least one defect folder."

    def extra_state(self) -> dict[str, Any]:
        return {"num_test_files": self.num_test_files}

    def load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        self.num_test_files = state_dict.get("num_test_files")
