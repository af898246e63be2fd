#!/usr/bin/env python3
"""Writes tests/fixtures/unet/adm_<name>/: tiny random-weight ADM U-Nets (guided-diffusion
`UNetModel` layout) converted by tools/convert_checkpoint.py from a torch .pt, with
float64 goldens of the forward pass from tools/dsref/adm.py.

    python3 tools/make_adm_fixtures.py        # deterministic; rerun gives identical files

Each folder: model.safetensors + model.json (the converter's outputs: tensors under the
ADM names, the create_model flags), golden.safetensors (float32): x [2, 3, S, S], t [2],
out [2, out_channels, S, S] = model(x, t), eps = out[:, :3], h = the middle block's
output. The goldens are computed in float64 from the weights as stored.

When the authors' repository is mirrored (AUTHORS_REPO), their own UNetModel
(models/guided_diffusion/unet.py) is loaded with the same weights and compared in
float32 (it runs its group norms in float32), and the differences are printed and
recorded in the README.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import types

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dsref.adm import AdmUNet  # noqa: E402
from dsref.weights import randomize  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "fixtures", "unet")
AUTHORS_REPO = "/work/.mirror/curryjung+InjectFusion_official/repo"
SMALL = ("out_layers.3.weight", "proj_out.weight")

FIXTURES = [
    dict(name="adm_film_updown", seed=61, dtype="keep", t=[37.0, 911.0],
         covers="the ILVR / P2 / ImageNet ADM options at 32x32: FiLM (scale-shift) norm, "
                "res-block up/down-sampling, legacy QKV order, 16 channels per head (4 heads "
                "at 64 channels), attention at resolution 16, learned sigma (6 outputs), "
                "channel_mult 1,2, 1 res block; stored float32; the .pt also holds a "
                "label_emb.weight the model does not use (reported and left out)",
         flags=dict(image_size=32, num_channels=32, num_res_blocks=1, channel_mult="1,2",
                    learn_sigma=True, attention_resolutions="16", num_heads=4,
                    num_head_channels=16, num_heads_upsample=-1, use_scale_shift_norm=True,
                    resblock_updown=True, use_new_attention_order=False),
         extra={"label_emb.weight": (10, 128)}),
    dict(name="adm_plain", seed=62, dtype="f16", t=[0.0, 640.0],
         covers="the other ADM options: additive time embedding (no FiLM), Upsample / "
                "Downsample convolutions, new QKV order, fixed heads (num_heads 2, "
                "num_heads_upsample 4), attention at 16 and 8, 2 res blocks, channel_mult "
                "1,2,2, no learned sigma; stored float16",
         flags=dict(image_size=32, num_channels=32, num_res_blocks=2, channel_mult="1,2,2",
                    learn_sigma=False, attention_resolutions="16,8", num_heads=2,
                    num_head_channels=-1, num_heads_upsample=4, use_scale_shift_norm=False,
                    resblock_updown=False, use_new_attention_order=True),
         extra={}),
]


def build(fx):
    torch.manual_seed(fx["seed"])
    model = AdmUNet(**fx["flags"])
    randomize(model, fx["seed"], small=SMALL)
    return model.eval()


def authors_unet_class(tmp: str):
    """The authors' guided_diffusion UNetModel, imported from their repository at run
    time (never copied into ours); None without the mirror."""
    if not os.path.isdir(AUTHORS_REPO):
        return None
    pkg = os.path.join(tmp, "gd_authors")
    os.makedirs(pkg)
    for f in ("unet.py", "nn.py", "fp16_util.py", "logger.py"):
        src = subprocess.run(["git", "-C", AUTHORS_REPO, "show", f"HEAD:models/guided_diffusion/{f}"],
                             capture_output=True, text=True, check=True).stdout
        with open(os.path.join(pkg, f), "w") as fh:
            fh.write(src)
    open(os.path.join(pkg, "__init__.py"), "w").close()
    sys.path.insert(0, tmp)
    import importlib
    mod = importlib.import_module("gd_authors.unet")
    return mod.UNetModel


def authors_model(cls, flags: dict):
    f = dict(flags)
    mult = f["channel_mult"]
    mult = tuple(int(m) for m in mult.split(","))
    ds = tuple(f["image_size"] // int(r) for r in f["attention_resolutions"].split(","))
    return cls(image_size=f["image_size"], in_channels=3, model_channels=f["num_channels"],
               out_channels=6 if f["learn_sigma"] else 3, num_res_blocks=f["num_res_blocks"],
               attention_resolutions=ds, channel_mult=mult, num_heads=f["num_heads"],
               num_head_channels=f["num_head_channels"], num_heads_upsample=f["num_heads_upsample"],
               use_scale_shift_norm=f["use_scale_shift_norm"], resblock_updown=f["resblock_updown"],
               use_new_attention_order=f["use_new_attention_order"]).eval()


def main():
    report = []
    with tempfile.TemporaryDirectory() as tmp:
        authors = authors_unet_class(tmp)
        for fx in FIXTURES:
            d = os.path.join(OUT, fx["name"])
            shutil.rmtree(d, ignore_errors=True)
            os.makedirs(d)
            model = build(fx)
            sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
            g = torch.Generator().manual_seed(fx["seed"] + 1000)
            for k, shape in fx["extra"].items():
                sd[k] = torch.randn(shape, generator=g)
            pt = os.path.join(tmp, fx["name"] + ".pt")
            torch.save(sd, pt)
            flags_file = os.path.join(tmp, fx["name"] + ".flags.json")
            with open(flags_file, "w") as f:
                json.dump(fx["flags"], f)
            conv = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "convert_checkpoint.py"),
                                   pt, os.path.join(d, "model.safetensors"), "--adm", flags_file,
                                   "--dtype", fx["dtype"]], capture_output=True, text=True, check=True)
            print(conv.stdout + conv.stderr, end="")
            if fx["extra"]:
                assert "left out" in conv.stderr, "the converter must report unused tensors"

            # Goldens from the weights as stored, in float64.
            stored = load_file(os.path.join(d, "model.safetensors"))
            ref = AdmUNet(**fx["flags"]).double().eval()
            ref.load_state_dict({k: v.double() for k, v in stored.items()}, strict=True)
            s = fx["flags"]["image_size"]
            x = torch.randn((2, 3, s, s), generator=g, dtype=torch.float64)
            t = torch.tensor(fx["t"], dtype=torch.float64)
            with torch.no_grad():
                h, skips, emb = ref.encode(x, t)
                out = ref.decode(h, skips, emb)
            save_file({"x": x.float().contiguous(), "t": t.float(), "out": out.float().contiguous(),
                       "eps": out[:, :3].float().contiguous(), "h": h.float().contiguous()},
                      os.path.join(d, "golden.safetensors"))

            line = f"{fx['name']}: {fx['covers']}."
            if authors is not None:
                am = authors_model(authors, fx["flags"])
                am.load_state_dict({k: v.float() for k, v in stored.items()}, strict=True)
                with torch.no_grad():
                    a_out, _, _, a_h = am(x.float(), t.float())
                de = (a_out.double() - out).abs().max().item()
                dh = (a_h.double() - h).abs().max().item()
                print(f"{fx['name']}: authors' UNetModel (float32) vs this reference (float64): "
                      f"out max abs {de:.2e}, h max abs {dh:.2e}")
                assert de < 1e-4 and dh < 1e-4, "the reference port differs from the authors' model"
                line += (f" The authors' own UNetModel (float32) agrees with the reference: "
                         f"max abs {de:.1e} (out), {dh:.1e} (h).")
            report.append(line)
    with open(os.path.join(OUT, "README_adm.md"), "w") as f:
        f.write("# ADM fixtures (tools/make_adm_fixtures.py)\n\n"
                "Tiny random-weight ADM U-Nets converted from a torch .pt by "
                "tools/convert_checkpoint.py (model.safetensors + model.json), with float64 "
                "goldens from tools/dsref/adm.py (x, t, out, eps = out[:, :3], h).\n\n")
        for line in report:
            f.write(f"- {line}\n")


if __name__ == "__main__":
    main()
