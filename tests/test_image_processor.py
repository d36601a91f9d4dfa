"""data_pipeline.image_processor against transformers' Qwen2-VL image processor (PIL backend)."""
import numpy as np
import pytest
from PIL import Image

from data_pipeline.image_processor import ImageError, preprocess, smart_resize

qwen2_vl_pil = pytest.importorskip("transformers.models.qwen2_vl.image_processing_pil_qwen2_vl")


def reference(images, min_pixels, max_pixels):
    proc = qwen2_vl_pil.Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    assert proc.backend == "pil"
    out = proc(images=images, return_tensors="np")
    return np.asarray(out["pixel_values"]), np.asarray(out["image_grid_thw"])


def random_image(rng, h, w):
    # Smooth structure plus noise, so that resampling errors would show.
    yy, xx = np.mgrid[0:h, 0:w]
    base = 127 + 100 * np.sin(yy[..., None] / 7.0 + xx[..., None] / 11.0 + np.arange(3))
    noise = rng.integers(-25, 26, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def assert_matches(images, min_pixels, max_pixels):
    pv, thw = preprocess(images, min_pixels=min_pixels, max_pixels=max_pixels)
    ref_pv, ref_thw = reference([Image.fromarray(a) if isinstance(a, np.ndarray) else a for a in images],
                                min_pixels, max_pixels)
    assert pv.dtype == np.float32 and thw.dtype == np.int64
    np.testing.assert_array_equal(thw, ref_thw)
    assert pv.shape == ref_pv.shape
    np.testing.assert_allclose(pv, ref_pv, rtol=0, atol=1e-5)
    return thw


# (h, w): odd sizes, both orientations, exact multiples of 28, half-way rounding cases (42 = 1.5*28).
SIZES = [(252, 364), (196, 140), (31, 977), (977, 31), (57, 85), (28, 28), (42, 70), (70, 42),
         (123, 45), (333, 111), (100, 100), (14 * 3 + 1, 28 * 5 - 1), (10, 1000), (29, 31)]


@pytest.mark.parametrize("h,w", SIZES)
def test_matches_transformers_default_budget(h, w):
    rng = np.random.default_rng(h * 1000 + w)
    thw = assert_matches([random_image(rng, h, w)], 3136, 12845056)
    assert thw[0, 0] == 1


@pytest.mark.parametrize("h,w", [(10, 12), (20, 30), (11, 53), (40, 40)])
def test_small_images_scale_up_to_min_pixels(h, w):
    rng = np.random.default_rng(7)
    min_pixels = 28 * 28 * 9
    thw = assert_matches([random_image(rng, h, w)], min_pixels, 12845056)
    assert thw[0, 1] * thw[0, 2] * 14 * 14 >= min_pixels


@pytest.mark.parametrize("h,w,max_pixels", [(300, 400, 28 * 28 * 20), (640, 480, 28 * 28 * 30),
                                            (513, 97, 28 * 28 * 6), (90, 2000, 28 * 28 * 4)])
def test_large_images_scale_down_to_max_pixels(h, w, max_pixels):
    rng = np.random.default_rng(11)
    thw = assert_matches([random_image(rng, h, w)], 3136 // 4, max_pixels)
    # Within budget, except where the short side is clamped to one merge unit (28 px) as in
    # transformers: 90x2000 with a 4-token budget becomes 2x18 merge units.
    assert thw[0, 1] * thw[0, 2] * 14 * 14 <= max_pixels or min(thw[0, 1:]) == 2


def test_several_images_at_once_with_mixed_inputs(tmp_path):
    rng = np.random.default_rng(3)
    arrays = [random_image(rng, 60, 90), random_image(rng, 130, 47), random_image(rng, 33, 33)]
    path = tmp_path / "obs.png"
    Image.fromarray(arrays[2]).save(path)
    inputs = [arrays[0], Image.fromarray(arrays[1]), str(path)]
    pv, thw = preprocess(inputs, max_pixels=28 * 28 * 12)
    ref_pv, ref_thw = reference([Image.fromarray(a) for a in arrays], 3136, 28 * 28 * 12)
    np.testing.assert_array_equal(thw, ref_thw)
    np.testing.assert_allclose(pv, ref_pv, rtol=0, atol=1e-5)
    assert pv.shape[0] == thw.prod(axis=1).sum()


def test_rgba_grayscale_and_palette_images_like_transformers():
    rng = np.random.default_rng(5)
    rgba = np.concatenate([random_image(rng, 50, 60), rng.integers(0, 256, (50, 60, 1), dtype=np.uint8)], -1)
    images = [Image.fromarray(rgba, mode="RGBA"), Image.fromarray(random_image(rng, 45, 80)[..., 0], mode="L"),
              Image.fromarray(random_image(rng, 64, 64)).convert("P")]
    pv, thw = preprocess(images)
    ref_pv, ref_thw = reference(images, 3136, 12845056)
    np.testing.assert_array_equal(thw, ref_thw)
    np.testing.assert_allclose(pv, ref_pv, rtol=0, atol=1e-5)


def test_smart_resize_matches_transformers():
    rng = np.random.default_rng(0)
    for _ in range(2000):
        h, w = (int(v) for v in rng.integers(10, 5000, 2))
        if max(h, w) / min(h, w) > 200:
            continue
        lo = int(rng.integers(1, 200)) * 28
        hi = lo + int(rng.integers(0, 3000)) * 28
        assert smart_resize(h, w, 28, lo, hi) == qwen2_vl_pil.smart_resize(h, w, 28, lo, hi), (h, w, lo, hi)


def test_too_elongated_refused_like_transformers(tmp_path):
    rng = np.random.default_rng(1)
    ok = random_image(rng, 20, 20)
    long = random_image(rng, 10, 2010)
    with pytest.raises(ValueError, match="aspect ratio"):
        reference([Image.fromarray(long)], 3136, 12845056)
    with pytest.raises(ImageError, match=r"image 1: .*aspect ratio"):
        preprocess([ok, long])
    path = tmp_path / "strip.png"
    Image.fromarray(long).save(path)
    with pytest.raises(ImageError, match="strip.png"):
        preprocess(str(path))
    # Aspect exactly 200 is accepted by both.
    assert_matches([random_image(rng, 10, 2000)], 3136, 28 * 28 * 40)


def test_too_small_and_bad_inputs_refused_naming_the_image(tmp_path):
    rng = np.random.default_rng(2)
    with pytest.raises(ImageError, match=r"image 2: image too small \(9x40"):
        preprocess([random_image(rng, 30, 30), random_image(rng, 30, 30), random_image(rng, 40, 9)])
    with pytest.raises(ImageError, match="image 0: arrays must be uint8"):
        preprocess([np.zeros((30, 30, 3), np.float32)])
    with pytest.raises(ImageError, match="image 0: arrays must be uint8 of shape"):
        preprocess(np.zeros((30, 30, 4), np.uint8))
    missing = tmp_path / "missing.jpg"
    with pytest.raises(ImageError, match="missing.jpg.*cannot read"):
        preprocess([str(missing)])
    with pytest.raises(ImageError, match="non-empty"):
        preprocess([])
