"""Deterministic random weights and the weight-name mappings (diffusers new attention
names <-> old attention names <-> original DDPM names)."""
import math
import re

import torch

# Gains for layers whose output is added to a residual stream: keeps the stream O(1).
_SMALL_GAIN = ("conv2.weight", "to_out.0.weight")


@torch.no_grad()
def randomize(model, seed: int, gain: float = 1.0, small_gain: float = 0.5,
              bias_std: float = 0.2, norm_std: float = 0.3, small=_SMALL_GAIN):
    """Re-randomise every parameter (norm weights and biases included), deterministically:
    weights N(0, 1) * gain / sqrt(fan_in); biases N(0, bias_std); GroupNorm weights
    N(1, norm_std), GroupNorm biases N(0, norm_std)."""
    g = torch.Generator().manual_seed(seed)
    mods = dict(model.named_modules())
    for name, p in model.named_parameters():
        owner = mods[name.rsplit(".", 1)[0]]
        r = torch.randn(p.shape, generator=g, dtype=torch.float64)
        if isinstance(owner, torch.nn.GroupNorm):
            v = (1.0 + norm_std * r) if name.endswith("weight") else norm_std * r
        elif name.endswith("bias"):
            v = bias_std * r
        else:
            fan_in = math.prod(p.shape[1:])
            gn = small_gain if name.endswith(small) else gain
            v = r * gn / math.sqrt(fan_in)
        p.copy_(v.to(p.dtype))


OLD_ATTN = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}


def to_old_attention_names(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        m = re.match(r"^(.*\.attentions\.\d+)\.(to_q|to_k|to_v|to_out\.0)\.(weight|bias)$", k)
        if m:
            k = f"{m.group(1)}.{OLD_ATTN[m.group(2)]}.{m.group(3)}"
        out[k] = v
    return out


def from_old_attention_names(sd: dict) -> dict:
    inv = {v: k for k, v in OLD_ATTN.items()}
    out = {}
    for k, v in sd.items():
        m = re.match(r"^(.*\.attentions\.\d+)\.(query|key|value|proj_attn)\.(weight|bias)$", k)
        if m:
            k = f"{m.group(1)}.{inv[m.group(2)]}.{m.group(3)}"
        out[k] = v
    return out


_RES = {"norm1": "norm1", "conv1": "conv1", "time_emb_proj": "temb_proj", "norm2": "norm2",
        "conv2": "conv2", "conv_shortcut": "nin_shortcut"}
_ATT = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _sub(rest: str, table: dict) -> tuple:
    for a, b in table.items():
        if rest.startswith(a + "."):
            return b + rest[len(a):], a
    raise KeyError(rest)


def diffusers_to_ddpm_name(k: str, levels: int) -> tuple:
    """(ddpm name, is_attention_linear) for one diffusers UNet2DModel tensor name."""
    fixed = {"time_embedding.linear_1": "temb.dense.0", "time_embedding.linear_2": "temb.dense.1",
             "conv_norm_out": "norm_out", "conv_in": "conv_in", "conv_out": "conv_out"}
    for a, b in fixed.items():
        if k.startswith(a + "."):
            return b + k[len(a):], False
    m = re.match(r"^(down|up)_blocks\.(\d+)\.(resnets|attentions|downsamplers|upsamplers)\.(\d+)\.(.*)$", k)
    if m:
        side, blk, kind, j, rest = m.groups()
        level = int(blk) if side == "down" else levels - 1 - int(blk)
        pre = f"{side}.{level}"
        if kind == "resnets":
            r, _ = _sub(rest, _RES)
            return f"{pre}.block.{j}.{r}", False
        if kind == "attentions":
            r, a = _sub(rest, _ATT)
            return f"{pre}.attn.{j}.{r}", a != "group_norm"
        assert rest.startswith("conv."), k
        return f"{pre}.{'downsample' if side == 'down' else 'upsample'}.{rest}", False
    m = re.match(r"^mid_block\.(resnets|attentions)\.(\d+)\.(.*)$", k)
    if m:
        kind, j, rest = m.groups()
        if kind == "resnets":
            r, _ = _sub(rest, _RES)
            return f"mid.block_{int(j) + 1}.{r}", False
        r, a = _sub(rest, _ATT)
        return f"mid.attn_1.{r}", a != "group_norm"
    raise KeyError(k)


def to_ddpm(sd: dict, levels: int) -> dict:
    out = {}
    for k, v in sd.items():
        n, lin = diffusers_to_ddpm_name(k, levels)
        if lin and n.endswith(".weight"):
            v = v.reshape(*v.shape, 1, 1)          # Linear [C, C] -> 1x1 conv
        assert n not in out, n
        out[n] = v
    return out


def from_ddpm(sd: dict, diffusers_names, levels: int) -> dict:
    """Inverse of to_ddpm, given the diffusers names expected by the model."""
    fwd = {diffusers_to_ddpm_name(k, levels)[0]: k for k in diffusers_names}
    out = {}
    for n, v in sd.items():
        k = fwd[n]
        if diffusers_to_ddpm_name(k, levels)[1] and k.endswith(".weight"):
            v = v.reshape(v.shape[0], v.shape[1])
        out[k] = v
    assert set(out) == set(diffusers_names)
    return out
