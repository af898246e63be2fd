//! Counter-based Gaussian noise (Philox4x32-10 + Box-Muller), so that the noise of a
//! step depends only on (seed, stream, sample, element) and not on execution order,
//! batching or device. `tools/dsref/rng.py` implements the same generator for the
//! PyTorch reference.
//!
//! Element `e` of sample `b` (e counts over that sample's C*H*W values) uses the pair
//! `p = e / 2`: counter `[p lo, p hi, stream, b]`, key `[seed lo, seed hi]`; with the
//! first two output words r0, r1: `u1 = (r0 + 1) / 2^32`, `u2 = r1 / 2^32`,
//! `z[2p] = sqrt(-2 ln u1) cos(2 pi u2)`, `z[2p+1] = sqrt(-2 ln u1) sin(2 pi u2)`,
//! computed in f64 and rounded to f32.

const M0: u32 = 0xD251_1F53;
const M1: u32 = 0xCD9E_8D57;
const W0: u32 = 0x9E37_79B9;
const W1: u32 = 0xBB67_AE85;

/// Philox4x32 with 10 rounds.
pub fn philox4x32_10(mut c: [u32; 4], mut k: [u32; 2]) -> [u32; 4] {
    for _ in 0..10 {
        let p0 = (M0 as u64) * (c[0] as u64);
        let p1 = (M1 as u64) * (c[2] as u64);
        let (hi0, lo0) = ((p0 >> 32) as u32, p0 as u32);
        let (hi1, lo1) = ((p1 >> 32) as u32, p1 as u32);
        c = [hi1 ^ c[1] ^ k[0], lo1, hi0 ^ c[3] ^ k[1], lo0];
        k = [k[0].wrapping_add(W0), k[1].wrapping_add(W1)];
    }
    c
}

/// The Gaussian pair for pair index `p` of sample `sample`.
pub fn gaussian_pair(seed: u64, stream: u32, sample: u32, p: u64) -> (f32, f32) {
    let r = philox4x32_10([p as u32, (p >> 32) as u32, stream, sample], [seed as u32, (seed >> 32) as u32]);
    let u1 = (r[0] as f64 + 1.0) / 4_294_967_296.0;
    let u2 = r[1] as f64 / 4_294_967_296.0;
    let rad = (-2.0 * u1.ln()).sqrt();
    let ang = 2.0 * std::f64::consts::PI * u2;
    ((rad * ang.cos()) as f32, (rad * ang.sin()) as f32)
}

/// Fills `out` (one sample's values) with the noise of (seed, stream, sample).
pub fn fill_gaussian(seed: u64, stream: u32, sample: u32, out: &mut [f32]) {
    for (p, pair) in out.chunks_mut(2).enumerate() {
        let (a, b) = gaussian_pair(seed, stream, sample, p as u64);
        pair[0] = a;
        if pair.len() > 1 {
            pair[1] = b;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn philox_known_answer() {
        // Random123's published known-answer vectors for philox4x32_10.
        assert_eq!(philox4x32_10([0, 0, 0, 0], [0, 0]), [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
        assert_eq!(philox4x32_10([u32::MAX; 4], [u32::MAX; 2]), [0x408f_276d, 0x41c8_3b0e, 0xa20b_c7c6, 0x6d54_51fd]);
    }

    #[test]
    fn moments_are_standard_normal() {
        let mut v = vec![0f32; 200_001];
        fill_gaussian(7, 3, 0, &mut v);
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
        assert!(mean.abs() < 0.01, "mean {mean}");
        assert!((var - 1.0).abs() < 0.01, "var {var}");
        let mut w = vec![0f32; 16];
        fill_gaussian(7, 4, 0, &mut w);
        assert_ne!(&v[..16], &w[..], "streams must differ");
    }
}
