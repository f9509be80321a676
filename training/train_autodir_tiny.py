"""Trains autodir-tiny (issue 5): a small AutoDIR (BIQA + VAE + AIR + SCM, AUTODIR.md) on this machine's
CPU, and exports it to models/autodir-tiny in the model-folder format of ARCHITECTURE.md section 3
(exactly the export code/format of tools/fixtures/make_pipeline_fixture.py).

Stages (each resumable; per-stage checkpoints in <cache>/autodir-tiny/, default
~/.cache/autodir-train/autodir-tiny/):

  pool     A fixed pool of (clean, degraded, label) 224x224 uint8 pairs from the TRAINING split
           (training/data.py multi-scale sampler, region 224-672 px; training/degradations.py, category
           i % 8 for pair i, rng seeded with (seed, 7777, i)). Shared by every later stage.
  vae      diffusers AutoencoderKL, KL-f8, 4 latent channels, block_out (16, 32, 64, 64),
           layers_per_block 1, 8 norm groups, mid-block attention. Random 64x64 crops of clean and
           degraded pool images (flips). Loss: L1 + 0.5 * L1 of the image gradients (finite
           differences) + 1e-5 * KL (mean per latent element). At the end the latent space is
           re-parametrised EXACTLY (quant_conv mean rows * c, logvar bias + 2 log c,
           post_quant_conv weight / c) so that 0.18215 * latent has unit standard deviation on the
           pool: the AutoDIR scale factor 0.18215 is then the right one for this VAE.
  biqa     transformers CLIPModel: text 2 layers, hidden 64, 2 heads, the real 49408 vocab, 77
           positions; vision ViT image 224, patch 32 (49 tokens + class), hidden 128, 4 layers,
           4 heads; projection 64; quick_gelu, eps 1e-5. Input exactly as the engine's BIQA: the 224
           crop at native resolution, /255, CLIP mean/std. AutoDIR's losses: cross-entropy of the
           image-text logits (logit_scale * cos) over the 8 prompts "A photo needs {c} artifact
           reduction" against the true category, plus the ranking term: the CLEAN version of a
           degraded image must score lower on that degradation's prompt than the degraded one
           (hinge, margin 0.2 in cosine). AutoDIR freezes its (pretrained) text encoder; we have no
           pretrained CLIP, so the text tower is trained too (it only ever has to separate 8 prompts).
  air      diffusers UNet2DConditionModel, in 8 / out 4, block_out (32, 64, 64), layers_per_block 1, 16 norm
           groups, CrossAttn at the two LOWER-resolution levels (none at full latent resolution:
           5x faster at 512x512 than SD's layout), 4 heads, cross_attention_dim 64 (the CLIP text hidden
           size). epsilon-prediction on the AutoDIR schedule (1000 steps, scaled_linear
           0.00085-0.012), integer t ~ U{0..999}: input cat[z_t, z_img] with
           z_t = sqrt(abar) z0 + sqrt(1 - abar) eps, z0 = 0.18215 * mode(E(clean)),
           z_img = mode(E(degraded)) (NOT scaled), context = last_hidden_state (attention mask) of the
           TRUE category's prompt from the trained CLIP text tower. Conditioning drops for CFG: 5 %
           null text (last_hidden_state of "" from input_ids only, as the engine's null context), 5 %
           zero image latent, 5 % both. 25 % of the samples are "zero-signal" t = 999 samples (pure
           noise input, target eps - z0 sqrt(abar)/sqrt(1-abar), loss weighted by sigma_999^2): the
           sampler starts from pure noise, and without them a short-trained model reads the 6.8 %
           of clean signal left in z_999 instead of z_img. Latents of the pool are cached; random 16x16 latent crops
           (128 px), flips.
  biqapool (third run) the BIQA's own pool: --biqa-pool-size (12000) pairs from all training pictures
           (including data.EXTRA_TRAIN), regions 224-896 px, and the crop-level texture rule of
           training/degradations.py for blur, low resolution and raindrop (see stage_biqapool).
  biqavis  continues biqa with the text tower FROZEN (vision tower, projections and logit scale only):
           AIR's context is the text tower's last_hidden_state, so once AIR has started from it the text
           tower must not move; this lets BIQA keep training side by side with AIR. With --biqavis-reinit 1
           (default) the vision tower starts afresh, patch --biqavis-patch (16; the first two runs: 32)
           with a DCT patch embedding; it trains on the biqapool (--biqa-pool-size 0: the shared pool).
           --biqavis-restored-frac F replaces a fraction F of its "no" examples by restored pool images
           (restored_pool: needs airsamples and scm; the third run resumed biqavis with F = 0.3 for its
           second half). Downstream stages (airsamples, export) use the latest BIQA phase that has finished
           and validates at least as well as biqa (--biqa-final overrides).
  scmpre   NAFNet (tools/reference/nafnet.py) img_channel 6, width 16, enc [1,1,1,1], middle 1,
           dec [1,1,1,1], in [-1, 1]: input cat[degraded, degraded] -> clean, L1 (the "SCM alone"
           pre-training; runs after biqavis, side by side with `air`, under --jobs 2). Optional: without
           it the scm stage starts from scratch.
  airsamples  AIR outputs for the SCM: pool pairs (every category but "no", a fixed subset) are run
           through BIQA (context = sum p_i T_i, as the pipeline's first pass) and AIR (k-diffusion
           Euler ancestral, --air-sample-steps steps, seed = pair index) at 224x224 and decoded;
           cached (invalidated when the VAE, BIQA or AIR checkpoint changes).
  scm      continues scmpre (if any): input cat[degraded, x_air] -> clean, or cat[degraded, degraded]
           (--scm-self-frac, keeps the "SCM alone" ablation meaningful), or cat[clean, clean] -> clean
           (--scm-clean-frac: nothing to correct, the SCM must leave the image alone), L1, random 64x64
           crops. (The first two runs: 75 % / 25 % / 0 %; the third run continued with 50 / 30 / 20 %.)
  biqano   continues biqavis with --biqano-frac of the "no" examples replaced by restored pool images
           (the pipeline's output after one pass: the loop should stop on them). 0 minutes by default.
  airpool  (fourth run) --air-pool-size fresh pairs from all training pictures with their AIR outputs
           (BIQA context) and, for every third, an AIR output under a wrong context; the scm stage adds
           them to its data with --scm-airpool 1 (see stage_airpool: the SCM had seen only the 700
           airsamples pictures and re-toned dark or pale held-out pictures as a whole). Skipped without
           --scm-airpool 1.
  biqastream (fourth run) continues a finished BIQA phase (--biqastream-from, default biqano), text tower
           frozen, on pairs made on the fly from all training pictures (no pair seen twice: the pooled
           towers had fitted their pools and stalled on validation), with --biqano-frac of the "no"
           examples restored images as in biqano. Skipped at 0 minutes (the default).
  biqatone (fifth run) continues biqastream's final tower the same way, with the clean crop of noise, blur,
           rain, low resolution and raindrop pairs given a global_tone (dark, pale or jitter) with probability
           --biqa-tone and other clean crops a photometric_jitter with probability --biqa-jitter (fresh_pair).
           Skipped at 0 minutes (the default).
  export   models/autodir-tiny (F16 tensors), model_index.json, MODEL_CARD.md skeleton (the validation
           table is filled by `python -m training.evaluate --write-card`).
  import   (only when named in --stages; runs first, in one process) seeds the checkpoints of vae, biqa,
           air, scm and the shipped BIQA phase from an exported folder (--import-from, default
           models/autodir-tiny), for a machine without the training cache (stage_import); the stages after
           it continue the shipped model.

AIR option (fifth run): --air-identity-frac F makes a fraction F of AIR's samples "identity" examples: the
prompt of an artifact the image does not have (never "no") and the image's own latent as the target, no
conditioning drop. A wrong BIQA pass (haze or underexposure on a blurred picture) cost up to 25 dB: AIR,
having only ever seen the true prompt, removed "haze" from pictures that had none.

Budgets: `--minutes-per-stage` is either one number for every training stage or
"vae=40,biqa=25,air=70,biqavis=35,scmpre=30,scm=30" (the defaults: with --jobs 2 about 2 h 50 min in all,
caches included). A stage stops when its trained wall-clock time (summed across
resumptions) reaches its budget; learning rates follow a cosine over the budget. Re-running with a larger
budget continues the stage (the cosine restarts from the new position: a warm restart); downstream
stages then continue from their own checkpoints, and the caches that depend on an upstream checkpoint
are rebuilt. `--redo STAGE[,STAGE]` discards those stages' checkpoints first.

Determinism: every batch is a function of (seed, stage, step) only; torch is seeded per stage; one
thread per process by default.

Usage (repository root):
    nohup /work/venv/bin/python -m training.train_autodir_tiny --jobs 2 > /tmp/autodir_tiny.log 2>&1 &
          # --jobs 2: vae || biqa, then air || (biqapool, biqavis, scmpre), then airsamples, airpool, scm, biqano, biqastream, export
    /work/venv/bin/python -m training.train_autodir_tiny                   # everything in one process
    /work/venv/bin/python -m training.train_autodir_tiny --stages biqa --minutes-per-stage biqa=30
    /work/venv/bin/python -m training.train_autodir_tiny --stages export
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.join(REPO, "tools") not in sys.path:
    sys.path.insert(0, os.path.join(REPO, "tools"))

from training import degradations  # noqa: E402
from training.data import PatchSampler, PhotoSet, default_cache  # noqa: E402

CATEGORIES = list(degradations.CATEGORIES)
TEMPLATE = "A photo needs {} artifact reduction"
PROMPTS = [TEMPLATE.format(c) for c in CATEGORIES]
SCALE = 0.18215
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
TOKENIZER_DIR = os.path.join(REPO, "Tests", "EngineTests", "Fixtures", "tokenizer")

STAGES = ["pool", "vae", "biqa", "air", "biqapool", "biqavis", "scmpre", "airsamples", "airwrong", "airpool", "scm",
          "biqano", "biqastream", "biqatone", "export"]
# run only when named in --stages (never part of the default pipeline)
EXTRA_STAGES = ["import"]
# torch seeds are derived from this order (the first two runs' stages keep their seeds)
SEED_ORDER = ["pool", "vae", "biqa", "air", "biqavis", "scmpre", "airsamples", "scm", "export", "biqapool", "biqano",
              "airwrong", "airpool", "biqastream", "biqatone", "import"]
TRAINED = ["vae", "biqa", "air", "biqavis", "scmpre", "scm", "biqano", "biqastream", "biqatone"]
DEFAULT_MINUTES = {"vae": 40.0, "biqa": 25.0, "air": 70.0, "biqavis": 35.0, "scmpre": 30.0, "scm": 30.0,
                   "biqano": 0.0, "biqastream": 0.0, "biqatone": 0.0}

VAE_CONFIG = dict(in_channels=3, out_channels=3, block_out_channels=(16, 32, 64, 64),
                  down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=128,
                  scaling_factor=SCALE)
CLIP_TEXT = dict(vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                 layer_norm_eps=1e-5, projection_dim=64)
CLIP_VISION = dict(hidden_size=128, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                   image_size=224, patch_size=32, num_channels=3, hidden_act="quick_gelu",
                   layer_norm_eps=1e-5, projection_dim=64)
UNET_CONFIG = dict(sample_size=16, in_channels=8, out_channels=4, block_out_channels=(32, 64, 64),
                   layers_per_block=1,
                   down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                   up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                   attention_head_dim=4, cross_attention_dim=64, norm_num_groups=16)
SCM_CONFIG = {"img_channel": 6, "out_channel": 3, "width": 16, "enc_blk_nums": [1, 1, 1, 1],
              "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1, 1]}
SCHEDULER = {"_class_name": "EulerAncestralDiscreteScheduler", "num_train_timesteps": 1000,
             "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
             "prediction_type": "epsilon", "steps_offset": 1}
DEFAULT_STEPS = 10


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


# ----------------------------------------------------------------------------------------------
# helpers


def save_atomic(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def load_json(path: str):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def load_ckpt(path: str):
    if os.path.exists(path):
        return torch.load(path, map_location="cpu", weights_only=False)
    return None


def lr_at(progress: float, step: int, base: float, warmup: int = 100, floor: float = 1e-6) -> float:
    p = min(max(progress, 0.0), 1.0)
    lr = floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * p))
    return lr * min(1.0, (step + 1) / warmup)


def u8_to_pm1(a: np.ndarray) -> torch.Tensor:
    """uint8 N x H x W x 3 -> float N x 3 x H x W in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(a)).permute(0, 3, 1, 2).float()
    return t / 127.5 - 1.0


