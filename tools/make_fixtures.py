#!/usr/bin/env python3
"""Writes tests/fixtures/unet/<name>/: tiny random-weight diffusers UNet2DModels in every
storage format the Rust loader reads, with float64 goldens of the forward pass.

    python3 tools/make_fixtures.py            # deterministic; rerun gives identical files

golden.safetensors (float32): x [2, C, S, S], t [2], eps [2, out, S, S] = model(x, t).sample,
h = output of model.mid_block. The goldens are computed in float64 from the weights as
stored (f16 / bf16 tensors are loaded back, rounded as stored).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
from types import SimpleNamespace

import numpy as np
import torch
import yaml
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dsref.weights import (from_ddpm, from_old_attention_names, randomize, to_ddpm,  # noqa: E402
                           to_old_attention_names)

from diffusers import DDPMPipeline, DDPMScheduler, UNet2DModel  # noqa: E402
from diffusers.utils import logging as dlogging  # noqa: E402

dlogging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "unet")
AUTHORS_REPO = "/work/.mirror/curryjung+InjectFusion_official/repo"

D, AD, U, AU = "DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"

# Every fixture: a UNet2DModel config, a storage format and a per-tensor dtype rule.
FIXTURES = [
    dict(name="new_names", seed=1, fmt="diffusers", dtype="f32", t=[37.0, 911.0],
         covers="default diffusers save (to_q/to_k/to_v/to_out.0); multi-head attention "
                "(head dim 4: 4 heads) at level 1 and in the middle; layers_per_block 1; "
                "downsample_padding 1; flip_sin_to_cos true, freq_shift 0; norm_eps 1e-5",
         cfg=dict(sample_size=16, block_out_channels=(8, 16), layers_per_block=1,
                  down_block_types=(D, AD), up_block_types=(AU, U), attention_head_dim=4,
                  norm_num_groups=4, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0)),
    dict(name="old_names", seed=2, fmt="old_attn", dtype="f32", t=[0.0, 500.0],
         covers="old attention names (query/key/value/proj_attn); single-head attention "
                "(attention_head_dim null) at the full-resolution level and in the middle; "
                "layers_per_block 2; downsample_padding 0; flip false, freq_shift 1; "
                "norm_eps 1e-6",
         cfg=dict(sample_size=16, block_out_channels=(8, 16), layers_per_block=2,
                  down_block_types=(AD, D), up_block_types=(U, AU), attention_head_dim=None,
                  norm_num_groups=4, norm_eps=1e-6, downsample_padding=0,
                  flip_sin_to_cos=False, freq_shift=1)),
    dict(name="ddpm_format", seed=3, fmt="ddpm", dtype="f16", t=[37.0, 911.0],
         covers="original DDPM names (temb.dense.0/1, down.i.block.j, attn norm/q/k/v/proj_out "
                "as 1x1 convs, down.i.downsample.conv, mid.block_1/attn_1/block_2, "
                "up.i.block/attn/upsample, norm_out) in model.safetensors (float16) + the "
                "authors' YAML config.yml (ch 32, ch_mult [1, 2], 1 res block, "
                "attn_resolutions [8]); GroupNorm 32 groups, eps 1e-6, padding 0, flip false, "
                "shift 1",
         ddpm=dict(ch=32, ch_mult=[1, 2], num_res_blocks=1, attn_resolutions=[8],
                   image_size=16)),
    dict(name="f16", seed=4, fmt="diffusers", dtype="f16", t=[1.0, 999.0],
         covers="every tensor float16; three levels (8, 8, 16) with attention only at the "
                "middle level (head dim 4: 2 heads) and in the middle block (4 heads); "
                "layers_per_block 1; padding 0; flip true with freq_shift 1",
         cfg=dict(sample_size=16, block_out_channels=(8, 8, 16), layers_per_block=1,
                  down_block_types=(D, AD, D), up_block_types=(U, AU, U), attention_head_dim=4,
                  norm_num_groups=4, downsample_padding=0, flip_sin_to_cos=True, freq_shift=1)),
    dict(name="bf16", seed=5, fmt="diffusers", dtype="bf16", t=[250.0, 750.0],
         covers="every tensor bfloat16; no attention outside the middle block (single head); "
                "layers_per_block 2; norm_num_groups 4; time_embedding_dim 48 (not 4 x 8); "
                "padding 1; flip false with freq_shift 0",
         cfg=dict(sample_size=16, block_out_channels=(8, 16), layers_per_block=2,
                  down_block_types=(D, D), up_block_types=(U, U), attention_head_dim=None,
                  norm_num_groups=4, time_embedding_dim=48, downsample_padding=1,
                  flip_sin_to_cos=False, freq_shift=0)),
    dict(name="mixed_dtype", seed=6, fmt="diffusers", dtype="mixed", t=[37.0, 911.0],
         covers="tensors stored as a mix of float32 / float16 / bfloat16 (cycling over the "
                "sorted names); attention at both levels and in the middle (head dim 8)",
         cfg=dict(sample_size=16, block_out_channels=(16, 32), layers_per_block=1,
                  down_block_types=(AD, AD), up_block_types=(AU, AU), attention_head_dim=8,
                  norm_num_groups=8, downsample_padding=1, flip_sin_to_cos=True, freq_shift=0)),
    dict(name="pipeline", seed=7, fmt="pipeline", dtype="f32", t=[37.0, 911.0],
         covers="a DDPMPipeline folder (model_index.json, unet/, scheduler/"
                "scheduler_config.json) with the google/ddpm-* settings: single-head attention "
                "at level 1 and in the middle, padding 0, flip false, freq_shift 1, "
                "norm_eps 1e-6",
         cfg=dict(sample_size=16, block_out_channels=(8, 16), layers_per_block=1,
                  down_block_types=(D, AD), up_block_types=(AU, U), attention_head_dim=None,
                  norm_num_groups=4, norm_eps=1e-6, downsample_padding=0,
                  flip_sin_to_cos=False, freq_shift=1)),
    dict(name="s32_attn_groups", seed=8, fmt="diffusers", dtype="f32", t=[37.0, 911.0],
         covers="sample_size 32, three levels (8, 8, 16), attention at levels 1 and 2 "
                "(head dim 4) and in the middle; attn_norm_num_groups 2 for the middle "
                "attention's GroupNorm (norm_num_groups 4 elsewhere); layers_per_block 1",
         cfg=dict(sample_size=32, block_out_channels=(8, 8, 16), layers_per_block=1,
                  down_block_types=(D, AD, AD), up_block_types=(AU, AU, U), attention_head_dim=4,
                  norm_num_groups=4, attn_norm_num_groups=2, downsample_padding=1,
                  flip_sin_to_cos=True, freq_shift=0)),
]


def ddpm_unet_config(d: dict) -> dict:
    """The diffusers config equal to the authors' DDPM `Model` for a YAML model section."""
    levels = len(d["ch_mult"])
    res = [d["image_size"] >> i for i in range(levels)]
    attn = [r in d["attn_resolutions"] for r in res]
    return dict(sample_size=d["image_size"], in_channels=3, out_channels=3,
                block_out_channels=tuple(d["ch"] * m for m in d["ch_mult"]),
                layers_per_block=d["num_res_blocks"],
                down_block_types=tuple(AD if a else D for a in attn),
                up_block_types=tuple(AU if a else U for a in reversed(attn)),
                attention_head_dim=None, norm_num_groups=32, norm_eps=1e-6,
                downsample_padding=0, flip_sin_to_cos=False, freq_shift=1)


