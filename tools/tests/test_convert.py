"""Tests of tools/convert_autodir_ckpt.py on small synthetic checkpoints with the official AutoDIR key layout.

    /work/venv/bin/python -m pytest tools/tests -q

Needs torch, diffusers and transformers (not part of CI). The synthetic checkpoint comes from
tools/fixtures/make_synthetic_autodir_ckpt.py, whose ldm-layout UNet and VAE are independent PyTorch
re-implementations of ldm's modules: the converted diffusers models must compute what they compute.
"""
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("transformers")

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "tools"))
sys.path.insert(0, os.path.join(ROOT, "tools", "fixtures"))

import convert_autodir_ckpt as conv  # noqa: E402
import make_synthetic_autodir_ckpt as synth  # noqa: E402
from reference.nafnet import NAFNet  # noqa: E402

HEADS = {"unet_config": {"attention_head_dim": 2},
         "clip_config": {"text_config": {"num_attention_heads": 2}, "vision_config": {"num_attention_heads": 2}}}


def run_convert(ckpt, out, **kw):
    args = dict(HEADS, overwrite=True, log=lambda *_: None)
    args.update(kw)
    return conv.convert(str(ckpt), str(out), **args)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    ckpt = d / "autodir.ckpt"
    sd, parts = synth.write_checkpoint(str(ckpt), "coverage", seed=0)
    folder = d / "folder"
    summary = run_convert(ckpt, folder)
    return {"dir": d, "ckpt": ckpt, "sd": sd, "parts": parts, "folder": folder, "summary": summary}


def max_diff(a, b):
    return (a.double() - b.double()).abs().max().item()


def f16_rounded(module):
    """A float64 copy of `module` whose weights are rounded to F16 first (what an F16 folder holds)."""
    import copy
    m = copy.deepcopy(module).double()
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.half().double())
    return m


# --- numerics: the converted folder computes what the checkpoint's modules compute ----------------

def check_unet(folder, ldm_unet, tol):
    from diffusers import UNet2DConditionModel
    unet = UNet2DConditionModel.from_pretrained(str(folder / "unet"), torch_dtype=torch.float32).double().eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 16, 24, generator=g, dtype=torch.float64)
    ctx = torch.randn(2, 7, 16, generator=g, dtype=torch.float64)
    for t in (0.0, 421.37, 999.0):
        ts = torch.full((2,), t, dtype=torch.float64)
        with torch.no_grad():
            want = ldm_unet(x, ts, ctx)
            got = unet(x, ts, encoder_hidden_states=ctx).sample
        assert want.abs().max() > 1e-2
        assert max_diff(got, want) < tol * max(1.0, want.abs().max().item()), (t, max_diff(got, want))


def check_vae(folder, ldm_vae, tol):
    from diffusers import AutoencoderKL
    vae = AutoencoderKL.from_pretrained(str(folder / "vae"), torch_dtype=torch.float32).double().eval()
    g = torch.Generator().manual_seed(2)
    img = torch.rand(1, 3, 24, 40, generator=g, dtype=torch.float64) * 2 - 1
    z = torch.randn(1, 4, 6, 10, generator=g, dtype=torch.float64)
    with torch.no_grad():
        assert max_diff(vae.encode(img).latent_dist.mode(), ldm_vae.encode_mode(img)) < tol
        want = ldm_vae.decode(z)
        assert max_diff(vae.decode(z).sample, want) < tol * max(1.0, want.abs().max().item())


def test_unet_matches_ldm_model(synthetic):
    check_unet(synthetic["folder"], synthetic["parts"]["unet"].double(), 1e-9)


def test_vae_matches_ldm_model(synthetic):
    check_vae(synthetic["folder"], synthetic["parts"]["vae"].double(), 1e-9)


