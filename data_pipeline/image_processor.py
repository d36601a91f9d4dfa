"""Qwen2-VL / Qwen2.5-VL image preprocessing in NumPy + PIL (docs/model.md).

Bit-for-bit the PIL path of transformers' Qwen2VLImageProcessorPil: smart_resize to multiples
of 28, PIL bicubic resize on uint8 RGB, rescale 1/255 (in float64, then float32), CLIP
normalization in float32, the still image repeated to `temporal_patch_size` frames, and
patches flattened in 2x2 merge-block order, one row of C*T*14*14 values per patch.
"""
from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MAX_ASPECT_RATIO = 200
# Sides under 10 px are refused (docs/model.md); transformers 5.x dropped its own minimum-side check
# and would upscale such an image, but for this project it is always a broken input.
MIN_SIDE = 10


class ImageError(ValueError):
    """An image that cannot be preprocessed; the message names it (path or index)."""


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 3136,
                 max_pixels: int = 12845056) -> tuple[int, int]:
    """Target (height, width): multiples of `factor`, area within [min_pixels, max_pixels],
    aspect ratio kept as closely as possible. Python's round (half to even), as transformers."""
    if min(height, width) <= 0:
        raise ValueError(f"image size must be positive, got height {height}, width {width}")
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, "
                         f"got {max(height, width) / min(height, width)} (height {height}, width {width})")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _to_rgb(image, name: str) -> Image.Image:
    """A PIL RGB image from a path, a PIL image or a uint8 HxWx3 array.
    Transparency is composited onto white, as transformers' convert_to_rgb does."""
    if isinstance(image, (str, os.PathLike)):
        try:
            with Image.open(image) as f:
                f.load()
                image = f.copy()
        except (OSError, ValueError) as e:
            raise ImageError(f"{name}: cannot read image file: {e}") from e
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
            raise ImageError(f"{name}: arrays must be uint8 of shape (H, W, 3), "
                             f"got {image.dtype} of shape {image.shape}")
        return Image.fromarray(image, mode="RGB")
    if not isinstance(image, Image.Image):
        raise ImageError(f"{name}: expected a PIL image, a uint8 (H, W, 3) array or a file path, "
                         f"got {type(image).__name__}")
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def _patchify(image: np.ndarray, patch_size: int, temporal_patch_size: int,
              merge_size: int) -> np.ndarray:
    """[C, H, W] -> [gh*gw, C*T*p*p], patches ordered by merge block (blocks row-major)."""
    c, h, w = image.shape
    gh, gw = h // patch_size, w // patch_size
    x = image.reshape(c, gh // merge_size, merge_size, patch_size,
                      gw // merge_size, merge_size, patch_size)
    x = x.transpose(1, 4, 2, 5, 0, 3, 6)  # (bh, bw, mh, mw, C, ph, pw)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], temporal_patch_size, *x.shape[5:]))
    return x.reshape(gh * gw, c * temporal_patch_size * patch_size * patch_size)


def _one(image, name: str, min_pixels: int, max_pixels: int, patch_size: int,
         temporal_patch_size: int, merge_size: int) -> tuple[np.ndarray, tuple[int, int, int]]:
    rgb = _to_rgb(image, name)
    width, height = rgb.size
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"{name}: image too small ({width}x{height} px), both sides must be at "
                         f"least {MIN_SIDE} px")
    try:
        new_h, new_w = smart_resize(height, width, patch_size * merge_size, min_pixels, max_pixels)
    except ValueError as e:
        raise ImageError(f"{name}: {e}") from e
    resized = np.asarray(rgb.resize((new_w, new_h), resample=Image.Resampling.BICUBIC))
    x = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    x = (x - np.asarray(CLIP_MEAN, np.float32)) / np.asarray(CLIP_STD, np.float32)
    patches = _patchify(x.transpose(2, 0, 1), patch_size, temporal_patch_size, merge_size)
    return patches, (1, new_h // patch_size, new_w // patch_size)


def preprocess(images, min_pixels: int = 3136, max_pixels: int = 12845056, patch_size: int = 14,
               temporal_patch_size: int = 2, merge_size: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Images (one, or a sequence of PIL images, uint8 HxWx3 arrays or file paths) ->
    (pixel_values [N, C*T*p*p] float32, image_grid_thw [n_images, 3] int64).
    Errors name the image by its path, or by its index in the sequence."""
    if isinstance(images, (str, os.PathLike, np.ndarray, Image.Image)):
        images = [images]
    if not isinstance(images, Sequence) or len(images) == 0:
        raise ImageError(f"expected one image or a non-empty sequence of images, got {images!r}")
    patches, grids = [], []
    for i, image in enumerate(images):
        name = f"image {os.fspath(image)!r}" if isinstance(image, (str, os.PathLike)) else f"image {i}"
        p, thw = _one(image, name, min_pixels, max_pixels, patch_size, temporal_patch_size, merge_size)
        patches.append(p)
        grids.append(thw)
    return np.concatenate(patches, axis=0), np.asarray(grids, dtype=np.int64)
