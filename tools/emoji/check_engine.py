#!/usr/bin/env python3
"""Checks that diffstyle reads a trained model folder as diffusers does: runs
`diffstyle --device cpu sample -n 1` on it and the same DDIM sampling in float64 with the
diffusers UNet2DModel (same seeded noise, dsref.rng; same seq(n), alpha_bar), and
compares the 8-bit images.

    python3 tools/emoji/check_engine.py --model target/emoji/ckpt-NNN [--steps 10]
    python3 tools/emoji/check_engine.py --model DIR --random   # its architecture, random weights

Passes when no channel value differs by more than 1 (the engine computes in float32,
the reference in float64; a value near a rounding boundary may land on either side).
"""
import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from dsref.rng import gaussian  # noqa: E402
from dsref.schedule import alpha_bar, alpha_bar_table, seq  # noqa: E402

SAMPLE_STREAM = 0xFFFFFFFF   # src/diffusion/method.rs

from diffusers.utils import logging as dlogging  # noqa: E402
dlogging.set_verbosity_error()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--bin", default=os.path.join(ROOT, "target", "release", "diffstyle"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--random", action="store_true",
                    help="check the model's architecture with dsref's random weights (every op "
                         "matters; an untrained model's attention barely does) instead of its "
                         "own weights")
    args = ap.parse_args()
    if args.random:
        return check_random(args)
    return check(args)


def check_random(args):
    from diffusers import UNet2DModel
    from safetensors.torch import save_file
    from dsref.weights import randomize
    with tempfile.TemporaryDirectory() as d:
        unet = UNet2DModel.from_pretrained(args.model)
        with torch.no_grad():
            randomize(unet, 7)
        unet.save_pretrained(d)
        save_file({k: v.to(torch.float16).contiguous() for k, v in unet.state_dict().items()},
                  os.path.join(d, "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(args.model, "scheduler_config.json")) as f, \
                open(os.path.join(d, "scheduler_config.json"), "w") as g:
            g.write(f.read())
        args.model = d
        return check(args)


def check(args):

    from diffusers import UNet2DModel
    import json
    with open(os.path.join(args.model, "scheduler_config.json")) as f:
        sc = json.load(f)
    unet = UNet2DModel.from_pretrained(args.model, torch_dtype=torch.float16).double().eval()
    size = unet.config.sample_size
    table = alpha_bar_table(sc["beta_start"], sc["beta_end"], sc["num_train_timesteps"])
    x = torch.from_numpy(gaussian(args.seed, SAMPLE_STREAM, 0, 3 * size * size)
                         .reshape(1, 3, size, size)).double()
    times = seq(args.steps)
    with torch.no_grad():
        for k in reversed(range(len(times))):
            i, j = times[k], (times[k - 1] if k > 0 else -1)
            a_i, a_j = alpha_bar(table, i).double(), alpha_bar(table, j).double()
            eps = unet(x, torch.tensor([i])).sample
            x0 = (x - (1 - a_i).sqrt() * eps) / a_i.sqrt()
            x = a_j.sqrt() * x0 + (1 - a_j).sqrt() * eps
    ref = np.clip(((x[0].numpy() + 1) * 0.5) * 255 + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)

    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "s.png")
        subprocess.run([args.bin, "--device", "cpu", "--quiet", "sample", "--model", args.model,
                        "-n", "1", "--steps", str(args.steps), "--seed", str(args.seed),
                        "--out", out], check=True)
        got = np.asarray(Image.open(out).convert("RGB"))
    if got.shape != ref.shape:      # a grid of one: cut the padding
        p = (got.shape[0] - size) // 2
        got = got[p:p + size, p:p + size]
    diff = np.abs(got.astype(int) - ref.astype(int))
    print(f"{args.model}: {args.steps} DDIM steps, seed {args.seed}: max |diff| {diff.max()}, "
          f"{(diff > 0).mean() * 100:.2f}% of values differ, mean {ref.mean():.1f}")
    return 0 if diff.max() <= 1 else 1


if __name__ == "__main__":
    sys.exit(main())
