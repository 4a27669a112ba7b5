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

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from lightning_regs.datamodules.folder_lock import folder_lock, remove_leftovers
from lightning_regs.datamodules.mvtec import IMAGENET_MEAN, IMAGENET_STD, MVTecADDataModule
from lightning_regs.functional._checks import check_bool, check_choice, check_int

__all__ = ["TOY_CATEGORIES", "TOY_DEFECTS", "MVTecToyDataModule", "ToySample", "render_toy_sample", "write_mvtec_toy"]

TOY_CATEGORIES = ("digit", "speckle", "stripes")
TOY_DEFECTS = ("missing", "scratch", "spot")
MANIFEST = "mvtec_toy.json"  # at the root, as MVTec AD's own readme.txt and license.txt: the settings of each category
_STAGING = ".writing-mvtec-toy-"
_VERSION = 1  # bump when the rendering changes, so a folder written by an older version is not taken for this one
_LOW, _HIGH = 60, 200  # normal pixels are clipped here, so every defect below changes every pixel it covers
# Spot colours: each has a channel >= 15 levels outside [_LOW, _HIGH], so a blend with alpha >= 0.4 changes a pixel.
_SPOT_COLOURS = ((235, 45, 40), (40, 75, 230), (240, 160, 30), (35, 205, 40), (225, 35, 215))
_DIGIT = 3  # the object class of the "digit" category; its 183 writers are split 60 % train, 40 % test


def _check_category(owner: str, category: Any) -> str:
    if category not in TOY_CATEGORIES:
        raise ValueError(
            f"{owner}: unknown toy category {category!r}; the toy has {', '.join(TOY_CATEGORIES)} (the 15 MVTec AD "
            "categories are read from the real data by MVTecADDataModule)."
        )
    return category


@dataclass(frozen=True)
class ToySample:
    """One rendered toy image: ``image`` as written, ``clean`` before the defect, ``mask`` of the changed pixels.

    ``image`` and ``clean`` are ``(H, W, 3)`` uint8 (equal for good images); ``mask`` is ``(H, W)`` uint8, 255
    where ``image != clean`` in any channel and 0 elsewhere (``None`` for good images).
    """

    image: np.ndarray
    clean: np.ndarray
    mask: np.ndarray | None


@functools.lru_cache(maxsize=1)
def _glyphs() -> np.ndarray:
    """scikit-learn's 8x8 glyphs of :data:`_DIGIT` in [0, 1], in the data set's order."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images[digits.target == _DIGIT] / 16.0).astype(np.float32)


def _resize(array: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a float ``(h, w)`` array to ``(size, size)`` (PIL, deterministic)."""
    return np.asarray(Image.fromarray(array.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))


def _stripes(rng: np.random.Generator, size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle = np.deg2rad(35 + rng.normal(0, 4))
    period = size / 8 * rng.uniform(0.92, 1.08)
    wave = np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + rng.uniform(0, 2 * np.pi))
    image = np.array([150.0, 118.0, 88.0]) + 32 * wave[..., None] * np.array([1.0, 0.9, 0.8])
    return image, image


