"""docs/method.md in PyTorch: DDIM inversion and DiffStyle generation with content
injection, over a SplitUNet. Tensor arithmetic runs in the model's dtype (float64 for
the goldens); the per-step scalars are computed in float32 exactly like the authors'
`denoising_step` (`at.sqrt()`, `(1 - at).sqrt()`, ...)."""
from dataclasses import dataclass, field
from typing import Optional

import torch

from . import rng
from .schedule import alpha_bar, seq


@dataclass
class Settings:
    gamma: float = 0.3
    t_edit: int = 400
    inv_steps: int = 50
    gen_steps: int = 1000
    replace_steps: int = 50
    t_boost: int = 200
    dt_lambda: float = 1.0
    dt_end: int = 950
    omega: float = 0.0
    seed: int = 1234
    mask: Optional[str] = None


@dataclass
class Stats:
    steps: int = 0
    injection_capable: int = 0
    mixing: int = 0
    noisy: int = 0            # steps that add noise with c1 > 0
    calibrations: int = 0
    forwards: int = 0         # full U-Net forwards (encoder + decoder)
    extra_decoders: int = 0   # second decoder passes (on h')
    log: list = field(default_factory=list)


def slerp(g: float, v0: torch.Tensor, v1: torch.Tensor) -> torch.Tensor:
    """The authors' slerp (per sample, over C*H*W); returns s0 * v0 + s1 * v1 of the
    original (unnormalised) vectors."""
    b = v0.shape[0]
    n0 = v0.reshape(b, -1).norm(dim=1)
    n1 = v1.reshape(b, -1).norm(dim=1)
    dot = ((v0.reshape(b, -1) / n0[:, None]) * (v1.reshape(b, -1) / n1[:, None])).sum(dim=1)
    theta = torch.acos(dot)
    s = torch.sin(theta)
    s0 = torch.sin(theta - g * theta) / s
    s1 = torch.sin(g * theta) / s
    out = s0[:, None, None, None] * v0 + s1[:, None, None, None] * v1
    assert not torch.isnan(out).any(), "slerp produced NaN"
    return out


def mix(h: torch.Tensor, hc: torch.Tensor, gamma: float, mask: Optional[torch.Tensor]):
    """h' = mix(h, h_c). mask: [s, s] on the h grid (1 = take content) or None."""
    b = h.shape[0]
    if mask is None:
        hn = h.reshape(b, -1).norm(dim=1)[:, None, None, None]
        cn = hc.reshape(b, -1).norm(dim=1)[:, None, None, None]
        return slerp(gamma, h, hc * hn / cn)
    m = mask.to(h.dtype)[None, None]
    return slerp(gamma, h * m, hc * m) + (1 - m) * h


def closest_key(keys, i: int) -> int:
    """The key closest to i; on a tie the larger key."""
    return min(sorted(keys, reverse=True), key=lambda k: abs(k - i))


class Coeffs:
    """Float32 scalars of one (i, j) step, as the authors compute them, cast to dtype."""

    def __init__(self, table, i: int, j: int, dtype):
        at = alpha_bar(table, i)
        an = alpha_bar(table, j)
        self.at, self.an = at, an
        c = lambda v: v.to(dtype)
        self.sqrt_at = c(at.sqrt())
        self.sqrt_1mat = c((1 - at).sqrt())
        self.sqrt_an = c(an.sqrt())
        self.sqrt_1man = c((1 - an).sqrt())
        c1 = ((1 - at / an) * (1 - an) / (1 - at)).sqrt()
        c2 = ((1 - an) - c1 ** 2).clamp(min=0).sqrt()
        self.c1, self.c2 = c(c1), c(c2)
        self.c1_f32 = float(c1)
        self._one_minus_at_sqrt_f32 = (1 - at).sqrt()

    def omega_coeff(self, omega: float):
        """omega * sqrt(1 - a_i), a float32 product as in the authors' code."""
        return (omega * self._one_minus_at_sqrt_f32).to(self.sqrt_at.dtype)

    def x0(self, x, eps):
        return (x - eps * self.sqrt_1mat) / self.sqrt_at


