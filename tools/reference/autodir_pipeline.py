"""PyTorch reference of the AutoDIR inference algorithm (AUTODIR.md sections 1-5), built from independent
upstream modules: diffusers `UNet2DConditionModel` and `AutoencoderKL`, transformers `CLIPModel` and
`CLIPTokenizer`, tools/reference/nafnet.py (SCM) and k-diffusion's own `CompVisDenoiser` and
`sample_euler_ancestral` (k_diffusion/external.py, sampling.py, loaded without the package __init__).

It follows the authors' `eval_w_SCM.py` (github jiangyitong/AutoDIR) step by step:
  - the image is mapped to [-1, 1]; every pass: BIQA over the categories still in play (softmax of
    logits_per_text, context = sum p_i * last_hidden_state_i of the prompts, computed with the attention
    mask); stop before restoring when "no" wins; the chosen category is removed;
  - z_img = vae.encode(x).latent_dist.mode() (NOT scaled by scale_factor);
  - torch.manual_seed(seed) at the start of EVERY pass (as the reference does), z = randn * sigma_0,
    k-diffusion Euler ancestral whose per-step noise is torch.randn from the same global generator;
  - UNet input cat([z * c_in, z_img], dim=1) (ldm's "hybrid" conditioning: c_in scales z only);
  - CFG over (text + image, null text + image, null text + zero image latent) as the reference's
    CFGDenoiser; three UNet branches per step unless both scales are 1, where `out == cond` and only the
    cond branch runs (`three_branches=True` forces the reference's three, for benchmarks);
  - x_air = vae.decode(z0 / scale_factor); x_scm = NAFNet(cat[input, x_air]) (SCM in [-1, 1], the
    residual added to channels 3-5, weight scm_weight); next input = x_air if the artifact was
    "low resolution", else x_scm (unclamped, as the reference passes it on);
  - user prompt: context = last_hidden_state of the prompt from input_ids only, exactly one pass.

Where the reference leaves a choice open, this file makes the same choice as the Swift engine
(Sources/Engine/Pipeline/AutoDIRPipeline.swift):
  - any size: each pass pads its input on the right/bottom by edge replication ("replicate") to a
    multiple of f * 2^(unet levels - 1) (f = the VAE's downsampling factor; 64 for SD), runs AIR and SCM
    at the padded size and crops back; BIQA sees the unpadded image;
  - the pass's result (PassResult.image) is the next input, mapped to [0, 1] and clamped;
  - the final image is the last pass's result; with color_fix, AdaIN (wavelet_color_fix's
    adaptive_instance_normalization: unbiased variance + 1e-5) against the original input, in [-1, 1];
  - the sigma schedule is k-diffusion's get_sigmas computed from float64 alphas_cumprod (the Swift
    NoiseSchedule's choice), not ldm's float32 buffer.
Noise is always drawn as float32 torch.randn (what TorchRandomSource reproduces) and cast to the
compute dtype, so a float64 run sees the same noise as a float32 one.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import types

import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
if os.path.dirname(HERE) not in sys.path:
    sys.path.insert(0, os.path.dirname(HERE))

from reference.nafnet import NAFNet  # noqa: E402

CATEGORIES = ["noise", "blur", "rain", "underexposure", "haze", "low resolution", "raindrop", "no"]
TEMPLATE = "A photo needs {} artifact reduction"
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def kd_modules():
    """k-diffusion's sampling.py and external.py without its package __init__ (training-only imports)."""
    if "k_diffusion.sampling" in sys.modules and "k_diffusion.external" in sys.modules:
        return sys.modules["k_diffusion.sampling"], sys.modules["k_diffusion.external"]
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("k-diffusion is not installed: /work/venv/bin/pip install --no-deps k-diffusion==0.1.1.post1")
    kd_dir = list(spec.submodule_search_locations)[0]
    pkg = types.ModuleType("k_diffusion")
    pkg.__path__ = [kd_dir]
    sys.modules["k_diffusion"] = pkg
    utils = types.ModuleType("k_diffusion.utils")

    def append_dims(x, target_dims):
        return x[(...,) + (None,) * (target_dims - x.ndim)]

    utils.append_dims = append_dims
    sys.modules["k_diffusion.utils"] = utils
    pkg.utils = utils
    for name in ("torchdiffeq", "torchsde"):
        if importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)
            stub.odeint = None
            stub.BrownianTree = None
            sys.modules[name] = stub
    mods = {}
    for name in ("sampling", "external"):
        s = importlib.util.spec_from_file_location("k_diffusion." + name, os.path.join(kd_dir, name + ".py"))
        m = importlib.util.module_from_spec(s)
        sys.modules["k_diffusion." + name] = m
        setattr(pkg, name, m)
        s.loader.exec_module(m)
        mods[name] = m
    return mods["sampling"], mods["external"]


