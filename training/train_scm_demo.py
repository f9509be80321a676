"""Trains the demo SCM: a small NAFNet denoiser with AutoDIR's SCM input convention, and exports it
to models/scm-demo (scm/config.json + scm/model.safetensors, README.md, a noisy/clean sample pair).

What it is: the structure-correction module of AUTODIR.md section 4 at a small size
(img_channel 6, out_channel 3, width 16, enc_blk_nums [1,1,1,1], middle_blk_num 1,
dec_blk_nums [1,1,1,1]; the module is tools/reference/nafnet.py). Input = concat[noisy, noisy]:
the second half stands in for the AIR output, to which the network's residual is added. Target:
the clean patch. Loss L1. It is only a stand-in for the engine's demo until autodir-tiny exists.

Training: 64x64 multi-scale patches (training/data.py, training split), noise from
training/degradations.py ("noise": Gaussian sigma 5-50/255, or Poisson-Gaussian), Adam
(lr 1e-3, betas 0.9/0.9, cosine decay to 1e-6 over the time budget, 100-step linear warm-up),
batch 8, torch on ONE thread, seeded: the batch of step k is a function of (seed, k) alone, so a
resumed run sees the same batches. It stops by the clock (default 24.5 minutes for the training loop, evaluations and
checkpoints included, summed across resumptions, so a whole run stays under 25 minutes; --max-steps makes the run length, and the schedule, step-based instead).
A checkpoint (model, optimiser, step, elapsed time) is written every minute outside the repository
(default ~/.cache/autodir-train/scm-demo/ckpt.pt); rerunning the same command resumes from it.

Validation: 50 fixed 64x64 patches from the validation split (training.data.fixed_patches, seed
1234) with Gaussian noise sigma = 25/255 (seed 1000 + i for patch i); prints the mean PSNR of the
noisy input and of the network output (clipped to [0, 1]) before and after training.

Usage (from the repository root):
    nohup /work/venv/bin/python -m training.train_scm_demo > /tmp/scm_demo.log 2>&1 &
    /work/venv/bin/python -m training.train_scm_demo --export-only   # re-export from the checkpoint
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from tools.reference.nafnet import NAFNet
from training import degradations
from training.data import PatchSampler, PhotoSet, default_cache, fixed_patches

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = {"img_channel": 6, "out_channel": 3, "width": 16, "enc_blk_nums": [1, 1, 1, 1],
          "middle_blk_num": 1, "dec_blk_nums": [1, 1, 1, 1]}
VAL_SIGMA = 25.0 / 255.0
SAMPLE_PREFERENCE = ("EveningGlow", "TwoWings", "Aqua")


def log(*a):
    print(time.strftime("%H:%M:%S"), *a, flush=True)


def to_tensor(batch_hwc: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(batch_hwc.transpose(0, 3, 1, 2))).float()


def scm_forward(model: NAFNet, noisy: torch.Tensor) -> torch.Tensor:
    """SCM convention: input = concat[degraded, AIR output]; here the AIR output is the noisy image."""
    return model(torch.cat([noisy, noisy], dim=1))


def psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR (dB) for tensors in [0, 1], shape N x C x H x W."""
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(1.0 / mse)


def make_val_set(cache: str, n: int = 50, patch: int = 64):
    clean = fixed_patches("val", n=n, patch=patch, seed=1234, cache=cache)
    noisy = np.stack([degradations.degrade(c, "noise", seed=1000 + i, sigma=VAL_SIGMA, poisson=False)[0]
                      for i, c in enumerate(clean)])
    return to_tensor(clean), to_tensor(noisy)


@torch.no_grad()
def evaluate(model: NAFNet, clean: torch.Tensor, noisy: torch.Tensor) -> tuple[float, float]:
    model.eval()
    outs = [scm_forward(model, noisy[i:i + 10]).clamp(0, 1) for i in range(0, len(noisy), 10)]
    model.train()
    out = torch.cat(outs)
    return float(psnr(noisy, clean).mean()), float(psnr(out, clean).mean())


def train_batch(sampler: PatchSampler, seed: int, step: int, batch: int):
    rng = np.random.default_rng([seed, step])
    clean = sampler.batch(rng, batch)
    noisy = np.stack([degradations.degrade(c, "noise", rng)[0] for c in clean])
    return to_tensor(clean), to_tensor(noisy)


