//! Copy, timestep embedding, and the vectorisable exp / SiLU used by other ops.

use anyhow::Result;

use super::threads::{par_for, workers_for, SyncPtr};
use super::{check_disjoint, check_input, check_region, sample, sample_mut, CpuBackend, A};
use crate::backend::check::{check_resample, check_timestep_embedding};

/// `e^x` to about 2 ulp, branch- and call-free so loops over slices vectorise (libm's
/// `expf`, and `f32::round` without SSE4.1, are calls per element). Cephes-style:
/// `2^n * e^r`, `|r| <= ln2/2`, degree-6 polynomial. Rounding to the nearest integer
/// by adding 1.5 * 2^23 also leaves `n` in the low mantissa bits for the 2^n scale.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    let x = x.clamp(-87.3, 88.7);
    let t = x * std::f32::consts::LOG2_E + MAGIC;
    let n = t - MAGIC;
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = 1.987_569_1e-4_f32;
    let p = p * r + 1.398_199_9e-3;
    let p = p * r + 8.333_452e-3;
    let p = p * r + 4.166_579_6e-2;
    let p = p * r + 1.666_666_5e-1;
    let p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    // bits(t) = bits(MAGIC) + n, so the biased exponent is bits(t) - bits(MAGIC) + 127.
    let scale = t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127).wrapping_shl(23);
    e * f32::from_bits(scale)
}

/// `v * sigmoid(v)`.
#[inline(always)]
pub fn silu(v: f32) -> f32 {
    v / (1.0 + exp(-v))
}

pub(super) fn copy(be: &CpuBackend, src: A, dst: A) -> Result<()> {
    check_region(&dst, "copy dst")?;
    check_input(&src, dst.c, dst.h, dst.w, dst.n, "copy src")?;
    check_disjoint(&dst, &[Some(&src)], "copy")?;
    let len = dst.sample_len();
    // A copy is memory-bound; a second thread helps only for large samples.
    let workers = workers_for(be.threads, len * dst.n / 4);
    par_for(workers, dst.n, |b| unsafe { sample_mut(&dst, b).copy_from_slice(sample(&src, b)) });
    Ok(())
}

pub(super) fn timestep_embedding(t: &[f32], flip: bool, shift: f32, out: A) -> Result<()> {
    check_timestep_embedding(t, &out)?;
    let dim = out.c;
    let half = dim / 2;
    let ln_period = (10000f64).ln() as f32;
    // Same operation order as diffusers in f32: exponent / (half - shift), exp, t * f.
    let freqs: Vec<f32> = (0..half).map(|k| ((-ln_period * k as f32) / (half as f32 - shift)).exp()).collect();
    let p = SyncPtr(super::base(&out));
    for (b, &tb) in t.iter().enumerate() {
        // SAFETY: region validated; single-threaded, one sample at a time.
        let o = unsafe { std::slice::from_raw_parts_mut(p.get().add(b * dim), dim) };
        let (first, second) = o.split_at_mut(half);
        let (sin, cos) = if flip { (&mut second[..half], first) } else { (first, &mut second[..half]) };
        for k in 0..half {
            let arg = tb * freqs[k];
            sin[k] = arg.sin();
            cos[k] = arg.cos();
        }
        if dim % 2 == 1 {
            o[dim - 1] = 0.0;
        }
    }
    Ok(())
}

