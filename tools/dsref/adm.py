"""A small PyTorch model of the ADM U-Net (guided-diffusion / improved-diffusion
`UNetModel`), written for diffstyle's goldens: same module tree, hence the same
state-dict names (`input_blocks.N.0.in_layers.0.weight`, ...), same maths, and no
dtype games (every op runs in the parameters' dtype, so float64 goldens are float64
throughout; the original casts its group norms to float32).

    net = AdmUNet(**flags)            # guided-diffusion create_model flags
    eps_and_var = net(x, t)           # (N, out_channels, S, S)
    h, skips, emb = net.encode(x, t)  # h = the middle block's output
    out = net.decode(h, skips, emb)

`AdmSplit` gives it the interface of dsref.unet.SplitUNet (encode / decode / eps,
eps = the first in_channels outputs) for the method reference.
"""
import math

import torch
from torch import nn
import torch.nn.functional as F


def default_channel_mult(image_size: int):
    table = {256: (1, 1, 2, 2, 4, 4), 128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
    if image_size not in table:
        raise ValueError(f"no default channel_mult for image size {image_size}")
    return table[image_size]


def sinusoids(t: torch.Tensor, dim: int) -> torch.Tensor:
    """[cos(t f_k), sin(t f_k)], f_k = 10000^(-k / (dim // 2)), in float32 as ADM."""
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32)
    f = torch.exp(-math.log(10000) * k / half)
    a = t.float()[:, None] * f[None]
    e = torch.cat([torch.cos(a), torch.sin(a)], dim=1)
    if dim % 2:
        e = torch.cat([e, torch.zeros_like(e[:, :1])], dim=1)
    return e


def norm32(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c)


class Seq(nn.ModuleList):
    """`TimestepEmbedSequential`: passes the embedding to the res blocks."""

    def forward(self, x, emb):
        for m in self:
            x = m(x, emb) if isinstance(m, Res) else m(x)
        return x


class Conv(nn.Module):
    """`Downsample` (`.op`, stride 2) or `Upsample` (`.conv`, nearest 2x first), with
    their convolution."""

    def __init__(self, c: int, up: bool):
        super().__init__()
        self.up = up
        conv = nn.Conv2d(c, c, 3, stride=1 if up else 2, padding=1)
        if up:
            self.conv = conv
        else:
            self.op = conv

    def forward(self, x):
        if self.up:
            return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))
        return self.op(x)


class Res(nn.Module):
    def __init__(self, cin: int, emb: int, cout: int, film: bool, up=False, down=False):
        super().__init__()
        self.film, self.up, self.down = film, up, down
        self.in_layers = nn.Sequential(norm32(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, 2 * cout if film else cout))
        self.out_layers = nn.Sequential(norm32(cout), nn.SiLU(), nn.Dropout(0.0),
                                        nn.Conv2d(cout, cout, 3, padding=1))
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def resample(self, v):
        if self.up:
            return F.interpolate(v, scale_factor=2, mode="nearest")
        if self.down:
            return F.avg_pool2d(v, 2, 2)
        return v

    def forward(self, x, emb):
        h = self.in_layers[1](self.in_layers[0](x))
        h = self.in_layers[2](self.resample(h))
        x = self.resample(x)
        e = self.emb_layers(emb)[:, :, None, None]
        if self.film:
            scale, shift = e.chunk(2, dim=1)
            h = self.out_layers[0](h) * (1 + scale) + shift
        else:
            h = self.out_layers[0](h + e)
        h = self.out_layers[3](self.out_layers[1](h))
        return self.skip_connection(x) + h


class Attn(nn.Module):
    def __init__(self, c: int, heads: int, new_order: bool):
        super().__init__()
        self.heads, self.new_order = heads, new_order
        self.norm = norm32(c)
        self.qkv = nn.Conv1d(c, 3 * c, 1)
        self.proj_out = nn.Conv1d(c, c, 1)

    def forward(self, x):
        n, c, hh, ww = x.shape
        flat = x.reshape(n, c, hh * ww)
        qkv = self.qkv(self.norm(flat))
        d = c // self.heads
        if self.new_order:   # q | k | v, each over all heads
            q, k, v = (z.reshape(n * self.heads, d, -1) for z in qkv.chunk(3, dim=1))
        else:                # per head: q | k | v
            q, k, v = qkv.reshape(n * self.heads, 3 * d, -1).split(d, dim=1)
        w = torch.softmax(torch.einsum("bct,bcs->bts", q, k) / math.sqrt(d), dim=-1)
        a = torch.einsum("bts,bcs->bct", w, v).reshape(n, c, -1)
        return (flat + self.proj_out(a)).reshape(n, c, hh, ww)