def test_clip_is_identical(synthetic):
    from transformers import CLIPModel
    ref = synthetic["parts"]["clip"].double()
    clip = CLIPModel.from_pretrained(str(synthetic["folder"] / "clip"), torch_dtype=torch.float32,
                                     attn_implementation="eager").double().eval()
    assert clip.config.text_config.eos_token_id == 2 and clip.config.text_config.hidden_act == "quick_gelu"
    ids = torch.tensor([[0, 17, 250, 999, 1, 1, 1], [0, 5, 6, 7, 8, 9, 999]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0, 0], [1] * 7])
    px = torch.randn(1, 3, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        a = clip(input_ids=ids, attention_mask=mask, pixel_values=px)
        b = ref(input_ids=ids, attention_mask=mask, pixel_values=px)
    assert max_diff(a.logits_per_text, b.logits_per_text) == 0
    assert max_diff(a.text_model_output.last_hidden_state, b.text_model_output.last_hidden_state) == 0


def test_scm_is_identical(synthetic):
    from safetensors.torch import load_file
    folder = synthetic["folder"]
    cfg = json.load(open(folder / "scm" / "config.json"))
    assert cfg == synth.PRESETS["coverage"]["nafnet"]
    scm = NAFNet.from_config(cfg).eval()
    scm.load_state_dict(load_file(str(folder / "scm" / "model.safetensors")), strict=True)
    x = torch.randn(1, 6, 13, 9, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert max_diff(scm(x), synthetic["parts"]["scm"](x)) == 0


def test_scheduler_model_index_and_tokenizer(synthetic):
    from diffusers import EulerAncestralDiscreteScheduler
    folder = synthetic["folder"]
    sched = EulerAncestralDiscreteScheduler.from_pretrained(str(folder / "scheduler"))
    assert sched.config.beta_schedule == "scaled_linear" and sched.config.num_train_timesteps == 1000
    assert sched.config.beta_start == 0.00085 and sched.config.beta_end == 0.012
    assert max_diff(sched.alphas_cumprod, synthetic["sd"]["alphas_cumprod"]) < 1e-6
    index = json.load(open(folder / "model_index.json"))
    assert index["_class_name"] == "AutoDIRPipeline" and index["format_version"] == 1
    assert index["autodir"]["categories"] == conv.CATEGORIES and index["autodir"]["scale_factor"] == 0.18215
    assert "{}" in index["autodir"]["prompt_template"]
    for f in ("vocab.json", "merges.txt"):
        assert open(folder / "tokenizer" / f, "rb").read() == open(os.path.join(conv.DEFAULT_TOKENIZER, f), "rb").read()
    ignored = synthetic["summary"]["ignored"]
    assert "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight" in ignored
    assert "model_assessment.clipmodel.text_model.embeddings.position_ids" in ignored and "betas" in ignored


def test_inferred_configs(synthetic):
    unet = json.load(open(synthetic["folder"] / "unet" / "config.json"))
    assert unet["in_channels"] == 8 and unet["out_channels"] == 4 and unet["cross_attention_dim"] == 16
    assert unet["block_out_channels"] == [32, 64, 64] and unet["layers_per_block"] == 2
    assert unet["down_block_types"] == ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"]
    assert unet["up_block_types"] == ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"]
    vae = json.load(open(synthetic["folder"] / "vae" / "config.json"))
    assert vae["block_out_channels"] == [32, 64] and vae["latent_channels"] == 4 and vae["scaling_factor"] == 0.18215


def test_sd_sized_unet_params_are_inferred():
    """The full AutoDIR UNet layout (shapes only, on the meta device) gives configs/generate.yaml's numbers."""
    with torch.device("meta"):
        ldm = synth.LdmUNetModel(in_channels=8, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                                 num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, transformer_depth=1,
                                 context_dim=768)
    p = conv.infer_ldm_unet_params(ldm.state_dict(), 8)
    assert (p["model_channels"], p["channel_mult"], p["num_res_blocks"], p["attention_resolutions"],
            p["context_dim"], p["in_channels"]) == (320, [1, 2, 4, 4], 2, [4, 2, 1], 768, 8)


def test_full_size_layout_converts_to_autodirs_configs():
    """AutoDIR's real sizes (configs/generate.yaml, ViT-L/14), shapes only on the meta device: the default head
    counts apply and diffusers / transformers accept every converted tensor."""
    from transformers import CLIPConfig, CLIPModel
    with torch.device("meta"):
        unet = synth.LdmUNetModel(in_channels=8, out_channels=4, model_channels=320, attention_resolutions=[4, 2, 1],
                                  num_res_blocks=2, channel_mult=[1, 2, 4, 4], num_heads=8, transformer_depth=1,
                                  context_dim=768)
        vae = synth.LdmAutoencoderKL(4, double_z=True, z_channels=4, in_channels=3, out_ch=3, ch=128,
                                     ch_mult=[1, 2, 4, 4], num_res_blocks=2)
        clip = CLIPModel(CLIPConfig(
            text_config=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
            vision_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                               image_size=224, patch_size=14), projection_dim=768))
    sd = {"model.diffusion_model." + k: v for k, v in unet.state_dict().items()}
    sd.update({"first_stage_model." + k: v for k, v in vae.state_dict().items()})
    sd.update({"model_assessment.clipmodel." + k: v for k, v in clip.state_dict().items()})
    ucfg, _, _ = conv.convert_unet(sd, {}, False)
    assert (ucfg["block_out_channels"], ucfg["attention_head_dim"], ucfg["cross_attention_dim"], ucfg["in_channels"],
            ucfg["layers_per_block"], ucfg["sample_size"]) == ([320, 640, 1280, 1280], 8, 768, 8, 2, 64)
    assert ucfg["down_block_types"] == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    vcfg, _ = conv.convert_vae(sd, 0.18215)
    assert vcfg["block_out_channels"] == [128, 256, 512, 512] and vcfg["layers_per_block"] == 2
    ccfg, _ = conv.convert_clip(sd, {})
    t, v = ccfg.text_config, ccfg.vision_config
    assert (t.num_attention_heads, t.vocab_size, t.max_position_embeddings, t.num_hidden_layers) == (12, 49408, 77, 12)
    assert (v.num_attention_heads, v.image_size, v.patch_size, v.num_hidden_layers, ccfg.projection_dim) == \
        (16, 224, 14, 24, 768)


# --- F16 ----------------------------------------------------------------------------------------

def test_f16_folder(synthetic, tmp_path):
    from safetensors import safe_open
    out = tmp_path / "f16"
    run_convert(synthetic["ckpt"], out, dtype="f16")
    for sub, name in (("unet", "diffusion_pytorch_model"), ("vae", "diffusion_pytorch_model"), ("clip", "model"),
                      ("scm", "model")):
        path = out / sub / f"{name}.safetensors"
        with safe_open(str(path), "pt") as f:
            assert all(f.get_slice(k).get_dtype() == "F16" for k in f.keys()), sub
        full = os.path.getsize(synthetic["folder"] / sub / f"{name}.safetensors")
        assert os.path.getsize(path) < 0.55 * full, sub
    # F16 weights widened to float32 compute what the ldm model computes on the same rounded weights
    check_unet(out, f16_rounded(synthetic["parts"]["unet"]), 1e-9)
    check_vae(out, f16_rounded(synthetic["parts"]["vae"]), 1e-9)


# --- strictness and bad input --------------------------------------------------------------------

def save_variant(tmp_path, synthetic, edit, name="variant.ckpt"):
    sd = dict(synthetic["sd"])
    edit(sd)
    path = tmp_path / name
    torch.save(synth.lightning_checkpoint(sd), str(path))
    return path


def expect_error(path, *fragments, **kw):
    with pytest.raises(conv.ConversionError) as e:
        run_convert(path, path.parent / "out", **kw)
    for f in fragments:
        assert f in str(e.value), str(e.value)
    return str(e.value)


def test_unexpected_tensor_inside_a_component(tmp_path, synthetic):
    key = "model.diffusion_model.input_blocks.1.0.extra_layer.weight"
    p = save_variant(tmp_path, synthetic, lambda sd: sd.__setitem__(key, torch.zeros(3)))
    expect_error(p, "UNet", "unexpected", key)


def test_tensor_diffusers_would_drop_silently(tmp_path, synthetic):
    # diffusers' converter skips ldm keys it has no rule for (here a class embedding the config does not
    # declare); the converter must notice.
    key = "model.diffusion_model.label_emb.0.0.weight"
    p = save_variant(tmp_path, synthetic, lambda sd: sd.__setitem__(key, torch.zeros(128, 4)))
    expect_error(p, "UNet", "left unconverted", key)


def test_unexpected_top_level_tensor(tmp_path, synthetic):
    p = save_variant(tmp_path, synthetic, lambda sd: sd.__setitem__("discriminator.conv.weight", torch.zeros(2)))
    expect_error(p, "unexpected", "discriminator.conv.weight", "--ignore-prefix")
    run_convert(p, tmp_path / "ok", ignore_prefixes=["discriminator."])  # skipped knowingly


def test_missing_tensors_are_named(tmp_path, synthetic):
    p = save_variant(tmp_path, synthetic, lambda sd: sd.pop("first_stage_model.decoder.mid.attn_1.k.weight"))
    expect_error(p, "VAE", "missing", "decoder.mid_block.attentions.0.to_k.weight")
    p = save_variant(tmp_path, synthetic, lambda sd: sd.pop("model_assessment.clipmodel.visual_projection.weight"))
    expect_error(p, "CLIP", "missing", "visual_projection.weight")
    p = save_variant(tmp_path, synthetic, lambda sd: sd.pop("NAFNet.encoders.0.0.beta"))
    expect_error(p, "SCM", "missing", "encoders.0.0.beta")
    p = save_variant(tmp_path, synthetic,
                     lambda sd: sd.pop("model.diffusion_model.output_blocks.2.0.skip_connection.weight"))
    expect_error(p, "UNet", "missing", "up_blocks.0.resnets.2.conv_shortcut.weight")


def test_misshaped_tensor(tmp_path, synthetic):
    p = save_variant(tmp_path, synthetic, lambda sd: sd.__setitem__("NAFNet.encoders.0.0.gamma", torch.zeros(1, 3, 1, 1)))
    expect_error(p, "SCM", "mis-shaped", "encoders.0.0.gamma")


def test_missing_component(tmp_path, synthetic):
    p = save_variant(tmp_path, synthetic, lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("NAFNet.")])
    expect_error(p, "no SCM", "NAFNet.")


