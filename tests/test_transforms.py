"""The built-in transforms: each honours its setting, the random one is seeded, the codecs
are as lossy as their quality says, the differentiable paths match the uint8 ones."""

import numpy as np
import pytest
import torch

from uadbench.engine.plan import resolve
from uadbench.errors import ConfigError


def make(spec: str):
    p = resolve("transform", spec)
    return p.cls(p.config)


def natural(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """A smooth, natural-ish RGB image: gradients, a disc and low-frequency texture."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    low = torch.from_numpy(rng.random((1, 3, 6, 8))).float()
    tex = torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)
    img = 0.35 * tex[0].permute(1, 2, 0).numpy() + 0.3 * np.stack([xx, yy, 1 - xx], -1)
    img += 0.3 * (((yy - 0.4) ** 2 + (xx - 0.5) ** 2) < 0.04)[..., None]
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def to_t(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img.copy()).permute(2, 0, 1)[None].float() / 255.0


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.mark.parametrize(
    "spec", ["jpeg", "webp", "resize", "blur", "median", "bitdepth", "random-resize-pad"]
)
def test_every_transform_keeps_size_and_dtype_and_changes_the_image(spec):
    img = natural()
    out = make(spec).apply(img, rng())
    assert out.shape == img.shape and out.dtype == np.uint8
    assert not np.array_equal(out, img)


@pytest.mark.parametrize(
    "spec,other",
    [
        ("jpeg:q=90", "jpeg:q=20"),
        ("webp:q=90", "webp:q=20"),
        ("resize:scale=0.75", "resize:scale=0.25"),
        ("blur:sigma=0.5", "blur:sigma=2"),
        ("median:k=3", "median:k=7"),
        ("bitdepth:bits=6", "bitdepth:bits=2"),
        ("random-resize-pad:min_scale=0.95", "random-resize-pad:min_scale=0.3"),
    ],
)
def test_the_setting_matters_in_the_direction_it_says(spec, other):
    """The milder setting stays closer to the original than the harsher one."""
    img = natural()
    mild, harsh = make(spec).apply(img, rng(3)), make(other).apply(img, rng(3))
    assert psnr(mild, img) > psnr(harsh, img) + 1.0


def test_jpeg_quality_100_is_near_identity_and_10_is_not():
    img = natural()
    assert psnr(make("jpeg:q=100").apply(img, rng()), img) > 40
    assert psnr(make("jpeg:q=10").apply(img, rng()), img) < 30


@pytest.mark.parametrize(
    "spec,msg",
    [
        ("jpeg:q=0", "1..100"),
        ("jpeg:q=101", "1..100"),
        ("webp:q=0", "1..100"),
        ("median:k=4", "odd"),
        ("bitdepth:bits=0", "1..8"),
        ("bitdepth:bits=9", "1..8"),
        ("resize:scale=0", r"\(0, 1\]"),
        ("blur:sigma=0", "> 0"),
        ("random-resize-pad:min_scale=1.5", r"\(0, 1\]"),
        ("random-resize-pad:fill=300", "0..255"),
    ],
)
def test_bad_options_are_one_line_config_errors(spec, msg):
    with pytest.raises(ConfigError, match=msg) as err:
        resolve("transform", spec)
    assert "\n" not in str(err.value)


def test_bitdepth_leaves_exactly_two_to_the_bits_levels():
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=2)
    for bits in (1, 3, 5, 8):
        out = make(f"bitdepth:bits={bits}").apply(ramp, rng())
        levels = np.unique(out)
        assert len(levels) == 2**bits
        assert levels[0] == 0 and levels[-1] == 255  # evenly spread over the full range
        assert np.abs(out.astype(int) - ramp).max() <= 128 // 2 ** (bits - 1)


def test_median_removes_salt_noise():
    img = natural()
    noisy = img.copy()
    r = rng(1)
    ys, xs = r.integers(2, 46, 40), r.integers(2, 62, 40)
    noisy[ys, xs] = 255
    out = make("median:k=3").apply(noisy, rng())
    assert psnr(out, img) > psnr(noisy, img) + 8
    assert np.all(out[ys, xs].astype(int) < 255)  # every isolated salt pixel is gone


def test_resize_loses_high_frequencies_but_keeps_low_ones():
    h, w = 32, 32
    stripes = np.zeros((h, w, 3), np.uint8)
    stripes[:, ::2] = 255  # the highest horizontal frequency
    out = make("resize:scale=0.5").apply(stripes, rng())
    assert out.std() < 0.1 * stripes.std()  # averaged to grey, not aliased back
    smooth = natural(h, w)
    assert psnr(make("resize:scale=0.5").apply(smooth, rng()), smooth) > 28
    # the differentiable path resamples the same way, to about a grey level
    t = make("resize:scale=0.5").torch(to_t(smooth), rng())
    assert (t * 255 - to_t(make("resize:scale=0.5").apply(smooth, rng())) * 255).abs().mean() < 1.5


def test_blur_torch_path_equals_the_uint8_path_within_rounding_and_is_differentiable():
    img = natural()
    t = make("blur:sigma=1.5")
    u8 = t.apply(img, rng())
    x = to_t(img).requires_grad_(True)
    y = t.torch(x, rng())
    assert (y * 255 - to_t(u8) * 255).abs().max() <= 0.5 + 1e-4
    assert (y.detach() - x.detach()).abs().max() > 0.05  # it did blur
    y[0, 0, 20, 30].backward()
    g = x.grad[0, 0]
    # the impulse response is the sampled, normalised Gaussian of σ = 1.5 on 2·ceil(3σ)+1 = 11
    # taps each way, computed here by hand
    r = 5
    k1 = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * 1.5**2))
    k1 /= k1.sum()
    assert (g > 0).sum() == (2 * r + 1) ** 2
    assert np.allclose(
        g[20 - r : 20 + r + 1, 30 - r : 30 + r + 1].numpy(), np.outer(k1, k1), atol=1e-6
    )


def test_random_resize_pad_is_seeded_and_draws_differ():
    img = natural()
    t = make("random-resize-pad")
    a = t.apply(img, rng(5))
    assert np.array_equal(a, t.apply(img, rng(5)))
    assert not np.array_equal(a, t.apply(img, rng(6)))
    x = to_t(img)
    assert torch.equal(t.torch(x, rng(5)), t.torch(x, rng(5)))
    assert not torch.equal(t.torch(x, rng(5)), t.torch(x, rng(6)))


def test_random_resize_pad_geometry_says_where_a_painted_pixel_lands():
    h, w = 60, 80
    img = np.full((h, w, 3), 100, np.uint8)
    y0, x0 = 30, 50
    img[y0 - 2 : y0 + 3, x0 - 2 : x0 + 3] = 255  # a 5x5 white square centred on (50, 30)
    t = make("random-resize-pad:min_scale=0.5,fill=7")
    for seed in range(4):
        out, g = t.apply_geometry(img, rng(seed))
        assert (g.height, g.width) == (h, w) and g.sx < 1
        (px, py) = g.points(np.array([[x0 + 0.5, y0 + 0.5]]))[0]  # the pixel's centre
        assert out[int(py), int(px)].min() > 200
        bright = np.argwhere(out[..., 0] > 200)
        assert np.allclose(bright.mean(0), [py - 0.5, px - 0.5], atol=1.0)
        # the canvas outside the pasted image holds the fill value
        canvas = np.ones((h, w), bool)
        canvas[int(g.ty) : int(g.ty) + round(g.sy * h), int(g.tx) : int(g.tx) + round(g.sx * w)] = 0
        assert (out[canvas] == 7).all() and canvas.any()
        # the torch path draws the same factor and offset from the same rng
        ty = t.torch(to_t(img), rng(seed))
        assert (ty[0] * 255 - to_t(out)[0] * 255).abs().mean() < 3.0


def test_random_resize_pad_torch_path_is_differentiable():
    t = make("random-resize-pad:min_scale=0.5")
    x = to_t(natural()).requires_grad_(True)
    t.torch(x, rng(2)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


@pytest.mark.parametrize("spec", ["jpeg:q=50", "median:k=3", "bitdepth:bits=3"])
def test_bpda_transforms_forward_the_real_transform_and_pass_the_gradient(spec):
    t = make(spec)
    assert not t.differentiable
    img = natural()
    x = to_t(img).requires_grad_(True)
    y = t.torch(x, rng())
    assert torch.allclose(y, to_t(t.apply(img, rng())), atol=1e-6)
    (y * 3).sum().backward()
    assert torch.allclose(x.grad, torch.full_like(x, 3.0))


@pytest.mark.parametrize("spec", ["blur", "resize", "random-resize-pad", "jpeg"])
def test_torch_paths_follow_the_input_dtype_and_device(spec):
    x = to_t(natural(16, 24)).double()
    y = make(spec).torch(x, rng())
    assert y.dtype == torch.float64 and y.device == x.device and y.shape == x.shape


def test_webp_without_pillow_support_is_a_one_line_error(monkeypatch):
    from PIL import features

    monkeypatch.setattr(features, "check", lambda name: name != "webp")
    with pytest.raises(ConfigError, match="without WebP support") as err:
        make("webp")
    assert "\n" not in str(err.value)
