"""The seven AutoDIR degradations (plus "no"), randomised, documented and seeded.

Images are float arrays in [0, 1]: numpy H x W x 3 (float32 or float64), or a torch tensor C x H x W
(3 x H x W) or H x W x 3 (a tensor is converted to numpy and back, same dtype/device/layout; a 3-D
tensor whose first dimension is 3 is taken as C x H x W). Outputs are clipped to [0, 1].

Every degradation is split into
    params = sample_params(kind, rng)   # draws the random parameters (documented below)
    out    = apply(img, kind, params)   # a pure function: all remaining randomness (noise
                                        # realisations, streak and drop positions) comes from
                                        # params["seed"]
so a seed (or a numpy Generator) fixes the result, and any parameter can be overridden, e.g.
    degrade(img, "noise", seed=0, sigma=25/255, poisson=False)

Parameter ranges (U = uniform, logU = log-uniform; lengths in pixels of the image given):
  noise          additive Gaussian, sigma ~ U(5, 50)/255 (probability 0.75); or (probability 0.25)
                 Poisson shot noise  out = Poisson(img * peak) / peak  with peak ~ logU(20, 200)
                 photons at white, plus Gaussian read noise sigma ~ U(1, 10)/255. Independent per
                 channel and pixel.
  blur           Gaussian (probability 0.5): anisotropic, sigma_x, sigma_y ~ U(0.8, 3.0) px, rotated
                 by theta ~ U(0, pi), kernel radius ceil(3 * max sigma); or linear motion (0.5):
                 length ~ U(5, 25) px, angle ~ U(0, 180) deg, box profile along the line (sub-pixel
                 rasterised), lightly smoothed (sigma 0.5 px). Reflect padding.
  rain           streaks: seeds with density ~ U(0.002, 0.012) per pixel and brightness U(0.4, 1),
                 smeared along a line of length ~ U(8, 32) px at angle ~ U(-25, 25) deg from vertical
                 (all streaks of an image share it), thickened by a Gaussian of sigma ~ U(0.3, 0.9) px,
                 scaled to a peak opacity ~ U(0.4, 0.9), and screen-blended: out = 1-(1-img)(1-R).
                 Streaks can enter from outside the frame.
  underexposure  out = scale * img ** gamma,  gamma ~ U(1.2, 2.5),  scale ~ U(0.15, 0.5)
                 (a mid-grey 0.5 becomes 0.03-0.22). No added noise.
  haze           atmospheric scattering  I = J t + A (1 - t),  t = exp(-beta d),  beta ~ U(0.6, 2.0).
                 Depth d in [0.4, 1]: a smooth random field (Gaussian noise on a coarse grid of
                 cells ~ U(2, 6) per side, bicubic-upsampled) mixed with weight w ~ U(0.3, 1.0) with a
                 vertical ramp (top = far). Airlight A ~ U(0.75, 1.0), per-channel jitter U(-0.03, 0.03).
  low resolution down-sample by factor f ~ U(2, 4) (bicubic, antialiased), up-sample back to the
                 original size (bicubic).
  raindrop       adherent drops: radii ~ U(4, 20) px (vertical elongation U(1.0, 1.4)) drawn until
                 they cover ~ U(0.10, 0.35) of the area; inside a drop the background is seen
                 through a lens: blurred (Gaussian sigma ~ U(1.5, 4) px), inverted and shrunk about
                 the drop centre (magnification ~ U(0.3, 0.8)), brightened by U(0, 0.08); soft edge
                 (outer 25 % of the radius), a darker rim, and a small specular highlight.
  no             identity (a clean example).

Texture (where a degradation can be seen at all): blur, low resolution and raindrop leave a flat region
(sky, a smooth wallpaper gradient) unchanged to the eye and nearly unchanged in PSNR, so an example of
them on a flat crop carries a label that no model (nor a person) can recover. Training and validation
crops for the kinds in TEXTURED are therefore drawn again (same generator) until the CLEAN crop's
texture(), the mean Sobel gradient magnitude of its luma (scipy.ndimage.sobel along both axes, hypot;
values in [0, 1]), is at least MIN_TEXTURE = 0.10 (about two thirds of the validation photos' 224-px crops
pass; 5th-95th percentile of all crops 0.04-0.33). Noise, rain, underexposure, haze and "no" use any
crop. (Third training run; before it, every kind used any crop.)
"""

from __future__ import annotations

import math
import sys

import numpy as np
from PIL import Image
from scipy import ndimage

CATEGORIES = ("noise", "blur", "rain", "underexposure", "haze", "low resolution", "raindrop", "no")
TEXTURED = ("blur", "low resolution", "raindrop")
MIN_TEXTURE = 0.10


