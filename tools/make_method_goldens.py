#!/usr/bin/env python3
"""Writes tests/fixtures/method/: a tiny random-weight diffusers UNet2DModel (model/) and
DiffStyle cases (<case>/settings.json, content.png, style.png, [mask.png],
expected.safetensors) computed by the float64 reference in tools/dsref (docs/method.md).

    python3 tools/make_method_goldens.py      # deterministic; rerun gives identical files

expected.safetensors (float32): x0 [1,3,S,S] (final latent, unclamped), content_xT,
style_xT [1,3,S,S], content_h [R,C,s,s] (rows content_h_rows of the K keys,
tools/dsref/rows.py), content_h_keys [K] (ascending); roundtrip also
has recon (= x0).
"""
import json
import math
import os
import shutil
import sys
import time

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dsref.rows import h_rows  # noqa: E402
from dsref import rng  # noqa: E402
from dsref.imageio import load_image, load_mask  # noqa: E402
from dsref.method import Settings, Stats, ddim_generate, generate, invert  # noqa: E402
from dsref.schedule import alpha_bar_table  # noqa: E402
from dsref.unet import SplitUNet  # noqa: E402
from dsref.weights import randomize  # noqa: E402

from diffusers import DDPMScheduler, UNet2DModel  # noqa: E402
from diffusers.utils import logging as dlogging  # noqa: E402

dlogging.set_verbosity_error()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "method")
MODEL_DIR = os.path.join(OUT, "model")
SEED = 20240601
D, AD, U, AU = "DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"
MODEL_CFG = dict(sample_size=32, block_out_channels=(32, 48, 64), layers_per_block=1,
                 down_block_types=(D, AD, D), up_block_types=(U, AU, U),
                 attention_head_dim=None, norm_num_groups=8, norm_eps=1e-6,
                 downsample_padding=0, flip_sin_to_cos=False, freq_shift=1)
SCHED = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.002,
             beta_schedule="linear")

DEFAULTS = dict(gamma=0.3, t_edit=400, inv_steps=50, gen_steps=1000, replace_steps=50,
                t_boost=200, dt_lambda=1.0, dt_end=950, omega=0.0, seed=1234, mask=None)
CASES = {
    "defaults": dict(),
    "omega": dict(omega=0.3, gen_steps=100, replace_steps=100),
    "dt_lambda": dict(dt_lambda=0.9985, dt_end=950, gen_steps=100, replace_steps=100),
    "mask": dict(mask="mask.png", gen_steps=100, replace_steps=100),
    "replace_lt_gen": dict(replace_steps=20, gen_steps=100),
    "replace_zero": dict(replace_steps=0, gen_steps=60),
    "inv_ne_gen": dict(inv_steps=30, gen_steps=80),
    "harmonize": dict(gamma=0.4, inv_steps=100, gen_steps=100, replace_steps=100, t_boost=0),
    "edit_999": dict(t_edit=999, gen_steps=100, replace_steps=100),
    # Inversion + plain DDIM of the content: style = content, no mixing, eta 0 throughout.
    "roundtrip": dict(inv_steps=50, gen_steps=50, replace_steps=0, t_edit=1000, t_boost=-1,
                      gamma=0.0),
}


# ---------------------------------------------------------------- inputs
def smooth_image(seed: int, size: int, kind: str) -> np.ndarray:
    """A smooth random-ish RGB uint8 image: upsampled low-res noise plus a shape."""
    r = np.random.default_rng(seed)
    low = r.uniform(0, 255, size=(4, 4, 3)).astype(np.uint8)
    base = np.asarray(Image.fromarray(low).resize((size, size), Image.BICUBIC), np.float64)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    if kind == "content":      # a soft disc
        d = np.hypot(yy - 0.45, xx - 0.55)
        shape = 1 / (1 + np.exp((d - 0.28) * 30))
        col = np.array([230.0, 60.0, 40.0])
    else:                      # soft diagonal stripes
        shape = 0.5 + 0.5 * np.sin((xx + 0.6 * yy) * 2 * np.pi * 2.5)
        col = np.array([30.0, 90.0, 220.0])
    img = base * (1 - 0.6 * shape[..., None]) + col * 0.6 * shape[..., None]
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def mask_image(size: int) -> np.ndarray:
    """RGBA mask, 4x the 8x8 h grid: a white rectangle whose edges cut through h cells,
    plus an orange patch at half alpha (exercises the luminance weights and alpha)."""
    m = np.zeros((size, size, 4), np.uint8)
    m[..., 3] = 255
    m[9:27, 5:19, :3] = 255
    m[2:7, 22:31] = (200, 100, 50, 128)
    return m