# diffusers probes torchsde on import; import it before kd_modules() may stub torchsde.
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPModel, CLIPTokenizer  # noqa: E402
from transformers.image_transforms import center_crop  # noqa: E402

kd_sampling, kd_external = kd_modules()


def alphas_cumprod_from(config: dict) -> torch.Tensor:
    n = config.get("num_train_timesteps", 1000)
    b0, b1 = config.get("beta_start", 0.00085), config.get("beta_end", 0.012)
    if config.get("trained_betas"):
        betas = torch.tensor(config["trained_betas"], dtype=torch.float64)
    elif config.get("beta_schedule", "scaled_linear") == "scaled_linear":
        betas = torch.linspace(b0 ** 0.5, b1 ** 0.5, n, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(b0, b1, n, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0)


class _HybridEps(torch.nn.Module):
    """What k-diffusion's CompVisDenoiser wraps: `apply_model(x, t, cond)` with ldm's hybrid conditioning
    (UNet on cat([x, c_concat]), cross-attention on c_crossattn) and `alphas_cumprod`."""

    def __init__(self, unet, alphas_cumprod):
        super().__init__()
        self.unet = unet
        self.register_buffer("alphas_cumprod", alphas_cumprod)
        self.calls = 0

    def apply_model(self, x, t, cond):
        self.calls += 1
        xc = torch.cat([x] + cond["c_concat"], dim=1)
        ctx = torch.cat(cond["c_crossattn"], dim=1)
        # diffusers takes one timestep per batch row; k-diffusion hands the float t(sigma) per row
        return self.unet(xc, t.to(x.dtype), encoder_hidden_states=ctx).sample


class CFGDenoiser(torch.nn.Module):
    """eval_w_SCM.py's CFGDenoiser (three branches), plus the single-branch case when both scales are 1."""

    def __init__(self, model, three_branches=False):
        super().__init__()
        self.inner_model = model
        self.three_branches = three_branches

    def forward(self, z, sigma, cond, uncond, text_cfg_scale, image_cfg_scale):
        if not self.three_branches and text_cfg_scale == 1 and image_cfg_scale == 1:
            return self.inner_model(z, sigma, cond=cond)
        cfg_z = z.repeat(3, 1, 1, 1)
        cfg_sigma = sigma.repeat(3)
        cfg_cond = {
            "c_crossattn": [torch.cat([cond["c_crossattn"][0], uncond["c_crossattn"][0], uncond["c_crossattn"][0]])],
            "c_concat": [torch.cat([cond["c_concat"][0], cond["c_concat"][0], uncond["c_concat"][0]])],
        }
        out_cond, out_img_cond, out_uncond = self.inner_model(cfg_z, cfg_sigma, cond=cfg_cond).chunk(3)
        return out_uncond + text_cfg_scale * (out_cond - out_img_cond) + image_cfg_scale * (out_img_cond - out_uncond)


def adain(x, ref, eps=1e-5):
    """wavelet_color_fix.adaptive_instance_normalization: each channel gets ref's mean and std."""
    n, c = x.shape[:2]
    xv, rv = x.reshape(n, c, -1), ref.reshape(n, c, -1)
    xm, xs = xv.mean(-1), (xv.var(-1) + eps).sqrt()
    rm, rs = rv.mean(-1), (rv.var(-1) + eps).sqrt()
    return ((xv - xm[..., None]) / xs[..., None] * rs[..., None] + rm[..., None]).reshape(x.shape)


class AutoDIRReference:
    def __init__(self, unet, vae, clip, tokenizer, scm, scheduler_config=None, settings=None, dtype=torch.float64):
        self.dtype = dtype
        self.unet = unet.to(dtype).eval()
        self.vae = vae.to(dtype).eval()
        self.clip = clip.to(dtype).eval()
        self.tok = tokenizer
        self.scm = scm.to(dtype).eval()
        s = dict(settings or {})
        self.categories = list(s.get("categories", CATEGORIES))
        self.template = s.get("prompt_template", TEMPLATE)
        self.scale_factor = float(s.get("scale_factor", 0.18215))
        self.scm.scm_weight = float(s.get("scm_weight", 1.0))
        d = s.get("defaults", {})
        self.defaults = dict(steps=d.get("steps", 100), cfg_text=d.get("cfg_text", 1.0),
                             cfg_image=d.get("cfg_image", 1.0), max_passes=d.get("max_passes", 7))
        self.eps_model = _HybridEps(self.unet, alphas_cumprod_from(scheduler_config or {}))
        self.model_wrap = kd_external.CompVisDenoiser(self.eps_model, quantize=False)
        self.f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.multiple = self.f * 2 ** (len(self.unet.config.block_out_channels) - 1)
        self.max_len = self.clip.config.text_config.max_position_embeddings
        self.crop = self.clip.config.vision_config.image_size
        with torch.no_grad():
            prompts = [self.template.format(c) for c in self.categories]
            enc = self.tok(prompts, padding="max_length", max_length=self.max_len, truncation=True, return_tensors="pt")
            out = self.clip.text_model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            self.prompt_states = out.last_hidden_state                         # [K, 77, D]
            self.prompt_embeds = self.clip.text_projection(out.pooler_output)  # [K, P]
            self.null_context = self.text_context("")

    @classmethod
    def from_folder(cls, path, dtype=torch.float64):
        with open(os.path.join(path, "model_index.json")) as f:
            index = json.load(f)
        with open(os.path.join(path, "scheduler", "scheduler_config.json")) as f:
            sched = json.load(f)
        with open(os.path.join(path, "scm", "config.json")) as f:
            scm_cfg = json.load(f)
        from safetensors.torch import load_file
        scm = NAFNet.from_config(scm_cfg)
        scm.load_state_dict(load_file(os.path.join(path, "scm", "model.safetensors")), strict=True)
        unet = UNet2DConditionModel.from_pretrained(os.path.join(path, "unet"), torch_dtype=torch.float32)
        vae = AutoencoderKL.from_pretrained(os.path.join(path, "vae"), torch_dtype=torch.float32)
        clip = CLIPModel.from_pretrained(os.path.join(path, "clip"), dtype=torch.float32, attn_implementation="eager")
        tok = CLIPTokenizer(os.path.join(path, "tokenizer", "vocab.json"), os.path.join(path, "tokenizer", "merges.txt"))
        return cls(unet, vae, clip, tok, scm, sched, index.get("autodir", {}), dtype)

    # -- BIQA --------------------------------------------------------------------------------------
    def text_context(self, text):
        ids = self.tok([text], padding="max_length", max_length=self.max_len, truncation=True, return_tensors="pt")
        return self.clip.text_model(input_ids=ids["input_ids"]).last_hidden_state  # input_ids only

    def preprocess(self, x):
        """[1, 3, H, W] in [-1, 1] -> CLIP pixel_values: (x+1)*255/2, numpy center_crop (zero-pads small
        images), /255, CLIP mean/std (CLIPFeatureExtractor with do_resize=False)."""
        x255 = ((x[0].double() + 1) * 127.5).numpy()
        cropped = center_crop(x255, (self.crop, self.crop), input_data_format="channels_first")
        t = torch.from_numpy(np.ascontiguousarray(cropped)) / 255.0
        mean = torch.tensor(CLIP_MEAN, dtype=torch.float64)[:, None, None]
        std = torch.tensor(CLIP_STD, dtype=torch.float64)[:, None, None]
        return ((t - mean) / std)[None].to(self.dtype)

    def detect(self, x, among=None):
        among = list(self.categories) if among is None else among
        idx = [i for i, c in enumerate(self.categories) if c in among]
        img = self.clip.get_image_features(pixel_values=self.preprocess(x))
        img = getattr(img, "pooler_output", img)
        img = img / img.norm(dim=-1, keepdim=True)
        txt = self.prompt_embeds / self.prompt_embeds.norm(dim=-1, keepdim=True)
        logits = self.clip.logit_scale.exp() * txt @ img.t()                 # logits_per_text [K, 1]
        z = logits[idx, 0]
        p = torch.softmax(z, dim=0)
        best = int(torch.argmax(p))
        context = (p[:, None, None] * self.prompt_states[idx]).sum(0, keepdim=True)
        probs = {self.categories[k]: float(p[i].detach()) for i, k in enumerate(idx)}
        return probs, self.categories[idx[best]], context

    # -- AIR + SCM ---------------------------------------------------------------------------------
    def restore_pass(self, x, context, steps, seed, cfg_text, cfg_image, three_branches=False):
        """One AIR + SCM pass on x [1, 3, H, W] in [-1, 1] (any size) -> (x_air, x_scm), cropped, unclamped."""
        h, w = x.shape[2:]
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        xp = F.pad(x, (0, pw, 0, ph), mode="replicate") if (ph or pw) else x
        z_img = self.vae.encode(xp).latent_dist.mode()
        cond = {"c_crossattn": [context], "c_concat": [z_img]}
        uncond = {"c_crossattn": [self.null_context], "c_concat": [torch.zeros_like(z_img)]}
        sigmas = self.model_wrap.get_sigmas(steps).to(self.dtype)  # (float64 schedule, handed out at the compute dtype)
        torch.manual_seed(seed)
        z = torch.randn(z_img.shape, dtype=torch.float32).to(self.dtype) * sigmas[0]
        denoiser = CFGDenoiser(self.model_wrap, three_branches)
        extra = {"cond": cond, "uncond": uncond, "text_cfg_scale": cfg_text, "image_cfg_scale": cfg_image}
        noise = lambda s, sn: torch.randn(z.shape, dtype=torch.float32).to(self.dtype)  # noqa: E731
        z0 = kd_sampling.sample_euler_ancestral(denoiser, z, sigmas, extra_args=extra, disable=True,
                                                noise_sampler=noise)
        x_air = self.vae.decode(z0 / self.scale_factor).sample
        x_scm = self.scm(torch.cat([xp, x_air], dim=1))
        return x_air[:, :, :h, :w], x_scm[:, :, :h, :w]

    def restore(self, image01, prompt=None, steps=None, seed=0, cfg_text=None, cfg_image=None,
                max_passes=None, color_fix=False, three_branches=False):
        """image01 [1, 3, H, W] in [0, 1] -> dict(image [0,1], passes=[dict(artifact, probabilities,
        air, scm, image)]), all tensors at the compute dtype."""
        d = self.defaults
        steps = steps or d["steps"]
        cfg_text = d["cfg_text"] if cfg_text is None else cfg_text
        cfg_image = d["cfg_image"] if cfg_image is None else cfg_image
        max_passes = 1 if prompt is not None else (max_passes or d["max_passes"])
        with torch.no_grad():
            original = image01.to(self.dtype) * 2 - 1
            current = original
            remaining = list(self.categories)
            passes = []
            for _ in range(max_passes):
                if prompt is not None:
                    context, artifact, probs = self.text_context(prompt), prompt, {}
                else:
                    probs, artifact, context = self.detect(current, remaining)
                    if artifact == "no":
                        break
                    remaining.remove(artifact)
                x_air, x_scm = self.restore_pass(current, context, steps, seed, cfg_text, cfg_image, three_branches)
                current = x_air if artifact == "low resolution" else x_scm
                passes.append(dict(artifact=artifact, probabilities=probs, air=x_air, scm=x_scm,
                                   image=((current + 1) / 2).clamp(0, 1)))
            out = adain(current, original) if color_fix else current
            return dict(image=((out + 1) / 2).clamp(0, 1), passes=passes)
