"""Where the PSNR goes: each stage of an exported AutoDIR folder scored on its own (fifth run).

evaluate.py scores the automatic pipeline as a whole; this script takes it apart on the same held-out
validation images (evaluate's 6 x 256x256 per degradation, same seed) and prints, per degradation, the
mean PSNR (dB, 8-bit, against the clean image) of:

  input        the degraded image
  vae(clean)   D(E(clean)): the best any AIR output can be -- the latent round trip's own loss
  vae(input)   D(E(degraded)): what AIR gets if it just copies its image latent
  x0@smax      AIR's one-step denoised estimate from pure noise at sigma_max (the sampler's first step),
               decoded; conditioned on the TRUE category's prompt
  air          x_air: one AIR pass (model default steps, Euler ancestral, seed 0) under the TRUE prompt
  scm          x_scm = SCM([input, x_air]) of that pass (one pass, true prompt: no BIQA error involved)
  biqa-right   how many of the images the BIQA's first detection gets right

AUTODIR.md section 1: for "low resolution" the next input (and so the output) is x_air, never x_scm, so
the low-resolution result is bounded by vae(clean).

Usage (repository root):  /work/venv/bin/python -m training.diagnose [--model models/autodir-tiny]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from training.evaluate import DEGS, load_reference, psnr8, to8
from training.data import default_cache
from training.train_autodir_tiny import CATEGORIES, Ctx, u8_to_pm1, val_pairs

COLUMNS = ["input", "vae(clean)", "vae(input)", "x0@smax", "air", "scm"]


def pm1_psnr(x: torch.Tensor, clean8: np.ndarray) -> float:
    """PSNR of a [1, 3, H, W] image in [-1, 1] against a uint8 H x W x 3 clean image."""
    return psnr8(to8((x[0].permute(1, 2, 0).float().numpy() + 1) / 2), clean8)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="models/autodir-tiny")
    ap.add_argument("--cache", default=default_cache())
    ap.add_argument("--per-class", type=int, default=6)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--split", default="val", choices=["val", "train"],
                    help="train: the same measurement on crops of the TRAINING pictures (how much the stages "
                         "lose from the pictures they were trained on to held-out ones)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)

    class _A:
        cache = a.cache
        seed = 0
        minutes_per_stage = None

    ref = load_reference(a.model)
    clean, deg, lab = val_pairs(Ctx(_A), n_per=a.per_class, size=a.size, seed=97531, texture=True,
                                split=a.split)
    steps = ref.defaults["steps"]
    smax = ref.model_wrap.get_sigmas(steps)[:1].to(ref.dtype)
    rows = {c: {k: [] for k in COLUMNS + ["biqa-right"]} for c in DEGS}
    with torch.no_grad():
        for i in range(len(lab)):
            kind = CATEGORIES[lab[i]]
            if kind == "no":
                continue
            c8, d8 = clean[i], deg[i]
            xc, x = u8_to_pm1(c8[None]).to(ref.dtype), u8_to_pm1(d8[None]).to(ref.dtype)
            z_clean = ref.vae.encode(xc).latent_dist.mode()
            z_img = ref.vae.encode(x).latent_dist.mode()
            context = ref.text_context(ref.template.format(kind))
            cond = {"c_crossattn": [context], "c_concat": [z_img]}
            g = torch.Generator().manual_seed(i)
            noise = torch.randn(z_img.shape, generator=g).to(ref.dtype) * smax
            x0 = ref.model_wrap(noise, smax, cond=cond)                       # [1, 4, h/8, w/8]
            air, scm = ref.restore_pass(x, context, steps, 0, 1.0, 1.0)
            _, detected, _ = ref.detect(x)
            r = rows[kind]
            r["input"].append(psnr8(d8, c8))
            r["vae(clean)"].append(pm1_psnr(ref.vae.decode(z_clean).sample, c8))
            r["vae(input)"].append(pm1_psnr(ref.vae.decode(z_img).sample, c8))
            r["x0@smax"].append(pm1_psnr(ref.vae.decode(x0 / ref.scale_factor).sample, c8))
            r["air"].append(pm1_psnr(air, c8))
            r["scm"].append(pm1_psnr(scm, c8))
            r["biqa-right"].append(detected == kind)

    print(f"per-stage PSNR (dB), {a.per_class} {'validation' if a.split == 'val' else 'TRAINING-picture'} images of {a.size}x{a.size} per degradation, "
          f"one pass under the true prompt, {steps} steps:")
    print(f"{'degradation':15s}" + "".join(f"{c:>12s}" for c in COLUMNS) + "  biqa-right")
    for c in DEGS:
        r = rows[c]
        print(f"{c:15s}" + "".join(f"{np.mean(r[k]):12.2f}" for k in COLUMNS) +
              f"  {sum(r['biqa-right'])}/{len(r['biqa-right'])}")
    print(f"{'mean':15s}" + "".join(f"{np.mean([np.mean(rows[c][k]) for c in DEGS]):12.2f}" for k in COLUMNS))


if __name__ == "__main__":
    main()
