#!/usr/bin/env python3
"""PyTorch counterpart of `autodir bench pipeline_pass`: one AutoDIR pass on the full-size architecture with
random weights, run as the authors' eval_w_SCM.py runs it (three UNet branches per step, even at cfg 1/1).

  /work/venv/bin/python tools/bench/torch_pipeline_pass.py --res 512 --steps 20 --runs 1 [--threads N] [--json out.json]
  .build*/release/autodir-cli bench pipeline_pass --res 512 --steps 20 --runs 1   # the engine, same machine, same session

The pass (tools/reference/autodir_pipeline.py, float32): BIQA (CLIP ViT-L/14 vision tower on the 224 centre
crop, softmax over the 8 prompts, probability-weighted text context), VAE encode (posterior mode), Euler
ancestral over `--steps` steps with CFGDenoiser's batch of 3 (text+image, image, none), VAE decode, SCM
(NAFNet width 64). The engine's pass does the same work but one UNet evaluation per step (cfg 1/1 shortcut)
plus one text-tower run for its (empty) prompt context. Prints the median of `--runs` timed runs after one
warm-up; the setup (building the models, the prompts' text states) is not timed.
"""
import argparse
import json
import os
import sys
import time

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from reference.autodir_pipeline import AutoDIRReference  # noqa: E402
from reference.nafnet import NAFNet  # noqa: E402


def build():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer
    unet = UNet2DConditionModel(in_channels=8, out_channels=4, block_out_channels=(320, 640, 1280, 1280),
                                cross_attention_dim=768, attention_head_dim=8, layers_per_block=2)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    cfg = CLIPConfig(text_config=dict(hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
                                      projection_dim=768, hidden_act="quick_gelu"),
                     vision_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                                        patch_size=14, image_size=224, projection_dim=768, hidden_act="quick_gelu"),
                     projection_dim=768)
    clip = CLIPModel(cfg)
    tok_dir = os.path.join(ROOT, "Tests", "EngineTests", "Fixtures", "tokenizer")
    tok = CLIPTokenizer(os.path.join(tok_dir, "vocab.json"), os.path.join(tok_dir, "merges.txt"))
    scm = NAFNet()
    return AutoDIRReference(unet, vae, clip, tok, scm, {}, {}, dtype=torch.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--warmup-steps", type=int, default=0,
                    help="steps of the untimed warm-up pass (default: --steps; 1 warms every component at a fraction of the cost)")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.manual_seed(0)
    if a.threads:
        torch.set_num_threads(a.threads)
    with torch.inference_mode():
        ref = build()
        x = torch.rand(1, 3, a.res, a.res) * 2 - 1
        unet_calls = []

        def one_pass(steps):
            ref.eps_model.calls = 0
            _, _, context = ref.detect(x)
            ref.restore_pass(x, context, steps, 0, 1.0, 1.0, three_branches=True)
            unet_calls.append(ref.eps_model.calls)

        one_pass(a.warmup_steps or a.steps)  # warm-up
        ts = []
        for _ in range(a.runs):
            t = time.perf_counter()
            one_pass(a.steps)
            ts.append(time.perf_counter() - t)
    ts.sort()
    out = {"component": "pipeline_pass", "torch": torch.__version__, "threads": torch.get_num_threads(), "res": a.res,
           "steps": a.steps, "runs": a.runs, "median_s": ts[len(ts) // 2], "min_s": ts[0],
           "unet_batch3_calls_per_pass": unet_calls[-1]}
    print(f"pipeline_pass median {out['median_s']:8.3f} s   ({a.steps} steps x 3 UNet branches, res {a.res}, "
          f"{out['threads']} threads)", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
