//! GroupNorm over a channel concat, with optional fused SiLU. Statistics in f64, two
//! passes (mean, then squared deviations) so a large mean cannot cancel the variance.

use anyhow::Result;

use super::elementwise::silu;
use super::threads::{par_for, workers_for, SyncPtr};
use super::{base, sample_ptr, CpuBackend, CpuWeight, A};
use crate::backend::check::{check_film, check_group_norm};
use crate::backend::Cat;

multiversion! {
    /// Sum in f64 with independent lanes (vectorises; also a little more accurate).
    pub(super) fn sum_f64(x: &[f32]) -> f64 {
        let mut acc = [0f64; 8];
        let chunks = x.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                *a += v as f64;
            }
        }
        acc.iter().sum::<f64>() + tail
    }
}

multiversion! {
    /// `sum (x - mean)^2` in f64.
    pub(super) fn sum_sq_dev(x: &[f32], mean: f64) -> f64 {
        let mut acc = [0f64; 8];
        let chunks = x.chunks_exact(8);
        let tail: f64 = chunks.remainder().iter().map(|&v| (v as f64 - mean).powi(2)).sum();
        for c in chunks {
            for (a, &v) in acc.iter_mut().zip(c) {
                let d = v as f64 - mean;
                *a += d * d;
            }
        }
        acc.iter().sum::<f64>() + tail
    }
}

multiversion! {
    /// `dst = silu?((src - mean) * scale + shift)`.
    fn normalize(src: &[f32], dst: &mut [f32], mean: f32, scale: f32, shift: f32, silu_out: bool) {
        if silu_out {
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d = silu((v - mean) * scale + shift));
        } else {
            dst.iter_mut().zip(src).for_each(|(d, &v)| *d = (v - mean) * scale + shift);
        }
    }
}