class AdmUNet(nn.Module):
    def __init__(self, image_size, num_channels, num_res_blocks, channel_mult="",
                 learn_sigma=False, attention_resolutions="16", num_heads=1,
                 num_head_channels=-1, num_heads_upsample=-1, use_scale_shift_norm=False,
                 resblock_updown=False, use_new_attention_order=False, in_channels=3, **_ignored):
        super().__init__()
        if isinstance(channel_mult, str):
            channel_mult = (default_channel_mult(image_size) if channel_mult == ""
                            else tuple(int(m) for m in channel_mult.split(",")))
        if isinstance(attention_resolutions, str):
            attention_resolutions = [int(r) for r in attention_resolutions.split(",")]
        attn_ds = {image_size // r for r in attention_resolutions}
        if num_heads_upsample == -1:
            num_heads_upsample = num_heads
        mc = num_channels
        self.model_channels = mc
        self.in_channels = in_channels
        temb = 4 * mc
        film = use_scale_shift_norm

        def heads(c, up):
            return c // num_head_channels if num_head_channels != -1 else \
                (num_heads_upsample if up else num_heads)

        def attn(c, up):
            return Attn(c, heads(c, up), use_new_attention_order)

        self.time_embed = nn.Sequential(nn.Linear(mc, temb), nn.SiLU(), nn.Linear(temb, temb))
        ch = channel_mult[0] * mc
        self.input_blocks = nn.ModuleList([Seq([nn.Conv2d(in_channels, ch, 3, padding=1)])])
        skips, ds = [ch], 1
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers = [Res(ch, temb, mult * mc, film)]
                ch = mult * mc
                if ds in attn_ds:
                    layers.append(attn(ch, False))
                self.input_blocks.append(Seq(layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Seq([Res(ch, temb, ch, film, down=True) if resblock_updown
                                              else Conv(ch, up=False)]))
                skips.append(ch)
                ds *= 2
        self.middle_block = Seq([Res(ch, temb, ch, film), attn(ch, False), Res(ch, temb, ch, film)])
        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for i in range(num_res_blocks + 1):
                layers = [Res(ch + skips.pop(), temb, mult * mc, film)]
                ch = mult * mc
                if ds in attn_ds:
                    layers.append(attn(ch, True))
                if level and i == num_res_blocks:
                    layers.append(Res(ch, temb, ch, film, up=True) if resblock_updown
                                  else Conv(ch, up=True))
                    ds //= 2
                self.output_blocks.append(Seq(layers))
        self.out = nn.Sequential(norm32(ch), nn.SiLU(),
                                 nn.Conv2d(channel_mult[0] * mc, 6 if learn_sigma else 3, 3, padding=1))

    def encode(self, x, t):
        dtype = next(self.parameters()).dtype
        emb = self.time_embed(sinusoids(t, self.model_channels).to(dtype))
        h, skips = x, []
        for blk in self.input_blocks:
            h = blk(h, emb)
            skips.append(h)
        return self.middle_block(h, emb), skips, emb

    def decode(self, h, skips, emb):
        skips = list(skips)
        for blk in self.output_blocks:
            h = blk(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)

    def forward(self, x, t):
        h, skips, emb = self.encode(x, t)
        return self.decode(h, skips, emb)


class AdmSplit:
    """dsref.unet.SplitUNet's interface over an AdmUNet (eps = first in_channels)."""

    def __init__(self, model: AdmUNet):
        self.m = model
        self.dtype = next(model.parameters()).dtype

    def encode(self, x, t: int):
        ts = torch.full((x.shape[0],), float(t), dtype=torch.float32)
        return self.m.encode(x, ts)

    def decode(self, h, skips, emb):
        return self.m.decode(h, skips, emb)[:, :self.m.in_channels]

    def eps(self, x, t: int):
        h, skips, emb = self.encode(x, t)
        return self.decode(h, skips, emb), h