def test_head_count_must_be_given_for_odd_sizes(synthetic, tmp_path):
    with pytest.raises(conv.ConversionError) as e:
        conv.convert(str(synthetic["ckpt"]), str(tmp_path / "o"), unet_config=HEADS["unet_config"],
                     log=lambda *_: None)
    assert "num_attention_heads" in str(e.value) and "--clip-config" in str(e.value)


def test_not_a_checkpoint(tmp_path):
    txt = tmp_path / "notes.ckpt"
    txt.write_text("hello, I am not a checkpoint\n")
    expect_error(txt, "not a PyTorch checkpoint")
    missing = tmp_path / "nope.ckpt"
    expect_error(missing, "no such file")
    zipped = tmp_path / "archive.ckpt"
    import zipfile
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("readme.txt", "not torch")
    expect_error(zipped, "cannot be read as a PyTorch checkpoint")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"encoder.weight": torch.zeros(2)}}, str(other))
    expect_error(other, "not an AutoDIR checkpoint")
    notdict = tmp_path / "list.ckpt"
    torch.save([torch.zeros(2)], str(notdict))
    expect_error(notdict, "no state_dict")


class Hyper:  # a pickled Python object, as Lightning's hyper_parameters can hold
    def __init__(self):
        self.lr = 1e-4


