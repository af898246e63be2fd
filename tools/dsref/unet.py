"""A diffusers UNet2DModel split into encoder (-> h, skips, temb) and decoder, using the
diffusers submodules directly."""
import torch


class SplitUNet:
    def __init__(self, model):
        self.m = model
        self.dtype = next(model.parameters()).dtype

    def temb(self, t: int, batch: int) -> torch.Tensor:
        m = self.m
        ts = torch.full((batch,), float(t), dtype=torch.float32)
        # diffusers computes the sinusoidal embedding in float32, then casts.
        return m.time_embedding(m.time_proj(ts).to(self.dtype))

    def encode(self, x: torch.Tensor, t: int):
        m = self.m
        emb = self.temb(t, x.shape[0])
        s = m.conv_in(x)
        skips = (s,)
        for blk in m.down_blocks:
            s, res = blk(hidden_states=s, temb=emb)
            skips += res
        h = m.mid_block(s, emb)
        return h, skips, emb

    def decode(self, h: torch.Tensor, skips, emb: torch.Tensor) -> torch.Tensor:
        m = self.m
        s = h
        for blk in m.up_blocks:
            n = len(blk.resnets)
            res, skips = skips[-n:], skips[:-n]
            s = blk(s, res, emb)
        s = m.conv_act(m.conv_norm_out(s))
        return m.conv_out(s)

    def eps(self, x: torch.Tensor, t: int):
        """Full forward: (eps, h)."""
        h, skips, emb = self.encode(x, t)
        return self.decode(h, skips, emb), h

    @torch.no_grad()
    def check_split(self, x: torch.Tensor, t: int) -> float:
        ts = torch.full((x.shape[0],), float(t), dtype=torch.float32)
        full = self.m(x, ts).sample
        return (full - self.eps(x, t)[0]).abs().max().item()