def texture(img) -> float:
    """Mean Sobel gradient magnitude of the luma of an H x W x 3 image in [0, 1] (see the docstring)."""
    x = np.asarray(img, dtype=np.float64)
    y = x @ np.array([0.299, 0.587, 0.114])
    return float(np.hypot(ndimage.sobel(y, 0), ndimage.sobel(y, 1)).mean())


def min_texture(kind: str) -> float:
    """The texture() a clean crop needs before `kind` is applied to it (0 = any crop)."""
    return MIN_TEXTURE if kind in TEXTURED else 0.0


# ----------------------------------------------------------------------------------------------
# array conversion


def _to_numpy(img):
    """Returns (H x W x 3 float array, restore function)."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        torch = None
    if torch is not None and isinstance(img, torch.Tensor):
        chw = img.ndim == 3 and img.shape[0] == 3
        arr = img.detach().cpu().double().numpy()
        if chw:
            arr = arr.transpose(1, 2, 0)
        dtype, device = img.dtype, img.device

        def restore(out):
            o = out.transpose(2, 0, 1) if chw else out
            return torch.from_numpy(np.ascontiguousarray(o)).to(device=device, dtype=dtype)

        return np.ascontiguousarray(arr), restore
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected H x W x 3, got {arr.shape}")
    dtype = arr.dtype if np.issubdtype(arr.dtype, np.floating) else np.float32
    return arr.astype(np.float64), (lambda out: out.astype(dtype))


# ----------------------------------------------------------------------------------------------
# helpers


def _conv(img: np.ndarray, k: np.ndarray) -> np.ndarray:
    return np.stack([ndimage.convolve(img[..., c], k, mode="reflect") for c in range(img.shape[2])], -1)


def _resize_plane(p: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.asarray(Image.fromarray(p.astype(np.float32), "F").resize((w, h), Image.BICUBIC),
                      dtype=np.float64)


def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    return np.stack([_resize_plane(img[..., c], w, h) for c in range(img.shape[2])], -1)


def gaussian_kernel(sx: float, sy: float, theta: float) -> np.ndarray:
    r = int(math.ceil(3 * max(sx, sy)))
    y, x = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    c, s = math.cos(theta), math.sin(theta)
    u, v = c * x + s * y, -s * x + c * y
    k = np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))
    return k / k.sum()


def line_kernel(length: float, angle_deg: float, smooth: float = 0.0) -> np.ndarray:
    """A normalised line of `length` px through the centre at `angle_deg` (0 = horizontal,
    90 = vertical), rasterised with bilinear splatting of densely sampled points."""
    r = int(math.ceil(length / 2 + 2 + 3 * smooth))
    k = np.zeros((2 * r + 1, 2 * r + 1))
    a = math.radians(angle_deg)
    n = max(2, int(length * 8))
    t = np.linspace(-length / 2, length / 2, n)
    xs, ys = r + t * math.cos(a), r - t * math.sin(a)
    x0, y0 = np.floor(xs).astype(int), np.floor(ys).astype(int)
    fx, fy = xs - x0, ys - y0
    for dx, dy, wgt in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                        (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        np.add.at(k, (y0 + dy, x0 + dx), wgt)
    if smooth > 0:
        k = ndimage.gaussian_filter(k, smooth)
    return k / k.sum()


# ----------------------------------------------------------------------------------------------
# parameter sampling


def sample_params(kind: str, rng: np.random.Generator) -> dict:
    """Random parameters for `kind` (ranges in the module docstring)."""
    seed = int(rng.integers(0, 2**63 - 1))
    if kind == "noise":
        if rng.random() < 0.25:
            return {"poisson": True, "peak": float(np.exp(rng.uniform(np.log(20), np.log(200)))),
                    "sigma": float(rng.uniform(1, 10) / 255), "seed": seed}
        return {"poisson": False, "sigma": float(rng.uniform(5, 50) / 255), "seed": seed}
    if kind == "blur":
        if rng.random() < 0.5:
            return {"type": "gaussian", "sigma_x": float(rng.uniform(0.8, 3.0)),
                    "sigma_y": float(rng.uniform(0.8, 3.0)), "theta": float(rng.uniform(0, np.pi)),
                    "seed": seed}
        return {"type": "motion", "length": float(rng.uniform(5, 25)), "angle": float(rng.uniform(0, 180)),
                "seed": seed}
    if kind == "rain":
        return {"density": float(rng.uniform(0.002, 0.012)), "length": float(rng.uniform(8, 32)),
                "angle": float(rng.uniform(-25, 25)), "width": float(rng.uniform(0.3, 0.9)),
                "opacity": float(rng.uniform(0.4, 0.9)), "seed": seed}
    if kind == "underexposure":
        return {"gamma": float(rng.uniform(1.2, 2.5)), "scale": float(rng.uniform(0.15, 0.5)), "seed": seed}
    if kind == "haze":
        return {"beta": float(rng.uniform(0.6, 2.0)), "cells": float(rng.uniform(2, 6)),
                "field_weight": float(rng.uniform(0.3, 1.0)), "airlight": float(rng.uniform(0.75, 1.0)),
                "tint": [float(v) for v in rng.uniform(-0.03, 0.03, 3)], "seed": seed}
    if kind == "low resolution":
        return {"factor": float(rng.uniform(2, 4)), "seed": seed}
    if kind == "raindrop":
        return {"coverage": float(rng.uniform(0.10, 0.35)), "r_min": 4.0, "r_max": 20.0,
                "blur": float(rng.uniform(1.5, 4.0)), "seed": seed}
    if kind == "no":
        return {"seed": seed}
    raise ValueError(f"unknown degradation {kind!r}; expected one of {CATEGORIES}")


# ----------------------------------------------------------------------------------------------
# the degradations (numpy H x W x 3 float64 in, float64 out, unclipped)


def _noise(x, p, rng):
    if p.get("poisson"):
        out = rng.poisson(np.clip(x, 0, 1) * p["peak"]) / p["peak"]
    else:
        out = x.copy()
    return out + rng.normal(0.0, p["sigma"], x.shape)


def _blur(x, p, rng):
    if p["type"] == "gaussian":
        k = gaussian_kernel(p["sigma_x"], p["sigma_y"], p["theta"])
    else:
        k = line_kernel(p["length"], p["angle"], smooth=0.5)
    return _conv(x, k)


def _rain(x, p, rng):
    h, w = x.shape[:2]
    pad = int(math.ceil(p["length"])) + 4
    H, W = h + 2 * pad, w + 2 * pad
    seeds = (rng.random((H, W)) < p["density"]) * rng.uniform(0.4, 1.0, (H, W))
    k = line_kernel(p["length"], 90.0 + p["angle"], smooth=0.0)
    streak = ndimage.convolve(seeds, k, mode="constant") * p["length"]
    if p["width"] > 0:
        streak = ndimage.gaussian_filter(streak, p["width"]) * (1.0 + 2.0 * p["width"])
    r = np.clip(streak, 0, 1)[pad:pad + h, pad:pad + w] * p["opacity"]
    return 1.0 - (1.0 - np.clip(x, 0, 1)) * (1.0 - r[..., None])


def _underexposure(x, p, rng):
    return p["scale"] * np.clip(x, 0, 1) ** p["gamma"]


def _haze(x, p, rng):
    h, w = x.shape[:2]
    n = p["cells"]
    gh, gw = max(2, int(round(n * h / max(h, w))) + 2), max(2, int(round(n * w / max(h, w))) + 2)
    grid = rng.normal(0, 1, (gh, gw))
    field = _resize_plane(grid, w, h)
    field = ndimage.gaussian_filter(field, max(h, w) / (4 * n))
    lo, hi = field.min(), field.max()
    field = (field - lo) / (hi - lo) if hi > lo else np.zeros_like(field)
    ramp = np.repeat(np.linspace(1.0, 0.0, h)[:, None], w, 1)
    d = p["field_weight"] * field + (1 - p["field_weight"]) * ramp
    d = 0.4 + 0.6 * d
    t = np.exp(-p["beta"] * d)[..., None]
    a = np.clip(p["airlight"] + np.asarray(p["tint"]), 0, 1)
    return x * t + a * (1 - t)


def _low_resolution(x, p, rng):
    h, w = x.shape[:2]
    sw, sh = max(1, round(w / p["factor"])), max(1, round(h / p["factor"]))
    return _resize(_resize(x, sw, sh), w, h)


def _raindrop(x, p, rng):
    h, w = x.shape[:2]
    out = x.copy()
    blurred = np.stack([ndimage.gaussian_filter(x[..., c], p["blur"], mode="reflect") for c in range(3)], -1)
    target = p["coverage"] * h * w
    area = 0.0
    drops = []
    while area < target and len(drops) < 500:
        r = rng.uniform(p["r_min"], p["r_max"])
        e = rng.uniform(1.0, 1.4)
        cy, cx = rng.uniform(-r, h + r), rng.uniform(-r, w + r)
        drops.append((cy, cx, r, e, rng.uniform(0.3, 0.8), rng.uniform(0.0, 0.08)))
        # only the part inside the frame counts towards the coverage
        area += math.pi * r * r * e * _inside_fraction(cy, cx, r * e, r, h, w)
    for cy, cx, r, e, mag, bright in drops:
        ry, rx = r * e, r
        y0, y1 = max(0, int(cy - ry) - 1), min(h, int(cy + ry) + 2)
        x0, x1 = max(0, int(cx - rx) - 1), min(w, int(cx + rx) + 2)
        if y0 >= y1 or x0 >= x1:
            continue
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        dy, dx = (yy - cy) / ry, (xx - cx) / rx
        rho = np.sqrt(dx * dx + dy * dy)
        alpha = np.clip((1.0 - rho) / 0.25, 0.0, 1.0)
        if not alpha.any():
            continue
        # lens: inverted, shrunk view of the blurred background around the centre
        sy, sx = cy - (yy - cy) * mag, cx - (xx - cx) * mag
        inner = np.stack([ndimage.map_coordinates(blurred[..., c], [sy, sx], order=1, mode="reflect")
                          for c in range(3)], -1)
        inner = inner + bright
        rim = 1.0 - 0.3 * np.exp(-(((rho - 0.85) / 0.12) ** 2))
        hl = 0.35 * np.exp(-(((dx + 0.35) ** 2 + (dy + 0.4) ** 2) / (2 * 0.12 ** 2)))
        inner = inner * rim[..., None] + hl[..., None]
        a = alpha[..., None]
        out[y0:y1, x0:x1] = out[y0:y1, x0:x1] * (1 - a) + inner * a
    return out


def _inside_fraction(cy, cx, ry, rx, h, w):
    oy = max(0.0, min(h, cy + ry) - max(0.0, cy - ry)) / (2 * ry)
    ox = max(0.0, min(w, cx + rx) - max(0.0, cx - rx)) / (2 * rx)
    return oy * ox


_APPLY = {
    "noise": _noise,
    "blur": _blur,
    "rain": _rain,
    "underexposure": _underexposure,
    "haze": _haze,
    "low resolution": _low_resolution,
    "raindrop": _raindrop,
    "no": lambda x, p, rng: x.copy(),
}


def apply(img, kind: str, params: dict):
    """Applies `kind` with fixed `params` (deterministic); output clipped to [0, 1]."""
    if kind not in _APPLY:
        raise ValueError(f"unknown degradation {kind!r}; expected one of {CATEGORIES}")
    x, restore = _to_numpy(img)
    rng = np.random.default_rng(params.get("seed", 0))
    out = np.clip(_APPLY[kind](x, params, rng), 0.0, 1.0)
    return restore(out)


def degrade(img, kind: str, rng: np.random.Generator | None = None, seed: int | None = None, **overrides):
    """Samples parameters (from `rng`, or a Generator seeded with `seed`), applies `overrides`
    on top, and returns (degraded image, params)."""
    if rng is None:
        rng = np.random.default_rng(seed)
    params = sample_params(kind, rng)
    params.update(overrides)
    return apply(img, kind, params), params


def random_degrade(img, rng: np.random.Generator, kinds=CATEGORIES):
    """Picks a category uniformly from `kinds`; returns (image, kind, params)."""
    kind = kinds[int(rng.integers(0, len(kinds)))]
    out, params = degrade(img, kind, rng)
    return out, kind, params


# ----------------------------------------------------------------------------------------------
# contact sheet


def contact_sheet(path: str = "/tmp/degradations_sheet.png", seed: int = 0, cache: str | None = None) -> str:
    """One validation patch under every degradation: a 256-px row and a 64-px (training-size,
    shown x4 nearest) row, each with 3 random draws per category."""
    from PIL import ImageDraw

    from training.data import PatchSampler, PhotoSet

    ds = PhotoSet("val", cache, log=lambda *a: print(*a, file=sys.stderr))
    rng = np.random.default_rng(seed)
    rows = []
    for size, scale, zoom in ((256, 1.0, 1), (64, 2.0, 4)):
        sampler = PatchSampler(ds.images, patch=size, min_scale=scale, max_scale=scale, augment=False)
        for draw in range(2):
            clean = sampler.sample(rng)
            row = []
            for kind in CATEGORIES:
                out, _ = degrade(clean, kind, rng)
                im = Image.fromarray((np.clip(out, 0, 1) * 255 + 0.5).astype(np.uint8))
                if zoom != 1:
                    im = im.resize((size * zoom, size * zoom), Image.NEAREST)
                row.append(im)
            rows.append(row)
    cell = 256
    lab = 14
    sheet = Image.new("RGB", (cell * len(CATEGORIES), (cell + lab) * len(rows)), (40, 40, 40))
    d = ImageDraw.Draw(sheet)
    for r, row in enumerate(rows):
        for c, im in enumerate(row):
            sheet.paste(im, (c * cell, r * (cell + lab) + lab))
            d.text((c * cell + 4, r * (cell + lab) + 1), CATEGORIES[c], fill=(255, 255, 0))
    sheet.save(path)
    return path


if __name__ == "__main__":
    print(contact_sheet(*(sys.argv[1:2] or [])))