def pm1_to_u8(x: torch.Tensor) -> np.ndarray:
    """float N x 3 x H x W in [-1, 1] -> uint8 N x H x W x 3 (clamped, rounded): the inverse of u8_to_pm1."""
    return ((x.clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def clip_pixels(x_pm1: torch.Tensor, size: int = 224) -> torch.Tensor:
    """[-1,1] N x 3 x H x W (H, W >= size) -> CLIP pixel_values of the centre size x size crop."""
    h, w = x_pm1.shape[2:]
    top, left = (h - size) // 2, (w - size) // 2
    x = (x_pm1[:, :, top:top + size, left:left + size] + 1) / 2
    mean = torch.tensor(CLIP_MEAN, dtype=x.dtype)[:, None, None]
    std = torch.tensor(CLIP_STD, dtype=x.dtype)[:, None, None]
    return (x - mean) / std


def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer(os.path.join(TOKENIZER_DIR, "vocab.json"), os.path.join(TOKENIZER_DIR, "merges.txt"))


def n_params(m) -> int:
    return int(sum(p.numel() for p in m.state_dict().values()))


class Ctx:
    """Run-wide settings and paths."""

    def __init__(self, a):
        self.a = a
        self.cache = a.cache
        self.dir = os.path.join(a.cache, "autodir-tiny")
        os.makedirs(self.dir, exist_ok=True)
        self.seed = a.seed
        self.minutes = parse_minutes(a.minutes_per_stage)

    def path(self, name: str) -> str:
        return os.path.join(self.dir, name)


def parse_minutes(spec: str | None) -> dict:
    out = dict(DEFAULT_MINUTES)
    if not spec:
        return out
    if "=" not in spec:
        return {k: float(spec) for k in out}
    for part in spec.split(","):
        k, v = part.split("=")
        k = k.strip()
        if k not in out:
            raise SystemExit(f"unknown stage {k!r} in --minutes-per-stage (one of {list(out)})")
        out[k] = float(v)
    return out


# ----------------------------------------------------------------------------------------------
# pool


def pool_path(ctx: Ctx) -> str:
    return ctx.path(f"pool_s{ctx.seed}_n{ctx.a.pool_size}.npz")


def stage_pool(ctx: Ctx) -> None:
    path = pool_path(ctx)
    if os.path.exists(path):
        log(f"pool: {path} exists")
        return
    ds = PhotoSet("train", ctx.cache, log=log)
    sampler = PatchSampler(ds.images, patch=224, min_scale=1.0, max_scale=3.0, augment=True)
    n = ctx.a.pool_size
    clean = np.zeros((n, 224, 224, 3), np.uint8)
    deg = np.zeros((n, 224, 224, 3), np.uint8)
    labels = np.zeros(n, np.int64)
    t0 = time.time()
    for i in range(n):
        rng = np.random.default_rng([ctx.seed, 7777, i])
        k = i % len(CATEGORIES)
        c = sampler.sample(rng)
        d, _ = degradations.degrade(c, CATEGORIES[k], rng)
        clean[i] = (np.clip(c, 0, 1) * 255 + 0.5).astype(np.uint8)
        deg[i] = (np.clip(d, 0, 1) * 255 + 0.5).astype(np.uint8)
        labels[i] = k
        if (i + 1) % 500 == 0:
            log(f"pool {i + 1}/{n} ({time.time() - t0:.0f} s)")
    tmp = path + ".tmp.npz"
    np.savez(tmp, clean=clean, deg=deg, labels=labels)
    os.replace(tmp, path)
    with open(ctx.path("pool_info.json"), "w") as f:
        json.dump({"n": n, "seed": ctx.seed, "seconds": time.time() - t0, "train_images": len(ds)}, f)
    log(f"pool: {n} pairs in {time.time() - t0:.0f} s -> {path}")


def load_pool(ctx: Ctx):
    z = np.load(pool_path(ctx))
    return z["clean"], z["deg"], z["labels"]


BIQAPOOL_CHUNK = 500


def biqapool_dir(ctx: Ctx) -> str:
    return ctx.path(f"biqapool_s{ctx.seed}_n{ctx.a.biqa_pool_size}")


def stage_biqapool(ctx: Ctx) -> None:
    """The BIQA's own, larger pool (third run): --biqa-pool-size (clean, degraded, label) 224x224 pairs
    from the TRAINING split, regions of 224-896 px (scale 1-4), category i % 8, the crop-level texture
    rule for blur / low resolution / raindrop, rng seeded with (seed, 8888, i). Written in chunks of
    500 pairs (resumable); `--biqapool-part K/N` makes only the chunks c with c % N == K, so N processes
    can fill it side by side."""
    d = biqapool_dir(ctx)
    os.makedirs(d, exist_ok=True)
    k_part, n_part = (int(v) for v in ctx.a.biqapool_part.split("/"))
    ds = PhotoSet("train", ctx.cache, log=log)
    sampler = PatchSampler(ds.images, patch=224, min_scale=1.0, max_scale=4.0, augment=True)
    n = ctx.a.biqa_pool_size
    t0 = time.time()
    for c0 in range(0, n, BIQAPOOL_CHUNK):
        ci = c0 // BIQAPOOL_CHUNK
        path = os.path.join(d, f"chunk_{ci:04d}.npz")
        if ci % n_part != k_part or os.path.exists(path):
            continue
        m = min(BIQAPOOL_CHUNK, n - c0)
        clean = np.zeros((m, 224, 224, 3), np.uint8)
        deg = np.zeros((m, 224, 224, 3), np.uint8)
        labels = np.zeros(m, np.int64)
        for j in range(m):
            i = c0 + j
            rng = np.random.default_rng([ctx.seed, 8888, i])
            k = i % len(CATEGORIES)
            c = sampler.sample(rng, min_texture=degradations.min_texture(CATEGORIES[k]))
            dg, _ = degradations.degrade(c, CATEGORIES[k], rng)
            clean[j] = (np.clip(c, 0, 1) * 255 + 0.5).astype(np.uint8)
            deg[j] = (np.clip(dg, 0, 1) * 255 + 0.5).astype(np.uint8)
            labels[j] = k
        tmp = path + ".tmp.npz"
        np.savez(tmp, clean=clean, deg=deg, labels=labels)
        os.replace(tmp, path)
        log(f"biqapool: chunk {ci} ({c0 + m}/{n}, {time.time() - t0:.0f} s)")
    with open(os.path.join(d, "info.json"), "w") as f:
        json.dump({"n": n, "seed": ctx.seed, "train_images": len(ds)}, f)


def load_biqapool(ctx: Ctx):
    d = biqapool_dir(ctx)
    n = ctx.a.biqa_pool_size
    clean = np.zeros((n, 224, 224, 3), np.uint8)
    deg = np.zeros((n, 224, 224, 3), np.uint8)
    labels = np.zeros(n, np.int64)
    for c0 in range(0, n, BIQAPOOL_CHUNK):
        path = os.path.join(d, f"chunk_{c0 // BIQAPOOL_CHUNK:04d}.npz")
        if not os.path.exists(path):
            raise SystemExit(f"biqapool: {path} missing (run the biqapool stage)")
        z = np.load(path)
        m = len(z["labels"])
        clean[c0:c0 + m], deg[c0:c0 + m], labels[c0:c0 + m] = z["clean"], z["deg"], z["labels"]
    return clean, deg, labels


# ----------------------------------------------------------------------------------------------
# model builders


def make_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def make_clip(patch: int | None = None):
    """The BIQA CLIPModel; `patch` overrides the vision tower's patch size (biqavis, --biqavis-patch)."""
    from transformers import CLIPConfig, CLIPModel

    vision = dict(CLIP_VISION, **({"patch_size": patch} if patch else {}))
    config = CLIPConfig(text_config=CLIP_TEXT, vision_config=vision, projection_dim=64,
                        logit_scale_init_value=2.6592)
    config._attn_implementation = "eager"
    return CLIPModel(config)


def make_unet():
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(**UNET_CONFIG)


def make_scm():
    from reference.nafnet import NAFNet

    return NAFNet.from_config(SCM_CONFIG)


# ----------------------------------------------------------------------------------------------
# the generic training loop


class Trainer:
    """Clock-budgeted, resumable loop: `step_fn(step) -> loss` does one optimiser step."""

    def __init__(self, ctx: Ctx, name: str, model, lr: float, extra_state=None, betas=(0.9, 0.99),
                 weight_decay=0.0):
        self.ctx, self.name, self.model = ctx, name, model
        self.path = ctx.path(f"{name}.pt")
        self.opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
        self.base_lr = lr
        self.budget = ctx.minutes[name] * 60.0
        self.state = {"step": 0, "elapsed": 0.0, "history": [], **(extra_state or {})}
        ck = load_ckpt(self.path)
        if ck is not None:
            model.load_state_dict(ck["model"])
            self.opt.load_state_dict(ck["opt"])
            self.state.update(ck["state"])
            log(f"{name}: resumed at step {self.state['step']}, {self.state['elapsed'] / 60:.1f} min trained")

    def checkpoint(self, **extra):
        self.state.update(extra)
        save_atomic(self.path, {"model": self.model.state_dict(), "opt": self.opt.state_dict(),
                                "state": self.state})

    def run(self, step_fn, eval_fn=None, eval_every=500, log_every=50):
        torch.manual_seed(self.ctx.seed * 1000 + SEED_ORDER.index(self.name) * 7 + self.state["step"])
        self.model.train()
        last_ck = time.time()
        t_mark = time.time()
        run, n = 0.0, 0
        while self.state["elapsed"] < self.budget:
            step = self.state["step"]
            for g in self.opt.param_groups:
                g["lr"] = lr_at(self.state["elapsed"] / self.budget, step, self.base_lr)
            loss = step_fn(step)
            self.state["step"] += 1
            now = time.time()
            # a step never takes 30 s: a longer gap means the process was stopped (SIGSTOP, suspend) and
            # does not count as training time
            self.state["elapsed"] += min(now - t_mark, 30.0)
            t_mark = now
            run += float(loss)
            n += 1
            if self.state["step"] % log_every == 0:
                log(f"{self.name} step {self.state['step']:6d}  {self.state['elapsed'] / 60:5.1f}/"
                    f"{self.budget / 60:.0f} min  loss {run / n:.4f}  lr {self.opt.param_groups[0]['lr']:.2e}")
                run, n = 0.0, 0
            if eval_fn is not None and self.state["step"] % eval_every == 0:
                self.model.eval()
                r = eval_fn()
                self.model.train()
                self.state["history"].append((self.state["step"], self.state["elapsed"], r))
                log(f"  {self.name} validation: {r}")
                t_mark = time.time()  # evaluation time is not training time
            if now - last_ck > 60:
                self.checkpoint()
                last_ck = time.time()
        self.model.eval()
        if eval_fn is not None:
            r = eval_fn()
            self.state["final_val"] = r
            log(f"  {self.name} final validation: {r}")
        self.checkpoint()


def val_pairs(ctx: Ctx, n_per: int = 16, size: int = 224, seed: int = 4321, texture: bool = True,
              split: str = "val"):
    """Fixed pairs (uint8) from the validation split (or `split`), n_per per category, category-major.
    texture: the crop-level texture rule of training/degradations.py for blur, low resolution and
    raindrop (the third run's validation; False gives the first two runs' crops). split "train" draws the
    same kind of pairs from the training pictures instead (diagnose.py's generalisation check)."""
    ds = PhotoSet(split, ctx.cache, log=lambda *a: None)
    sampler = PatchSampler(ds.images, patch=size, min_scale=1.0, max_scale=3.0, augment=False)
    clean, deg, lab = [], [], []
    for k, cat in enumerate(CATEGORIES):
        for i in range(n_per):
            rng = np.random.default_rng([seed, k, i])
            c = sampler.sample(rng, min_texture=degradations.min_texture(cat) if texture else 0.0)
            d, _ = degradations.degrade(c, cat, rng)
            clean.append((np.clip(c, 0, 1) * 255 + 0.5).astype(np.uint8))
            deg.append((np.clip(d, 0, 1) * 255 + 0.5).astype(np.uint8))
            lab.append(k)
    return np.stack(clean), np.stack(deg), np.array(lab)


def psnr_pm1(a: torch.Tensor, b: torch.Tensor) -> float:
    a01, b01 = ((a.clamp(-1, 1) + 1) / 2), ((b.clamp(-1, 1) + 1) / 2)
    mse = ((a01 - b01) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return float((10 * torch.log10(1 / mse)).mean())


def crop_batch(rng, arrays, size):
    """Same random crop (and flip) of each array in `arrays` (N x H x W x C, same N, H, W)."""
    n, h, w = arrays[0].shape[:3]
    outs = [[] for _ in arrays]
    for i in range(n):
        y, x = int(rng.integers(0, h - size + 1)), int(rng.integers(0, w - size + 1))
        fl = rng.random() < 0.5
        for o, arr in zip(outs, arrays):
            c = arr[i, y:y + size, x:x + size]
            o.append(c[:, ::-1] if fl else c)
    return [np.stack(o) for o in outs]


# ----------------------------------------------------------------------------------------------
# VAE


def stage_vae(ctx: Ctx) -> None:
    clean, deg, labels = load_pool(ctx)
    n = len(clean)
    vae = make_vae()
    tr = Trainer(ctx, "vae", vae, lr=ctx.a.vae_lr)
    vc, vd, _ = val_pairs(ctx, n_per=4)
    val = u8_to_pm1(np.concatenate([vc, vd]))
    bs, ps = ctx.a.vae_batch, ctx.a.vae_patch

    def step_fn(step):
        rng = np.random.default_rng([ctx.seed, 1, step])
        idx = rng.integers(0, n, bs)
        which = rng.random(bs) < 0.5
        imgs = np.where(which[:, None, None, None], clean[idx], deg[idx])
        (crops,) = crop_batch(rng, [imgs], ps)
        x = u8_to_pm1(crops)
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        l1 = (rec - x).abs().mean()
        gx = ((rec[..., 1:] - rec[..., :-1]) - (x[..., 1:] - x[..., :-1])).abs().mean()
        gy = ((rec[..., 1:, :] - rec[..., :-1, :]) - (x[..., 1:, :] - x[..., :-1, :])).abs().mean()
        kl = (0.5 * (post.mean ** 2 + post.var - 1.0 - post.logvar)).mean()
        loss = l1 + 0.5 * (gx + gy) + ctx.a.vae_kl * kl
        tr.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        tr.opt.step()
        return loss.item()

    @torch.no_grad()
    def eval_fn():
        ps_ = []
        for i in range(0, len(val), 8):
            x = val[i:i + 8]
            ps_.append(psnr_pm1(vae.decode(vae.encode(x).latent_dist.mode()).sample, x))
        return {"psnr_recon": round(float(np.mean(ps_)), 3)}

    if tr.state["elapsed"] < tr.budget:
        tr.run(step_fn, eval_fn, eval_every=ctx.a.eval_every)
    # latent re-parametrisation so that SCALE * latent has unit std on the pool (exact)
    with torch.no_grad():
        sub = u8_to_pm1(np.concatenate([clean[:64:2], deg[1:65:2]]))
        zs = torch.cat([vae.encode(sub[i:i + 8]).latent_dist.mode() for i in range(0, len(sub), 8)])
        std = float(zs.std())
        c = 1.0 / (SCALE * std)
        if abs(c - 1) > 1e-3:
            qc, pqc = vae.quant_conv, vae.post_quant_conv
            lc = vae.config.latent_channels
            qc.weight[:lc] *= c
            qc.bias[:lc] *= c
            qc.bias[lc:] += 2 * math.log(c)
            pqc.weight /= c
        zs2 = torch.cat([vae.encode(sub[i:i + 8]).latent_dist.mode() for i in range(0, len(sub), 8)])
        log(f"vae: latent std {std:.3f} -> rescaled by {c:.4f}: 0.18215 * latent std {SCALE * float(zs2.std()):.3f}")
    r = eval_fn()
    log(f"vae: final (rescaled) {r}")
    save_atomic(ctx.path("vae_final.pt"), {"model": vae.state_dict(), "step": tr.state["step"],
                                           "elapsed": tr.state["elapsed"], "val": r, "rescale": c,
                                           "params": n_params(vae)})


def load_final(ctx: Ctx, name: str):
    ck = load_ckpt(ctx.path(f"{name}_final.pt"))
    if ck is None:
        raise SystemExit(f"stage {name!r} has not finished ({ctx.path(name + '_final.pt')} missing)")
    maker = {"vae": make_vae, "biqa": make_clip, "biqavis": make_clip, "biqano": make_clip, "biqastream": make_clip,
             "biqatone": make_clip,
             "air": make_unet, "scm": make_scm, "scmpre": make_scm}[name]
    m = maker(ck["vision_patch"]) if name.startswith("biqa") and ck.get("vision_patch") else maker()
    m.load_state_dict(ck["model"])
    m.eval()
    return m, ck


# ----------------------------------------------------------------------------------------------
# BIQA


def prompt_tokens(tok):
    enc = tok(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    null = tok([""], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    return enc, null


def clip_scores(clip, pixel_values, enc):
    """logits_per_image [N, 8] = exp(logit_scale) * cos(image, prompt)."""
    img = clip.visual_projection(clip.vision_model(pixel_values=pixel_values).pooler_output)
    txt = clip.text_projection(clip.text_model(input_ids=enc["input_ids"],
                                               attention_mask=enc["attention_mask"]).pooler_output)
    img = img / img.norm(dim=-1, keepdim=True)
    txt = txt / txt.norm(dim=-1, keepdim=True)
    cos = img @ txt.t()
    return clip.logit_scale.exp().clamp(max=100) * cos, cos


def restored_pool(ctx: Ctx) -> np.ndarray:
    """uint8 N x 224 x 224 x 3: the pool pairs with cached AIR outputs after one pipeline pass with the
    current SCM (x_scm = SCM([degraded, x_air]); x_air itself for "low resolution", as the pipeline
    passes it on). biqano labels them "no": an image the pipeline has just restored should stop the loop."""
    ck = load_ckpt(ctx.path("air_samples.pt"))
    if ck is None or not ck.get("done"):
        raise SystemExit("restored_pool: run the airsamples stage first")
    air = np.concatenate(ck["air"])
    idx = np.array(ck["idx"])
    _, deg, labels = load_pool(ctx)
    scm, _ = load_final(ctx, "scm" if os.path.exists(ctx.path("scm_final.pt")) else "scmpre")
    lr = CATEGORIES.index("low resolution")
    out = np.zeros_like(air)
    with torch.no_grad():
        for s in range(0, len(idx), 8):
            d, a = u8_to_pm1(deg[idx[s:s + 8]]), u8_to_pm1(air[s:s + 8])
            y = scm(torch.cat([d, a], 1))
            y = torch.where(torch.from_numpy(labels[idx[s:s + 8]] == lr)[:, None, None, None], a, y)
            out[s:s + 8] = pm1_to_u8(y)
    log(f"restored_pool: {len(out)} restored pool images")
    return out


def photometric_jitter(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A clean H x W x 3 crop in [0, 1] with its tone varied as photographs vary (fifth run; BIQA only):
    gamma ~ logU(0.85, 1.18), contrast about the mean ~ U(0.85, 1.15), brightness ~ U(-0.05, 0.05),
    saturation ~ U(0.8, 1.2). Far milder than underexposure (scale <= 0.5, gamma >= 1.2) and haze (at
    least 21 % airlight): it teaches that a pale, dark or muted picture is not a degraded one."""
    gamma = math.exp(rng.uniform(math.log(0.85), math.log(1.18)))
    contrast, bright, sat = rng.uniform(0.85, 1.15), rng.uniform(-0.05, 0.05), rng.uniform(0.8, 1.2)
    x = np.clip(img, 0, 1) ** gamma
    x = (x - x.mean()) * contrast + x.mean() + bright
    grey = x @ np.array([0.299, 0.587, 0.114])
    x = grey[..., None] + (x - grey[..., None]) * sat
    return np.clip(x, 0, 1)


TONE_FREE = ("underexposure", "haze")  # kinds that ARE a global tone change: never given global_tone


def global_tone(images: list[np.ndarray], rng: np.random.Generator) -> list[np.ndarray]:
    """The same random global tone change applied to each H x W x 3 image in [0, 1] of a (clean, degraded
    [, AIR output]) group (fifth run; AIR and SCM): one of, with equal odds,
      dark    s * img ** g,  s ~ U(0.35, 0.9), g ~ U(1.0, 1.4)
      pale    (1 - a) img + a A,  a ~ U(0.05, 0.3), A ~ U(0.7, 1.0) (grey)
      jitter  photometric_jitter
    The held-out pictures include very dark and very pale ones that the training pictures lack; without
    these examples AIR brightened a dark picture under any prompt and the SCM yellowed a pale one. Only
    for kinds other than TONE_FREE: for the others the prompt says the tone must stay."""
    mode = int(rng.integers(0, 3))
    if mode == 0:
        sc, g = rng.uniform(0.35, 0.9), rng.uniform(1.0, 1.4)
        return [np.clip(sc * np.clip(x, 0, 1) ** g, 0, 1) for x in images]
    if mode == 1:
        a, air = rng.uniform(0.05, 0.3), rng.uniform(0.7, 1.0)
        return [np.clip((1 - a) * x + a * air, 0, 1) for x in images]
    seed = int(rng.integers(0, 2**62))
    return [photometric_jitter(x, np.random.default_rng(seed)) for x in images]


def fresh_pair(sampler: PatchSampler, rng: np.random.Generator, k: int, min_texture: float | None = None,
               jitter: float = 0.0, tone: float = 0.0):
    """(clean, degraded) uint8 224x224x3 of category index k, made now: a crop of sampler (the texture
    rule for blur, low resolution and raindrop, or min_texture), with probability `jitter` given a
    photometric_jitter, degraded by training/degradations.py. With probability `tone` (fifth run, BIQA),
    a crop of a kind that is not itself a tone (TONE_FREE) nor "no" is first given a global_tone (dark,
    pale or jittered): blur on a dark or pale picture is still blur, not underexposure or haze. "no"
    crops only ever get the mild jitter: a strongly darkened or paled clean picture IS underexposed or
    hazy as far as its pixels can tell."""
    if min_texture is None:
        min_texture = degradations.min_texture(CATEGORIES[k])
    c = sampler.sample(rng, min_texture=min_texture)
    if tone > 0 and CATEGORIES[k] not in TONE_FREE + ("no",) and rng.random() < tone:
        c = global_tone([c], rng)[0]
    elif jitter > 0 and rng.random() < jitter:
        c = photometric_jitter(c, rng)
    d, _ = degradations.degrade(c, CATEGORIES[k], rng)
    return (np.clip(c, 0, 1) * 255 + 0.5).astype(np.uint8), (np.clip(d, 0, 1) * 255 + 0.5).astype(np.uint8)


def stage_biqa(ctx: Ctx, vision_only: bool = False, restored: bool = False, stream: bool = False,
               tone: bool = False) -> None:
    """biqa, biqavis (vision_only) or biqano (vision_only and restored: continues biqavis, with a
    fraction --biqano-frac of the "no" examples replaced by restored_pool images), or biqastream (stream,
    fourth run: continues --biqastream-from with every training pair made on the fly by fresh_pair from
    all training pictures, so no pair is seen twice; --biqano-frac of its "no" examples are restored
    images as in biqano), or biqatone (tone, fifth run: biqastream continued from biqastream's final
    tower with --biqa-jitter and --biqa-tone, fresh_pair's photometric augmentations; the fourth run's
    tower read 16 of 50 held-out "no" crops and 10 blur crops as haze, 6 blur crops as underexposure)."""
    name = "biqatone" if tone else "biqastream" if stream else "biqano" if restored else "biqavis" if vision_only else "biqa"
    stream = stream or tone
    if stream:
        if ctx.minutes[name] <= 0:
            log(f"{name}: 0 minutes, skipped")
            return
        vision_only, restored = True, True
    rest_frac = ctx.a.biqano_frac if restored else ctx.a.biqavis_restored_frac if vision_only else 0.0
    rest = restored_pool(ctx) if rest_frac > 0 else None
    sampler = None
    if stream:
        ds = PhotoSet("train", ctx.cache, log=log)
        sampler = PatchSampler(ds.images, patch=224, min_scale=1.0, max_scale=4.0, augment=True)
        clean = deg = labels = None
        log(f"{name}: pairs made on the fly from {len(ds)} training pictures")
    elif vision_only and ctx.a.biqa_pool_size > 0:
        clean, deg, labels = load_biqapool(ctx)
    else:
        clean, deg, labels = load_pool(ctx)
    if clean is not None:
        n = len(clean)
        log(f"{name}: {n} training pairs")
    patch = ctx.a.biqavis_patch if vision_only else None
    clip = make_clip(patch)
    tok = tokenizer()
    enc, _ = prompt_tokens(tok)
    if restored:
        if not os.path.exists(ctx.path(f"{name}.pt")):
            src = "biqastream" if tone else ctx.a.biqastream_from if stream else "biqavis"
            bv = load_ckpt(ctx.path(f"{src}_final.pt"))
            clip = make_clip(bv.get("vision_patch"))
            clip.load_state_dict(bv["model"])
            log(f"{name}: initialised from {src}")
        else:
            clip = make_clip(patch)
        for p_ in clip.text_model.parameters():
            p_.requires_grad_(False)
    elif vision_only:
        if not os.path.exists(ctx.path("biqavis.pt")):
            fresh = clip.state_dict()
            sd = load_ckpt(ctx.path("biqa_final.pt"))["model"]
            if ctx.a.biqavis_reinit:
                # a fresh vision tower whose patch embedding starts as a (frequency-weighted) DCT basis
                for k in sd:
                    if k.startswith(("vision_model.", "visual_projection.")):
                        sd[k] = fresh[k]
                sd["vision_model.embeddings.patch_embedding.weight"] = dct_patch_init(
                    fresh["vision_model.embeddings.patch_embedding.weight"].shape)
            clip.load_state_dict(sd)
            log(f"biqavis: initialised from biqa (vision tower {'re-initialised, DCT patch embedding' if ctx.a.biqavis_reinit else 'kept'})")
        # the text tower's last_hidden_state is AIR's context: it must not move any more
        for p_ in clip.text_model.parameters():
            p_.requires_grad_(False)
    lr = (ctx.a.biqatone_lr if tone else ctx.a.biqastream_lr if stream else ctx.a.biqano_lr if restored else ctx.a.biqavis_lr if vision_only
          else ctx.a.biqa_lr)
    tr = Trainer(ctx, name, clip, lr=lr, weight_decay=0.01)
    vc, vd, vl = val_pairs(ctx, n_per=ctx.a.val_per_class)
    vx = clip_pixels(u8_to_pm1(vd))
    bs = ctx.a.biqa_batch
    no = CATEGORIES.index("no")

    def step_fn(step):
        rng = np.random.default_rng([ctx.seed, 12 if tone else 10 if stream else 8 if restored else 6 if vision_only
                                     else 2, step])
        if stream:
            lab = rng.integers(0, len(CATEGORIES), bs)
            pairs = [fresh_pair(sampler, rng, int(k_), jitter=ctx.a.biqa_jitter, tone=ctx.a.biqa_tone if tone else 0.0)
                     for k_ in lab]
            d = np.stack([p_[1] for p_ in pairs])
            c = np.stack([p_[0] for p_ in pairs[:bs // 2]])
        else:
            idx = rng.integers(0, n, bs)
            lab = labels[idx]
            d, c = deg[idx], clean[idx[:bs // 2]]
        k = int(rng.integers(0, 4))
        fl = rng.random() < 0.5
        if rest is not None:
            swap = (lab == no) & (rng.random(bs) < rest_frac)
            if swap.any():
                d = d.copy()
                d[swap] = rest[rng.integers(0, len(rest), int(swap.sum()))]
        if fl:
            d, c = d[:, :, ::-1], c[:, :, ::-1]
        d, c = np.rot90(d, k, axes=(1, 2)), np.rot90(c, k, axes=(1, 2))
        y = torch.from_numpy(lab)
        x = clip_pixels(u8_to_pm1(np.concatenate([d, c])))
        logits, cos = clip_scores(clip, x, enc)
        ce = F.cross_entropy(logits[:bs], y)
        m = y != no
        if m.any():
            sd = cos[:bs][torch.arange(bs), y]
            h = bs // 2
            sc = cos[bs:][torch.arange(h), y[:h]]
            mh = m[:h]
            rank = F.relu(0.2 + sc - sd[:h])[mh].mean() if mh.any() else torch.zeros(())
        else:
            rank = torch.zeros(())
        loss = ce + ctx.a.biqa_rank * rank
        tr.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(clip.parameters(), 1.0)
        tr.opt.step()
        return loss.item()

    @torch.no_grad()
    def eval_fn():
        preds = []
        for i in range(0, len(vx), 32):
            logits, _ = clip_scores(clip, vx[i:i + 32], enc)
            preds.append(logits.argmax(1))
        p = torch.cat(preds).numpy()
        return {"top1": round(float((p == vl).mean()), 4)}

    if tr.state["elapsed"] < tr.budget:
        tr.run(step_fn, eval_fn, eval_every=ctx.a.eval_every, log_every=50)
    r = eval_fn()
    if rest is not None:  # how often one restored pool image would stop the loop (scored "no")
        with torch.no_grad():
            sel = rest[:: max(1, len(rest) // 160)]
            pr = torch.cat([clip_scores(clip, clip_pixels(u8_to_pm1(sel[i:i + 32])), enc)[0].argmax(1)
                            for i in range(0, len(sel), 32)])
        r["restored_no_train"] = round(float((pr == no).float().mean()), 4)
    save_atomic(ctx.path(f"{name}_final.pt"), {"model": clip.state_dict(), "step": tr.state["step"],
                                               "elapsed": tr.state["elapsed"], "val": r,
                                               "params": n_params(clip),
                                               "vision_patch": clip.config.vision_config.patch_size})
    log(f"{name}: final {r}")


def dct_patch_init(shape):
    """[D, 3, P, P] patch-embedding weights: per-channel DC filters, then luminance 2-D DCT-II basis
    functions spread over the whole spectrum, each scaled by (1 + radial frequency) (a rough whitening of
    natural images' 1/f spectrum, so that high-frequency content -- noise, blur, resolution -- is not
    drowned by the DC terms after the pre-layer-norm)."""
    d, c, p, _ = shape
    x = torch.arange(p, dtype=torch.float64)
    def basis(u):
        b = torch.cos(math.pi * (2 * x + 1) * u / (2 * p))
        return b / b.norm()
    w = torch.zeros(shape, dtype=torch.float64)
    for ch in range(min(c, d)):
        w[ch, ch] = basis(0)[:, None] * basis(0)[None, :]
    freqs = sorted({int(round(v)) for v in np.geomspace(1, p - 1, 12)} | {0})
    pairs = [(u, v) for u in freqs for v in freqs if (u, v) != (0, 0)]
    pairs.sort(key=lambda uv: (uv[0] ** 2 + uv[1] ** 2, uv))
    k = c
    i = 0
    while k < d:
        u, v = pairs[i % len(pairs)]
        f = basis(u)[:, None] * basis(v)[None, :] * (1 + math.hypot(u, v))
        if i < len(pairs):
            w[k] = f[None] / math.sqrt(c)  # luminance
        else:  # second round (if D is larger than the grid): colour-opponent versions
            w[k, 0], w[k, 2] = f / math.sqrt(2), -f / math.sqrt(2)
        k += 1
        i += 1
    return w.float()


def load_biqa(ctx: Ctx):
    """The BIQA to use downstream of AIR. --biqa-final NAME picks one; "auto": biqano or biqavis (the
    later one that has finished) when it validates at least as well as biqa, else biqa."""
    if ctx.a.biqa_final != "auto":
        return load_final(ctx, ctx.a.biqa_final)
    for late in ("biqatone", "biqastream", "biqano", "biqavis"):
        if os.path.exists(ctx.path(f"{late}_final.pt")):
            v = load_ckpt(ctx.path(f"{late}_final.pt"))["val"]["top1"]
            b = load_ckpt(ctx.path("biqa_final.pt"))["val"]["top1"]
            if v >= b:
                return load_final(ctx, late)
            log(f"{late} validates worse than biqa ({v} < {b}): not used")
    return load_final(ctx, "biqa")


@torch.no_grad()
def text_states(clip, tok):
    """(prompt last_hidden_states [8, 77, D] with the attention mask, null context [1, 77, D] from
    input_ids only): exactly the reference pipeline's contexts."""
    enc, null = prompt_tokens(tok)
    ps = clip.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    nl = clip.text_model(input_ids=null["input_ids"]).last_hidden_state
    return ps, nl


# ----------------------------------------------------------------------------------------------
# AIR


def latents_path(ctx):
    return ctx.path("pool_latents.pt")


@torch.no_grad()
def pool_latents(ctx: Ctx, vae, vae_step: int):
    """mode(E(x)) of clean and degraded pool images at 224 (28x28 latents), cached per VAE checkpoint."""
    p = latents_path(ctx)
    ck = load_ckpt(p)
    n = min(ctx.a.latent_pool, len(load_pool(ctx)[2]))
    if ck is not None and ck["vae_step"] == vae_step and ck["n"] == n:
        return ck["zc"], ck["zd"], ck["labels"]
    clean, deg, labels = load_pool(ctx)
    zc, zd = [], []
    t0 = time.time()
    for i in range(0, n, 16):
        zc.append(vae.encode(u8_to_pm1(clean[i:i + 16])).latent_dist.mode())
        zd.append(vae.encode(u8_to_pm1(deg[i:i + 16])).latent_dist.mode())
        if (i // 16) % 25 == 0:
            log(f"air: encoding pool {i}/{n} ({time.time() - t0:.0f} s)")
    out = {"zc": torch.cat(zc).half(), "zd": torch.cat(zd).half(), "labels": torch.from_numpy(labels[:n]),
           "vae_step": vae_step, "n": n}
    save_atomic(p, out)
    return out["zc"], out["zd"], out["labels"]


@torch.no_grad()
def tone_latents(ctx: Ctx, vae, vae_step: int):
    """Latents of --air-tone-pool pool pairs (kinds outside TONE_FREE) given a global_tone, the same one for
    the clean and the degraded image (fifth run), cached per VAE checkpoint in pool_latents_tone.pt."""
    p = ctx.path("pool_latents_tone.pt")
    n = ctx.a.air_tone_pool
    ck = load_ckpt(p)
    if ck is not None and ck["vae_step"] == vae_step and ck["n"] == n:
        return ck["zc"], ck["zd"], ck["labels"]
    clean, deg, labels = load_pool(ctx)
    keep = [i for i in range(len(labels)) if CATEGORIES[labels[i]] not in TONE_FREE][:n]
    zc, zd = [], []
    t0 = time.time()
    for j in range(0, len(keep), 16):
        c16, d16 = [], []
        for i in keep[j:j + 16]:
            rng = np.random.default_rng([ctx.seed, 77, i])
            c, d = global_tone([clean[i] / 255.0, deg[i] / 255.0], rng)
            c16.append((c * 255 + 0.5).astype(np.uint8))
            d16.append((d * 255 + 0.5).astype(np.uint8))
        zc.append(vae.encode(u8_to_pm1(np.stack(c16))).latent_dist.mode())
        zd.append(vae.encode(u8_to_pm1(np.stack(d16))).latent_dist.mode())
        if (j // 16) % 25 == 0:
            log(f"air: encoding tone pairs {j}/{len(keep)} ({time.time() - t0:.0f} s)")
    out = {"zc": torch.cat(zc).half(), "zd": torch.cat(zd).half(),
           "labels": torch.from_numpy(labels[keep]), "vae_step": vae_step, "n": n}
    save_atomic(p, out)
    return out["zc"], out["zd"], out["labels"]


def alphas_cumprod():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0).float()


def stage_air(ctx: Ctx) -> None:
    vae, vck = load_final(ctx, "vae")
    clip, bck = load_final(ctx, "biqa")
    tok = tokenizer()
    ps, null = text_states(clip, tok)
    zc, zd, labels = pool_latents(ctx, vae, vck["step"])
    if ctx.a.air_tone_pool > 0:
        tc, td, tl = tone_latents(ctx, vae, vck["step"])
        zc, zd, labels = torch.cat([zc, tc]), torch.cat([zd, td]), torch.cat([labels, tl])
        log(f"air: {len(tl)} tone-changed pairs added (--air-tone-pool)")
    zc, zd = zc.float() * SCALE, zd.float()
    n = len(zc)
    unet = make_unet()
    tr = Trainer(ctx, "air", unet, lr=ctx.a.air_lr, extra_state={"vae_step": vck["step"], "biqa_step": bck["step"]})
    if tr.state.get("vae_step") != vck["step"] or tr.state.get("biqa_step") != bck["step"]:
        log(f"air: upstream changed (vae {tr.state.get('vae_step')} -> {vck['step']}, biqa "
            f"{tr.state.get('biqa_step')} -> {bck['step']}): continuing from the AIR checkpoint")
        tr.state["vae_step"], tr.state["biqa_step"] = vck["step"], bck["step"]
    ac = alphas_cumprod()
    bs, ls = ctx.a.air_batch, ctx.a.air_latent
    lat = zc.shape[-1]

    def batch(rng, b):
        idx = rng.integers(0, n, b)
        ys, xs = rng.integers(0, lat - ls + 1, b), rng.integers(0, lat - ls + 1, b)
        z0 = torch.stack([zc[i, :, y:y + ls, x:x + ls] for i, y, x in zip(idx, ys, xs)])
        zi = torch.stack([zd[i, :, y:y + ls, x:x + ls] for i, y, x in zip(idx, ys, xs)])
        fl = torch.from_numpy(rng.random(b) < 0.5)
        z0 = torch.where(fl[:, None, None, None], z0.flip(-1), z0)
        zi = torch.where(fl[:, None, None, None], zi.flip(-1), zi)
        t = torch.from_numpy(rng.integers(0, 1000, b))
        g = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
        eps = torch.randn(z0.shape, generator=g)
        ctxt = ps[labels[idx]]
        if ctx.a.air_identity_frac > 0:
            # fifth run: under the prompt of an artifact the image does not have, AIR keeps the image (the
            # target is the input's own latent). A wrong BIQA pass (haze on a blurred picture) cost up to 25 dB.
            ident = rng.random(b) < ctx.a.air_identity_frac
            # one of the first 6 other artifacts (as the fifth run was trained: for a "no" image, which has 7,
            # raindrop is never the wrong prompt)
            wrong = [int(q) for q in rng.integers(0, len(CATEGORIES) - 2, b)]
            no = CATEGORIES.index("no")
            for r_ in np.nonzero(ident)[0]:
                k_ = int(labels[idx[r_]])
                others = [q for q in range(len(CATEGORIES)) if q != k_ and q != no]
                ctxt[r_] = ps[others[wrong[r_] % len(others)]]
                z0[r_] = zi[r_] * SCALE
        drop = rng.random(b)
        if ctx.a.air_identity_frac > 0:
            drop[ident] = 1.0  # an identity example keeps its prompt and its image latent
        null_text = torch.from_numpy((drop < 0.05) | ((drop >= 0.10) & (drop < 0.15)))
        zero_img = torch.from_numpy((drop >= 0.05) & (drop < 0.15))
        ctxt = torch.where(null_text[:, None, None], null.expand_as(ctxt), ctxt)
        zi = torch.where(zero_img[:, None, None, None], torch.zeros_like(zi), zi)
        a = ac[t][:, None, None, None]
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        # zero-signal samples at t = 999: the sampler starts from pure noise (z = randn * sigma_max), where
        # the training z_t would still hold sqrt(abar_999) = 0.068 of the clean latent -- which an
        # under-trained model learns to read instead of z_img. For these samples the input carries no
        # signal and the target is the epsilon that makes the denoised estimate z0:
        # eps* = eps - z0 * sqrt(abar) / sqrt(1 - abar).
        zs = torch.from_numpy(rng.random(b) < ctx.a.air_zero_snr)
        if zs.any():
            a999 = ac[999]
            t = torch.where(zs, torch.full_like(t, 999), t)
            zt = torch.where(zs[:, None, None, None], (1 - a999).sqrt() * eps, zt)
            eps = torch.where(zs[:, None, None, None], eps - z0 * (a999.sqrt() / (1 - a999).sqrt()), eps)
        return torch.cat([zt, zi], 1), t, ctxt, eps, zs

    vrng = np.random.default_rng([ctx.seed, 33])
    vbatch = batch(vrng, 64)

    def step_fn(step):
        rng = np.random.default_rng([ctx.seed, 3, step])
        x, t, c, eps, zs = batch(rng, bs)
        pred = unet(x, t, encoder_hidden_states=c).sample
        # zero-signal samples are weighted by sigma_999^2: their loss is the denoised estimate's MSE
        w = torch.where(zs, (1 - ac[999]) / ac[999], torch.ones(())).float()[:, None, None, None]
        loss = (w * (pred - eps) ** 2).mean()
        tr.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        tr.opt.step()
        return loss.item()

    @torch.no_grad()
    def eval_fn():
        x, t, c, eps, _ = vbatch
        ls_ = [F.mse_loss(unet(x[i:i + 16], t[i:i + 16], encoder_hidden_states=c[i:i + 16]).sample,
                          eps[i:i + 16]).item() for i in range(0, len(x), 16)]
        return {"eps_mse_fixed_batch": round(float(np.mean(ls_)), 5)}

    if tr.state["elapsed"] < tr.budget:
        tr.run(step_fn, eval_fn, eval_every=ctx.a.eval_every, log_every=50)
    save_atomic(ctx.path("air_final.pt"), {"model": unet.state_dict(), "step": tr.state["step"],
                                           "elapsed": tr.state["elapsed"], "val": eval_fn(),
                                           "params": n_params(unet), "vae_step": vck["step"],
                                           "biqa_step": bck["step"]})
    log("air: final saved")


# ----------------------------------------------------------------------------------------------
# AIR samples for the SCM


def reference_from_parts(vae, clip, unet, scm=None, steps=DEFAULT_STEPS):
    from reference.autodir_pipeline import AutoDIRReference

    settings = {"categories": CATEGORIES, "prompt_template": "A photo needs {} artifact reduction",
                "scale_factor": SCALE, "scm_weight": 1.0,
                "defaults": {"steps": steps, "cfg_text": 1.0, "cfg_image": 1.0, "max_passes": 7}}
    return AutoDIRReference(unet, vae, clip, tokenizer(), scm if scm is not None else make_scm(),
                            SCHEDULER, settings, torch.float32)


@torch.no_grad()
def air_batch_sample(ref, x_pm1: torch.Tensor, contexts: torch.Tensor, steps: int, seed: int):
    """Batched AIR (cond branch only, cfg 1/1) exactly as the reference's restore_pass, without SCM.
    x_pm1 [B, 3, H, W] with H, W multiples of the model's size multiple."""
    from reference.autodir_pipeline import kd_sampling

    z_img = ref.vae.encode(x_pm1).latent_dist.mode()
    cond = {"c_crossattn": [contexts], "c_concat": [z_img]}
    sigmas = ref.model_wrap.get_sigmas(steps).float()  # float64 sigmas would promote z to float64
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(z_img.shape, generator=g) * sigmas[0]
    noise = lambda s, sn: torch.randn(z.shape, generator=g)  # noqa: E731
    z0 = kd_sampling.sample_euler_ancestral(ref.model_wrap, z, sigmas, extra_args={"cond": cond}, disable=True,
                                            noise_sampler=noise)
    return ref.vae.decode(z0 / SCALE).sample


@torch.no_grad()
def biqa_contexts(ref, x_pm1: torch.Tensor):
    """Per image: (probabilities [B, 8], context [B, 77, D]) as the pipeline's first pass."""
    img = ref.clip.visual_projection(ref.clip.vision_model(pixel_values=clip_pixels(x_pm1)).pooler_output)
    img = img / img.norm(dim=-1, keepdim=True)
    txt = ref.prompt_embeds / ref.prompt_embeds.norm(dim=-1, keepdim=True)
    p = torch.softmax(ref.clip.logit_scale.exp() * img @ txt.t(), dim=1)
    return p, torch.einsum("bk,kld->bld", p, ref.prompt_states)


def stage_airsamples(ctx: Ctx) -> None:
    vae, vck = load_final(ctx, "vae")
    clip, bck = load_biqa(ctx)
    unet, ack = load_final(ctx, "air")
    key = {"vae": vck["step"], "biqa": (bck["step"], round(bck["elapsed"], 1)), "air": ack["step"], "steps": ctx.a.air_sample_steps,
           "n": ctx.a.scm_pool}
    p = ctx.path("air_samples.pt")
    ck = load_ckpt(p)
    if ck is not None and ck["key"] == key and ck.get("done"):
        log("airsamples: cache up to date")
        return
    if ck is None or ck["key"] != key:
        ck = {"key": key, "idx": [], "air": [], "done": False, "seconds": 0.0}
    clean, deg, labels = load_pool(ctx)
    no = CATEGORIES.index("no")
    cand = np.array([i for i in range(len(labels)) if labels[i] != no])
    idx = cand[np.linspace(0, len(cand) - 1, min(ctx.a.scm_pool, len(cand))).astype(int)]
    ref = reference_from_parts(vae, clip, unet)
    done = sum(len(a) for a in ck["air"])
    t0 = time.time()
    last = time.time()
    for s in range(done, len(idx), 8):
        b = idx[s:s + 8]
        x = u8_to_pm1(deg[b])
        _, c = biqa_contexts(ref, x)
        air = air_batch_sample(ref, x, c, ctx.a.air_sample_steps, seed=ctx.seed * 100000 + s)
        ck["air"].append(pm1_to_u8(air))
        ck["idx"].extend(int(i) for i in b)
        if time.time() - last > 60:
            ck["seconds"] += time.time() - t0
            t0 = time.time()
            save_atomic(p, ck)
            last = time.time()
            log(f"airsamples {len(ck['idx'])}/{len(idx)}")
    ck["seconds"] += time.time() - t0
    ck["done"] = True
    save_atomic(p, ck)
    air = np.concatenate(ck["air"])
    ii = np.array(ck["idx"])
    pin = float(np.mean([10 * np.log10(1 / max(1e-12, np.mean((deg[i] / 255.0 - clean[i] / 255.0) ** 2))) for i in ii]))
    pair = float(np.mean([10 * np.log10(1 / max(1e-12, np.mean((a / 255.0 - clean[i] / 255.0) ** 2)))
                          for a, i in zip(air, ii)]))
    log(f"airsamples: {len(ii)} AIR outputs in {ck['seconds']:.0f} s; PSNR input {pin:.2f} dB, AIR {pair:.2f} dB")


def stage_airwrong(ctx: Ctx) -> None:
    """AIR outputs under a WRONG context, for the SCM (third run): --scm-wrong-pool pool pairs (every
    category, "no" included, a fixed subset) run through AIR with the prompt state of a category other than
    their own (and other than "low resolution", whose pass skips the SCM), drawn with rng (seed, 99, i).
    The multi-pass loop runs such passes whenever the BIQA errs or does not stop: the SCM learns to undo
    them ([degraded, x_air_wrong] -> clean). Cached in air_wrong.pt."""
    vae, vck = load_final(ctx, "vae")
    clip, bck = load_biqa(ctx)
    unet, ack = load_final(ctx, "air")
    key = {"vae": vck["step"], "biqa": (bck["step"], round(bck["elapsed"], 1)), "air": ack["step"],
           "steps": ctx.a.air_sample_steps, "n": ctx.a.scm_wrong_pool}
    p = ctx.path("air_wrong.pt")
    ck = load_ckpt(p)
    if ck is not None and ck["key"] == key and ck.get("done"):
        log("airwrong: cache up to date")
        return
    clean, deg, labels = load_pool(ctx)
    n = len(labels)
    idx = np.linspace(0, n - 1, ctx.a.scm_wrong_pool).astype(int)
    lr = CATEGORIES.index("low resolution")
    wrong = []
    for i in idx:
        r = np.random.default_rng([ctx.seed, 99, int(i)])
        opts = [k for k in range(len(CATEGORIES) - 1) if k != labels[i] and k != lr]
        wrong.append(int(opts[int(r.integers(0, len(opts)))]))
    wrong = np.array(wrong)
    ref = reference_from_parts(vae, clip, unet)
    out = []
    t0 = time.time()
    for s in range(0, len(idx), 8):
        x = u8_to_pm1(deg[idx[s:s + 8]])
        c = ref.prompt_states[torch.from_numpy(wrong[s:s + 8])]
        air = air_batch_sample(ref, x, c, ctx.a.air_sample_steps, seed=ctx.seed * 100000 + 50000 + s)
        out.append(pm1_to_u8(air))
    save_atomic(p, {"key": key, "idx": idx, "wrong": wrong, "air": np.concatenate(out), "done": True,
                    "seconds": time.time() - t0})
    log(f"airwrong: {len(idx)} AIR outputs under wrong contexts in {time.time() - t0:.0f} s")


AIRPOOL_CHUNK = 96
TONE_KINDS = [CATEGORIES.index("underexposure"), CATEGORIES.index("haze")]


def airpool_dir(ctx: Ctx) -> str:
    return ctx.path(f"airpool_s{ctx.seed}")


def stage_airpool(ctx: Ctx) -> None:
    """More SCM training data (fourth run): the SCM had seen only the 700 airsamples pictures' crops and
    re-toned dark or pale held-out pictures as a whole ([clean, clean] -> 26-33 dB on the validation crops,
    43.6 dB on its own batches; see the model card notes).
    --air-pool-size fresh pairs from ALL training pictures (fresh_pair, regions 224-672 px; the texture rule
    for blur, low resolution and raindrop, and for half of the other kinds' crops too), category i % 8,
    rng (seed, 5151, i); each run through BIQA + AIR as airsamples does (the pipeline's first pass), and
    every third one also through AIR under a wrong context as airwrong does. Chunks of AIRPOOL_CHUNK
    pairs (resumable); the SCM stage uses every finished chunk when --scm-airpool 1."""
    if not ctx.a.scm_airpool:
        log("airpool: skipped (only used with --scm-airpool 1)")
        return
    d = airpool_dir(ctx)
    os.makedirs(d, exist_ok=True)
    vae, _ = load_final(ctx, "vae")
    clip, _ = load_biqa(ctx)
    unet, _ = load_final(ctx, "air")
    ref = reference_from_parts(vae, clip, unet)
    ds = PhotoSet("train", ctx.cache, log=log)
    sampler = PatchSampler(ds.images, patch=224, min_scale=1.0, max_scale=3.0, augment=True)
    lr = CATEGORIES.index("low resolution")
    n = ctx.a.air_pool_size
    t0 = time.time()
    for c0 in range(0, n, AIRPOOL_CHUNK):
        path = os.path.join(d, f"chunk_{c0 // AIRPOOL_CHUNK:04d}.npz")
        if os.path.exists(path):
            continue
        m = min(AIRPOOL_CHUNK, n - c0)
        clean = np.zeros((m, 224, 224, 3), np.uint8)
        deg = np.zeros_like(clean)
        labels = np.zeros(m, np.int64)
        wrong = np.full(m, -1, np.int64)
        for j in range(m):
            i = c0 + j
            rng = np.random.default_rng([ctx.seed, 5151, i])
            k = i % len(CATEGORIES)
            mt = degradations.min_texture(CATEGORIES[k]) or (degradations.MIN_TEXTURE if rng.random() < 0.5 else 0.0)
            clean[j], deg[j] = fresh_pair(sampler, rng, k, min_texture=mt)
            if ctx.a.airpool_tone > 0 and CATEGORIES[k] not in TONE_FREE and rng.random() < ctx.a.airpool_tone:
                tc, td = global_tone([clean[j] / 255.0, deg[j] / 255.0], rng)  # (d is the chunk folder)
                clean[j], deg[j] = (tc * 255 + 0.5).astype(np.uint8), (td * 255 + 0.5).astype(np.uint8)
            labels[j] = k
            if i % 3 == 0:
                opts = [q for q in range(len(CATEGORIES) - 1) if q != k and q != lr]
                wrong[j] = opts[int(rng.integers(0, len(opts)))]
        air = np.zeros_like(clean)
        air_wrong = np.zeros_like(clean)
        for s in range(0, m, 8):
            x = u8_to_pm1(deg[s:s + 8])
            _, cx = biqa_contexts(ref, x)
            a = air_batch_sample(ref, x, cx, ctx.a.air_sample_steps, seed=ctx.seed * 100000 + 70000 + c0 + s)
            air[s:s + 8] = pm1_to_u8(a)
            w = np.nonzero(wrong[s:s + 8] >= 0)[0]
            if len(w):
                cw = ref.prompt_states[torch.from_numpy(wrong[s:s + 8][w])]
                a = air_batch_sample(ref, x[w], cw, ctx.a.air_sample_steps, seed=ctx.seed * 100000 + 90000 + c0 + s)
                air_wrong[s + w] = pm1_to_u8(a)
        tmp = path + ".tmp.npz"
        np.savez(tmp, clean=clean, deg=deg, labels=labels, air=air, wrong=wrong, air_wrong=air_wrong)
        os.replace(tmp, path)
        log(f"airpool: chunk {c0 // AIRPOOL_CHUNK} ({c0 + m}/{n}, {time.time() - t0:.0f} s)")


def load_airpool(ctx: Ctx):
    """Every finished airpool chunk, concatenated (a dict of arrays), or None."""
    d = airpool_dir(ctx)
    if not os.path.isdir(d):
        return None
    parts = [np.load(os.path.join(d, f)) for f in sorted(os.listdir(d)) if f.startswith("chunk_") and
             f.endswith(".npz") and ".tmp" not in f]
    if not parts:
        return None
    return {k: np.concatenate([p_[k] for p_ in parts]) for k in ("clean", "deg", "labels", "air", "wrong", "air_wrong")}


# ----------------------------------------------------------------------------------------------
# SCM


def stage_scm(ctx: Ctx, pre: bool) -> None:
    name = "scmpre" if pre else "scm"
    clean, deg, labels = load_pool(ctx)
    no = CATEGORIES.index("no")
    scm = make_scm()
    if not pre and not os.path.exists(ctx.path("scm.pt")):
        pk = load_ckpt(ctx.path("scmpre_final.pt"))
        if pk is not None:
            scm.load_state_dict(pk["model"])
            log("scm: initialised from scmpre")
    tr = Trainer(ctx, name, scm, lr=ctx.a.scm_lr, betas=(0.9, 0.9))
    if pre:
        cand = np.array([i for i in range(len(labels)) if labels[i] != no])
        air = None
    else:
        ck = load_ckpt(ctx.path("air_samples.pt"))
        if ck is None or not ck.get("done"):
            raise SystemExit("scm: run the airsamples stage first")
        air = np.concatenate(ck["air"])
        cand = np.array(ck["idx"])
    wk = load_ckpt(ctx.path("air_wrong.pt")) if (not pre and ctx.a.scm_wrong_frac > 0) else None
    if not pre and ctx.a.scm_wrong_frac > 0 and (wk is None or not wk.get("done")):
        raise SystemExit("scm: --scm-wrong-frac needs the airwrong stage first")
    if wk is not None:  # [degraded, clean, AIR output under a wrong context] arrays
        wdeg, wclean, wair = deg[wk["idx"]], clean[wk["idx"]], wk["air"]
    apool = load_airpool(ctx) if (not pre and ctx.a.scm_airpool) else None
    if apool is not None:
        # the fourth run: the airpool's fresh pairs join the airsamples pairs (and their wrong-context outputs)
        deg = np.concatenate([deg[cand], apool["deg"]])
        clean = np.concatenate([clean[cand], apool["clean"]])
        labels = np.concatenate([labels[cand], apool["labels"]])
        air = np.concatenate([air, apool["air"]])
        cand = np.arange(len(deg))
        w = apool["wrong"] >= 0
        if wk is not None:
            wdeg = np.concatenate([wdeg, apool["deg"][w]])
            wclean = np.concatenate([wclean, apool["clean"][w]])
            wair = np.concatenate([wair, apool["air_wrong"][w]])
        log(f"scm: {len(apool['deg'])} airpool pairs ({int(w.sum())} with a wrong-context output) added: "
            f"{len(cand)} pairs")
    bs, ps = ctx.a.scm_batch, ctx.a.scm_patch
    # validation: held-out pairs of the pool candidates are not used; report training-distribution loss
    # on a fixed batch (the real validation is training/evaluate.py)
    vr = np.random.default_rng([ctx.seed, 55])

    def make(rng, b, mode=None):
        """mode per sample: 0 = [degraded, AIR output], 1 = [degraded, degraded] (the "SCM alone"
        input), 2 = [clean, clean] -> clean (nothing to fix: the SCM must leave it alone). Without AIR
        outputs (scmpre) mode 0 is [degraded, degraded]."""
        j = rng.integers(0, len(cand), b)
        i = cand[j]
        arrs = [deg[i], clean[i]] + ([air[j]] if air is not None else [])
        crops = crop_batch(rng, arrs, ps)
        if mode is None:
            r = rng.random(b)
            mode = np.where(r < ctx.a.scm_clean_frac, 2, np.where(r < ctx.a.scm_clean_frac + ctx.a.scm_self_frac, 1, 0))
            if ctx.a.scm_tone_frac > 0:
                # fourth run: a dark or pale picture is not necessarily underexposed or hazy; only the AIR
                # output can say so. No SCM-alone examples of the global-tone kinds, and some "nothing to
                # fix" examples are such tones themselves: [t, t] -> t.
                mode = np.where((mode == 1) & np.isin(labels[i], TONE_KINDS), 0, mode)
                for k in np.nonzero((mode == 2) & (rng.random(b) < ctx.a.scm_tone_frac))[0]:
                    kind = CATEGORIES[TONE_KINDS[int(rng.integers(0, len(TONE_KINDS)))]]
                    t, _ = degradations.degrade(crops[1][k] / 255.0, kind, rng)
                    crops[1][k] = (np.clip(t, 0, 1) * 255 + 0.5).astype(np.uint8)
        d, c = u8_to_pm1(crops[0]), u8_to_pm1(crops[1])
        mode = torch.from_numpy(np.broadcast_to(np.asarray(mode), (b,)).copy())[:, None, None, None]
        a = u8_to_pm1(crops[2]) if air is not None else d
        a = torch.where(mode == 1, d, a)
        d = torch.where(mode == 2, c, d)
        a = torch.where(mode == 2, c, a)
        return torch.cat([d, a], 1), c

    vsets = {k: make(np.random.default_rng([ctx.seed, 55, m]), 32, m)
             for k, m in (("air", 0), ("self", 1), ("clean", 2))}
    def make_wrong(rng, b):
        """[degraded, AIR output under a wrong context] -> clean (see stage_airwrong)."""
        j = rng.integers(0, len(wair), b)
        crops = crop_batch(rng, [wdeg[j], wclean[j], wair[j]], ps)
        d, c, a = (u8_to_pm1(x) for x in crops)
        return torch.cat([d, a], 1), c

    if wk is not None:
        vsets["wrong"] = make_wrong(np.random.default_rng([ctx.seed, 55, 3]), 32)

    def step_fn(step):
        rng = np.random.default_rng([ctx.seed, 4 if pre else 5, step])
        x, y = make(rng, bs)
        if wk is not None:
            nw = int(rng.binomial(bs, ctx.a.scm_wrong_frac))
            if nw:
                xw, yw = make_wrong(rng, nw)
                x, y = torch.cat([x[nw:], xw]), torch.cat([y[nw:], yw])
        loss = F.l1_loss(scm(x), y)
        tr.opt.zero_grad(set_to_none=True)
        loss.backward()
        tr.opt.step()
        return loss.item()

    # held-out check (fourth run): 4 validation crops per category, SCM on [degraded, degraded] (the SCM-alone
    # ablation) and on [clean, clean] (should stay the clean crop)
    hc, hd, _ = val_pairs(ctx, n_per=4)
    hc, hd = u8_to_pm1(hc), u8_to_pm1(hd)

    @torch.no_grad()
    def eval_fn():
        r = {}
        for k, (vx, vy) in vsets.items():
            out = torch.cat([scm(vx[i:i + 8]) for i in range(0, 32, 8)])
            r[f"{k}_in"] = round(psnr_pm1(vx[:, 3:], vy), 3)
            r[f"{k}_out"] = round(psnr_pm1(out, vy), 3)
        r["psnr_in"], r["psnr_out"] = r["air_in"], r["air_out"]
        for k, x in (("val_self", hd), ("val_clean", hc)):
            out = torch.cat([scm(torch.cat([x[i:i + 8], x[i:i + 8]], 1)) for i in range(0, len(x), 8)])
            r[k] = round(psnr_pm1(out, hc), 3)
        r["val_in"] = round(psnr_pm1(hd, hc), 3)
        return r

    if tr.state["elapsed"] < tr.budget:
        tr.run(step_fn, eval_fn, eval_every=ctx.a.eval_every, log_every=100)
    save_atomic(ctx.path(f"{name}_final.pt"), {"model": scm.state_dict(), "step": tr.state["step"],
                                               "elapsed": tr.state["elapsed"], "val": eval_fn(),
                                               "params": n_params(scm)})
    log(f"{name}: final saved")


# ----------------------------------------------------------------------------------------------
# import (fifth run: the training cache did not survive a change of machine)


def stage_import(ctx: Ctx) -> None:
    """Seeds the stage checkpoints from an exported folder (--import-from, default models/autodir-tiny), for
    a machine without the training cache: vae, air, scm and the shipped BIQA phase (training_info's
    biqa_used: biqastream or biqatone) become finished stages holding the folder's F16 weights widened to
    float32, with the step counts, minutes and validation figures of its training_info.json; biqa_final.pt
    holds the same CLIPModel (its text tower is the one AIR was trained on; the first run's patch-32 vision
    tower is not in the folder) with the biqa record's validation, so that load_biqa picks the shipped
    phase. air.pt, scm.pt and the BIQA phase's .pt get a fresh AdamW state, so those stages continue from
    the shipped weights (the cosine restarts over the new budget). The old
    training_info.json is kept as imported_training_info.json: export carries its records of stages
    whose checkpoints are not here (biqavis, biqano, ...). Pools and AIR samples are not imported:
    their stages rebuild them deterministically. Refuses to overwrite an existing checkpoint."""
    from safetensors.torch import load_file

    src = ctx.a.import_from
    info_path = os.path.join(src, "training_info.json")
    if not os.path.exists(info_path):
        raise SystemExit(f"import: {info_path} missing (not an exported autodir-tiny folder)")
    info = json.load(open(info_path))
    rec = info["stages"]
    biqa_used = info.get("biqa_used", "biqastream")  # the BIQA phase whose tower the folder holds
    if biqa_used not in ("biqastream", "biqatone"):
        raise SystemExit(f"import: the folder's BIQA is {biqa_used!r}; only biqastream / biqatone towers are importable")
    files = {"vae": ("vae", "diffusion_pytorch_model.safetensors", make_vae),
             "air": ("unet", "diffusion_pytorch_model.safetensors", make_unet),
             "scm": ("scm", "model.safetensors", make_scm),
             biqa_used: ("clip", "model.safetensors", lambda: make_clip(rec[biqa_used]["vision_patch"]))}
    resumable = ("air", "scm", biqa_used)
    targets = [f"{n}_final.pt" for n in files] + ["biqa_final.pt"] + [f"{n}.pt" for n in resumable]
    present = [t for t in targets if os.path.exists(ctx.path(t))]
    if present:
        raise SystemExit(f"import: {', '.join(present)} already in {ctx.dir}; remove them (or --redo) first")
    for name, (sub, fname, maker) in files.items():
        model = maker()
        want = model.state_dict()
        got = load_file(os.path.join(src, sub, fname))
        # transformers leaves non-persistent buffers (position_ids) out of its files
        missing = [k for k in want if k not in got and not k.endswith("position_ids")]
        unexpected = [k for k in got if k not in want]
        if missing or unexpected:
            raise SystemExit(f"import: {sub}/{fname} does not match the {name} architecture: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")
        model.load_state_dict({k: v.float() for k, v in got.items()}, strict=False)
        r = rec[name]
        ck = {"model": model.state_dict(), "step": r["steps"], "elapsed": r["minutes"] * 60, "val": r.get("val"),
              "params": r["params"], "imported_from": src}
        if r.get("vision_patch"):
            ck["vision_patch"] = r["vision_patch"]
        save_atomic(ctx.path(f"{name}_final.pt"), ck)
        if name in resumable:  # resumable as stages, with a fresh optimiser (as Trainer builds it)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.9) if name == "scm" else (0.9, 0.99))
            state = {"step": r["steps"], "elapsed": r["minutes"] * 60, "history": []}
            if name == "air":
                state.update(vae_step=rec["vae"]["steps"], biqa_step=rec["biqa"]["steps"])
            save_atomic(ctx.path(f"{name}.pt"), {"model": model.state_dict(), "opt": opt.state_dict(), "state": state})
        if name == biqa_used:
            b = rec["biqa"]
            save_atomic(ctx.path("biqa_final.pt"), dict(ck, step=b["steps"], elapsed=b["minutes"] * 60,
                                                        val=b.get("val"), params=b["params"]))
        log(f"import: {name} <- {sub}/{fname} ({r['steps']} steps, {r['minutes']:.1f} min)")
    shutil.copy(info_path, ctx.path("imported_training_info.json"))


# ----------------------------------------------------------------------------------------------
# export (the format of tools/fixtures/make_pipeline_fixture.py)


def stage_export(ctx: Ctx) -> None:
    from safetensors.torch import save_file

    out = ctx.a.out
    vae, vck = load_final(ctx, "vae")
    clip, bck = load_biqa(ctx)
    unet, ack = load_final(ctx, "air")
    scm_name = "scm" if os.path.exists(ctx.path("scm_final.pt")) else "scmpre"
    scm, sck = load_final(ctx, scm_name)
    # hand-written files survive a re-export (the card's tables are regenerated by training/evaluate.py)
    keep = {f: open(os.path.join(out, f)).read() for f in ("MODEL_CARD.md", "MODEL_CARD.notes.md")
            if os.path.exists(os.path.join(out, f))}
    if os.path.exists(out):
        shutil.rmtree(out)
    for sub in ("unet", "vae", "clip", "tokenizer", "scm", "scheduler"):
        os.makedirs(os.path.join(out, sub))
    unet.to(torch.float16).save_pretrained(os.path.join(out, "unet"), safe_serialization=True)
    vae.to(torch.float16).save_pretrained(os.path.join(out, "vae"), safe_serialization=True)
    clip.to(torch.float16).save_pretrained(os.path.join(out, "clip"), safe_serialization=True)
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(os.path.join(TOKENIZER_DIR, f), os.path.join(out, "tokenizer", f))
    save_file({k: v.detach().half().contiguous() for k, v in scm.state_dict().items()},
              os.path.join(out, "scm", "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out, "scm", "config.json"), "w") as f:
        json.dump(SCM_CONFIG, f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "scheduler", "scheduler_config.json"), "w") as f:
        json.dump(SCHEDULER, f, indent=2)
        f.write("\n")
    index = {"_class_name": "AutoDIRPipeline", "format_version": 1,
             "autodir": {"categories": CATEGORIES, "prompt_template": "A photo needs {} artifact reduction",
                         "scale_factor": SCALE, "scm_weight": 1.0,
                         "defaults": {"steps": DEFAULT_STEPS, "cfg_text": 1.0, "cfg_image": 1.0, "max_passes": 7,
                                      "sampler": "euler_ancestral"}}}
    with open(os.path.join(out, "model_index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    info = {"stages": {}, "torch": torch.__version__, "seed": ctx.seed,
            "cpu": f"{platform.processor() or platform.machine()}, 1 thread per process"}
    pool_info = ctx.path("pool_info.json")
    if os.path.exists(pool_info):
        info["pool"] = json.load(open(pool_info))
    imported = load_json(ctx.path("imported_training_info.json"))

    def rec(ck):
        if ck.get("imported_from") and imported is not None:  # not trained since stage_import: its own record
            for r in imported["stages"].values():
                if r["steps"] == ck["step"] and abs(r["minutes"] - ck["elapsed"] / 60) < 1e-6:
                    return dict(r)
        r = {"params": ck["params"], "steps": ck["step"], "minutes": ck["elapsed"] / 60,
             "val": ck.get("val")}
        if ck.get("vision_patch"):
            r["vision_patch"] = ck["vision_patch"]
        return r

    for name, ck in (("air", ack), (scm_name, sck)):
        info["stages"][name] = rec(ck)
    # every BIQA phase that has run (the exported one: biqa_used)
    for name in ("vae", "biqa", "biqavis", "biqano", "biqastream", "biqatone"):
        if os.path.exists(ctx.path(f"{name}_final.pt")):
            info["stages"][name] = rec(load_ckpt(ctx.path(f"{name}_final.pt")))
    info["biqa_used"] = next(n for n in ("biqatone", "biqastream", "biqano", "biqavis", "biqa")
                             if n in info["stages"] and info["stages"][n]["steps"] == bck["step"]
                             and abs(info["stages"][n]["minutes"] - bck["elapsed"] / 60) < 1e-6)
    if scm_name == "scm":
        pk = load_ckpt(ctx.path("scmpre_final.pt"))
        if pk is not None:
            info["stages"]["scmpre"] = {"params": pk["params"], "steps": pk["step"], "minutes": pk["elapsed"] / 60,
                                        "val": pk.get("val")}
    if imported is not None:  # records of the stages whose checkpoints were not imported (stage_import)
        for name, r in imported["stages"].items():
            info["stages"].setdefault(name, r)
        for k, v in imported.items():
            if k not in ("stages", "biqa_used", "torch", "cpu", "folder_bytes"):
                info.setdefault(k, v)
        info["imported"] = ("the checkpoints of vae, biqa, air, scm and the shipped BIQA phase were seeded from the exported "
                            "folder (stage import); records of stages not trained since are the folder's own")
    bpi = os.path.join(biqapool_dir(ctx), "info.json")
    if ctx.a.biqa_pool_size > 0 and os.path.exists(bpi):
        info["biqapool"] = json.load(open(bpi))
    if ctx.a.scm_clean_frac > 0 or ctx.a.scm_wrong_frac > 0:
        info["scm_continuation"] = ("later continued with [clean, clean] → clean (--scm-clean-frac), more "
                                    "[degraded, degraded] (--scm-self-frac) and AIR outputs under a wrong context "
                                    "(--scm-wrong-frac, airwrong stage) mixed in: see the notes")
    apool = os.path.join(airpool_dir(ctx), "chunk_0000.npz")
    if ctx.a.scm_airpool and os.path.exists(apool):
        info["airpool"] = {"n": sum(len(np.load(os.path.join(airpool_dir(ctx), f))["labels"])
                                    for f in os.listdir(airpool_dir(ctx)) if f.startswith("chunk_") and ".tmp" not in f)}
    # fifth run: the export is given the training runs' settings, as for the SCM options above
    for k in ("air_tone_pool", "airpool_tone", "biqa_jitter", "biqa_tone", "air_identity_frac"):
        if getattr(ctx.a, k):
            info[k] = getattr(ctx.a, k)
    asamp = load_ckpt(ctx.path("air_samples.pt"))
    if asamp is not None and asamp.get("done"):
        info["airsamples"] = {"n": len(asamp["idx"]), "seconds": asamp["seconds"], "steps": asamp["key"]["steps"]}
    for d, _, fs in os.walk(out):
        for f in fs:
            os.chmod(os.path.join(d, f), 0o644)
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out) for f in fs)
    info["folder_bytes"] = total
    with open(os.path.join(out, "training_info.json"), "w") as f:
        json.dump(info, f, indent=1)
        f.write("\n")
    for f, text in keep.items():
        with open(os.path.join(out, f), "w") as fh:
            fh.write(text)
    log(f"export: {out} ({total / 2**20:.2f} MiB): " +
        ", ".join(f"{k} {v['params']:,} params" for k, v in info["stages"].items()))


# ----------------------------------------------------------------------------------------------


def run_stage(ctx: Ctx, stage: str) -> None:
    t0 = time.time()
    log(f"=== stage {stage}")
    torch.manual_seed(ctx.seed + SEED_ORDER.index(stage))
    {"pool": stage_pool, "biqapool": stage_biqapool, "vae": stage_vae, "biqa": stage_biqa, "air": stage_air,
     "biqavis": lambda c: stage_biqa(c, True), "biqano": lambda c: stage_biqa(c, True, restored=True),
     "biqastream": lambda c: stage_biqa(c, stream=True), "biqatone": lambda c: stage_biqa(c, tone=True),
     "airpool": stage_airpool, "import": stage_import,
     "scmpre": lambda c: stage_scm(c, True), "airsamples": stage_airsamples,
     "airwrong": stage_airwrong, "scm": lambda c: stage_scm(c, False), "export": stage_export}[stage](ctx)
    log(f"=== stage {stage} done in {(time.time() - t0) / 60:.1f} min")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=default_cache())
    ap.add_argument("--out", default=os.path.join(REPO, "models", "autodir-tiny"))
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma list, in order, of {STAGES}")
    ap.add_argument("--minutes-per-stage", default=None,
                    help='one number, or "vae=40,biqa=25,air=70,biqavis=35,scmpre=30,scm=30" (the defaults)')
    ap.add_argument("--jobs", type=int, default=1,
                    help="2: vae || biqa, then air || (biqavis, scmpre), as single-thread subprocesses")
    ap.add_argument("--redo", default="", help="comma list of stages whose checkpoints are discarded first")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--pool-size", type=int, default=6400)
    ap.add_argument("--latent-pool", type=int, default=3200, help="pool pairs encoded for AIR training")
    ap.add_argument("--scm-pool", type=int, default=700, help="pool pairs with cached AIR outputs")
    ap.add_argument("--air-sample-steps", type=int, default=10)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--val-per-class", type=int, default=40)
    ap.add_argument("--vae-batch", type=int, default=8)
    ap.add_argument("--vae-patch", type=int, default=64)
    ap.add_argument("--vae-lr", type=float, default=1e-3)
    ap.add_argument("--vae-kl", type=float, default=1e-5)
    ap.add_argument("--biqa-batch", type=int, default=32)
    ap.add_argument("--biqa-lr", type=float, default=5e-4)
    ap.add_argument("--biqa-rank", type=float, default=1.0)
    ap.add_argument("--biqavis-lr", type=float, default=7e-4)
    ap.add_argument("--biqavis-patch", type=int, default=16,
                    help="patch size of the biqavis vision tower (a fresh one: needs --biqavis-reinit 1)")
    ap.add_argument("--biqa-pool-size", type=int, default=12000,
                    help="pairs in biqavis's own pool (0: biqavis uses the shared pool)")
    ap.add_argument("--biqapool-part", default="0/1", help="K/N: this process makes chunks c %% N == K")
    ap.add_argument("--biqa-final", default="auto", choices=["auto", "biqa", "biqavis", "biqano", "biqastream", "biqatone"],
                    help="the BIQA used downstream (airsamples, export)")
    ap.add_argument("--biqavis-restored-frac", type=float, default=0.0,
                    help='biqavis: fraction of the "no" examples replaced by restored pool images (see restored_pool)')
    ap.add_argument("--biqano-frac", type=float, default=0.5,
                    help='biqano: fraction of the "no" examples replaced by restored pool images')
    ap.add_argument("--biqano-lr", type=float, default=2e-4)
    ap.add_argument("--biqastream-from", default="biqano", choices=["biqavis", "biqano"],
                    help="the finished BIQA phase biqastream starts from")
    ap.add_argument("--biqastream-lr", type=float, default=3e-4)
    ap.add_argument("--biqa-jitter", type=float, default=0.0,
                    help="biqastream: probability that a clean crop is given a photometric_jitter before degrading")
    ap.add_argument("--biqa-tone", type=float, default=0.5,
                    help="biqatone: probability that a clean crop of noise, blur, rain, low resolution or raindrop "
                         "is given a global_tone (dark, pale or jittered) before degrading")
    ap.add_argument("--biqatone-lr", type=float, default=2e-4)
    ap.add_argument("--import-from", default=os.path.join(REPO, "models", "autodir-tiny"),
                    help="import: the exported model folder whose weights seed the stage checkpoints")
    ap.add_argument("--biqavis-reinit", type=int, default=1,
                    help="1: biqavis starts a fresh vision tower with a DCT patch embedding; 0: continues biqa's")
    ap.add_argument("--air-batch", type=int, default=16)
    ap.add_argument("--air-latent", type=int, default=16)
    ap.add_argument("--air-lr", type=float, default=5e-4)
    ap.add_argument("--air-zero-snr", type=float, default=0.25,
                    help="fraction of AIR samples trained at t=999 with no signal in z_t (see stage_air)")
    ap.add_argument("--air-identity-frac", type=float, default=0.0,
                    help="air (fifth run): fraction of samples whose prompt is an artifact the image does not have "
                         "and whose target is the image itself")
    ap.add_argument("--air-tone-pool", type=int, default=0,
                    help="AIR also trains on this many pool pairs given a global_tone (fifth run; 0: none)")
    ap.add_argument("--airpool-tone", type=float, default=0.0,
                    help="airpool: probability that a pair (kinds outside TONE_FREE) is given a global_tone")
    ap.add_argument("--scm-batch", type=int, default=8)
    ap.add_argument("--scm-patch", type=int, default=64)
    ap.add_argument("--scm-lr", type=float, default=1e-3)
    ap.add_argument("--scm-self-frac", type=float, default=0.25,
                    help="fraction of SCM samples on [degraded, degraded] (the SCM-alone input)")
    ap.add_argument("--scm-wrong-frac", type=float, default=0.0,
                    help="fraction of SCM samples on [degraded, AIR output under a wrong context] (airwrong)")
    ap.add_argument("--scm-wrong-pool", type=int, default=480, help="pool pairs with wrong-context AIR outputs")
    ap.add_argument("--air-pool-size", type=int, default=3600, help="airpool: fresh pairs with AIR outputs")
    ap.add_argument("--scm-airpool", type=int, default=0,
                    help="1: the SCM also trains on the airpool pairs (and their wrong-context outputs)")
    ap.add_argument("--scm-tone-frac", type=float, default=0.0,
                    help="fraction of the [clean, clean] samples made underexposed or hazy as a whole "
                         "([t, t] -> t), and no SCM-alone samples of those kinds (see stage_scm.make)")
    ap.add_argument("--scm-clean-frac", type=float, default=0.0,
                    help="fraction of SCM samples on [clean, clean] -> clean (nothing to correct)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    ctx = Ctx(a)
    stages = [s.strip() for s in a.stages.split(",") if s.strip()]
    for s in stages:
        if s not in STAGES + EXTRA_STAGES:
            raise SystemExit(f"unknown stage {s!r} (one of {STAGES + EXTRA_STAGES})")
    for s in filter(None, a.redo.split(",")):
        for f in (f"{s}.pt", f"{s}_final.pt"):
            if os.path.exists(ctx.path(f)):
                os.remove(ctx.path(f))
                log(f"removed {ctx.path(f)}")
    log(f"autodir-tiny: stages {stages}, minutes {ctx.minutes}, cache {ctx.dir}, seed {a.seed}")
    if "import" in stages:  # first, in this process (it is in none of the --jobs groups)
        run_stage(ctx, "import")
        stages.remove("import")
    if a.jobs > 1:
        base = [sys.executable, "-m", "training.train_autodir_tiny"] + [x for x in (argv or sys.argv[1:])]
        # drop --jobs / --stages / --redo from the child command lines
        clean = []
        skip = False
        for x in base:
            if skip:
                skip = False
                continue
            if x in ("--jobs", "--stages", "--redo"):
                skip = True
                continue
            if x.startswith(("--jobs=", "--stages=", "--redo=")):
                continue
            clean.append(x)
        # each group: stage sequences run side by side as subprocesses (each re-reads this file)
        groups = [[["pool"]], [["vae"], ["biqa"]], [["air"], ["biqapool", "biqavis", "scmpre"]],
                  [["airsamples", "airpool", "scm", "biqano", "biqastream", "biqatone", "export"]]]
        for g in groups:
            g = [[s for s in seq if s in stages] for seq in g]
            g = [seq for seq in g if seq]
            if not g:
                continue
            procs = [subprocess.Popen(clean + ["--stages", ",".join(seq)], cwd=REPO) for seq in g]
            rcs = [p.wait() for p in procs]
            if any(rcs):
                raise SystemExit(f"stages {g} failed: {rcs}")
        return
    for s in stages:
        run_stage(ctx, s)


if __name__ == "__main__":
    main()