def ddim_step(co: Coeffs, x0_pred, eps, eta: int, z_fn):
    if eta == 0:
        return co.sqrt_an * x0_pred + co.sqrt_1man * eps
    return co.sqrt_an * x0_pred + co.c2 * eps + co.c1 * z_fn()


@torch.no_grad()
def invert(net, table, x0: torch.Tensor, n_inv: int):
    """DDIM inversion. Returns (x_T, {i: h_i})."""
    s = seq(n_inv)
    x = x0.clone()
    hs = {}
    for i, j in zip(s[:-1], s[1:]):
        eps, h = net.eps(x, i)
        hs[i] = h.clone()
        co = Coeffs(table, i, j, x.dtype)
        x = co.sqrt_an * co.x0(x, eps) + co.sqrt_1man * eps
    return x, hs


@torch.no_grad()
def ddim_generate(net, table, x: torch.Tensor, n_gen: int):
    """Plain deterministic DDIM (eta = 0) from x_T down to t = -1."""
    s = seq(n_gen)
    nxt = [-1] + s[:-1]
    for i, j in zip(reversed(s), reversed(nxt)):
        eps, _ = net.eps(x, i)
        co = Coeffs(table, i, j, x.dtype)
        x = co.sqrt_an * co.x0(x, eps) + co.sqrt_1man * eps
    return x


@torch.no_grad()
def generate(net, table, style_xT: torch.Tensor, content_h: dict, st: Settings,
             mask: Optional[torch.Tensor] = None, stats: Optional[Stats] = None):
    """DiffStyle generation (method.md section 2) from the style's x_T."""
    stats = stats if stats is not None else Stats()
    s = seq(st.gen_steps)
    nxt = [-1] + s[:-1]
    replace = set(seq(st.replace_steps)) if st.replace_steps not in (0, -1) else set(s)
    keys = sorted(content_h.keys())
    x = style_xT.clone()
    dtype = x.dtype
    for i, j in zip(reversed(s), reversed(nxt)):
        stats.steps += 1
        co = Coeffs(table, i, j, dtype)

        def z_fn():
            return torch.from_numpy(rng.noise_like(tuple(x.shape), st.seed, i)).to(dtype)

        if i not in replace:
            eps, _ = net.eps(x, i)
            stats.forwards += 1
            x = co.sqrt_an * co.x0(x, eps) + co.sqrt_1man * eps
            continue

        stats.injection_capable += 1
        h, skips, emb = net.encode(x, i)
        eps = net.decode(h, skips, emb)
        stats.forwards += 1
        if i >= st.t_edit:
            hc = content_h[closest_key(keys, i)].to(dtype)
            eps_m = net.decode(mix(h, hc, st.gamma, mask), skips, emb)
            stats.mixing += 1
            stats.extra_decoders += 1
        else:
            eps_m = eps
        eta = 0 if i > st.t_boost else 1
        x0_pred = co.x0(x, eps_m)
        if st.omega == 0:
            x_new = ddim_step(co, x0_pred, eps, eta, z_fn)
            if eta == 1 and co.c1_f32 > 0:
                stats.noisy += 1
            if st.dt_lambda != 1 and i >= st.dt_end:
                x_new = co.sqrt_an * x0_pred + co.sqrt_1man * eps * st.dt_lambda
            x = x_new
            continue
        # Calibration (step 5). The step-4 result is discarded (it would draw no noise).
        stats.calibrations += 1
        P = co.x0(x, eps)
        Pn = x0_pred
        dims = [1, 2, 3]
        vP = P - P.mean(dim=dims, keepdim=True)
        mPn = Pn.mean(dim=dims, keepdim=True)
        vPn = Pn - mPn
        ratio = vP.std(dim=dims, keepdim=True) / vPn.std(dim=dims, keepdim=True)
        Pn = mPn + vPn * ratio
        x = x + co.sqrt_at * (Pn - P) + co.omega_coeff(st.omega) * (eps_m - eps)
        eps2, _ = net.eps(x, i)
        stats.forwards += 1
        x = ddim_step(co, co.x0(x, eps2), eps2, eta, z_fn)
        if eta == 1 and co.c1_f32 > 0:
            stats.noisy += 1
    assert not torch.isnan(x).any()
    return x, stats