def _speckle(rng: np.random.Generator, size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    coarse = _resize(rng.normal(0, 1, (size // 8, size // 8)), size)
    fine = _resize(rng.normal(0, 1, (size // 3, size // 3)), size)
    image = np.array([118.0, 136.0, 124.0]) + (22 * coarse + 10 * fine)[..., None] * np.array([0.9, 1.0, 0.8])
    return image, image


def _digit(rng: np.random.Generator, size: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    glyphs = _glyphs()
    order = np.random.default_rng(_DIGIT).permutation(len(glyphs))  # fixed: the writers of train and test differ
    cut = int(0.6 * len(glyphs))
    pool = order[:cut] if split == "train" else order[cut:]
    side = round(0.62 * size)
    glyph = np.clip((_resize(glyphs[rng.choice(pool)], side) - 0.2) / 0.8, 0, 1)  # no faint ink around it
    shift = rng.integers(-round(size / 32), round(size / 32) + 1, size=2)
    top, left = (size - side) // 2 + shift
    ink = np.zeros((size, size))
    ink[top : top + side, left : left + side] = glyph
    background = np.broadcast_to(np.array([190.0, 188.0, 180.0]) + rng.normal(0, 3, 3), (size, size, 3))
    return background + ink[..., None] * (np.array([40.0, 42.0, 60.0]) - background), background


_Scene = Callable[[np.random.Generator, int, str], tuple[np.ndarray, np.ndarray]]
_SCENES: dict[str, _Scene] = {"digit": _digit, "speckle": _speckle, "stripes": _stripes}  # (scene, its background)


def _photograph(scene: np.ndarray, light: tuple[float, float], noise: np.ndarray) -> np.ndarray:
    """The scene under the image's lighting (contrast, brightness) and sensor noise, as clipped uint8."""
    contrast, brightness = light
    return np.clip(np.rint(128 + contrast * (scene - 128) + brightness + noise), _LOW, _HIGH).astype(np.uint8)


def _segment_distance(size: int, start: np.ndarray, end: np.ndarray) -> np.ndarray:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    direction = end - start
    t = np.clip(((xx - start[0]) * direction[0] + (yy - start[1]) * direction[1]) / (direction @ direction), 0, 1)
    return np.hypot(xx - start[0] - t * direction[0], yy - start[1] - t * direction[1])


def _paste(
    defect: str, clean: np.ndarray, background: np.ndarray, ink: np.ndarray, rng: np.random.Generator, digit: bool
) -> np.ndarray:
    """``clean`` with ``defect`` pasted (int array); every pasted pixel differs from ``clean`` (see the colours)."""
    size = clean.shape[0]
    image = clean.astype(np.int16)
    yy, xx = np.mgrid[0:size, 0:size] + 0.5
    if defect == "scratch":
        start = rng.uniform(0.15 * size, 0.85 * size, 2)
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.3, 0.6) * size
        end = start + length * np.array([np.cos(angle), np.sin(angle)])
        shape = _segment_distance(size, start, end) <= rng.uniform(0.6, 1.2) * max(size / 64, 1)
        image[shape] += rng.choice([-1, 1]) * rng.integers(45, 66)  # normal pixels are in [60, 200]: all change
    elif defect == "spot":
        centre, radii = rng.uniform(0.2 * size, 0.8 * size, 2), rng.uniform(0.08, 0.14, 2) * size
        shape = ((xx - centre[0]) / radii[0]) ** 2 + ((yy - centre[1]) / radii[1]) ** 2 <= 1
        alpha = rng.uniform(0.4, 0.75)
        colour = np.array(_SPOT_COLOURS[rng.integers(len(_SPOT_COLOURS))])
        image[shape] = np.rint(alpha * colour + (1 - alpha) * image[shape]).astype(np.int16)
    elif digit:  # missing: a patch of the glyph erased to the background (the same lighting and noise)
        rows, cols = np.nonzero(ink > 0.5)
        pick = rng.integers(len(rows))
        half = rng.uniform(0.08, 0.14, 2) * size
        shape = (np.abs(yy - rows[pick] - 0.5) <= half[0]) & (np.abs(xx - cols[pick] - 0.5) <= half[1])
        image[shape] = background[shape]
    else:  # missing: a hole in the texture, darker than its surroundings
        centre, half = rng.uniform(0.2 * size, 0.8 * size, 2), rng.uniform(0.06, 0.12, 2) * size
        shape = (np.abs(xx - centre[0]) <= half[0]) & (np.abs(yy - centre[1]) <= half[1])
        image[shape] = np.rint(image[shape] * rng.uniform(0.45, 0.6)).astype(np.int16)
    return image


def render_toy_sample(
    category: str,
    defect: str = "good",
    index: int = 0,
    split: Literal["train", "test"] = "test",
    image_size: int = 64,
    seed: int = 0,
) -> ToySample:
    """Render one image of the toy, as :func:`write_mvtec_toy` writes it, from its own seeded generator.

    The generator is seeded by ``(seed, category, split, defect, index)``, so an image does not depend on
    which other images or categories are written.

    Args:
        category: one of :data:`TOY_CATEGORIES`.
        defect: ``"good"`` or one of :data:`TOY_DEFECTS` (only with ``split="test"``).
        index: the image's number (its file name).
        split: ``"train"`` or ``"test"``.
        image_size: the side of the square image, at least 32.
        seed: the toy's seed (a non-negative int).

    Example::

        >>> sample = render_toy_sample("digit", "scratch", index=2)
        >>> changed = (sample.image != sample.clean).any(-1)
        >>> sample.image.shape, sample.mask.dtype, bool((changed == (sample.mask == 255)).all()), bool(changed.any())
        ((64, 64, 3), dtype('uint8'), True, True)
    """
    category = _check_category("render_toy_sample", category)
    size = check_int("render_toy_sample", "image_size", image_size, low=32)
    check_int("render_toy_sample", "seed", seed, low=0)
    check_int("render_toy_sample", "index", index, low=0)
    kinds = ("good", *TOY_DEFECTS)
    check_choice("render_toy_sample", "defect", defect, kinds if split == "test" else ("good",))
    check_choice("render_toy_sample", "split", split, ("train", "test"))
    key = [seed, TOY_CATEGORIES.index(category), int(split == "test"), kinds.index(defect), index]
    rng = np.random.default_rng(key)
    scene, background = _SCENES[category](rng, size, split)
    light = (rng.uniform(0.95, 1.05), rng.normal(0, 3))
    noise = rng.normal(0, 3, (size, size, 3))
    clean = _photograph(scene, light, noise)
    if defect == "good":
        return ToySample(clean, clean, None)
    plain = _photograph(background, light, noise)
    ink = np.abs(scene - background).max(-1)  # where the glyph is (zero for textures)
    ink = ink / max(float(ink.max()), 1e-9)
    pasted = _paste(defect, clean, plain, ink, rng, category == "digit")
    image = np.clip(pasted, 0, 255).astype(np.uint8)
    changed = (image != clean).any(-1)
    if not changed.any():  # cannot happen with the colours above; a silent empty mask would corrupt the pixel AUROC
        raise RuntimeError(f"render_toy_sample: the {defect} of {category}/{index} changed no pixel.")
    return ToySample(image, clean, np.where(changed, 255, 0).astype(np.uint8))


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
        category: one of :data:`TOY_CATEGORIES` (``digit``, ``speckle``, ``stripes``).
        image_size: resize to this side; ``None`` (default) keeps the toy's ``toy_size``. This argument and the
            others up to ``persistent_workers`` are :class:`~lightning_regs.datamodules.mvtec.MVTecADDataModule`'s
            (``seed`` is the training order's and the ``"from_test"`` split's, not the toy's: ``toy_seed``).
        toy_size: side of the written images.
        num_train: training images written.
        num_test_good: good test images written.
        num_test_defect: test images written per defect type.
        toy_seed: the seed the toy is rendered from.

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

    def __init__(
        self,
        root: str | Path = "data/mvtec_toy",
        category: str = "stripes",
        image_size: int | tuple[int, int] | None = None,
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
        toy_size: int = 64,
        num_train: int = 40,
        num_test_good: int = 16,
        num_test_defect: int = 8,
        toy_seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        _check_category(owner, category)
        self._toy = _settings(owner, toy_size, num_train, num_test_good, num_test_defect, toy_seed)
        # fmt: off
        super().__init__(root, category, image_size, batch_size, eval_batch_size, val_split, val_fraction, seed, mean,
                         std, transform, num_workers, pin_memory, persistent_workers)
        # fmt: on

    def prepare_data(self) -> None:
        """Write the category into ``root`` unless it is there with the same settings (see :func:`write_mvtec_toy`)."""
        toy = {key: value for key, value in self._toy.items() if key != "version"}
        write_mvtec_toy(self.root, [self.category], **toy)

    def _check_root(self) -> None:
        if not self.category_dir.is_dir():
            raise FileNotFoundError(
                f"The toy category folder {self.category_dir} is not written yet: call prepare_data() before setup() "
                "(a Trainer does), or write it with lightning_regs.datamodules.mvtec_toy.write_mvtec_toy(root)."
            )
