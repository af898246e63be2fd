#!/usr/bin/env python3
"""Convert a torch checkpoint (.ckpt / .pt pickle) of the original DDPM U-Net into a
.safetensors file the engine loads (it never unpickles anything itself).

    python3 tools/convert_checkpoint.py celeba_hq.ckpt celeba_hq.safetensors
    diffstyle transfer --model celeba_hq.safetensors --config celeba.yml ...

The config is the authors' `configs/<dataset>.yml` (or `--arch ddpm-256`). Keys are kept
as they are (the engine maps the original DDPM names); a leading `module.` is stripped.
Entries that are not tensors are reported, never silently dropped.
"""
import argparse
import sys

import torch
from safetensors.torch import save_file


def state_dict_of(obj):
    # DDIM-style checkpoints are either the state dict itself or a list whose first
    # element is it; some trainers wrap it as {"state_dict": ...} / {"model": ...}.
    if isinstance(obj, (list, tuple)):
        obj = obj[0]
    for key in ("state_dict", "model", "ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--dtype", choices=["keep", "f32", "f16"], default="keep")
    a = ap.parse_args()
    sd = state_dict_of(torch.load(a.src, map_location="cpu", weights_only=True))
    out, skipped = {}, []
    for k, v in sd.items():
        if not torch.is_tensor(v):
            skipped.append(k)
            continue
        name = k[len("module."):] if k.startswith("module.") else k
        if a.dtype == "f32":
            v = v.float()
        elif a.dtype == "f16":
            v = v.half()
        out[name] = v.contiguous()
    save_file(out, a.dst)
    print(f"{a.dst}: {len(out)} tensors, {sum(v.numel() for v in out.values())} values")
    if skipped:
        print(f"not converted (not tensors): {', '.join(skipped)}", file=sys.stderr)


if __name__ == "__main__":
    main()
