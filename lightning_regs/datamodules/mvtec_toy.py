"""A synthetic MVTec AD that runs anywhere: seeded textures and digit glyphs with pasted defects, in the real layout.

:func:`write_mvtec_toy` writes ``<root>/<category>/{train/good, test/good, test/<defect>, ground_truth/<defect>}``
exactly as MVTec AD lays it out (``000.png``, ``000_mask.png``), for three toy categories: two textures
(``stripes``, wood-like oriented stripes; ``speckle``, a smooth random texture) and one object (``digit``, a
scikit-learn handwritten 3 from a different writer in each image, upscaled on a plain background). Each has the
defects ``missing`` (a darker hole in a texture, a part of the glyph erased), ``scratch`` (a thin line, brighter or
darker) and ``spot`` (a semi-transparent coloured blob). A mask is 255 exactly where the defect changed the image
and 0 elsewhere, never empty. Normal images vary as photographs do (texture phase and angle, writer, position,
lighting, sensor noise), so a trivial detector is not perfect. Files are byte-identical for the same arguments.
:class:`MVTecToyDataModule` writes the toy in ``prepare_data`` and reads it as
:class:`~lightning_regs.datamodules.mvtec.MVTecADDataModule`. The toy's numbers say that code runs end to end;
they are not comparable to MVTec AD's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from typing_extensions import override

from lightning_regs.datamodules.folder_lock import folder_lock, remove_leftovers
from lightning_regs.datamodules.mvtec import MVTecADDataModule
from lightning_regs.datamodules.mvtec_toy_render import (
    TOY_CATEGORIES,
    TOY_DEFECTS,
    ToySample,
    _check_category,
    render_toy_sample,
)
from lightning_regs.functional._checks import check_bool, check_int

__all__ = ["TOY_CATEGORIES", "TOY_DEFECTS", "MVTecToyDataModule", "ToySample", "render_toy_sample", "write_mvtec_toy"]

MANIFEST = "mvtec_toy.json"  # at the root, as MVTec AD's own readme.txt and license.txt: the settings of each category
_STAGING = ".writing-mvtec-toy-"
_VERSION = 1  # bump when the rendering changes, so a folder written by an older version is not taken for this one


def _settings(
    owner: str, image_size: int, num_train: int, num_test_good: int, num_test_defect: int, seed: int
) -> dict[str, int]:
    """The toy's settings as recorded in the manifest, each checked (``owner``: who is asked for them)."""
    return {
        "version": _VERSION,
        "image_size": check_int(owner, "image_size", image_size, low=32),
        "num_train": check_int(owner, "num_train", num_train, low=1),
        "num_test_good": check_int(owner, "num_test_good", num_test_good, low=1),
        "num_test_defect": check_int(owner, "num_test_defect", num_test_defect, low=1),
        "seed": check_int(owner, "seed", seed, low=0),
    }


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")  # PIL writes no timestamp: the same array, the same bytes


def _write_category(folder: Path, category: str, settings: dict[str, int]) -> None:
    counts = {("train", "good"): settings["num_train"], ("test", "good"): settings["num_test_good"]}
    counts.update({("test", defect): settings["num_test_defect"] for defect in TOY_DEFECTS})
    for (split, kind), count in counts.items():
        for index in range(count):
            sample = render_toy_sample(category, kind, index, split, settings["image_size"], settings["seed"])
            _save(sample.image, folder / split / kind / f"{index:03d}.png")
            if sample.mask is not None:
                _save(sample.mask, folder / "ground_truth" / kind / f"{index:03d}_mask.png")