def lr_at(progress: float, step: int, base: float, warmup: int = 100, floor: float = 1e-6) -> float:
    p = min(max(progress, 0.0), 1.0)
    lr = floor + 0.5 * (base - floor) * (1 + math.cos(math.pi * p))
    return lr * min(1.0, (step + 1) / warmup)


def save_ckpt(path: str, state: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# export


def pick_sample(cache: str, size: int = 256, seed: int = 25):
    """A size x size crop from a validation picture (the first of SAMPLE_PREFERENCE present, else the
    first validation picture), at the crop position with the most detail on a coarse grid; returns
    (clean uint8, noisy uint8, picture name)."""
    ds = PhotoSet("val", cache)
    names = [e["name"] for e in ds.entries]
    idx = next((names.index(n) for n in SAMPLE_PREFERENCE if n in names), 0)
    im = ds.images[idx]
    h, w = im.shape[:2]
    y_lum = im.astype(np.float64) @ np.array([0.299, 0.587, 0.114]) / 255.0
    g = np.abs(np.diff(y_lum, axis=0))[:, :-1] + np.abs(np.diff(y_lum, axis=1))[:-1, :]
    best, pos = -1.0, (0, 0)
    for y in range(0, h - size, size // 4):
        for x in range(0, w - size, size // 4):
            s = float(g[y:y + size, x:x + size].mean())
            if s > best:
                best, pos = s, (y, x)
    y, x = pos
    clean = im[y:y + size, x:x + size]
    noisy, _ = degradations.degrade(clean.astype(np.float32) / 255.0, "noise", seed=seed,
                                    sigma=VAL_SIGMA, poisson=False)
    noisy8 = (np.clip(noisy, 0, 1) * 255.0 + 0.5).astype(np.uint8)
    return clean, noisy8, f"{ds.entries[idx]['source']}/{ds.entries[idx]['name']} crop y={y} x={x}"


def export(model: NAFNet, out_dir: str, info: dict, cache: str, dtype: str = "f32") -> dict:
    scm_dir = os.path.join(out_dir, "scm")
    os.makedirs(scm_dir, exist_ok=True)
    with open(os.path.join(scm_dir, "config.json"), "w") as f:
        json.dump(model.config(), f, indent=2)
        f.write("\n")
    tdt = torch.float32 if dtype == "f32" else torch.float16
    sd = {k: v.detach().to(tdt).contiguous() for k, v in model.state_dict().items()}
    save_file(sd, os.path.join(scm_dir, "model.safetensors"))
    os.chmod(os.path.join(scm_dir, "model.safetensors"), 0o644)

    clean8, noisy8, where = pick_sample(cache)
    Image.fromarray(clean8).save(os.path.join(out_dir, "sample_clean.png"), optimize=True)
    Image.fromarray(noisy8).save(os.path.join(out_dir, "sample_noisy.png"), optimize=True)
    # the sample through the exported weights (as stored), as the engine would see it
    m2 = NAFNet.from_config(model.config())
    m2.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    m2.eval()
    c = to_tensor(clean8[None].astype(np.float32) / 255.0)
    n = to_tensor(noisy8[None].astype(np.float32) / 255.0)
    with torch.no_grad():
        o = scm_forward(m2, n).clamp(0, 1)
    o8 = torch.round(o * 255.0) / 255.0
    info = dict(info)
    info["sample"] = {"where": where, "psnr_noisy": float(psnr(n, c)), "psnr_output": float(psnr(o, c)),
                      "psnr_output_8bit": float(psnr(o8, c))}
    info["n_params"] = int(sum(v.numel() for v in sd.values()))
    info["dtype"] = dtype.upper()
    info["weights_bytes"] = os.path.getsize(os.path.join(scm_dir, "model.safetensors"))
    # the README itself is a few kB; count it at its previous size or 4 kB
    readme = os.path.join(out_dir, "README.md")
    others = os.path.getsize(readme) if os.path.exists(readme) else 4096
    info["folder_bytes"] = others + sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out_dir)
                                        for f in fs if f != "README.md")
    write_readme(out_dir, info)
    return info


def write_readme(out_dir: str, info: dict) -> None:
    v, s = info["val"], info["sample"]
    counts = info["data_counts"]
    rows = "\n".join(f"  | {src} | {d['train']} | {d['val']} |" for src, d in counts.items())
    text = f"""# scm-demo: a small denoising SCM trained here

**What this is.** A small NAFNet structure-correction module (the SCM of AutoDIR, see
`/work/shared/design/AUTODIR.md` §4 and `tools/reference/nafnet.py`) trained **in this repository, on
this machine's CPU, for denoising only**. It is a stand-in so the engine has real, useful weights for
its demo until the project's own full model (`models/autodir-tiny`, issue 5) exists. It is **not**
AutoDIR: there is no BIQA, VAE or diffusion model here, and it only removes noise.

- `scm/config.json`: `{json.dumps(info["config"])}`
  ({info["n_params"]:,} parameters).
- `scm/model.safetensors`: the module's `state_dict`, keys verbatim (`intro.*`, `encoders.*`, …,
  no `NAFNet.` prefix), {info["dtype"]}.
- SCM convention: the input has 6 channels, `concat[degraded, AIR output]`, and the output is
  `residual + input[:, 3:6]` (weight 1). This model was trained with the **noisy image in both
  halves** (no AIR stage exists yet), so run it as `SCM(concat[noisy, noisy])`.
- `sample_noisy.png` / `sample_clean.png`: a 256×256 crop of a **validation** picture
  ({s["where"]}, of the copy cached at 1024 px on the long side), 8-bit RGB; the noisy one has
  Gaussian noise σ = 25/255 added (seed 25) and is quantised to 8 bits.
- Size: {info["folder_bytes"] / 2**20:.1f} MiB in all, {info["weights_bytes"] / 2**20:.2f} MiB of it
  the weights ({info["dtype"]}); `--dtype f16` halves the weights.

## Training

- Data: photos from the Debian packages plasma-workspace-wallpapers, gnome-backgrounds,
  mate-backgrounds, ukui-wallpapers and the images bundled in scikit-image, selected and split by
  `training/data.py` (flat illustrations rejected; fixed validation split by file):

  | source | train images | validation images |
  |---|---|---|
{rows}

- Patches: 64×64, multi-scale (a square region of 64–256 px resized to 64), flips/rotations.
- Noise (`training/degradations.py`, "noise"): Gaussian σ ~ U(5, 50)/255 (p = 0.75) or Poisson
  shot noise (peak ~ logU(20, 200)) + Gaussian read noise σ ~ U(1, 10)/255 (p = 0.25).
- Loss L1; Adam lr 1e-3 (β 0.9/0.9), cosine decay, batch {info["batch"]}; seed {info["seed"]};
  PyTorch {info["torch"]} on **one CPU thread**; {info["steps"]} steps in
  {info["train_seconds"] / 60:.1f} minutes of wall-clock training time ({info["cpu"]}; the machine
  was shared with other jobs, so the step rate varied).
- Command (repository root):
  `/work/venv/bin/python -m training.train_scm_demo` (resumable; see the script's docstring).

## Measured (PyTorch)

Validation: 50 fixed 64×64 patches of the validation split, Gaussian σ = 25/255, mean PSNR:

| | PSNR (dB) |
|---|---|
| noisy input | {v["psnr_input"]:.2f} |
| untrained network (step 0) | {v["psnr_before"]:.2f} |
| trained network | **{v["psnr_after"]:.2f}** |

(The validation patches are multi-scale: regions of 64–256 px shrunk to 64 px, so they are
smoother than full-resolution crops and the gain is larger than on a detailed picture.)

On the shipped sample (256×256, full image): noisy {s["psnr_noisy"]:.2f} dB → output
{s["psnr_output"]:.2f} dB (float output clipped to [0, 1]; {s["psnr_output_8bit"]:.2f} dB after
rounding to 8 bits). An engine running these weights on `sample_noisy.png` should reproduce that
figure to within a few hundredths of a dB.
"""
    with open(os.path.join(out_dir, "README.md"), "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cache", default=default_cache())
    ap.add_argument("--ckpt", default=None, help="default <cache>/scm-demo/ckpt.pt")
    ap.add_argument("--out", default=os.path.join(REPO, "models", "scm-demo"))
    ap.add_argument("--minutes", type=float, default=24.5,
                    help="wall-clock budget of the training loop (evaluations and checkpoints included)")
    ap.add_argument("--max-steps", type=int, default=0, help="stop (and schedule) by steps instead")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", choices=("f32", "f16"), default="f32", help="exported tensor type")
    ap.add_argument("--fresh", action="store_true", help="ignore an existing checkpoint")
    ap.add_argument("--export-only", action="store_true", help="export the checkpoint, no training")
    ap.add_argument("--no-export", action="store_true")
    a = ap.parse_args(argv)

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    ckpt_path = a.ckpt or os.path.join(a.cache, "scm-demo", "ckpt.pt")

    train_set = PhotoSet("train", a.cache, log=log)
    sampler = PatchSampler(train_set.images, patch=a.patch, min_scale=1.0, max_scale=4.0, augment=True)
    val_clean, val_noisy = make_val_set(a.cache, n=50, patch=a.patch)
    from training.data import build, counts
    data_counts = counts(build(a.cache))
    log(f"train images {len(train_set)}, validation patches {len(val_clean)}")

    model = NAFNet.from_config(CONFIG)
    opt = torch.optim.Adam(model.parameters(), lr=a.lr, betas=(0.9, 0.9))
    state = {"step": 0, "elapsed": 0.0, "val_before": None, "history": []}
    if os.path.exists(ckpt_path) and not a.fresh:
        ck = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        state = ck["state"]
        log(f"resumed from {ckpt_path}: step {state['step']}, {state['elapsed'] / 60:.1f} min trained")

    if state["val_before"] is None:
        p_in, p_out = evaluate(model, val_clean, val_noisy)
        state["val_before"] = {"psnr_input": p_in, "psnr_output": p_out}
        log(f"validation before training: input {p_in:.2f} dB, output {p_out:.2f} dB")

    budget = a.minutes * 60.0

    def done() -> bool:
        if a.max_steps:
            return state["step"] >= a.max_steps
        return state["elapsed"] >= budget

    def checkpoint():
        save_ckpt(ckpt_path, {"model": model.state_dict(), "opt": opt.state_dict(), "state": state,
                              "config": CONFIG, "args": vars(a)})

    if not a.export_only:
        last_ckpt = time.time()
        t_mark = time.time()
        run_loss, run_n = 0.0, 0
        while not done():
            progress = state["step"] / a.max_steps if a.max_steps else state["elapsed"] / budget
            for g in opt.param_groups:
                g["lr"] = lr_at(progress, state["step"], a.lr)
            clean, noisy = train_batch(sampler, a.seed, state["step"], a.batch)
            out = scm_forward(model, noisy)
            loss = F.l1_loss(out, clean)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            state["step"] += 1
            now = time.time()
            state["elapsed"] += now - t_mark
            t_mark = now
            run_loss += loss.item()
            run_n += 1
            if state["step"] % 200 == 0:
                log(f"step {state['step']:6d}  {state['elapsed'] / 60:5.1f} min  loss {run_loss / run_n:.4f}  "
                    f"lr {opt.param_groups[0]['lr']:.2e}")
                run_loss, run_n = 0.0, 0
            if state["step"] % 1000 == 0:
                p_in, p_out = evaluate(model, val_clean, val_noisy)
                state["history"].append((state["step"], state["elapsed"], p_out))
                log(f"  validation: input {p_in:.2f} dB, output {p_out:.2f} dB")
            if now - last_ckpt > 60:
                checkpoint()
                last_ckpt = time.time()
        checkpoint()

    p_in, p_out = evaluate(model, val_clean, val_noisy)
    log(f"validation after training ({state['step']} steps, {state['elapsed'] / 60:.1f} min): "
        f"input {p_in:.2f} dB, output {p_out:.2f} dB (before: {state['val_before']['psnr_output']:.2f} dB)")
    if a.no_export:
        return
    info = {
        "config": CONFIG, "batch": a.batch, "seed": a.seed, "steps": state["step"],
        "train_seconds": state["elapsed"], "torch": torch.__version__,
        "cpu": f"{platform.processor() or platform.machine()}, 1 thread",
        "val": {"psnr_input": p_in, "psnr_before": state["val_before"]["psnr_output"], "psnr_after": p_out},
        "data_counts": data_counts,
    }
    info = export(model, a.out, info, a.cache, a.dtype)
    s = info["sample"]
    log(f"exported to {a.out}: sample {s['where']}: noisy {s['psnr_noisy']:.2f} dB -> "
        f"output {s['psnr_output']:.2f} dB")
    with open(os.path.join(os.path.dirname(ckpt_path), "result.json"), "w") as f:
        json.dump(info, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
