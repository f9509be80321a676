#!/usr/bin/env python3
"""Convert the official AutoDIR PyTorch Lightning checkpoint into an autodir model folder.

    /work/venv/bin/python tools/convert_autodir_ckpt.py AutoDIR.ckpt models/autodir-full [--dtype f16]

Input (AUTODIR.md §6): a Lightning `.ckpt` whose `state_dict` holds
    model.diffusion_model.*        UNet, ldm `UNetModel` names
    first_stage_model.*            VAE, ldm `AutoencoderKL` names
    model_assessment.clipmodel.*   transformers `CLIPModel` (BIQA)
    NAFNet.*                       the SCM (NAFNet)
    cond_stage_model.*             unused by AutoDIR (ignored)
    betas, alphas_cumprod, ...     ldm's schedule buffers (used to check / write the noise schedule)
A bare state_dict (a .ckpt/.pt without "state_dict", or a .safetensors file) with the same keys is accepted too.

Output (ARCHITECTURE.md §3):
    model_index.json                                   autodir settings (Engine/Pipeline/ModelIndex.swift)
    unet/config.json + diffusion_pytorch_model.safetensors   diffusers UNet2DConditionModel
    vae/config.json  + diffusion_pytorch_model.safetensors   diffusers AutoencoderKL
    clip/config.json + model.safetensors                transformers CLIPModel
    tokenizer/vocab.json + merges.txt                   copied from --tokenizer
    scm/config.json  + model.safetensors                NAFNet, keys as the reference
    scheduler/scheduler_config.json                     diffusers, from the checkpoint's betas

UNet and VAE are renamed by diffusers' own ldm→diffusers code (diffusers.loaders.single_file_utils:
create_unet_diffusers_config_from_ldm / convert_ldm_unet_checkpoint and create_vae_diffusers_config_from_ldm /
convert_ldm_vae_checkpoint), fed with an ldm config that this script infers from the tensor shapes. Only the
attention head counts cannot be read from shapes: the UNet takes AutoDIR's num_heads 8 and CLIP takes
hidden_size / 64 (OpenAI's ViT-L/14: 12 text, 16 vision heads); override them with --unet-config /
--clip-config for other sizes.

Strict: every tensor of the checkpoint must end up in the folder or be on the short ignore list
(cond_stage_model.*, ldm's schedule buffers, `position_ids` buffers, model_ema.* unless --extract-ema,
first_stage_model.loss.*, and --ignore-prefix), and every tensor the diffusers / transformers / NAFNet
models expect must be present with the right shape; otherwise the script stops and names the keys.

Safety: the checkpoint is read with torch.load(weights_only=True), which refuses arbitrary pickled objects.
A checkpoint that also pickles Python objects (e.g. an OmegaConf `hyper_parameters` entry written by some
Lightning versions) fails that; --unsafe-pickle reads it with weights_only=False, which can run code
hidden in the file: use it only for a file from a source you trust.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import shutil
import sys
import warnings

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "model_assessment.clipmodel."
SCM_PREFIX = "NAFNet."
IGNORED_PREFIXES = ("cond_stage_model.", "first_stage_model.loss.")
# ldm DDPM.register_schedule's persistent buffers (LatentDiffusion also has `scale_factor` with scale_by_std).
SCHEDULE_BUFFERS = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "logvar", "lvlb_weights", "scale_factor", "cond_ids",
}
CATEGORIES = ["noise", "blur", "rain", "underexposure", "haze", "low resolution", "raindrop", "no"]
DEFAULT_TOKENIZER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "EngineTests",
                                 "Fixtures", "tokenizer")


class ConversionError(Exception):
    """A checkpoint this script cannot convert; the message says why."""


def _torch():
    import torch
    return torch


# ---------------------------------------------------------------------------------------------------
# Reading

def load_state_dict(path: str, unsafe_pickle: bool = False) -> dict:
    torch = _torch()
    if not os.path.isfile(path):
        raise ConversionError(f"{path}: no such file")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return dict(load_file(path))
        except Exception as e:  # safetensors raises its own error types
            raise ConversionError(f"{path}: not a readable safetensors file ({e})") from e
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04" and not head.startswith(b"\x80"):
        raise ConversionError(f"{path}: not a PyTorch checkpoint (neither a torch.save zip archive nor a pickle)")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle, mmap=True)
        except RuntimeError as e:
            if "mmap" not in str(e):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=not unsafe_pickle)  # legacy (non-zip) format
    except Exception as e:
        if not unsafe_pickle and ("weights_only" in str(e) or "Unsupported global" in str(e)):
            raise ConversionError(
                f"{path}: the file pickles Python objects besides tensors, which torch.load(weights_only=True) "
                f"refuses ({str(e).splitlines()[0]}). If you trust where the file comes from, re-run with "
                f"--unsafe-pickle.") from e
        raise ConversionError(f"{path}: cannot be read as a PyTorch checkpoint ({type(e).__name__}: {e})") from e
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj:
        raise ConversionError(f"{path}: no state_dict found (top-level object is {type(obj).__name__})")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ConversionError(f"{path}: the state_dict holds non-tensor entries, e.g. {bad[:3]}")
    return obj


def split(sd: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


# ---------------------------------------------------------------------------------------------------
# Shape inference: ldm configs (the input diffusers' own builders expect)

def _need(sd: dict, key: str, what: str):
    if key not in sd:
        raise ConversionError(f"{what}: missing tensor '{key}'")
    return sd[key]


def infer_ldm_unet_params(unet: dict, num_heads: int) -> dict:
    """ldm `unet_config.params` from the UNet's tensors (openaimodel.py layout)."""
    w = _need(unet, "input_blocks.0.0.weight", "UNet")
    model_channels, in_channels = int(w.shape[0]), int(w.shape[1])
    out_channels = int(_need(unet, "out.2.weight", "UNet").shape[0])
    n_input = 1 + max(int(k.split(".")[1]) for k in unet if k.startswith("input_blocks."))
    res_counts, level_channels, attention, depths, context_dims, linear = [0], [], set(), set(), set(), set()
    level = 0
    for i in range(1, n_input):
        if f"input_blocks.{i}.0.op.weight" in unet:  # downsampler closes a level
            level += 1
            res_counts.append(0)
            continue
        ch = int(_need(unet, f"input_blocks.{i}.0.out_layers.3.weight", "UNet").shape[0])
        res_counts[level] += 1
        if len(level_channels) <= level:
            level_channels.append(ch)
        if f"input_blocks.{i}.1.proj_in.weight" in unet:
            attention.add(2 ** level)
            blocks = {int(k.split(".")[4]) for k in unet if k.startswith(f"input_blocks.{i}.1.transformer_blocks.")}
            depths.add(len(blocks))
            context_dims.add(int(unet[f"input_blocks.{i}.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]))
            linear.add(unet[f"input_blocks.{i}.1.proj_in.weight"].ndim == 2)
    if len(set(res_counts)) != 1 or not res_counts[0]:
        raise ConversionError(f"UNet: unequal resnet counts per level {res_counts}; not an SD-style UNetModel")
    if any(c % model_channels for c in level_channels):
        raise ConversionError(f"UNet: level channels {level_channels} are not multiples of {model_channels}")
    if "middle_block.1.proj_in.weight" in unet:
        blocks = {int(k.split(".")[3]) for k in unet if k.startswith("middle_block.1.transformer_blocks.")}
        depths.add(len(blocks))
        context_dims.add(int(unet["middle_block.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]))
    if len(depths) > 1 or len(context_dims) > 1 or len(linear) > 1:
        raise ConversionError(f"UNet: transformer depth {sorted(depths)} / context dim {sorted(context_dims)} / "
                              "linear projection differ between levels; pass a full --unet-config")
    return {
        "in_channels": in_channels, "out_channels": out_channels, "model_channels": model_channels,
        "attention_resolutions": sorted(attention, reverse=True), "num_res_blocks": res_counts[0],
        "channel_mult": [c // model_channels for c in level_channels], "num_heads": num_heads,
        "use_spatial_transformer": True, "transformer_depth": depths.pop() if depths else 1,
        "context_dim": context_dims.pop() if context_dims else None,
        "use_linear_in_transformer": linear.pop() if linear else False, "legacy": False,
    }


def infer_ldm_ddconfig(vae: dict) -> tuple[dict, int]:
    """ldm `first_stage_config.params` (ddconfig, embed_dim) from the VAE's tensors (model.py layout)."""
    w = _need(vae, "encoder.conv_in.weight", "VAE")
    ch, in_channels = int(w.shape[0]), int(w.shape[1])
    n_levels = 1 + max(int(k.split(".")[2]) for k in vae if k.startswith("encoder.down."))
    mult = [int(_need(vae, f"encoder.down.{i}.block.0.conv2.weight", "VAE").shape[0]) // ch for i in range(n_levels)]
    nrb = 1 + max(int(k.split(".")[4]) for k in vae if k.startswith("encoder.down.0.block."))
    z_channels = int(_need(vae, "decoder.conv_in.weight", "VAE").shape[1])
    double_z = int(_need(vae, "encoder.conv_out.weight", "VAE").shape[0]) == 2 * z_channels
    embed_dim = int(vae["post_quant_conv.weight"].shape[1]) if "post_quant_conv.weight" in vae else z_channels
    ddconfig = {
        "double_z": double_z, "z_channels": z_channels, "resolution": 256, "in_channels": in_channels,
        "out_ch": int(_need(vae, "decoder.conv_out.weight", "VAE").shape[0]), "ch": ch, "ch_mult": mult,
        "num_res_blocks": nrb, "attn_resolutions": [], "dropout": 0.0,
    }
    return ddconfig, embed_dim


def infer_clip_config(clip: dict) -> dict:
    """transformers CLIPConfig kwargs from the CLIPModel's tensors (heads: hidden / 64, OpenAI's rule)."""
    tok = _need(clip, "text_model.embeddings.token_embedding.weight", "CLIP")
    pos = _need(clip, "text_model.embeddings.position_embedding.weight", "CLIP")
    patch = _need(clip, "vision_model.embeddings.patch_embedding.weight", "CLIP")
    vpos = _need(clip, "vision_model.embeddings.position_embedding.weight", "CLIP")

    def layers(tower):
        idx = [int(k.split(".")[3]) for k in clip if k.startswith(f"{tower}.encoder.layers.")]
        return 1 + max(idx) if idx else 0

    def heads(hidden):
        return hidden // 64 if hidden % 64 == 0 else None

    th, vh = int(tok.shape[1]), int(patch.shape[0])
    grid = math.isqrt(int(vpos.shape[0]) - 1)
    text = {
        "vocab_size": int(tok.shape[0]), "hidden_size": th, "max_position_embeddings": int(pos.shape[0]),
        "intermediate_size": int(_need(clip, "text_model.encoder.layers.0.mlp.fc1.weight", "CLIP").shape[0]),
        "num_hidden_layers": layers("text_model"), "num_attention_heads": heads(th), "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    }
    vision = {
        "hidden_size": vh, "num_channels": int(patch.shape[1]), "patch_size": int(patch.shape[2]),
        "image_size": grid * int(patch.shape[2]),
        "intermediate_size": int(_need(clip, "vision_model.encoder.layers.0.mlp.fc1.weight", "CLIP").shape[0]),
        "num_hidden_layers": layers("vision_model"), "num_attention_heads": heads(vh), "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    }
    proj = int(_need(clip, "text_projection.weight", "CLIP").shape[0])
    return {"text_config": text, "vision_config": vision, "projection_dim": proj, "logit_scale_init_value": 2.6592}


def infer_nafnet_config(scm: dict) -> dict:
    w = _need(scm, "intro.weight", "SCM (NAFNet)")

    def count(prefix, depth):
        ids = {int(k.split(".")[depth]) for k in scm if k.startswith(prefix)}
        return ids

    levels = sorted(count("encoders.", 1))
    enc = [len(count(f"encoders.{i}.", 2)) for i in levels]
    dec = [len(count(f"decoders.{i}.", 2)) for i in sorted(count("decoders.", 1))]
    return {"img_channel": int(w.shape[1]), "out_channel": int(_need(scm, "ending.weight", "SCM (NAFNet)").shape[0]),
            "width": int(w.shape[0]), "enc_blk_nums": enc, "middle_blk_num": len(count("middle_blks.", 1)),
            "dec_blk_nums": dec}


# ---------------------------------------------------------------------------------------------------
# Conversion

def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def consumed_keys(source: dict, converted: dict) -> set:
    """Source keys whose tensor (or a view of it, e.g. diffusers' [:, :, 0, 0] of a 1×1 conv) is in `converted`."""
    by_ptr = {}
    for k, v in source.items():
        by_ptr.setdefault((v.data_ptr(), v.numel()), []).append(k)
    used = set()
    for v in converted.values():
        if v is not None:
            used.update(by_ptr.get((v.data_ptr(), v.numel()), ()))
    return used


def check_against_model(what: str, converted: dict, expected: dict, source: dict, prefix: str) -> None:
    """`expected`: name → shape of the target model. Raises naming missing, unexpected and mis-shaped tensors."""
    present = {k: v for k, v in converted.items() if v is not None}
    origin = {}
    for k, v in source.items():
        origin.setdefault((v.data_ptr(), v.numel()), prefix + k)

    def named(k):  # the converted name and the checkpoint key it came from
        src = origin.get((present[k].data_ptr(), present[k].numel()))
        return k if src is None or src == prefix + k else f"{k} (from {src})"

    missing = sorted(set(expected) - set(present))
    unexpected = sorted(named(k) for k in set(present) - set(expected))
    wrong = sorted(f"{named(k)} {list(present[k].shape)}, expected {list(expected[k])}"
                   for k in set(present) & set(expected) if tuple(present[k].shape) != tuple(expected[k]))
    unused = sorted(prefix + k for k in set(source) - consumed_keys(source, present))
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", wrong),
                        ("left unconverted", unused)):
        if keys:
            shown = ", ".join(keys[:12]) + (f", … ({len(keys)} in all)" if len(keys) > 12 else "")
            problems.append(f"{len(keys)} {label}: {shown}")
    if problems:
        raise ConversionError(f"{what}: " + "; ".join(problems))


def meta_shapes(build) -> dict:
    torch = _torch()
    with torch.device("meta"):
        model = build()
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


@contextlib.contextmanager
def quiet():
    """Silences diffusers' logging and warnings while its conversion helpers run."""
    from diffusers.utils import logging as dlog
    level = dlog.get_verbosity()
    dlog.set_verbosity_error()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            dlog.set_verbosity(level)


def convert_unet(sd: dict, overrides: dict, extract_ema: bool):
    from diffusers import UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_ldm_unet_checkpoint, create_unet_diffusers_config_from_ldm
    unet = split(sd, UNET_PREFIX)
    if not unet:
        raise ConversionError(f"no UNet: the checkpoint has no '{UNET_PREFIX}*' tensors")
    heads = overrides.get("attention_head_dim", 8)
    params = infer_ldm_unet_params(unet, heads if isinstance(heads, int) else 8)
    ddconfig, _ = infer_ldm_ddconfig(split(sd, VAE_PREFIX)) if any(k.startswith(VAE_PREFIX) for k in sd) else (
        {"ch_mult": [1, 2, 4, 4]}, 4)
    original = {"model": {"params": {"unet_config": {"params": params},
                                     "first_stage_config": {"params": {"ddconfig": ddconfig}}}}}
    with quiet():
        config = create_unet_diffusers_config_from_ldm(original, sd)
        config = deep_merge(config, overrides)
        converted = convert_ldm_unet_checkpoint(sd, config, extract_ema=extract_ema)
    expected = meta_shapes(lambda: UNet2DConditionModel(**config))
    source = unet
    if extract_ema and sum(k.startswith("model_ema.") for k in sd) > 100:
        source = {k: v for k, v in sd.items() if k.startswith("model_ema.") and k not in ("model_ema.decay",
                                                                                          "model_ema.num_updates")}
    check_against_model("UNet", converted, expected, source, "" if source is not unet else UNET_PREFIX)
    return config, converted, params


def convert_vae(sd: dict, scale_factor: float):
    from diffusers import AutoencoderKL
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, create_vae_diffusers_config_from_ldm
    vae = {k: v for k, v in split(sd, VAE_PREFIX).items() if not k.startswith("loss.")}
    if not vae:
        raise ConversionError(f"no VAE: the checkpoint has no '{VAE_PREFIX}*' tensors")
    ddconfig, embed_dim = infer_ldm_ddconfig(vae)
    if embed_dim != ddconfig["z_channels"]:
        raise ConversionError(f"VAE: embed_dim {embed_dim} != z_channels {ddconfig['z_channels']} is not supported")
    original = {"model": {"params": {"scale_factor": scale_factor,
                                     "first_stage_config": {"params": {"ddconfig": ddconfig, "embed_dim": embed_dim}}}}}
    with quiet():
        config = create_vae_diffusers_config_from_ldm(original, sd)
        converted = convert_ldm_vae_checkpoint({VAE_PREFIX + k: v for k, v in vae.items()}, config)
    config["use_quant_conv"] = "quant_conv.weight" in vae
    config["use_post_quant_conv"] = "post_quant_conv.weight" in vae
    expected = meta_shapes(lambda: AutoencoderKL(**config))
    check_against_model("VAE", converted, expected, vae, VAE_PREFIX)
    return config, converted


def convert_clip(sd: dict, overrides: dict):
    from transformers import CLIPConfig, CLIPModel
    clip = {k: v for k, v in split(sd, CLIP_PREFIX).items() if not k.endswith("embeddings.position_ids")}
    if not clip:
        raise ConversionError(f"no CLIP: the checkpoint has no '{CLIP_PREFIX}*' tensors")
    kwargs = deep_merge(infer_clip_config(clip), overrides)
    for tower in ("text_config", "vision_config"):
        if kwargs[tower]["num_attention_heads"] is None:
            raise ConversionError(
                f"CLIP {tower}: hidden_size {kwargs[tower]['hidden_size']} is not a multiple of 64, so the head "
                f"count cannot be guessed; pass --clip-config '{{\"{tower}\": {{\"num_attention_heads\": N}}}}'")
    config = CLIPConfig(**kwargs)
    expected = meta_shapes(lambda: CLIPModel(config))
    expected = {k: s for k, s in expected.items() if not k.endswith("position_ids")}
    check_against_model("CLIP", clip, expected, clip, CLIP_PREFIX)
    return config, clip


def convert_scm(sd: dict):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from reference.nafnet import NAFNet
    scm = split(sd, SCM_PREFIX)
    if not scm:
        raise ConversionError(f"no SCM: the checkpoint has no '{SCM_PREFIX}*' tensors")
    config = infer_nafnet_config(scm)
    expected = meta_shapes(lambda: NAFNet.from_config(config))
    check_against_model("SCM (NAFNet)", scm, expected, scm, SCM_PREFIX)
    return config, scm


def scheduler_config(sd: dict) -> tuple[dict, str]:
    """diffusers scheduler config; SD's scaled-linear schedule unless the checkpoint's betas say otherwise."""
    torch = _torch()
    base = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
    if "betas" not in sd:
        return base, "no 'betas' buffer in the checkpoint: wrote SD 1.x's scaled-linear schedule (AutoDIR's)"
    betas = sd["betas"].double()
    n = betas.numel()
    if n >= 2 and betas.ndim == 1:
        start, end = float(betas[0]), float(betas[-1])
        ref = torch.linspace(start ** 0.5, end ** 0.5, n, dtype=torch.float64) ** 2
        if torch.allclose(betas, ref.float().double(), rtol=1e-6, atol=0):
            # ldm stores float32 betas; snap the endpoints to the 0.00085 / 0.012 of the configs when they match
            for name, v in (("beta_start", start), ("beta_end", end)):
                base[name] = {0.00085: 0.00085, 0.012: 0.012}.get(round(v, 7), v)
            base["num_train_timesteps"] = n
            return base, f"checkpoint betas are scaled_linear({base['beta_start']}, {base['beta_end']}, {n})"
    if not (betas.ndim == 1 and n >= 2 and bool(((betas > 0) & (betas < 1)).all())):
        raise ConversionError(f"'betas' buffer {list(betas.shape)} is not a usable noise schedule")
    base.update({"num_train_timesteps": n, "beta_schedule": "linear", "trained_betas": betas.tolist()})
    return base, "checkpoint betas are not scaled-linear: wrote them as trained_betas"


def classify(sd: dict, ignore_prefixes: tuple, extract_ema: bool) -> tuple[list, list]:
    """(ignored keys, unknown keys) among the checkpoint's top-level entries."""
    known = (UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX, SCM_PREFIX)
    ignored, unknown = [], []
    for k in sd:
        if k.startswith(IGNORED_PREFIXES + tuple(ignore_prefixes)) or k in SCHEDULE_BUFFERS:
            ignored.append(k)
        elif k.startswith("model_ema."):  # consumed by the UNet with --extract-ema, else unused
            ignored.append(k)
        elif k.startswith(CLIP_PREFIX) and k.endswith("embeddings.position_ids"):
            ignored.append(k)
        elif not k.startswith(known):
            unknown.append(k)
    return ignored, unknown


# ---------------------------------------------------------------------------------------------------
# Writing

def save_tensors(tensors: dict, path: str, dtype: str) -> int:
    torch = _torch()
    from safetensors.torch import save_file
    target = torch.float16 if dtype == "f16" else torch.float32
    out = {}
    for k, v in tensors.items():
        if v.is_floating_point():
            if target == torch.float16:
                big = v.abs().max().item() if v.numel() else 0.0
                if big > 65504:
                    raise ConversionError(f"{k}: |value| {big:g} does not fit in F16; convert with --dtype f32")
            v = v.to(target)
        out[k] = v.detach().contiguous().clone()
    save_file(out, path, metadata={"format": "pt"})
    return len(out)


def write_json(obj: dict, path: str) -> None:
    with open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def model_index(scale_factor: float, steps: int) -> dict:
    return {
        "_class_name": "AutoDIRPipeline",
        "format_version": 1,
        "autodir": {
            "categories": CATEGORIES,
            "prompt_template": "A photo needs {} artifact reduction",
            "scale_factor": scale_factor,
            "scm_weight": 1.0,
            "defaults": {"steps": steps, "cfg_text": 1, "cfg_image": 1, "max_passes": 7, "sampler": "euler_ancestral"},
        },
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "clip": ["transformers", "CLIPModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scm": ["autodir", "NAFNet"],
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
    }


def parse_json_option(value: str | None, name: str) -> dict:
    if not value:
        return {}
    text = value
    if os.path.isfile(value):
        with open(value) as f:
            text = f.read()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ConversionError(f"{name}: neither a JSON file nor a JSON object ({e})") from e
    if not isinstance(obj, dict):
        raise ConversionError(f"{name}: expected a JSON object")
    return obj


def convert(ckpt: str, out_dir: str, dtype: str = "f32", tokenizer: str = DEFAULT_TOKENIZER,
            unet_config: dict | None = None, clip_config: dict | None = None, scale_factor: float | None = None,
            steps: int = 100, extract_ema: bool = False, unsafe_pickle: bool = False, ignore_prefixes=(),
            overwrite: bool = False, log=print) -> dict:
    """Converts `ckpt` into the model folder `out_dir`. Returns a summary dict. Raises ConversionError."""
    if dtype not in ("f32", "f16"):
        raise ConversionError(f"--dtype must be f32 or f16, not {dtype}")
    for f in ("vocab.json", "merges.txt"):
        if not os.path.isfile(os.path.join(tokenizer, f)):
            raise ConversionError(f"tokenizer folder {tokenizer} has no {f}")
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
        raise ConversionError(f"{out_dir} exists and is not empty (use --overwrite)")

    sd = load_state_dict(ckpt, unsafe_pickle)
    if not any(k.startswith((UNET_PREFIX, VAE_PREFIX, CLIP_PREFIX, SCM_PREFIX)) for k in sd):
        sample = ", ".join(list(sd)[:5])
        raise ConversionError(f"{ckpt}: not an AutoDIR checkpoint (no {UNET_PREFIX}*, {VAE_PREFIX}*, {CLIP_PREFIX}* or "
                              f"{SCM_PREFIX}* tensors; first keys: {sample})")
    ignored, unknown = classify(sd, tuple(ignore_prefixes), extract_ema)
    if unknown:
        shown = ", ".join(sorted(unknown)[:12]) + (f", … ({len(unknown)} in all)" if len(unknown) > 12 else "")
        raise ConversionError(f"{len(unknown)} unexpected tensor(s) outside the known components: {shown} "
                              "(skip them knowingly with --ignore-prefix)")

    if scale_factor is None:
        scale_factor = float(sd["scale_factor"]) if "scale_factor" in sd else 0.18215
    unet_cfg, unet_sd, ldm_unet = convert_unet(sd, unet_config or {}, extract_ema)
    vae_cfg, vae_sd = convert_vae(sd, scale_factor)
    clip_cfg, clip_sd = convert_clip(sd, clip_config or {})
    scm_cfg, scm_sd = convert_scm(sd)
    sched_cfg, sched_note = scheduler_config(sd)
    if unet_cfg["in_channels"] != 2 * vae_cfg["latent_channels"]:
        log(f"note: UNet in_channels {unet_cfg['in_channels']} is not 2 × latent_channels "
            f"{vae_cfg['latent_channels']} (AutoDIR concatenates the image latent)")
    if unet_cfg["cross_attention_dim"] != clip_cfg.text_config.hidden_size:
        raise ConversionError(f"UNet cross_attention_dim {unet_cfg['cross_attention_dim']} != CLIP text hidden size "
                              f"{clip_cfg.text_config.hidden_size}: the BIQA context would not fit the UNet")

    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel
    os.makedirs(out_dir, exist_ok=True)
    for sub in ("unet", "vae", "clip", "tokenizer", "scm", "scheduler"):
        os.makedirs(os.path.join(out_dir, sub), exist_ok=True)
    torch = _torch()
    with quiet():
        with torch.device("meta"):
            UNet2DConditionModel(**unet_cfg).save_config(os.path.join(out_dir, "unet"))
            AutoencoderKL(**vae_cfg).save_config(os.path.join(out_dir, "vae"))
        EulerAncestralDiscreteScheduler(**sched_cfg).save_config(os.path.join(out_dir, "scheduler"))
    clip_cfg.save_pretrained(os.path.join(out_dir, "clip"))
    write_json(scm_cfg, os.path.join(out_dir, "scm", "config.json"))
    counts = {
        "unet": save_tensors(unet_sd, os.path.join(out_dir, "unet", "diffusion_pytorch_model.safetensors"), dtype),
        "vae": save_tensors(vae_sd, os.path.join(out_dir, "vae", "diffusion_pytorch_model.safetensors"), dtype),
        "clip": save_tensors(clip_sd, os.path.join(out_dir, "clip", "model.safetensors"), dtype),
        "scm": save_tensors(scm_sd, os.path.join(out_dir, "scm", "model.safetensors"), dtype),
    }
    for f in ("vocab.json", "merges.txt"):
        shutil.copyfile(os.path.join(tokenizer, f), os.path.join(out_dir, "tokenizer", f))
    write_json(model_index(scale_factor, steps), os.path.join(out_dir, "model_index.json"))

    summary = {"tensors": counts, "ignored": sorted(ignored), "unet_ldm_params": ldm_unet, "scheduler": sched_note,
               "dtype": dtype, "scale_factor": scale_factor}
    log(f"converted {ckpt} → {out_dir} ({dtype}): " + ", ".join(f"{k} {v} tensors" for k, v in counts.items()))
    log(f"  UNet (ldm): {json.dumps(ldm_unet)}")
    log(f"  scheduler: {sched_note}")
    if ignored:
        groups = {}
        for k in ignored:
            groups.setdefault(k.split(".")[0] if "." in k else "schedule buffers", []).append(k)
        log("  ignored: " + ", ".join(f"{g} ({len(v)})" for g, v in sorted(groups.items())))
    return summary


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("checkpoint", help="the AutoDIR .ckpt (or a .safetensors / bare state_dict with the same keys)")
    ap.add_argument("output", help="model folder to write")
    ap.add_argument("--dtype", choices=["f32", "f16"], default="f32", help="weight storage type (f16 halves the folder)")
    ap.add_argument("--tokenizer", default=DEFAULT_TOKENIZER,
                    help="folder with the CLIP vocab.json + merges.txt to copy (default: the repository's)")
    ap.add_argument("--unet-config", help="JSON object or file: diffusers UNet config keys overriding the inferred "
                                          "ones (e.g. '{\"attention_head_dim\": 8}')")
    ap.add_argument("--clip-config", help="JSON object or file: transformers CLIPConfig keys overriding the inferred "
                                          "ones (e.g. '{\"text_config\": {\"num_attention_heads\": 12}}')")
    ap.add_argument("--scale-factor", type=float, help="latent scale (default: the checkpoint's, else 0.18215)")
    ap.add_argument("--steps", type=int, default=100, help="default sampling steps written to model_index.json")
    ap.add_argument("--extract-ema", action="store_true", help="take the UNet from model_ema.* when present")
    ap.add_argument("--ignore-prefix", action="append", default=[], help="skip tensors under this prefix (repeatable)")
    ap.add_argument("--unsafe-pickle", action="store_true",
                    help="torch.load(weights_only=False): only for checkpoints from a source you trust")
    ap.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    a = ap.parse_args(argv)
    try:
        convert(a.checkpoint, a.output, dtype=a.dtype, tokenizer=a.tokenizer,
                unet_config=parse_json_option(a.unet_config, "--unet-config"),
                clip_config=parse_json_option(a.clip_config, "--clip-config"), scale_factor=a.scale_factor,
                steps=a.steps, extract_ema=a.extract_ema, unsafe_pickle=a.unsafe_pickle,
                ignore_prefixes=a.ignore_prefix, overwrite=a.overwrite)
    except ConversionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