def _read_manifest(root: Path) -> dict[str, Any]:
    try:
        found = json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def write_mvtec_toy(
    root: str | os.PathLike,
    categories: Sequence[str] = TOY_CATEGORIES,
    image_size: int = 64,
    num_train: int = 40,
    num_test_good: int = 16,
    num_test_defect: int = 8,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write the toy categories into ``root`` in the MVTec AD layout and return ``root``.

    Each category gets ``num_train`` training images, ``num_test_good`` good test images and
    ``num_test_defect`` images per defect of :data:`TOY_DEFECTS`, each with its mask. The settings of each
    category are recorded in ``<root>/mvtec_toy.json``. A category already written with the same settings is
    left as it is; one written with other settings (or a folder of that name the toy did not write) is a
    ``FileExistsError`` unless ``overwrite=True``, which replaces it. The categories are written into a hidden
    folder of ``root`` and moved into place when complete, under the folder's lock, so a killed run leaves no
    partial category and a second process waits instead of racing.

    Example::

        >>> import tempfile
        >>> root = write_mvtec_toy(tempfile.mkdtemp(), ["stripes"], num_train=3, num_test_good=2, num_test_defect=1)
        >>> sorted(p.name for p in (root / "stripes" / "test").iterdir())
        ['good', 'missing', 'scratch', 'spot']
        >>> sorted(p.name for p in (root / "stripes" / "ground_truth" / "spot").iterdir())
        ['000_mask.png']
    """
    root = Path(root).expanduser()
    if isinstance(categories, str):
        categories = [categories]
    names = [_check_category("write_mvtec_toy", category) for category in categories]
    if not names:
        raise ValueError(f"write_mvtec_toy: categories must name at least one of {', '.join(TOY_CATEGORIES)}.")
    settings = _settings("write_mvtec_toy", image_size, num_train, num_test_good, num_test_defect, seed)
    check_bool("write_mvtec_toy", "overwrite", overwrite)
    root.mkdir(parents=True, exist_ok=True)
    with folder_lock(root):
        remove_leftovers(root, (f"{_STAGING}*",))
        manifest = _read_manifest(root)
        todo = []
        for name in dict.fromkeys(names):
            if (root / name).exists() and not overwrite:
                if manifest.get(name) == settings:
                    continue
                raise FileExistsError(
                    f"write_mvtec_toy: {root / name} exists but was not written with these settings {settings} (its "
                    f"record in {root / MANIFEST}: {manifest.get(name)}). Pass overwrite=True to replace it, delete "
                    "it, or choose another root."
                )
            todo.append(name)
        if not todo:
            return root
        staging = Path(tempfile.mkdtemp(dir=root, prefix=_STAGING))
        try:
            for name in todo:
                _write_category(staging / name, name, settings)
            for name in todo:
                if (root / name).exists():
                    shutil.rmtree(root / name)
                os.replace(staging / name, root / name)
                manifest[name] = settings
                (staging / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
                os.replace(staging / MANIFEST, root / MANIFEST)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return root


class MVTecToyDataModule(MVTecADDataModule):
    """One toy category (:func:`write_mvtec_toy`), written into ``root`` by ``prepare_data``, read as MVTec AD.

    ``prepare_data`` (which Lightning runs on one process per node before ``setup``) writes the category when
    ``<root>/<category>`` is missing, under the folder's lock, and leaves it when it was written with the same
    settings; a folder written with other settings is a ``FileExistsError`` naming them. Everything else, the
    batches included, is :class:`~lightning_regs.datamodules.mvtec.MVTecADDataModule`'s.

    Args:
        root: the folder the toy is written into and read from.
        category: one of :data:`TOY_CATEGORIES` (``digit``, ``speckle``, ``stripes``), or a list of them
            (multi-class, as :class:`~lightning_regs.datamodules.mvtec.MVTecADDataModule`).
        image_size: resize to this side; ``None`` (default) keeps the toy's ``toy_size``.
        toy_size: side of the written images.
        num_train: training images written.
        num_test_good: good test images written.
        num_test_defect: test images written per defect type.
        toy_seed: the seed the toy is rendered from.
        **kwargs: :class:`~lightning_regs.datamodules.mvtec.MVTecADDataModule`'s other arguments (``batch_size``,
            ``val_split``, ``seed``: the training order's and the ``"from_test"`` split's, not the toy's, ...);
            LightningCLI lists them under this class too.

    Example::

        >>> import tempfile
        >>> dm = MVTecToyDataModule(tempfile.mkdtemp(), "stripes", batch_size=4, num_train=4, num_test_defect=2)
        >>> dm.prepare_data()
        >>> dm.setup("fit")
        >>> batch = next(iter(dm.test_dataloader()))
        >>> batch["image"].shape, batch["mask"].shape, dm.defect_types
        (torch.Size([4, 3, 64, 64]), torch.Size([4, 1, 64, 64]), ('missing', 'scratch', 'spot'))
    """

    categories = TOY_CATEGORIES
    own_categories = False  # the toy writes its own three categories

    def __init__(
        self,
        root: str | Path = "data/mvtec_toy",
        category: str | list[str] = "stripes",
        image_size: int | tuple[int, int] | None = None,
        toy_size: int = 64,
        num_train: int = 40,
        num_test_good: int = 16,
        num_test_defect: int = 8,
        toy_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        owner = type(self).__name__
        _check_category(owner, category)
        self._toy = _settings(owner, toy_size, num_train, num_test_good, num_test_defect, toy_seed)
        super().__init__(root, category, image_size, **kwargs)

    @override
    def prepare_data(self) -> None:
        """Write the category into ``root`` unless it is there with the same settings (see :func:`write_mvtec_toy`)."""
        toy = {key: value for key, value in self._toy.items() if key != "version"}
        write_mvtec_toy(self.root, list(self.category_names), **toy)

    @override
    def _check_root(self) -> None:
        for name in self.category_names:
            if not (self.root / name).is_dir():
                raise FileNotFoundError(
                    f"The toy category folder {self.root / name} is not written yet: call prepare_data() before "
                    "setup() (a Trainer does), or write it with lightning_regs.datamodules.mvtec_toy.write_mvtec_toy("
                    "root)."
                )