/// Nearest 2x up-sampling or 2x2 average pooling (the ADM res block's resampling).
pub(super) fn resample(be: &CpuBackend, x: A, up: bool, out: A) -> Result<()> {
    check_resample(&x, up, &out)?;
    if out.is_empty() {
        return Ok(());
    }
    let (h, w, wo) = (x.h, x.w, out.w);
    let plane_out = out.h * out.w;
    let workers = workers_for(be.threads, out.len());
    par_for(workers, out.n, |b| {
        // SAFETY: regions validated and disjoint; one thread per output sample.
        let (src, dst) = unsafe { (sample(&x, b), sample_mut(&out, b)) };
        for (ci, o) in dst.chunks_exact_mut(plane_out).enumerate() {
            let s = &src[ci * h * w..(ci + 1) * h * w];
            for (i, row) in o.chunks_exact_mut(wo).enumerate() {
                for (j, v) in row.iter_mut().enumerate() {
                    *v = if up {
                        s[(i / 2) * w + j / 2]
                    } else {
                        let (r0, r1) = (2 * i * w, (2 * i + 1) * w);
                        // avg_pool2d's order: the four taps summed, then / 4.
                        ((s[r0 + 2 * j] + s[r0 + 2 * j + 1]) + (s[r1 + 2 * j] + s[r1 + 2 * j + 1])) * 0.25
                    };
                }
            }
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::backend::Backend;

    #[test]
    fn fast_exp_is_accurate() {
        let mut worst = 0f64;
        for i in -87_000..88_000 {
            let x = i as f32 * 1.0e-3 + 0.000_37;
            let want = (x as f64).exp();
            worst = worst.max(((exp(x) as f64 - want) / want).abs());
        }
        assert!(worst < 3e-7, "worst rel error {worst:e}");
        assert!(silu(-200.0).is_finite() && silu(200.0) == 200.0 && silu(0.0) == 0.0);
    }

    #[test]
    fn copy_broadcasts() {
        let be = CpuBackend::new(2);
        let src = rand_vec(3, 2 * 3 * 4 * 5);
        let sb = place(&be, &src);
        let ob = poisoned(&be, 5 * 60);
        be.copy(act(&sb, 2, 3, 4, 5), act(&ob, 5, 3, 4, 5)).unwrap();
        let got = read(&be, &ob, 5 * 60);
        for b in 0..5 {
            assert_eq!(&got[b * 60..(b + 1) * 60], &src[(b % 2) * 60..(b % 2 + 1) * 60]);
        }
        assert!(be.copy(act(&sb, 2, 3, 4, 5), act(&ob, 1, 3, 4, 5)).is_err());
        assert!(be.copy(act(&sb, 1, 3, 4, 5), act(&ob, 2, 3, 5, 4)).is_err());
    }

    #[test]
    fn resample_up_and_down() {
        let be = CpuBackend::new(2);
        let (c, h, w) = (3, 6, 5);
        let src = rand_vec(11, 2 * c * h * w);
        let sb = place(&be, &src);
        // up: every output reads its nearest source; batch 2 broadcast to 3.
        let ob = poisoned(&be, 3 * c * 4 * h * w);
        be.resample(act(&sb, 2, c, h, w), true, act(&ob, 3, c, 2 * h, 2 * w)).unwrap();
        let got = read(&be, &ob, 3 * c * 4 * h * w);
        for b in 0..3 {
            for ci in 0..c {
                for i in 0..2 * h {
                    for j in 0..2 * w {
                        let want = src[(((b % 2) * c + ci) * h + i / 2) * w + j / 2];
                        assert_eq!(got[((b * c + ci) * 2 * h + i) * 2 * w + j], want);
                    }
                }
            }
        }
        // down: 2x2 means, the odd last column dropped.
        let (ho, wo) = (h / 2, w / 2);
        let ob = poisoned(&be, 2 * c * ho * wo);
        be.resample(act(&sb, 2, c, h, w), false, act(&ob, 2, c, ho, wo)).unwrap();
        let got = read(&be, &ob, 2 * c * ho * wo);
        let mut want = vec![0f64; got.len()];
        for b in 0..2 {
            for ci in 0..c {
                for i in 0..ho {
                    for j in 0..wo {
                        let at = |y: usize, x: usize| src[((b * c + ci) * h + y) * w + x] as f64;
                        want[((b * c + ci) * ho + i) * wo + j] =
                            (at(2 * i, 2 * j) + at(2 * i, 2 * j + 1) + at(2 * i + 1, 2 * j) + at(2 * i + 1, 2 * j + 1))
                                / 4.0;
                    }
                }
            }
        }
        assert_close(&got, &want, "avg_pool");
        assert!(be.resample(act(&sb, 2, c, h, w), false, act(&ob, 2, c, ho + 1, wo)).is_err());
        assert!(be.resample(act(&sb, 2, c, h, w), true, act(&ob, 1, c, ho, wo)).is_err());
    }

    #[test]
    fn timestep_embedding_matches_formula() {
        let be = CpuBackend::new(1);
        let t = [0.0f32, 1.0, 37.0, 999.0];
        for &(dim, flip, shift) in &[(128usize, true, 0.0f32), (33, false, 1.0), (8, false, 0.5)] {
            let ob = poisoned(&be, 4 * dim);
            be.timestep_embedding(&t, flip, shift, act(&ob, 4, dim, 1, 1)).unwrap();
            let got = read(&be, &ob, 4 * dim);
            let half = dim / 2;
            // `exact`: the formula in f64; `mirror`: the spec's f32 argument, f64 sin/cos.
            let (mut exact, mut mirror) = (vec![0f64; 4 * dim], vec![0f64; 4 * dim]);
            for (b, &tb) in t.iter().enumerate() {
                for k in 0..half {
                    let f = (-(10000f64.ln()) * k as f64 / (half as f64 - shift as f64)).exp();
                    let f32_arg = tb * ((-(10000f64.ln() as f32) * k as f32) / (half as f32 - shift)).exp();
                    for (want, arg) in [(&mut exact, tb as f64 * f), (&mut mirror, f32_arg as f64)] {
                        let (x, y) = if flip { (arg.cos(), arg.sin()) } else { (arg.sin(), arg.cos()) };
                        want[b * dim + k] = x;
                        want[b * dim + half + k] = y;
                    }
                }
            }
            assert_close(&got, &mirror, "timestep_embedding");
            // Rounding the argument to f32 at t ~ 1000 costs ~1e-5 against pure f64.
            let e = rel_err(&got, &exact);
            assert!(e < 5e-5, "dim {dim}: {e:e}");
            assert!(got[..].chunks(dim).all(|r| dim % 2 == 0 || r[dim - 1] == 0.0));
        }
        let ob = poisoned(&be, 8);
        assert!(be.timestep_embedding(&t[..3], false, 0.0, act(&ob, 4, 2, 1, 1)).is_err());
    }
}
