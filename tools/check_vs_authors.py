#!/usr/bin/env python3
"""Cross-check of the dsref reference against the authors' own code (InjectFusion_official):
their `denoising_step` (utils/diffusion_utils.py) and `slerp` (models/ddpm/diffusion.py),
loaded from their repository at run time (nothing is copied into this repository), driven
by a minimal re-statement of their `diff_style` / `precompute_pairs_with_h` loops, over the
method fixture's model (tests/fixtures/method/model) in float64. Their `torch.randn_like`
is replaced by our counter-based noise (stream = timestep), and their alpha_bar is torch's
cumprod, so the reference is run with cumprod="torch" here.

    python3 tools/check_vs_authors.py     (needs tests/fixtures/method from make_method_goldens.py)
"""
import importlib.util
import json
import os
import warnings
import subprocess
import sys
import tempfile

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from dsref import rng  # noqa: E402
from dsref.imageio import load_image  # noqa: E402
from dsref.method import Settings, generate, invert  # noqa: E402
from dsref.schedule import alpha_bar_table  # noqa: E402
from dsref.unet import SplitUNet  # noqa: E402
import make_method_goldens as mg  # noqa: E402

REPO = "/work/.mirror/curryjung+InjectFusion_official/repo"


def load_module(tmp, path, name):
    src = subprocess.run(["git", "-C", REPO, "show", f"HEAD:{path}"], capture_output=True,
                         text=True, check=True).stdout
    p = os.path.join(tmp, name + ".py")
    with open(p, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location(name, p)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class AuthorsLikeModel:
    """Their DDPM.forward contract (et, et_modified, delta_h, middle_h) over our split U-Net;
    the DiffStyle branch restated from their forward, with their slerp."""

    def __init__(self, net, slerp):
        self.net, self.slerp = net, slerp

    def __call__(self, x, t, index=None, t_edit=400, hs_coeff=(1.0, 1.0), delta_h=None,
                 ignore_timestep=False, use_mask=False):
        h, skips, emb = self.net.encode(x, int(t[0].item()))
        h = h.contiguous()               # their slerp uses .view()
        delta_h = delta_h.contiguous() if delta_h is not None else None
        et = self.net.decode(h, skips, emb)
        if index is None:
            return et, None, delta_h, h
        if t[0] >= t_edit:
            if use_mask:
                mask = torch.zeros_like(h)
                mask[:, :, 4:-1, 3:5] = 1.0
                h2 = self.slerp(1 - hs_coeff[0], h * mask, delta_h * mask) + (1 - mask) * h
            else:
                hn = torch.norm(h.reshape(h.shape[0], -1), dim=1)[:, None, None, None]
                dn = torch.norm(delta_h.reshape(h.shape[0], -1), dim=1)[:, None, None, None]
                h2 = self.slerp(1.0 - hs_coeff[0], h, hn * delta_h / dn)
        else:
            h2 = h
        return et, self.net.decode(h2, skips, emb), delta_h, h


def their_run(du, model, betas, logvar, x_content, x_style, st: Settings, use_mask):
    seqf = lambda n: [int(s + 1e-6) for s in list(np.linspace(0, 1, n) * 999)]

    def precompute(x0):
        s = seqf(st.inv_steps)
        nxt = [-1] + s[:-1]
        x, hd = x0.clone(), {}
        for i, j in zip(nxt[1:], s[1:]):
            x, _, _, h = du.denoising_step(x, t=torch.ones(1) * i, t_next=torch.ones(1) * j,
                                           models=model, logvars=logvar, sampling_type="ddim",
                                           b=betas, eta=0, learn_sigma=False)
            hd[i] = h.clone()
        return x, hd

    cxT, chd = precompute(x_content)
    sxT, _ = precompute(x_style)
    s = seqf(st.gen_steps)
    nxt = [-1] + s[:-1]
    rep = seqf(st.replace_steps) if st.replace_steps and st.replace_steps != -1 else s
    inv_ts = sorted(chd.keys(), reverse=True)
    x = sxT.clone()
    for i, j in zip(reversed(s), reversed(nxt)):
        t, tn = torch.ones(1) * i, torch.ones(1) * j
        closest = min(inv_ts, key=lambda k: abs(k - i))
        cur = {"i": i}

        def randn_like(ref, cur=cur):
            return torch.from_numpy(rng.noise_like(tuple(ref.shape), st.seed, cur["i"])).to(ref.dtype)
        orig = du.torch.randn_like
        du.torch.randn_like = randn_like
        try:
            if i in rep:
                x, _, _, _ = du.denoising_step(
                    x, t=t, t_next=tn, models=model, logvars=logvar, sampling_type="ddim",
                    b=betas, eta=0 if t[0].item() > st.t_boost else 1, learn_sigma=False,
                    index=0, hs_coeff=[1 - st.gamma], delta_h=chd[closest], use_mask=use_mask,
                    dt_lambda=st.dt_lambda, dt_end=st.dt_end, t_edit=st.t_edit, omega=st.omega)
            else:
                x, _, _, _ = du.denoising_step(x, t=t, t_next=tn, models=model, logvars=logvar,
                                               sampling_type="ddim", b=betas, learn_sigma=False)
        finally:
            du.torch.randn_like = orig
    return x, cxT, sxT, chd


@torch.no_grad()
def main():
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", message="To copy construct")
    if not os.path.isdir(REPO):
        print("authors' repository not found; nothing to check")
        return
    with tempfile.TemporaryDirectory() as tmp:
        du = load_module(tmp, "utils/diffusion_utils.py", "authors_diffusion_utils")
        dd = load_module(tmp, "models/ddpm/diffusion.py", "authors_ddpm")
        net = SplitUNet(mg.load_model(torch.float64).requires_grad_(False))
        sc = mg.SCHED
        betas = torch.from_numpy(du.get_beta_schedule(
            beta_start=sc["beta_start"], beta_end=sc["beta_end"],
            num_diffusion_timesteps=sc["num_train_timesteps"])).float()
        logvar = np.zeros(1000)
        table = alpha_bar_table(sc["beta_start"], sc["beta_end"], cumprod="torch")
        assert torch.equal(table, (1.0 - betas).cumprod(dim=0))
        model = AuthorsLikeModel(net, dd.slerp)
        S = mg.MODEL_CFG["sample_size"]
        worst = 0.0
        cases = sys.argv[1:]
        for case, use_mask in [("omega", False), ("dt_lambda", False), ("replace_lt_gen", False),
                               ("inv_ne_gen", False), ("harmonize", False), ("edit_999", False),
                               ("replace_zero", False), ("roundtrip", False),
                               ("mask", True), ("defaults", False)]:
            if cases and case not in cases:
                continue
            d = os.path.join(mg.OUT, case)
            with open(os.path.join(d, "settings.json")) as f:
                st = Settings(**json.load(f))
            xc = load_image(os.path.join(d, "content.png"), S).double()
            xs = load_image(os.path.join(d, "style.png"), S).double()
            xa, cxa, sxa, chd = their_run(du, model, betas, logvar, xc, xs, st, use_mask)
            mask = None
            if use_mask:    # their hard-coded rectangle on the 8x8 h grid
                mask = torch.zeros(8, 8, dtype=torch.float64)
                mask[4:-1, 3:5] = 1.0
            cxT, ch = invert(net, table, xc, st.inv_steps)
            sxT, _ = invert(net, table, xs, st.inv_steps)
            xr, _ = generate(net, table, sxT, ch, st, mask)
            diffs = [(xa - xr).abs().max().item(), (cxa - cxT).abs().max().item(),
                     (sxa - sxT).abs().max().item(),
                     max((chd[k] - ch[k]).abs().max().item() for k in ch)]
            worst = max(worst, max(diffs))
            print(f"{case:15s} max|authors - reference|: x0 {diffs[0]:.2e}, content_xT "
                  f"{diffs[1]:.2e}, style_xT {diffs[2]:.2e}, content_h {diffs[3]:.2e}"
                  + ("  (authors' hard-coded mask rectangle)" if use_mask else ""))
        print(f"worst {worst:.2e}")


if __name__ == "__main__":
    main()
