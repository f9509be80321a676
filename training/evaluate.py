"""Evaluates an exported AutoDIR model folder (models/autodir-tiny) on the held-out validation split.

It runs the folder through the AutoDIR algorithm in PyTorch -- tools/reference/autodir_pipeline.py
(`AutoDIRReference.from_folder`: BIQA -> AIR -> SCM, automatic multi-pass, exactly the engine's
algorithm), in float32 -- and prints, per degradation, PSNR / SSIM (8-bit outputs, [0, 1] data range,
SSIM over the 3 channels) of:

  input       the degraded image
  classical   noise: non-local means (skimage denoise_nl_means, fast mode, patch 5, distance 6,
              h = 0.8 sigma, sigma = Donoho's Haar-wavelet MAD estimate); blur and low resolution: unsharp masking
              (img + 1.0 * (img - Gaussian(img, sigma 2))); rain and raindrop: 5x5 median per channel;
              underexposure: gamma so that the mean becomes 0.45; haze: dark-channel prior (He et al.:
              15x15 dark channel, airlight from the brightest 0.1 % of the dark channel, omega 0.95,
              transmission refined with a guided filter r 20 / eps 1e-3 on the grey image, t >= 0.1)
  scm-alone   the model's SCM on [input, input] (no diffusion: the ablation)
  pipeline    the full automatic AutoDIR pipeline (model defaults: steps, cfg 1/1, max passes 7; seed 0)
  engine      (with --engine PATH) `PATH restore IN -o OUT --model DIR` of the Swift engine

and the BIQA confusion matrix + top-1 accuracy over the 8 categories (first-pass detection on
--biqa-per-class 224x224 validation crops per category, as the engine scores them: centre 224 crop,
CLIP mean/std). It also times one automatic restoration of a 512x512 validation image.

Validation images: training/train_autodir_tiny.val_pairs on the VALIDATION split of training/data.py
(fixed seeds; --per-class images per degradation, --size px, multi-scale region 1-3x; blur, low resolution
and raindrop on crops that pass the texture rule of training/degradations.py, unless --no-texture).

Usage (repository root):
    /work/venv/bin/python -m training.evaluate [--model models/autodir-tiny] [--per-class 6]
        [--engine .build/release/autodir] [--write-card]
`--write-card` writes the results into <model>/evaluation.json and regenerates <model>/MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(REPO, "tools") not in sys.path:
    sys.path.insert(0, os.path.join(REPO, "tools"))

from training.data import default_cache  # noqa: E402
from training.train_autodir_tiny import (CATEGORIES, Ctx, biqa_contexts, u8_to_pm1,  # noqa: E402
                                         val_pairs)

DEGS = [c for c in CATEGORIES if c != "no"]
METHODS = ["input", "classical", "scm-alone", "pipeline"]


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True, file=sys.stderr)


# ----------------------------------------------------------------------------------------------
# classical baselines (float H x W x 3 in [0, 1])


def box(x, r):
    return ndimage.uniform_filter(x, size=2 * r + 1, mode="reflect")


def guided_filter(guide, src, r, eps):
    mi, ms = box(guide, r), box(src, r)
    cov = box(guide * src, r) - mi * ms
    var = box(guide * guide, r) - mi * mi
    a = cov / (var + eps)
    b = ms - a * mi
    return box(a, r) * guide + box(b, r)


def dark_channel_prior(img, patch=15, omega=0.95, t0=0.1, r=20, eps=1e-3):
    dark = ndimage.minimum_filter(img.min(axis=2), size=patch, mode="nearest")
    n = max(1, int(dark.size * 0.001))
    idx = np.argsort(dark.ravel())[-n:]
    a = img.reshape(-1, 3)[idx].mean(0)
    a = np.maximum(a, 1e-3)
    t = 1 - omega * ndimage.minimum_filter((img / a).min(axis=2), size=patch, mode="nearest")
    grey = img @ np.array([0.299, 0.587, 0.114])
    t = np.clip(guided_filter(grey, t, r, eps), t0, 1)
    return (img - a) / t[..., None] + a


def estimate_sigma(img):
    """Donoho's wavelet estimator (what skimage.restoration.estimate_sigma computes; PyWavelets is not
    installed): median(|HH|) / 0.6745 of the finest orthonormal Haar diagonal detail, averaged over
    the channels."""
    h, w = img.shape[0] // 2 * 2, img.shape[1] // 2 * 2
    x = img[:h, :w]
    hh = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2
    return float(np.mean([np.median(np.abs(hh[..., c])) / 0.6745 for c in range(img.shape[2])]))


def classical(img, kind):
    from skimage.restoration import denoise_nl_means

    if kind == "noise":
        sigma = estimate_sigma(img)
        return denoise_nl_means(img, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5,
                                patch_distance=6, channel_axis=-1)
    if kind in ("blur", "low resolution"):
        # unsharp masking: img + amount * (img - gaussian(img, radius)), per channel (skimage 0.26's
        # unsharp_mask shifted float images' mean here, so it is written out)
        return np.clip(img + 1.0 * (img - ndimage.gaussian_filter(img, sigma=(2, 2, 0), mode="reflect")), 0, 1)
    if kind in ("rain", "raindrop"):
        return ndimage.median_filter(img, size=(5, 5, 1), mode="reflect")
    if kind == "underexposure":
        m = float(np.clip(img.mean(), 1e-4, 0.999))
        return np.clip(img, 0, 1) ** (np.log(0.45) / np.log(m))
    if kind == "haze":
        return dark_channel_prior(img)
    return img


# ----------------------------------------------------------------------------------------------
# metrics


def to8(x01):
    return (np.clip(x01, 0, 1) * 255 + 0.5).astype(np.uint8)


def psnr8(a8, b8):
    mse = np.mean((a8.astype(np.float64) - b8.astype(np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-10))


def ssim8(a8, b8):
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a8, b8, channel_axis=-1, data_range=255))


# ----------------------------------------------------------------------------------------------


def load_reference(model_dir):
    from reference.autodir_pipeline import AutoDIRReference

    ref = AutoDIRReference.from_folder(model_dir, torch.float32)
    orig = ref.model_wrap.get_sigmas
    # k-diffusion's sigmas are float64 (from float64 alphas_cumprod); in a float32 run they would promote
    # the latent to float64 inside the sampler: same values, cast to float32.
    ref.model_wrap.get_sigmas = lambda n: orig(n).to(torch.float32)
    return ref


@torch.no_grad()
def biqa_eval(ref, per_class, seed=2468, texture=True):
    clean, deg, lab = val_pairs(_ctx(), n_per=per_class, size=224, seed=seed, texture=texture)
    preds = []
    for i in range(0, len(deg), 32):
        p, _ = biqa_contexts(ref, u8_to_pm1(deg[i:i + 32]))
        preds.append(p.argmax(1))
    pred = torch.cat(preds).numpy()
    k = len(CATEGORIES)
    conf = np.zeros((k, k), int)
    for t, p in zip(lab, pred):
        conf[t, p] += 1
    return conf, float((pred == lab).mean())


_CTX = None


def _ctx():
    return _CTX


def run_engine(engine, model_dir, deg8_list, extra):
    outs = []
    with tempfile.TemporaryDirectory() as td:
        for i, d in enumerate(deg8_list):
            src, dst = os.path.join(td, f"in{i}.png"), os.path.join(td, f"out{i}.png")
            Image.fromarray(d).save(src)
            cmd = [engine, "restore", src, "-o", dst, "--model", model_dir] + extra
            t0 = time.time()
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode != 0:
                raise SystemExit(f"engine failed ({' '.join(cmd)}): {r.stderr[-2000:]}")
            outs.append((np.asarray(Image.open(dst).convert("RGB")), time.time() - t0))
    return outs


def main(argv=None):
    global _CTX
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=os.path.join(REPO, "models", "autodir-tiny"))
    ap.add_argument("--cache", default=default_cache())
    ap.add_argument("--per-class", type=int, default=6)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--biqa-per-class", type=int, default=50)
    ap.add_argument("--steps", type=int, default=None, help="default: the model's")
    ap.add_argument("--max-passes", type=int, default=None, help="default: the model's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--engine", default=None, help="path of the autodir CLI to score too")
    ap.add_argument("--engine-args", default="", help="extra arguments for `autodir restore`")
    ap.add_argument("--no-timing", action="store_true")
    ap.add_argument("--no-texture", action="store_true",
                    help="validation crops without the crop-level texture rule (the first two runs' crops)")
    ap.add_argument("--write-card", action="store_true")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    class _A:
        cache = a.cache
        seed = 0
        minutes_per_stage = None
    _CTX = Ctx(_A)

    ref = load_reference(a.model)
    t0 = time.time()
    conf, top1 = biqa_eval(ref, a.biqa_per_class, texture=not a.no_texture)
    log(f"BIQA top-1 {top1:.4f} ({time.time() - t0:.0f} s)")

    clean, deg, lab = val_pairs(_CTX, n_per=a.per_class, size=a.size, seed=97531, texture=not a.no_texture)
    methods = METHODS + (["engine"] if a.engine else [])
    res = {m: {c: {"psnr": [], "ssim": []} for c in DEGS} for m in methods}
    passes_log = {c: [] for c in DEGS}
    eng = None
    if a.engine:
        sel = [i for i in range(len(lab)) if CATEGORIES[lab[i]] != "no"]
        eng = dict(zip(sel, run_engine(a.engine, a.model, [deg[i] for i in sel], a.engine_args.split())))
    pipe_seconds = []
    for i in range(len(lab)):
        kind = CATEGORIES[lab[i]]
        if kind == "no":
            continue
        c8, d8 = clean[i], deg[i]
        d01 = d8.astype(np.float64) / 255.0
        outs = {"input": d8, "classical": to8(classical(d01, kind))}
        x = u8_to_pm1(d8[None])
        with torch.no_grad():
            s = ref.scm(torch.cat([x, x], 1))
        outs["scm-alone"] = to8(((s[0].permute(1, 2, 0).numpy()) + 1) / 2)
        t1 = time.time()
        r = ref.restore(torch.from_numpy(d01).permute(2, 0, 1)[None].float(), steps=a.steps, seed=a.seed,
                        max_passes=a.max_passes)
        pipe_seconds.append(time.time() - t1)
        outs["pipeline"] = to8(r["image"][0].permute(1, 2, 0).numpy())
        passes_log[kind].append([p["artifact"] for p in r["passes"]])
        if eng is not None:
            outs["engine"] = eng[i][0]
        for m in methods:
            res[m][kind]["psnr"].append(psnr8(outs[m], c8))
            res[m][kind]["ssim"].append(ssim8(outs[m], c8))
        log(f"{kind:15s} #{i}: " + "  ".join(f"{m} {res[m][kind]['psnr'][-1]:.2f}" for m in methods) +
            f"   passes {passes_log[kind][-1]} ({pipe_seconds[-1]:.1f} s)")

    table = {m: {c: {"psnr": float(np.mean(v["psnr"])), "ssim": float(np.mean(v["ssim"]))}
                 for c, v in res[m].items()} for m in methods}
    timing = None
    if not a.no_timing:
        c5, d5, _ = val_pairs(_CTX, n_per=1, size=512, seed=1357)
        k = CATEGORIES.index("noise")
        img = torch.from_numpy(d5[k].astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        t1 = time.time()
        r = ref.restore(img, seed=0, max_passes=1)
        one = time.time() - t1
        t1 = time.time()
        r = ref.restore(img, seed=0)
        auto = time.time() - t1
        timing = {"size": 512, "one_pass_s": one, "automatic_s": auto, "automatic_passes": len(r["passes"]),
                  "threads": a.threads}
        log(f"512x512 (noise): one pass {one:.2f} s, automatic {auto:.2f} s ({len(r['passes'])} passes), "
            f"{a.threads} thread(s)")

    # ---- print
    print(f"\nBIQA top-1 accuracy: {top1 * 100:.2f} % ({a.biqa_per_class} x 8 validation crops, 224x224)")
    print("confusion (rows: true, columns: predicted):")
    short = [c[:6] for c in CATEGORIES]
    print(f"{'':15s}" + "".join(f"{s:>7s}" for s in short))
    for k, c in enumerate(CATEGORIES):
        print(f"{c:15s}" + "".join(f"{v:7d}" for v in conf[k]))
    print(f"\nPSNR (dB) / SSIM, {a.per_class} validation images per degradation, {a.size}x{a.size}:")
    print(f"{'degradation':15s}" + "".join(f"{m:>18s}" for m in methods) + "   gain vs best(input, classical)")
    for c in DEGS:
        best = max(table["input"][c]["psnr"], table["classical"][c]["psnr"])
        print(f"{c:15s}" + "".join(f"{table[m][c]['psnr']:9.2f} / {table[m][c]['ssim']:.3f}" for m in methods) +
              f"   {table['pipeline'][c]['psnr'] - best:+.2f}")
    print(f"{'mean':15s}" + "".join(f"{np.mean([table[m][c]['psnr'] for c in DEGS]):9.2f} / "
                                    f"{np.mean([table[m][c]['ssim'] for c in DEGS]):.3f}" for m in methods))
    print(f"\npipeline: mean {np.mean(pipe_seconds):.2f} s per {a.size}x{a.size} image; passes: " +
          "; ".join(f"{c}: {passes_log[c][:3]}" for c in DEGS))

    result = {"biqa_top1": top1, "confusion": conf.tolist(), "categories": CATEGORIES,
              "biqa_per_class": a.biqa_per_class, "per_class": a.per_class, "size": a.size,
              "table": table, "passes": passes_log, "pipeline_seconds_mean": float(np.mean(pipe_seconds)),
              "timing_512": timing, "steps": a.steps or ref.defaults["steps"],
              "max_passes": a.max_passes or ref.defaults["max_passes"], "threads": a.threads,
              "texture_rule": not a.no_texture}
    if a.write_card:
        with open(os.path.join(a.model, "evaluation.json"), "w") as f:
            json.dump(result, f, indent=1)
            f.write("\n")
        from training.model_card import write_card
        write_card(a.model, result)
        log(f"wrote {os.path.join(a.model, 'MODEL_CARD.md')}")
    return result


if __name__ == "__main__":
    main()
