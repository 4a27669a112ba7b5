"""MVTec AD (Bergmann et al., CVPR 2019) as a LightningDataModule: one category or several (multi-class), image labels
and pixel masks."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2
from typing_extensions import override

from lightning_regs.batch import CATEGORY, IMAGE, INDEX, LABEL, MASK, TARGET
from lightning_regs.datamodules.base import SplitDataModule, hparam
from lightning_regs.datamodules.mvtec_folders import CATEGORIES, LAYOUT, category_names, read_png, scan_category
from lightning_regs.datamodules.normalization import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["CATEGORIES", "MVTecADDataModule", "read_png", "scan_category"]


class _MVTecImages(Dataset):
    """Decodes one sample: RGB image and binary mask (zeros for good images) through a joint v2 transform."""

    def __init__(
        self,
        items: Sequence[tuple[Path, Path | None, int]],
        transform: Callable[..., Any],
        categories: Sequence[int] | None = None,
    ) -> None:
        self.items = list(items)
        self.labels = torch.tensor([label for _, _, label in self.items], dtype=torch.long)
        self.categories = torch.zeros_like(self.labels) if categories is None else torch.tensor(list(categories))
        self.transform = transform

    def subset(self, positions: Sequence[int]) -> _MVTecImages:
        """The images at ``positions`` (their category ids kept), indexed from 0."""
        chosen = [self.items[i] for i in positions]
        return _MVTecImages(chosen, self.transform, [int(self.categories[i]) for i in positions])

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
            CATEGORY: self.categories[index].clone(),
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
    """MVTec AD categories: train on ``train/good``, evaluate on ``test/<defect>`` with pixel masks.

    ``category`` names one category, or a list of them for the multi-class ("unified") setting: training then runs
    on every listed category's ``train/good`` together, the validation and test sets hold every listed category's
    test images, and each batch's ``category`` says whose an image is (its position in :attr:`category_names`).
    The anomaly tasks compute their metrics per category and log the mean over the categories as
    ``<stage>/<metric>`` and each category's as ``<stage>/<category>/<metric>``, as the papers report them.

    Batches are dicts with ``image`` (normalized float ``(B, 3, H, W)``; grey categories are
    repeated to RGB), ``mask`` (float ``(B, 1, H, W)`` in {0, 1}, resized with nearest neighbour,
    zeros for good images), ``label`` (0 good, 1 anomalous), ``target`` (= ``label``), ``index``
    (position in the stage's set) and ``category`` (0 with one category). Masks are paired with test images by file
    stem; a missing or
    extra mask is an error naming the file. ``setup`` validates the tree and names the expected
    layout; there is no download (licence CC BY-NC-SA 4.0; get the data from the MVTec site).

    Validation: MVTec AD has no validation split and its training set holds only good images, so by
    default (``val_split="test"``) validation runs on the test set, as anomalib's ``SAME_AS_TEST``.
    With ``val_split="from_test"`` a seeded share ``val_fraction`` of each category's good and of its anomalous test
    images is held out for validation and the test set is the rest (indices kept in :meth:`state_dict`).
    ``predict`` uses the test set. A resumed run adopts the checkpoint's ``val_split``, split and seed
    (with a warning if they differ from this module's), so it continues on the same data. The validation and test
    sets must hold good and anomalous images (their AUROC needs both): ``setup`` refuses a one-sided one
    (:class:`~lightning_regs.datamodules.base.SplitError`), and loading an anomalous image whose mask marks no
    pixel is a named error.

    Args:
        root: the folder holding the category folders (``<root>/<category>/train/good/...``).
        category: one of the 15 categories (:data:`CATEGORIES`), or a list of them (multi-class); a name that is
            not one of them is accepted when ``<root>/<name>`` is a folder (your own data in the MVTec AD layout).
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
    own_categories: bool = True  # also accept any folder of root (your own data in the MVTec AD layout)
    split_arguments = ("val_split", "val_fraction")
    two_class_splits = ("val", "test")

    category = hparam()
    val_split = hparam()
    val_fraction = hparam()

    def __init__(
        self,
        root: str | Path,
        category: str | list[str],
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
        own_folders = Path(root) if self.own_categories else None
        names = category_names(type(self).__name__, category, self.categories, own_folders)
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
        self.category_names: tuple[str, ...] = names
        self.defect_types: tuple[str, ...] = ()
        self.num_test_files: int | None = None

    @property
    def category_dir(self) -> Path:
        """The folder of the (first) category."""
        return self.root / self.category_names[0]

    def _check_root(self) -> None:
        for name in self.category_names:
            if not (self.root / name).is_dir():
                self._missing_category(self.root / name)

    def _missing_category(self, folder: Path) -> None:
        hint = f" {self.root} does not exist."
        if (self.root / "train").is_dir() and (self.root / "test").is_dir():
            hint = f" root looks like a category folder itself; pass its parent {self.root.parent} as root."
        elif self.root.is_dir():
            found = sorted(p.name for p in self.root.iterdir() if p.is_dir() and p.name in CATEGORIES)
            hint = f" root holds the categories {found}." if found else " root holds no MVTec AD category folder."
        raise FileNotFoundError(f"MVTec AD category folder {folder} not found.{hint}\n{LAYOUT}")

    def draw_split(self, labels: torch.Tensor, categories: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Seeded split of the test set into ``val`` and ``test`` positions (``"from_test"`` mode), per category
        and label (the categories in order, good before anomalous)."""
        generator = torch.Generator().manual_seed(self.seed)
        categories = torch.zeros_like(labels) if categories is None else categories
        val_parts, test_parts = [], []
        for category, label in ((c, lab) for c in range(len(self.category_names)) for lab in (0, 1)):
            members = ((labels == label) & (categories == category)).nonzero().flatten()
            members = members[torch.randperm(len(members), generator=generator)]
            num_val = min(max(round(len(members) * self.val_fraction), 1), len(members) - 1)
            val_parts.append(members[:num_val])
            test_parts.append(members[num_val:])
        return {"val": torch.cat(val_parts).sort().values, "test": torch.cat(test_parts).sort().values}

    @override
    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        self._check_root()
        train_items, train_ids, test_items, test_ids, defects = [], [], [], [], set()
        for position, name in enumerate(self.category_names):
            train, test = scan_category(self.root / name, self.root)
            defects |= {defect for _, _, defect in test} - {"good"}
            train_items += [(image, None, 0) for image in train]
            test_items += [(image, mask, int(defect != "good")) for image, mask, defect in test]
            train_ids += [position] * len(train)
            test_ids += [position] * len(test)
        self.defect_types = tuple(sorted(defects))
        all_test = _MVTecImages(test_items, self.transform, test_ids)
        if self.num_test_files is not None and self.num_test_files != len(test_items):
            where = self.category_dir / "test" if len(self.category_names) == 1 else "the categories' test folders"
            raise ValueError(
                f"The checkpoint's val/test split was drawn over {self.num_test_files} test images but "
                f"{where} now holds {len(test_items)}: the data changed since the checkpoint."
            )
        self.num_test_files = len(test_items)
        self.datasets = {"train": _MVTecImages(train_items, self.transform, train_ids)}
        if self.val_split == "test":
            self.datasets["val"] = self.datasets["test"] = all_test
            return
        if not self.split_indices:
            self.split_indices = self.draw_split(all_test.labels, all_test.categories)
        for split in ("val", "test"):
            self.datasets[split] = all_test.subset(self.split_indices[split].tolist())

    @override
    def one_sided_split_fix(self, split: str) -> str:
        where = self.category_dir / "test" if len(self.category_names) == 1 else "each category's test folder"
        if self.val_split == "from_test":
            return (
                f"With val_split='from_test' each of {where}'s two kinds (good, defect folders) needs at least 2 "
                f"images, one for val and one for test (val_fraction={self.val_fraction}); add images, or use "
                "val_split='test'."
            )
        return f"Add images to {where}: test/good and at least one defect folder."

    @override
    def extra_state(self) -> dict[str, Any]:
        return {"num_test_files": self.num_test_files}

    @override
    def load_extra_state(self, state_dict: Mapping[str, Any]) -> None:
        self.num_test_files = state_dict.get("num_test_files")