def ddpm_yaml(d: dict) -> dict:
    """The authors' config layout (configs/celeba.yml), tiny."""
    return {
        "data": {"dataset": "CelebA_HQ", "category": "CelebA_HQ", "image_size": d["image_size"],
                 "channels": 3, "logit_transform": False, "uniform_dequantization": False,
                 "gaussian_dequantization": False, "random_flip": True, "rescaled": True,
                 "num_workers": 0},
        "model": {"type": "simple", "in_channels": 3, "out_ch": 3, "ch": d["ch"],
                  "ch_mult": d["ch_mult"], "num_res_blocks": d["num_res_blocks"],
                  "attn_resolutions": d["attn_resolutions"], "dropout": 0.0,
                  "var_type": "fixedsmall", "ema_rate": 0.999, "ema": True,
                  "resamp_with_conv": True},
        "diffusion": {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02,
                      "num_diffusion_timesteps": 1000},
        "sampling": {"batch_size": 4, "last_only": True},
    }


def yaml_text(cfg: dict) -> str:
    """The layout of the authors' configs/*.yml (4-space sections, inline lists)."""
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return f'"{v}"'
        if isinstance(v, list):
            return "[" + ", ".join(val(e) for e in v) + ", ]" if len(v) == 1 else \
                "[" + ", ".join(val(e) for e in v) + "]"
        return repr(v)
    out = []
    for sec, body in cfg.items():
        out.append(f"{sec}:")
        out += [f"    {k}: {val(v)}" for k, v in body.items()]
        out.append("")
    return "\n".join(out)


