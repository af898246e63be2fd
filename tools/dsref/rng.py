"""Counter-based Gaussian noise, bit-identical to the Rust `src/rng.rs`.

Philox4x32-10 + Box-Muller. Element `e` of sample `b` (e counts over that sample's
C*H*W values, CHW order) uses pair `p = e // 2`: counter `[p lo, p hi, stream, b]`,
key `[seed lo, seed hi]`; with the first two output words r0, r1:
`u1 = (r0 + 1) / 2^32`, `u2 = r1 / 2^32`,
`z[2p] = sqrt(-2 ln u1) cos(2 pi u2)`, `z[2p+1] = sqrt(-2 ln u1) sin(2 pi u2)`,
computed in float64 and rounded to float32.
"""
import numpy as np

M0 = 0xD2511F53
M1 = 0xCD9E8D57
W0 = 0x9E3779B9
W1 = 0xBB67AE85
MASK32 = 0xFFFFFFFF


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Vectorised Philox4x32-10. c0..c3: uint64 arrays (or ints) holding 32-bit values;
    k0, k1: Python ints. Returns four uint64 arrays of 32-bit words."""
    c0, c1, c2, c3 = (np.asarray(v, dtype=np.uint64) for v in (c0, c1, c2, c3))
    c0, c1, c2, c3 = np.broadcast_arrays(c0, c1, c2, c3)
    m32 = np.uint64(MASK32)
    s32 = np.uint64(32)
    k0 &= MASK32
    k1 &= MASK32
    for _ in range(10):
        p0 = np.uint64(M0) * c0          # < 2^64: exact in uint64
        p1 = np.uint64(M1) * c2
        hi0, lo0 = p0 >> s32, p0 & m32
        hi1, lo1 = p1 >> s32, p1 & m32
        c0, c1, c2, c3 = (hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0)
        k0 = (k0 + W0) & MASK32
        k1 = (k1 + W1) & MASK32
    return c0, c1, c2, c3


def gaussian(seed: int, stream: int, sample: int, n: int) -> np.ndarray:
    """The first `n` noise values (float32) of (seed, stream, sample)."""
    npairs = (n + 1) // 2
    p = np.arange(npairs, dtype=np.uint64)
    r0, r1, _, _ = philox4x32_10(p & np.uint64(MASK32), p >> np.uint64(32),
                                 np.uint64(stream & MASK32), np.uint64(sample & MASK32),
                                 seed & MASK32, (seed >> 32) & MASK32)
    u1 = (r0.astype(np.float64) + 1.0) / 4294967296.0
    u2 = r1.astype(np.float64) / 4294967296.0
    rad = np.sqrt(-2.0 * np.log(u1))
    ang = 2.0 * np.pi * u2
    z = np.empty(2 * npairs, dtype=np.float64)
    z[0::2] = rad * np.cos(ang)
    z[1::2] = rad * np.sin(ang)
    return z[:n].astype(np.float32)


def noise_like(shape, seed: int, stream: int) -> np.ndarray:
    """Noise for a [B, C, H, W] tensor: every sample uses counter word 3 = 0 (the
    engine's ddim_step: a pair's noise does not depend on its place in a batch)."""
    per = int(np.prod(shape[1:]))
    return np.ascontiguousarray(np.broadcast_to(gaussian(seed, stream, 0, per), (shape[0], per)).reshape(shape))


def self_test():
    got = [int(v) for v in philox4x32_10(0, 0, 0, 0, 0, 0)]
    assert got == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8], [hex(v) for v in got]
    f = MASK32
    got = [int(v) for v in philox4x32_10(f, f, f, f, f, f)]
    assert got == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD], [hex(v) for v in got]
    z = gaussian(7, 3, 0, 200_001).astype(np.float64)
    assert abs(z.mean()) < 0.01 and abs(z.var() - 1) < 0.01, (z.mean(), z.var())


if __name__ == "__main__":
    self_test()
    print("philox known answers OK;", gaussian(1234, 999, 0, 4))