#[allow(clippy::too_many_arguments)]
pub(super) fn group_norm(
    be: &CpuBackend,
    x: Cat<'_, super::CpuBuf>,
    gamma: &CpuWeight,
    beta: &CpuWeight,
    groups: usize,
    eps: f32,
    film: Option<A>,
    silu_out: bool,
    out: A,
) -> Result<()> {
    check_group_norm(&x, gamma, beta, groups, &out)?;
    if let Some(f) = &film {
        check_film(f, &out)?;
    }
    let c = x.channels();
    if out.is_empty() {
        return Ok(());
    }
    let hw = out.h * out.w;
    let cg = c / groups;
    let ca = x.a.c;
    let (g_w, b_w) = (&gamma.data, &beta.data);
    let o = SyncPtr(base(&out));
    let workers = workers_for(be.threads, 8 * out.len());
    par_for(workers, out.n * groups, |item| {
        let (b, g) = (item / groups, item % groups);
        // SAFETY: regions validated; each item reads its group and writes only it.
        let chan = |ci: usize| unsafe {
            let p = match &x.b {
                Some(xb) if ci >= ca => sample_ptr(xb, b).add((ci - ca) * hw),
                _ => sample_ptr(&x.a, b).add(ci * hw),
            };
            std::slice::from_raw_parts(p, hw)
        };
        let chans = g * cg..(g + 1) * cg;
        let count = (cg * hw) as f64;
        let mean = chans.clone().map(|ci| sum_f64(chan(ci))).sum::<f64>() / count;
        let var = chans.clone().map(|ci| sum_sq_dev(chan(ci), mean)).sum::<f64>() / count;
        let rstd = 1.0 / (var + eps as f64).sqrt();
        let mean32 = mean as f32;
        // FiLM: (y * gamma + beta) * (1 + s) + t, folded into one scale and shift.
        // SAFETY: the film region was validated; sample b reads b % n.
        let film_of = |ci: usize| {
            film.as_ref().map(|f| unsafe {
                let p = sample_ptr(f, b);
                (*p.add(ci) as f64, *p.add(c + ci) as f64)
            })
        };
        for ci in chans {
            let (scale, shift) = match film_of(ci) {
                None => ((rstd * g_w[ci] as f64) as f32, b_w[ci]),
                Some((s, t)) => (((rstd * g_w[ci] as f64) * (1.0 + s)) as f32, (b_w[ci] as f64 * (1.0 + s) + t) as f32),
            };
            let dst = unsafe { std::slice::from_raw_parts_mut(o.get().add((b * c + ci) * hw), hw) };
            normalize(chan(ci), dst, mean32, scale, shift, silu_out);
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::backend::{Backend, WeightKind};

    #[allow(clippy::too_many_arguments)]
    fn run(n: usize, na: usize, ca: usize, nb: usize, cb: usize, hw: (usize, usize), groups: usize, silu_on: bool) {
        let be = CpuBackend::new(2);
        let (h, w) = hw;
        let c = ca + cb;
        let mut xa = rand_vec(1, na * ca * h * w);
        // A large common offset checks that the variance survives it.
        xa.iter_mut().for_each(|v| *v = *v * 0.5 + 3.0);
        let xb = rand_vec(2, nb * cb * h * w);
        let gd = rand_vec(3, c);
        let bd = rand_vec(4, c);
        let (ba, bb) = (place(&be, &xa), place(&be, &xb));
        let bo = poisoned(&be, n * c * h * w);
        let gamma = weight(&be, &[c], gd.clone(), WeightKind::Vector);
        let beta = weight(&be, &[c], bd.clone(), WeightKind::Vector);
        let x = Cat { a: act(&ba, na, ca, h, w), b: (cb > 0).then(|| act(&bb, nb, cb, h, w)) };
        be.group_norm(x, &gamma, &beta, groups, 1e-6, silu_on, act(&bo, n, c, h, w)).unwrap();
        let got = read(&be, &bo, n * c * h * w);

        let hw = h * w;
        let val = |b: usize, ci: usize, p: usize| -> f64 {
            if ci < ca {
                xa[((b % na) * ca + ci) * hw + p] as f64
            } else {
                xb[((b % nb) * cb + ci - ca) * hw + p] as f64
            }
        };
        let cg = c / groups;
        let mut want = vec![0f64; n * c * hw];
        for b in 0..n {
            for g in 0..groups {
                let vals: Vec<f64> = (g * cg..(g + 1) * cg)
                    .flat_map(|ci| (0..hw).map(move |p| (ci, p)))
                    .map(|(ci, p)| val(b, ci, p))
                    .collect();
                let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
                for ci in g * cg..(g + 1) * cg {
                    for p in 0..hw {
                        let y = (val(b, ci, p) - mean) / (var + 1e-6).sqrt() * gd[ci] as f64 + bd[ci] as f64;
                        want[(b * c + ci) * hw + p] = if silu_on { y / (1.0 + (-y).exp()) } else { y };
                    }
                }
            }
        }
        assert_close(&got, &want, "group_norm");
    }

    #[test]
    fn group_norm_plain_and_silu() {
        run(1, 1, 64, 1, 0, (5, 7), 32, false);
        run(2, 2, 6, 2, 0, (3, 3), 3, true);
        run(1, 1, 128, 0, 0, (32, 32), 32, true); // large enough for two workers
    }

    #[test]
    fn group_norm_concat_broadcast() {
        // Groups of 3 channels straddle the a|b boundary (5 + 4 channels).
        run(3, 1, 5, 3, 4, (4, 6), 3, true);
        run(2, 2, 33, 1, 3, (2, 5), 4, false);
    }

    #[test]
    fn group_norm_film() {
        // (gn(x) * gamma + beta) * (1 + scale) + shift, then SiLU; film batch 1 broadcast.
        let be = CpuBackend::new(2);
        let (n, c, h, w, groups) = (2, 12, 4, 5, 3);
        let x = rand_vec(21, n * c * h * w);
        let (gd, bd) = (rand_vec(22, c), rand_vec(23, c));
        for nf in [1, 2] {
            let f = rand_vec(24, nf * 2 * c);
            let (bx, bf) = (place(&be, &x), place(&be, &f));
            let bo = poisoned(&be, n * c * h * w);
            let gamma = weight(&be, &[c], gd.clone(), WeightKind::Vector);
            let beta = weight(&be, &[c], bd.clone(), WeightKind::Vector);
            be.group_norm_film(
                act(&bx, n, c, h, w),
                &gamma,
                &beta,
                groups,
                1e-5,
                act(&bf, nf, 2 * c, 1, 1),
                true,
                act(&bo, n, c, h, w),
            )
            .unwrap();
            let got = read(&be, &bo, n * c * h * w);
            let (hw, cg) = (h * w, c / groups);
            let mut want = vec![0f64; got.len()];
            for b in 0..n {
                for g in 0..groups {
                    let vals: Vec<f64> = (g * cg * hw..(g + 1) * cg * hw).map(|i| x[b * c * hw + i] as f64).collect();
                    let mean = vals.iter().sum::<f64>() / vals.len() as f64;
                    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / vals.len() as f64;
                    for ci in g * cg..(g + 1) * cg {
                        let (s, t) = (f[(b % nf) * 2 * c + ci] as f64, f[(b % nf) * 2 * c + c + ci] as f64);
                        for p in 0..hw {
                            let i = (b * c + ci) * hw + p;
                            let y = ((x[i] as f64 - mean) / (var + 1e-5).sqrt() * gd[ci] as f64 + bd[ci] as f64)
                                * (1.0 + s)
                                + t;
                            want[i] = y / (1.0 + (-y).exp());
                        }
                    }
                }
            }
            assert_close(&got, &want, "group_norm_film");
            // A film of the wrong width is refused.
            let bad = be.group_norm_film(
                act(&bx, n, c, h, w),
                &gamma,
                &beta,
                groups,
                1e-5,
                act(&bf, nf, c, 1, 1),
                true,
                act(&bo, n, c, h, w),
            );
            assert!(bad.is_err());
        }
    }

    #[test]
    fn group_norm_rejects_bad_groups() {
        let be = CpuBackend::new(1);
        let xb = place(&be, &rand_vec(1, 6 * 4));
        let ob = poisoned(&be, 6 * 4);
        let g = weight(&be, &[6], rand_vec(2, 6), WeightKind::Vector);
        assert!(be.group_norm(act(&xb, 1, 6, 2, 2).into(), &g, &g, 4, 1e-6, false, act(&ob, 1, 6, 2, 2)).is_err());
        assert!(be.group_norm(act(&xb, 1, 6, 2, 2).into(), &g, &g, 3, 1e-6, false, act(&ob, 1, 6, 4, 1)).is_err());
        be.group_norm(act(&xb, 1, 6, 2, 2).into(), &g, &g, 3, 1e-6, false, act(&ob, 1, 6, 2, 2)).unwrap();
    }
}
