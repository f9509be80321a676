"""How far apart "blur" and "low resolution" are: the BIQA's largest confusion, measured on the degradations.

For the BIQA card's validation crops (training/evaluate.py's biqa_eval: 224x224, seed 2468, the texture rule)
of "low resolution" and of Gaussian "blur", this finds, on the same clean crop, the nearest image that the
OTHER category can produce, and prints how close it is:

  low resolution (factor f)  ->  the isotropic Gaussian blur (sigma in the blur range 0.8-3.0 px) nearest
                                 to it: an image the blur category produces as well
  Gaussian blur (sx, sy)     ->  the low-resolution factor (2-4) nearest to it

Distances are PSNR (dB, 8-bit) between the two degraded images; "input" is the degradation itself (the
degraded image against the clean crop). When the two categories' images are much closer to each other
than to the clean crop, a classifier that sees only the degraded image has little left to tell them apart
by, however it is trained. With --model, the BIQA's reading of each crop is printed beside it.

Usage (repository root):  /work/venv/bin/python -m training.overlap [--model models/autodir-tiny]
"""

from __future__ import annotations

import argparse
import math

import numpy as np
from scipy import ndimage

from training import degradations
from training.data import PatchSampler, PhotoSet, default_cache
from training.degradations import CATEGORIES


def to8(x01: np.ndarray) -> np.ndarray:
    return (np.clip(x01, 0, 1) * 255 + 0.5).astype(np.uint8)


def psnr8(a8: np.ndarray, b8: np.ndarray) -> float:
    mse = np.mean((a8.astype(np.float64) - b8.astype(np.float64)) ** 2)
    return float(10 * math.log10(255.0 ** 2 / max(mse, 1e-12)))


def isotropic_blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """degradations' Gaussian blur with sigma_x = sigma_y (its 2-D kernel is the outer product of this
    normalised 1-D kernel of the same radius, ceil(3 sigma)), reflect padding."""
    r = int(math.ceil(3 * sigma))
    t = np.arange(-r, r + 1, dtype=np.float64)
    k = np.exp(-0.5 * (t / sigma) ** 2)
    k /= k.sum()
    y = ndimage.convolve1d(x, k, axis=0, mode="reflect")
    return ndimage.convolve1d(y, k, axis=1, mode="reflect")


def nearest(target8: np.ndarray, render, grid) -> tuple[float, float]:
    """(best PSNR, parameter) of render(p) against target8 over the parameter grid."""
    best = (-1.0, float("nan"))
    for p in grid:
        s = psnr8(to8(render(p)), target8)
        if s > best[0]:
            best = (s, float(p))
    return best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=default_cache())
    ap.add_argument("--per-class", type=int, default=50)
    ap.add_argument("--seed", type=int, default=2468, help="the BIQA card's crops (evaluate.biqa_eval)")
    ap.add_argument("--model", default=None, help="an exported folder: also print its BIQA's readings")
    a = ap.parse_args(argv)

    ds = PhotoSet("val", a.cache, log=lambda *x: None)
    sampler = PatchSampler(ds.images, patch=224, min_scale=1.0, max_scale=3.0, augment=False)
    sigmas = np.arange(0.8, 3.0001, 0.02)
    factors = np.arange(2.0, 4.0001, 0.02)
    rows = []  # (kind, params text, input PSNR, nearest-other PSNR, nearest parameter, degraded8)
    for kind in ("low resolution", "blur"):
        k = CATEGORIES.index(kind)
        for i in range(a.per_class):
            rng = np.random.default_rng([a.seed, k, i])
            clean = sampler.sample(rng, min_texture=degradations.min_texture(kind))
            deg, p = degradations.degrade(clean, kind, rng)
            deg8, clean8 = to8(deg), to8(clean)
            x = np.asarray(clean, dtype=np.float64)
            if kind == "low resolution":
                what = f"f {p['factor']:.2f}"
                best, arg = nearest(deg8, lambda s: isotropic_blur(x, s), sigmas)
            elif p["type"] == "gaussian":
                what = f"sx {p['sigma_x']:.2f} sy {p['sigma_y']:.2f}"
                best, arg = nearest(deg8, lambda f: degradations.apply(x, "low resolution", {"factor": f}), factors)
            else:
                continue  # motion blur: a line kernel, no low-resolution look-alike
            rows.append((kind, what, psnr8(deg8, clean8), best, arg, deg8))

    reading = [""] * len(rows)
    if a.model:
        import torch

        from training.evaluate import load_reference
        from training.train_autodir_tiny import biqa_contexts, u8_to_pm1

        ref = load_reference(a.model)
        with torch.no_grad():
            p, _ = biqa_contexts(ref, u8_to_pm1(np.stack([r[5] for r in rows])))
        reading = [CATEGORIES[int(j)] for j in p.argmax(1)]

    for kind, other in (("low resolution", "blur sigma"), ("blur", "low-res factor")):
        sel = [(r, reading[j]) for j, r in enumerate(rows) if r[0] == kind]
        gaps = np.array([r[3] - r[2] for r, _ in sel])
        near = np.array([r[3] for r, _ in sel])
        print(f"\n{kind} ({len(sel)} crops{'; Gaussian ones only' if kind == 'blur' else ''}): "
              f"nearest {other} on the same clean crop")
        print(f"  {'params':22s} {'input dB':>9s} {'nearest dB':>11s} {'at':>6s}  biqa")
        for (r, rd) in sel:
            print(f"  {r[1]:22s} {r[2]:9.2f} {r[3]:11.2f} {r[4]:6.2f}  {rd}")
        print(f"  median: input {np.median([r[2] for r, _ in sel]):.2f} dB, nearest {np.median(near):.2f} dB; "
              f"nearest closer than the degradation itself by >= 10 dB: {int((gaps >= 10).sum())}/{len(sel)}; "
              f"nearest >= 40 dB: {int((near >= 40).sum())}/{len(sel)}")
        if a.model:
            right = [rd == kind for _, rd in sel]
            for lo, hi in ((0, 35), (35, 40), (40, 99)):
                m = [(n >= lo) and (n < hi) for n in near]
                if any(m):
                    ok = sum(1 for mm, rr in zip(m, right) if mm and rr)
                    print(f"  BIQA right where nearest in [{lo}, {hi}) dB: {ok}/{sum(m)}")


if __name__ == "__main__":
    main()
