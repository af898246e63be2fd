"""Noise schedule and time sequences exactly as the authors compute them."""
import numpy as np
import torch


def alpha_bar_table(beta_start: float, beta_end: float, n: int = 1000,
                    cumprod: str = "f32") -> torch.Tensor:
    """alpha_bar(t) for t = 0..n-1 as a float32 tensor.

    betas: float64 linspace -> float32; alphas = 1 - betas in float32; cumulative
    product. cumprod="f32" is the sequential float32 product (numpy float32 cumprod,
    what the Rust engine does); cumprod="torch" is torch's CPU cumprod of the float32
    tensor, which accumulates in float64 and rounds each prefix (what the authors' code
    gives on CPU). They differ by < 1e-6 relative."""
    betas = torch.from_numpy(np.linspace(beta_start, beta_end, n, dtype=np.float64)).float()
    alphas = 1.0 - betas
    if cumprod == "f32":
        return torch.from_numpy(np.cumprod(alphas.numpy(), dtype=np.float32))
    if cumprod == "torch":
        return alphas.cumprod(dim=0)
    raise ValueError(cumprod)


def alpha_bar(table: torch.Tensor, t: int) -> torch.Tensor:
    """A 0-d float32 tensor; alpha_bar(-1) = 1."""
    if t < 0:
        return torch.ones((), dtype=torch.float32)
    return table[t].clone()


def seq(n: int, t0: int = 999) -> list:
    """seq(n) = [int(s + 1e-6) for s in linspace(0, 1, n) * 999]."""
    return [int(s + 1e-6) for s in list(np.linspace(0, 1, n) * t0)]