def write_png(arr: np.ndarray, path: str):
    Image.fromarray(arr).save(path, format="PNG", optimize=False)


# ---------------------------------------------------------------- model
def make_model():
    torch.manual_seed(SEED)
    model = UNet2DModel(**MODEL_CFG)
    randomize(model, SEED)
    model = model.eval()
    # Scale the output conv so that eps has std ~1 on typical inputs.
    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        es = torch.cat([model(x, torch.full((4,), float(t))).sample for t in (0, 333, 666, 999)])
        s = es.std().item()
        model.conv_out.weight.div_(s)
        model.conv_out.bias.div_(s)
    return model


def write_model(model):
    shutil.rmtree(MODEL_DIR, ignore_errors=True)
    model.save_pretrained(MODEL_DIR)       # config.json + diffusion_pytorch_model.safetensors
    DDPMScheduler(**SCHED).save_config(MODEL_DIR)
    assert os.path.exists(os.path.join(MODEL_DIR, "scheduler_config.json"))


def load_model(dtype):
    with open(os.path.join(MODEL_DIR, "config.json")) as f:
        m = UNet2DModel.from_config(json.load(f))
    sd = load_file(os.path.join(MODEL_DIR, "diffusion_pytorch_model.safetensors"))
    m.load_state_dict(sd, strict=True)
    return m.to(dtype).eval()


