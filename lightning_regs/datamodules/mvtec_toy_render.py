"""Rendering the synthetic MVTec AD toy: one seeded image (texture or digit glyph), its defect and its exact mask.

:func:`render_toy_sample` is pure numpy (and PIL for resizing): the same arguments give the same arrays.
:mod:`lightning_regs.datamodules.mvtec_toy` writes them in MVTec AD's layout.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from PIL import Image

from lightning_regs.functional._checks import check_choice, check_int

__all__ = ["TOY_CATEGORIES", "TOY_DEFECTS", "ToySample", "render_toy_sample"]

TOY_CATEGORIES = ("digit", "speckle", "stripes")
TOY_DEFECTS = ("missing", "scratch", "spot")
_LOW, _HIGH = 60, 200  # normal pixels are clipped here, so every defect below changes every pixel it covers
# Spot colours: each has a channel >= 15 levels outside [_LOW, _HIGH], so a blend with alpha >= 0.4 changes a pixel.
_SPOT_COLOURS = ((235, 45, 40), (40, 75, 230), (240, 160, 30), (35, 205, 40), (225, 35, 215))
_DIGIT = 3  # the object class of the "digit" category; its 183 writers are split 60 % train, 40 % test


def _check_category(owner: str, category: Any) -> Any:
    """``category`` (a name or a list of names) if every name is a toy category."""
    for name in [category] if isinstance(category, str) or not isinstance(category, (list, tuple)) else category:
        if name not in TOY_CATEGORIES:
            raise ValueError(
                f"{owner}: unknown toy category {name!r}; the toy has {', '.join(TOY_CATEGORIES)} (the 15 MVTec AD "
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
