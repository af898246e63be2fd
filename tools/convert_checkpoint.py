#!/usr/bin/env python3
"""Convert a torch checkpoint (.ckpt / .pt pickle) into a .safetensors file the engine
loads (it never unpickles anything itself).

Original DDPM U-Net (the authors' CelebA-HQ / LSUN .ckpt):

    python3 tools/convert_checkpoint.py celeba_hq.ckpt celeba_hq.safetensors
    diffstyle transfer --model celeba_hq.safetensors --config celeba.yml ...

  The config is the authors' `configs/<dataset>.yml` (or `--arch ddpm-256`). Keys are kept
  as they are (the engine maps the original DDPM names).

ADM (guided-diffusion / improved-diffusion `UNetModel`: ILVR's afhq_dog_4m.pt, P2's
ffhq_10m.pt and metface_p2.pt, 256x256_diffusion_uncond.pt):

    python3 tools/convert_checkpoint.py afhq_dog_4m.pt afhq_dog.safetensors --adm afhq
    diffstyle transfer --model afhq_dog.safetensors --config afhq_dog.json ...

  `--adm` names the authors' flag set (afhq, ffhq, metface, imagenet; the flags their
  scripts pass to create_model) or a JSON file of create_model flags; the flags are
  written next to the output as <dst stem>.json (the sidecar config). The checkpoint is
  checked against the model those flags build (tools/dsref/adm.py): a missing or
  wrongly shaped tensor is an error; a tensor the model does not use (the authors load
  with strict=False, so e.g. a class embedding or Asyrp's extra layers would be ignored
  there) is listed and left out.

Either way a leading `module.` is stripped, and entries that are not tensors are
reported, never silently dropped.
"""
import argparse
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# The authors' create_model flags (InjectFusion models/improved_ddpm/script_util.py
# AFHQ_DICT, also used for FFHQ; models/guided_diffusion/script_util.py METFACE_DICT;
# improved_ddpm IMAGENET_DICT with class_cond False: the uncond checkpoint has no
# label_emb and their UNetModel.forward never adds it). Flags that do not change the
# maths (dropout, use_fp16, use_checkpoint) are left out.
_P2 = dict(image_size=256, num_channels=128, num_res_blocks=1, channel_mult="",
           learn_sigma=True, class_cond=False, attention_resolutions="16", num_heads=4,
           num_head_channels=64, num_heads_upsample=-1, use_scale_shift_norm=True,
           resblock_updown=True, use_new_attention_order=False,
           diffusion_steps=1000, noise_schedule="linear")
ADM_FLAGS = {
    "afhq": dict(_P2),
    "ffhq": dict(_P2),
    "metface": dict(_P2),
    "imagenet": dict(_P2, num_channels=256, num_res_blocks=2, attention_resolutions="32,16,8"),
}


def state_dict_of(obj):
    # DDIM-style checkpoints are either the state dict itself or a list whose first
    # element is it; some trainers wrap it as {"state_dict": ...} / {"model": ...}.
    if isinstance(obj, (list, tuple)):
        obj = obj[0]
    for key in ("state_dict", "model", "ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            return obj[key]
    return obj


def adm_flags(arg: str) -> dict:
    if arg in ADM_FLAGS:
        return dict(ADM_FLAGS[arg])
    with open(arg) as f:
        return json.load(f)


def check_adm(tensors: dict, flags: dict) -> dict:
    """The tensors the ADM of `flags` uses; the others are reported and left out."""
    from dsref.adm import AdmUNet
    want = {k: tuple(v.shape) for k, v in AdmUNet(**flags).state_dict().items()}
    missing = [k for k in want if k not in tensors]
    wrong = [f"{k}: expected {list(want[k])}, got {list(tensors[k].shape)}"
             for k in want if k in tensors and tuple(tensors[k].shape) != want[k]]
    if missing or wrong:
        msg = "the checkpoint does not match the ADM of these flags"
        if missing:
            msg += f"; {len(missing)} missing: {', '.join(missing[:10])}"
        if wrong:
            msg += f"; {len(wrong)} wrongly shaped: {', '.join(wrong[:10])}"
        sys.exit(msg)
    unused = sorted(k for k in tensors if k not in want)
    if unused:
        print(f"not used by the model, left out ({len(unused)}): {', '.join(unused)}",
              file=sys.stderr)
    return {k: tensors[k] for k in want}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--dtype", choices=["keep", "f32", "f16"], default="keep")
    ap.add_argument("--adm", metavar="NAME|FLAGS.json",
                    help=f"an ADM checkpoint: one of {', '.join(ADM_FLAGS)} or a JSON file of "
                         "create_model flags")
    a = ap.parse_args()
    obj = torch.load(a.src, map_location="cpu", weights_only=True)
    sd = state_dict_of(obj)
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
    if skipped:
        print(f"not converted (not tensors): {', '.join(skipped)}", file=sys.stderr)
    is_adm = "input_blocks.0.0.weight" in out
    if is_adm and not a.adm:
        sys.exit(f"{a.src} is an ADM (guided-diffusion UNetModel) checkpoint: pass --adm with "
                 f"its flags ({', '.join(ADM_FLAGS)} or a JSON file)")
    if a.adm:
        if not is_adm:
            sys.exit(f"{a.src} has no input_blocks.0.0.weight: not an ADM checkpoint")
        flags = adm_flags(a.adm)
        out = check_adm(out, flags)
        side = os.path.splitext(a.dst)[0] + ".json"
        with open(side, "w") as f:
            json.dump(dict(flags, model_family="adm"), f, indent=2, sort_keys=True)
            f.write("\n")
        print(f"{side}: ADM create_model flags (pass it as --config)")
    save_file(out, a.dst)
    print(f"{a.dst}: {len(out)} tensors, {sum(v.numel() for v in out.values())} values")


if __name__ == "__main__":
    main()