def psnr(a: torch.Tensor, b: torch.Tensor, clamp=False) -> float:
    """PSNR on the [-1, 1] scale (peak-to-peak 2), i.e. of the [0, 1] image."""
    a, b = a.double(), b.double()
    if clamp:
        a, b = a.clamp(-1, 1), b.clamp(-1, 1)
    mse = ((a - b) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


# ---------------------------------------------------------------- runs
class Runner:
    def __init__(self, dtype, table):
        self.dtype = dtype
        self.net = SplitUNet(load_model(dtype))
        self.table = table
        self.cache = {}

    def inversion(self, path, n):
        key = (path, n)
        if key not in self.cache:
            x0 = load_image(path, MODEL_CFG["sample_size"]).to(self.dtype)
            self.cache[key] = invert(self.net, self.table, x0, n)
        return self.cache[key]

    def run(self, case_dir, st: Settings):
        cxT, ch = self.inversion(os.path.join(case_dir, "content.png"), st.inv_steps)
        sxT, _ = self.inversion(os.path.join(case_dir, "style.png"), st.inv_steps)
        mask = None
        if st.mask:
            h_grid = MODEL_CFG["sample_size"] >> (len(MODEL_CFG["block_out_channels"]) - 1)
            mask = load_mask(os.path.join(case_dir, st.mask), h_grid).to(self.dtype)
        stats = Stats()
        x, stats = generate(self.net, self.table, sxT, ch, st, mask, stats)
        return x, cxT, sxT, ch, stats


README_HEAD = """# tests/fixtures/method

DiffStyle goldens. Written by `tools/make_method_goldens.py` (do not edit by hand; rerun
it) with the float64 PyTorch reference `tools/dsref` of `docs/method.md`.

`model/`: a tiny diffusers `UNet2DModel` folder (`config.json`,
`diffusion_pytorch_model.safetensors` in float32, `scheduler_config.json`: linear betas
1e-4 .. 0.002 over 1000 steps, a mild schedule so that round-off is not amplified).
32x32, block_out_channels (32, 48, 64), 1 res block per level, single-head attention at
level 1 and in the middle, GroupNorm 8 groups eps 1e-6, DDPM-style padding 0 / flip false /
freq_shift 1. h is 64 x 8 x 8. Random weights, output conv scaled so that eps has std ~1
(measured on the content image noised to t = 0, 250, 500, 750, 999: EPS_STDS).

Each case folder: `settings.json` (gamma, t_edit, inv_steps, gen_steps, replace_steps,
t_boost, dt_lambda, dt_end, omega, seed, mask), `content.png`, `style.png` (32x32 RGB;
loaded as `(u8 / 255 - 0.5) / 0.5`), optional `mask.png`, and `expected.safetensors`
(float32):

| tensor | shape | |
|--------|-------|-|
| `x0` | [1, 3, 32, 32] | final latent of the generation, unclamped |
| `content_xT`, `style_xT` | [1, 3, 32, 32] | DDIM inversion results (n = inv_steps) |
| `content_h` | [R, 64, 8, 8] | the content trajectory's h at rows `content_h_rows` |
| `content_h_keys` | [K] | the trajectory's timesteps, ascending (seq(inv_steps) without 999), K = inv_steps - 1 |
| `content_h_rows` | [R] | the rows of the K kept in `content_h` (first, quarters, last: tools/dsref/rows.py) |
| `recon` | [1, 3, 32, 32] | roundtrip only: equal to x0 |

The mask (case `mask`) is a 32x32 RGBA image, 4x the h grid: per pixel
(0.299 R + 0.587 G + 0.114 B) / 255 * alpha / 255 in float64, then 4x4 means. Its
rectangle cuts through h cells (fractional values) and a half-alpha orange patch tests
the luminance weights and alpha.

Noise (steps with eta = 1): `dsref.rng` = `src/rng.rs`, stream = the step's
timestep i, sample 0, seed from settings. With omega != 0 only the calibrated step's noise
is used (the same stream, so it does not matter which draw).

`psnr_f32` below is the PSNR (peak-to-peak 2, unclamped) of x0 from the same reference
run entirely in float32 against the float64 golden: how far round-off alone moves x0.
The Rust f32 engine is held to 40 dB.

| case | settings (differences from defaults) | injection-capable / mixing / noisy / calibrated steps of all | psnr_f32 |
|------|--------------------------------------|---------------------------------------------------------------|----------|
"""

README_TAIL = """
Defaults: gamma 0.3, t_edit 400, inv_steps 50, gen_steps 1000, replace_steps 50,
t_boost 200, dt_lambda 1, dt_end 950, omega 0, seed 1234, no mask.

`roundtrip`: style.png is the content; t_edit 1000 (never mixes) and t_boost -1 (eta 0
everywhere) make the generation plain deterministic DDIM from the content's x_T
(checked equal to a plain DDIM loop); `recon` vs the input: ROUNDTRIP_PSNR dB.
"""


def write_readme(report):
    rows = []
    for name, over in CASES.items():
        r = report[name]
        diff = ", ".join(f"{k} {v}" for k, v in over.items()) or "(defaults)"
        rows.append(f"| `{name}` | {diff} | {r['injection_capable']} / {r['mixing']} / "
                    f"{r['noisy_steps']} / {r['calibrations']} of {r['steps']} | "
                    f"{r['psnr_f32_db']:.0f} dB |")
    text = README_HEAD + "\n".join(rows) + "\n" + README_TAIL
    text = text.replace("EPS_STDS", ", ".join(f"{v:.2f}" for v in report["_eps_stds"]))
    text = text.replace("ROUNDTRIP_PSNR", f"{report['roundtrip']['recon_psnr_db']:.1f}")
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(text)


@torch.no_grad()
def main():
    torch.set_num_threads(1)
    t_start = time.time()
    rng.self_test()
    os.makedirs(OUT, exist_ok=True)
    write_model(make_model())
    table = alpha_bar_table(SCHED["beta_start"], SCHED["beta_end"], SCHED["num_train_timesteps"])
    r64 = Runner(torch.float64, table)
    r32 = Runner(torch.float32, table)

    # Sanity: the encoder/decoder split equals the full forward.
    g = torch.Generator().manual_seed(7)
    xr = torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64)
    split = max(r64.net.check_split(xr, t) for t in (0, 37, 500, 999))
    print(f"split == full forward: max|diff| {split:.3e}")
    assert split == 0.0

    S = MODEL_CFG["sample_size"]
    content = smooth_image(101, S, "content")
    style = smooth_image(202, S, "style")
    report = {}
    for name, over in CASES.items():
        t0 = time.time()
        d = os.path.join(OUT, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        cfg = dict(DEFAULTS, **over)
        with open(os.path.join(d, "settings.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        write_png(content, os.path.join(d, "content.png"))
        write_png(content if name == "roundtrip" else style, os.path.join(d, "style.png"))
        if cfg["mask"]:
            write_png(mask_image(S), os.path.join(d, cfg["mask"]))
        st = Settings(**cfg)
        x, cxT, sxT, ch, stats = r64.run(d, st)
        keys = sorted(ch)
        rows = h_rows(len(keys))
        out = {"x0": x.float().contiguous(), "content_xT": cxT.float().contiguous(),
               "style_xT": sxT.float().contiguous(),
               "content_h": torch.cat([ch[keys[r]] for r in rows]).float().contiguous(),
               "content_h_keys": torch.tensor(keys, dtype=torch.float32),
               "content_h_rows": torch.tensor(rows, dtype=torch.float32)}
        info = {}
        if name == "roundtrip":
            out["recon"] = out["x0"].clone()
            plain = ddim_generate(r64.net, table, cxT, st.gen_steps)
            assert (plain - x).abs().max().item() == 0.0, "roundtrip != plain DDIM"
            x_in = load_image(os.path.join(d, "content.png"), S)
            info["recon_psnr_db"] = psnr(x, x_in)
        save_file(out, os.path.join(d, "expected.safetensors"))
        x32, *_ = r32.run(d, st)
        info.update(psnr_f32_db=psnr(x32, x), psnr_f32_clamped_db=psnr(x32, x, clamp=True),
                    x0_std=x.std().item(), x0_frac_outside=(x.abs() > 1).double().mean().item(),
                    steps=stats.steps, injection_capable=stats.injection_capable,
                    mixing=stats.mixing, noisy_steps=stats.noisy,
                    noisy_frac=stats.noisy / stats.steps, calibrations=stats.calibrations,
                    seconds=round(time.time() - t0, 1))
        report[name] = info
        print(name, {k: (round(v, 3) if isinstance(v, float) else v) for k, v in info.items()})

    # Sensitivity of the defaults case to the alpha_bar rounding (torch CPU cumprod
    # accumulates in float64; ours is the sequential float32 product).
    rt = Runner(torch.float64, alpha_bar_table(SCHED["beta_start"], SCHED["beta_end"],
                                               cumprod="torch"))
    d = os.path.join(OUT, "defaults")
    xt, *_ = rt.run(d, Settings(**DEFAULTS))
    xg = load_file(os.path.join(d, "expected.safetensors"))["x0"]
    print(f"defaults with torch's cumprod (f64 accumulation) vs golden: PSNR "
          f"{psnr(xt, xg):.1f} dB")

    # eps std of the method model on the content image noised to several t.
    net = r64.net
    x0 = load_image(os.path.join(OUT, "defaults", "content.png"), S).double()
    z = torch.randn(1, 3, S, S, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    stds = []
    for t in (0, 250, 500, 750, 999):
        a = table[t].double()
        stds.append(net.eps(a.sqrt() * x0 + (1 - a).sqrt() * z, t)[0].std().item())
    print("method model eps std at t=0,250,500,750,999:", [round(s, 3) for s in stds])
    report["_eps_stds"] = stds
    write_readme(report)
    print(f"total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