def store_dtype(rule: str, idx: int) -> torch.dtype:
    if rule == "f32":
        return torch.float32
    if rule == "f16":
        return torch.float16
    if rule == "bf16":
        return torch.bfloat16
    return (torch.float32, torch.float16, torch.bfloat16)[idx % 3]


def cast_state(sd: dict, rule: str) -> dict:
    return {k: sd[k].detach().to(store_dtype(rule, n)).contiguous()
            for n, k in enumerate(sorted(sd))}


def build(fx: dict):
    cfg = ddpm_unet_config(fx["ddpm"]) if fx["fmt"] == "ddpm" else fx["cfg"]
    torch.manual_seed(fx["seed"])
    model = UNet2DModel(**cfg)
    randomize(model, fx["seed"])
    return model.eval()


def write(fx: dict, model, d: str):
    """Writes the model in fx's format into d; returns the folder the weights are in."""
    sd = cast_state(model.state_dict(), fx["dtype"])
    if fx["fmt"] in ("diffusers", "old_attn"):
        model.save_pretrained(d)          # config.json + diffusion_pytorch_model.safetensors
        wf = os.path.join(d, "diffusion_pytorch_model.safetensors")
        save_file(to_old_attention_names(sd) if fx["fmt"] == "old_attn" else sd, wf,
                  metadata={"format": "pt"})
        return d
    if fx["fmt"] == "pipeline":
        sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02,
                              beta_schedule="linear")
        DDPMPipeline(unet=model, scheduler=sched).save_pretrained(d)
        u = os.path.join(d, "unet")
        save_file(sd, os.path.join(u, "diffusion_pytorch_model.safetensors"),
                  metadata={"format": "pt"})
        return u
    if fx["fmt"] == "ddpm":
        levels = len(fx["ddpm"]["ch_mult"])
        save_file(to_ddpm(sd, levels), os.path.join(d, "model.safetensors"))
        cfg = ddpm_yaml(fx["ddpm"])
        text = yaml_text(cfg)
        assert yaml.safe_load(text) == cfg
        with open(os.path.join(d, "config.yml"), "w") as f:
            f.write(text)
        return d
    raise ValueError(fx["fmt"])


def load_back(fx: dict, d: str, dtype=torch.float64):
    """The model as stored, rebuilt with our own name mapping, in `dtype`."""
    if fx["fmt"] == "ddpm":
        cfg = ddpm_unet_config(fx["ddpm"])
        model = UNet2DModel(**cfg)
        sd = load_file(os.path.join(d, "model.safetensors"))
        sd = from_ddpm(sd, list(model.state_dict()), len(cfg["block_out_channels"]))
    else:
        wd = os.path.join(d, "unet") if fx["fmt"] == "pipeline" else d
        with open(os.path.join(wd, "config.json")) as f:
            model = UNet2DModel.from_config(json.load(f))
        sd = load_file(os.path.join(wd, "diffusion_pytorch_model.safetensors"))
        if fx["fmt"] == "old_attn":
            sd = from_old_attention_names(sd)
    model.load_state_dict({k: v.to(torch.float32) for k, v in sd.items()}, strict=True)
    return model.to(dtype).eval()


