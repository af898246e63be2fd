#!/usr/bin/env python3
"""Writes tests/fixtures/method_adm/: a tiny random-weight ADM U-Net (model/: model.safetensors
+ model.json, made by tools/convert_checkpoint.py --adm from a torch .pt) and DiffStyle
cases computed by the float64 reference (tools/dsref: method.py over dsref/adm.py),
with fast settings. Same case layout as tests/fixtures/method (make_method_goldens.py).

    python3 tools/make_adm_method_goldens.py      # deterministic; rerun gives identical files
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dsref.rows import h_rows  # noqa: E402
from dsref import rng  # noqa: E402
from dsref.adm import AdmSplit, AdmUNet  # noqa: E402
from dsref.imageio import load_image, load_mask  # noqa: E402
from dsref.method import Settings, Stats, generate, invert  # noqa: E402
from dsref.schedule import alpha_bar_table  # noqa: E402
from dsref.weights import randomize  # noqa: E402
from make_method_goldens import mask_image, psnr, smooth_image, write_png  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "method_adm")
MODEL_DIR = os.path.join(OUT, "model")
SEED = 20240607
# The P2 / ILVR options at 32x32; h is 64 x 16 x 16.
FLAGS = dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2",
             learn_sigma=True, attention_resolutions="16", num_heads=4, num_head_channels=16,
             num_heads_upsample=-1, use_scale_shift_norm=True, resblock_updown=True,
             use_new_attention_order=False, diffusion_steps=1000, noise_schedule="linear",
             beta_start=0.0001, beta_end=0.002)
# A mild schedule (as tests/fixtures/method): round-off is not amplified by 1/sqrt(alpha_bar)
# near t = 999, so reduced-precision runs stay comparable (beta_start / beta_end are a
# diffstyle extension of the ADM flags).
DEFAULTS = dict(gamma=0.3, t_edit=400, inv_steps=20, gen_steps=40, replace_steps=40,
                t_boost=200, dt_lambda=1.0, dt_end=950, omega=0.0, seed=1234, mask=None)
CASES = {
    "adm_fast": dict(),
    "adm_mask_omega": dict(mask="mask.png", omega=0.3, gen_steps=30, replace_steps=30),
}


def make_model():
    torch.manual_seed(SEED)
    model = AdmUNet(**FLAGS)
    randomize(model, SEED, small=("out_layers.3.weight", "proj_out.weight"))
    model = model.eval()
    # Scale the output conv so that eps (the first 3 outputs) has std ~1.
    g = torch.Generator().manual_seed(SEED + 1)
    x = torch.randn(4, 3, 32, 32, generator=g)
    with torch.no_grad():
        es = torch.cat([model(x, torch.full((4,), float(t)))[:, :3] for t in (0, 333, 666, 999)])
        s = es.std().item()
        model.out[2].weight.div_(s)
        model.out[2].bias.div_(s)
    return model


def write_model(model, tmp):
    shutil.rmtree(MODEL_DIR, ignore_errors=True)
    os.makedirs(MODEL_DIR)
    pt = os.path.join(tmp, "adm.pt")
    torch.save(model.state_dict(), pt)
    flags = os.path.join(tmp, "flags.json")
    with open(flags, "w") as f:
        json.dump(FLAGS, f)
    subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_checkpoint.py"), pt,
                    os.path.join(MODEL_DIR, "model.safetensors"), "--adm", flags], check=True)


def load_net(dtype):
    m = AdmUNet(**FLAGS)
    m.load_state_dict(load_file(os.path.join(MODEL_DIR, "model.safetensors")), strict=True)
    return AdmSplit(m.to(dtype).eval())


@torch.no_grad()
def main():
    torch.set_num_threads(2)
    t_start = time.time()
    rng.self_test()
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        write_model(make_model(), tmp)
    table = alpha_bar_table(FLAGS["beta_start"], FLAGS["beta_end"], 1000)
    S = FLAGS["image_size"]
    h_grid = S // 2
    content = smooth_image(101, S, "content")
    style = smooth_image(202, S, "style")
    lines = []
    for name, over in CASES.items():
        d = os.path.join(OUT, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        cfg = dict(DEFAULTS, **over)
        with open(os.path.join(d, "settings.json"), "w") as f:
            json.dump(cfg, f, indent=2)
            f.write("\n")
        write_png(content, os.path.join(d, "content.png"))
        write_png(style, os.path.join(d, "style.png"))
        if cfg["mask"]:
            write_png(mask_image(S), os.path.join(d, cfg["mask"]))
        st = Settings(**cfg)
        res = {}
        for dtype in (torch.float64, torch.float32):
            net = load_net(dtype)
            cx = load_image(os.path.join(d, "content.png"), S).to(dtype)
            sx = load_image(os.path.join(d, "style.png"), S).to(dtype)
            cxT, ch = invert(net, table, cx, st.inv_steps)
            sxT, _ = invert(net, table, sx, st.inv_steps)
            mask = load_mask(os.path.join(d, cfg["mask"]), h_grid).to(dtype) if cfg["mask"] else None
            x, stats = generate(net, table, sxT, ch, st, mask, Stats())
            res[dtype] = (x, cxT, sxT, ch, stats)
        x, cxT, sxT, ch, stats = res[torch.float64]
        keys = sorted(ch)
        rows = h_rows(len(keys))
        save_file({"x0": x.float().contiguous(), "content_xT": cxT.float().contiguous(),
                   "style_xT": sxT.float().contiguous(),
                   "content_h": torch.cat([ch[keys[r]] for r in rows]).float().contiguous(),
                   "content_h_keys": torch.tensor(keys, dtype=torch.float32),
                   "content_h_rows": torch.tensor(rows, dtype=torch.float32)},
                  os.path.join(d, "expected.safetensors"))
        p32 = psnr(res[torch.float32][0], x)
        diff = ", ".join(f"{k} {v}" for k, v in over.items()) or "(defaults)"
        lines.append(f"| `{name}` | {diff} | {stats.mixing} / {stats.noisy} / {stats.calibrations} "
                     f"of {stats.steps} | {p32:.0f} dB |")
        print(name, f"f32 reference vs f64 golden {p32:.1f} dB", f"{time.time() - t_start:.0f} s")
    with open(os.path.join(OUT, "README.md"), "w") as f:
        f.write(
            "# tests/fixtures/method_adm\n\n"
            "DiffStyle goldens for the ADM family, written by `tools/make_adm_method_goldens.py`"
            " (do not edit by hand; rerun it) with the float64 reference `tools/dsref` (the "
            "method over `dsref/adm.py`).\n\n"
            "`model/`: `model.safetensors` + `model.json` (ADM create_model flags: 32x32, 32 "
            "channels, channel_mult 1,2, 1 res block, attention at 16 with 16 channels per "
            "head, FiLM norm, res-block resampling, legacy QKV order, learned sigma; linear "
            "betas 1e-4..0.002 over 1000, a mild schedule so that round-off is not amplified), converted by `tools/convert_checkpoint.py --adm`. "
            "Random weights, output conv scaled so that eps has std ~1. h is 64 x 16 x 16.\n\n"
            "Case layout as `tests/fixtures/method` (settings.json, content.png, style.png, "
            "optional mask.png, expected.safetensors). Defaults here: " +
            ", ".join(f"{k} {v}" for k, v in DEFAULTS.items()) + ".\n\n"
            "| case | settings | mixing / noisy / calibrated steps of all | f32 reference vs golden |\n"
            "|------|----------|-------------------------------------------|-------------------------|\n"
            + "\n".join(lines) + "\n")
    print(f"total {time.time() - t_start:.0f} s")


if __name__ == "__main__":
    main()