def test_pickled_objects_need_the_unsafe_flag(tmp_path, synthetic):
    ckpt = synth.lightning_checkpoint(dict(synthetic["sd"]))
    ckpt["hyper_parameters"] = Hyper()
    path = tmp_path / "pickled.ckpt"
    torch.save(ckpt, str(path))
    expect_error(path, "weights_only=True", "--unsafe-pickle")
    run_convert(path, tmp_path / "ok", unsafe_pickle=True)


def test_bare_state_dict_and_safetensors_inputs(tmp_path, synthetic):
    from safetensors.torch import save_file
    path = tmp_path / "bare.safetensors"
    save_file({k: v.contiguous() for k, v in synthetic["sd"].items()}, str(path))
    out = tmp_path / "from_st"
    run_convert(path, out)
    check_unet(out, synthetic["parts"]["unet"].double(), 1e-9)


def test_command_line(tmp_path, synthetic):
    script = os.path.join(ROOT, "tools", "convert_autodir_ckpt.py")
    out = tmp_path / "cli"
    ok = subprocess.run([sys.executable, script, str(synthetic["ckpt"]), str(out), "--dtype", "f16",
                         "--unet-config", json.dumps(HEADS["unet_config"]),
                         "--clip-config", json.dumps(HEADS["clip_config"])], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "unet 494 tensors" in ok.stdout
    again = subprocess.run([sys.executable, script, str(synthetic["ckpt"]), str(out)], capture_output=True, text=True)
    assert again.returncode == 2 and "not empty" in again.stderr and "Traceback" not in again.stderr
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x00\x01garbage")
    r = subprocess.run([sys.executable, script, str(bad), str(tmp_path / "x")], capture_output=True, text=True)
    assert r.returncode == 2 and "not a PyTorch checkpoint" in r.stderr and "Traceback" not in r.stderr