@torch.no_grad()
def forward_with_h(model, x, t):
    cap = {}
    hook = model.mid_block.register_forward_hook(lambda m, i, o: cap.__setitem__("h", o))
    eps = model(x, t).sample
    hook.remove()
    return eps, cap["h"]


def load_authors_ddpm(tmp: str):
    """The authors' DDPM `Model` class, written from their repository at run time."""
    src = subprocess.run(["git", "-C", AUTHORS_REPO, "show", "HEAD:models/ddpm/diffusion.py"],
                         capture_output=True, text=True, check=True).stdout
    p = os.path.join(tmp, "authors_ddpm_diffusion.py")
    with open(p, "w") as f:
        f.write(src)
    import importlib.util
    spec = importlib.util.spec_from_file_location("authors_ddpm_diffusion", p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@torch.no_grad()
def check_authors_ddpm(fx: dict, d: str, x, t, eps_ref, h_ref):
    if not os.path.isdir(AUTHORS_REPO):
        print("  (authors' repository not found: DDPM mapping check skipped)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        mod = load_authors_ddpm(tmp)
        with open(os.path.join(d, "config.yml")) as f:
            y = yaml.safe_load(f)
        ns = lambda dct: SimpleNamespace(**{k: ns(v) if isinstance(v, dict) else v
                                            for k, v in dct.items()})
        am = mod.DDPM(ns(y))
        sd = load_file(os.path.join(d, "model.safetensors"))
        am.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
        am = am.double().eval()
        orig = mod.get_timestep_embedding
        # Their sinusoid as they compute it (float32), cast to float64 for the f64 model.
        mod.get_timestep_embedding = lambda ts, dim: orig(ts, dim).double()
        eps_a, _, _, h_a = am(x, t)
        print(f"  authors' DDPM model (their f32 sinusoid) vs golden: eps max|diff| "
              f"{(eps_a - eps_ref).abs().max().item():.3e}, h max|diff| "
              f"{(h_a - h_ref).abs().max().item():.3e}")

        def emb64(ts, dim):
            import math
            half = dim // 2
            e = torch.exp(torch.arange(half, dtype=torch.float64) * -(math.log(10000) / (half - 1)))
            e = ts.double()[:, None] * e[None]
            return torch.cat([torch.sin(e), torch.cos(e)], dim=1)
        mod.get_timestep_embedding = emb64
        eps_a64, _, _, h_a64 = am(x, t)
        mod.get_timestep_embedding = orig
        return eps_a64, h_a64


class _Sinusoid64(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.cfg = model.config

    def forward(self, ts):
        import math
        c = self.cfg
        half = c.block_out_channels[0] // 2
        e = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64)
                      / (half - c.freq_shift))
        e = ts.double()[:, None] * e[None]
        e = torch.cat([torch.sin(e), torch.cos(e)], dim=-1)
        if c.flip_sin_to_cos:
            e = torch.cat([e[:, half:], e[:, :half]], dim=-1)
        return e


@torch.no_grad()
def eps_with_temb64(model, x, t, with_h=False):
    """model(x, t) with diffusers' sinusoidal embedding computed in float64 (a check of
    how much the float32 sinusoid that diffusers uses matters)."""
    tp = model.time_proj
    model.time_proj = _Sinusoid64(model)
    try:
        eps, h = forward_with_h(model, x, t)
        return (eps, h) if with_h else eps
    finally:
        model.time_proj = tp


README_HEAD = """# tests/fixtures/unet

U-Net forward goldens. Written by `tools/make_fixtures.py` (do not edit by hand; rerun it).
Every model is a tiny diffusers `UNet2DModel` (DDPM family: `DownBlock2D` /
`AttnDownBlock2D`, `UNetMidBlock2D`, `UpBlock2D` / `AttnUpBlock2D`) with deterministic
random weights: every parameter re-randomised (GroupNorm weights N(1, 0.3), GroupNorm
biases N(0, 0.3), other biases N(0, 0.2), conv / linear weights N(0, 1) / sqrt(fan_in),
times 0.5 for `conv2` and `to_out.0`), so that nothing is trivially zero or one and
activations stay O(1). Every GroupNorm has at least two channels per group (with one
channel per group the time embedding would cancel out exactly).

`golden.safetensors` in each folder (all float32):

| tensor | shape | |
|--------|-------|-|
| `x` | [2, C_in, S, S] | random normal input |
| `t` | [2] | timesteps (float) |
| `eps` | [2, C_out, S, S] | `model(x, t).sample` |
| `h` | [2, C_mid, S/2^(L-1), S/2^(L-1)] | output of `model.mid_block` |

The goldens are computed in float64 (`model.double()`) from the weights as stored (f16 /
bf16 tensors are loaded back first). diffusers computes the sinusoidal timestep
embedding in float32 even in a float64 model, and so do the goldens: `exp(-ln(10000) *
arange(half) / (half - freq_shift))` in float32, times t in float32, sin / cos in
float32. (Computing that sinusoid in float64 instead moves eps by up to ~3e-6; a float32
forward of the same weights is within ~3e-6 of the goldens, far inside the 1e-4 bound.)

| folder | format | covers |
|--------|--------|--------|
"""

README_TAIL = """
Formats:

- **diffusers**: `config.json` (as `save_pretrained` writes it) +
  `diffusion_pytorch_model.safetensors` with the new attention names
  (`attentions.N.{group_norm,to_q,to_k,to_v,to_out.0}`; q/k/v/out weights are [C, C]).
- **old attention names**: the same, with `query` / `key` / `value` / `proj_attn` in
  place of `to_q` / `to_k` / `to_v` / `to_out.0` (`group_norm` unchanged); diffusers
  itself still loads this layout (checked).
- **DDPM**: `model.safetensors` with the original DDPM (`pytorch_diffusion`, authors'
  `models/ddpm/diffusion.py`) names + `config.yml` in the authors' config layout
  (`data` / `model` / `diffusion` / `sampling`; model.type "simple"). The equivalent
  diffusers config: `block_out_channels = ch * ch_mult`, `layers_per_block =
  num_res_blocks`, `Attn*Block2D` where the level's resolution is in `attn_resolutions`,
  one head, `norm_num_groups` 32, `norm_eps` 1e-6, `downsample_padding` 0,
  `flip_sin_to_cos` false, `freq_shift` 1. Names, diffusers -> DDPM:
  `time_embedding.linear_1/2` -> `temb.dense.0/1`; `down_blocks.i.resnets.j.{norm1,
  conv1, time_emb_proj, norm2, conv2, conv_shortcut}` -> `down.i.block.j.{norm1, conv1,
  temb_proj, norm2, conv2, nin_shortcut}`; `down_blocks.i.attentions.j.{group_norm, to_q,
  to_k, to_v, to_out.0}` -> `down.i.attn.j.{norm, q, k, v, proj_out}` with the q/k/v/out
  weights as [C, C, 1, 1] 1x1 convs; `down_blocks.i.downsamplers.0.conv` ->
  `down.i.downsample.conv`; `mid_block.resnets.0 / attentions.0 / resnets.1` ->
  `mid.block_1 / attn_1 / block_2`; `up_blocks.u.{resnets, attentions}.j` and
  `up_blocks.u.upsamplers.0.conv` -> `up.(L-1-u).{block, attn}.j` and
  `up.(L-1-u).upsample.conv`; `conv_norm_out` -> `norm_out`; `conv_in`, `conv_out`
  unchanged. The authors' own DDPM class, fed these weights, gives the golden eps and h
  to 4e-15 (float64, with the same float64 sinusoid on both sides; their float32 sinusoid
  formula rounds differently from diffusers' by ~1e-5, which moves eps by ~5e-7).
- **pipeline**: a `DDPMPipeline.save_pretrained` folder: `model_index.json`,
  `unet/config.json`, `unet/diffusion_pytorch_model.safetensors`,
  `scheduler/scheduler_config.json`; `golden.safetensors` at the top.
"""


def write_readme():
    fmt = {"diffusers": "diffusers", "old_attn": "diffusers, old attention names",
           "ddpm": "DDPM names + YAML", "pipeline": "pipeline folder"}
    dt = {"f32": "f32", "f16": "f16", "bf16": "bf16", "mixed": "f32/f16/bf16"}
    rows = [f"| `{fx['name']}` | {fmt[fx['fmt']]}, {dt[fx['dtype']]}; t = "
            f"{[int(v) for v in fx['t']]} | {fx['covers']} |" for fx in FIXTURES]
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(README_HEAD + "\n".join(rows) + "\n" + README_TAIL)


def main():
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    total = 0
    for fx in FIXTURES:
        d = os.path.join(OUT, fx["name"])
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        model = build(fx)
        write(fx, model, d)
        m64 = load_back(fx, d)
        cfg = m64.config
        g = torch.Generator().manual_seed(1000 + fx["seed"])
        x = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=g,
                        dtype=torch.float32)
        t = torch.tensor(fx["t"], dtype=torch.float32)
        eps, h = forward_with_h(m64, x.double(), t)
        assert torch.isfinite(eps).all() and torch.isfinite(h).all()
        save_file({"x": x.contiguous(), "t": t.contiguous(), "eps": eps.float().contiguous(),
                   "h": h.float().contiguous()}, os.path.join(d, "golden.safetensors"))
        size = sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(d) for f in fs)
        total += size
        nparams = sum(p.numel() for p in m64.parameters())
        print(f"{fx['name']}: {nparams} params, {size / 1e6:.2f} MB; eps std "
              f"{eps.std().item():.3f} max|eps| {eps.abs().max().item():.2f}; h {tuple(h.shape)} "
              f"std {h.std().item():.3f}")
        # Sensitivity: float32 forward of the same weights, and the timestep embedding in f64.
        m32 = load_back(fx, d, torch.float32)
        e32, h32 = forward_with_h(m32, x, t)
        e_t64 = eps_with_temb64(m64, x.double(), t)
        print(f"  f32 forward vs golden: eps max|diff| {(e32.double() - eps).abs().max().item():.2e},"
              f" h {(h32.double() - h).abs().max().item():.2e}; sinusoid in f64 instead of f32: "
              f"eps max|diff| {(e_t64 - eps).abs().max().item():.2e}")
        # diffusers' own loader must read every diffusers-format folder identically.
        if fx["fmt"] != "ddpm":
            wd = os.path.join(d, "unet") if fx["fmt"] == "pipeline" else d
            md = UNet2DModel.from_pretrained(wd, torch_dtype=torch.float32).double().eval()
            e2, _ = forward_with_h(md, x.double(), t)
            assert (e2 - eps).abs().max().item() == 0.0, "diffusers loads it differently"
            if fx["fmt"] == "pipeline":
                pipe = DDPMPipeline.from_pretrained(d)
                assert pipe.unet.config.sample_size == cfg.sample_size
        else:
            r = check_authors_ddpm(fx, d, x.double(), t, eps, h)
            if r is not None:
                e_d, h_d = eps_with_temb64(m64, x.double(), t, with_h=True)
                print(f"  ... with a float64 sinusoid on both sides: eps max|diff| "
                      f"{(r[0] - e_d).abs().max().item():.3e}, h max|diff| "
                      f"{(r[1] - h_d).abs().max().item():.3e}")
    write_readme()
    print(f"total {total / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
