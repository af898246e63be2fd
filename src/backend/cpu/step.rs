//! Sampler updates: the DDIM / Asyrp step and DiffStyle calibration. Elementwise in
//! f32 in the documented order (the GPU kernels are held to it); per-sample
//! statistics in f64.

use anyhow::Result;

use super::norm::{sum_f64, sum_sq_dev};
use super::threads::{par_for, workers_for};
use super::{sample, sample_mut, CpuBackend, A};
use crate::backend::check::{check_calibrate, check_ddim_step};
use crate::backend::DdimStep;
use crate::rng::fill_gaussian;

pub(super) fn ddim_step(be: &CpuBackend, p: &DdimStep<'_, super::CpuBuf>) -> Result<()> {
    let out = &p.out;
    check_ddim_step(p)?;
    let (sa_i, s1a_i, sa_j) = (p.a_i.sqrt(), (1.0 - p.a_i).sqrt(), p.a_j.sqrt());
    let (c_dir, c_noise) = (p.c_dir, p.c_noise);
    let len = out.sample_len();
    // Noise generation (Philox + f64 Box-Muller) dominates; worth a thread per sample.
    let workers = workers_for(be.threads, if c_noise != 0.0 { 40 * len * out.n } else { len * out.n });
    par_for(workers, out.n, |b| {
        // SAFETY: regions validated and disjoint; one sample per item.
        let (x, e0, ed, o) =
            unsafe { (sample(&p.x, b), sample(&p.eps_x0, b), sample(&p.eps_dir, b), sample_mut(out, b)) };
        for (((o, &x), &e0), &ed) in o.iter_mut().zip(x).zip(e0).zip(ed) {
            let x0 = (x - e0 * s1a_i) / sa_i;
            *o = sa_j * x0 + c_dir * ed;
        }
        if c_noise != 0.0 {
            let mut z = be.pool.take(len);
            fill_gaussian(p.seed, p.stream, 0, &mut z[..len]);
            o.iter_mut().zip(&z[..len]).for_each(|(o, &z)| *o += c_noise * z);
        }
    });
    Ok(())
}

pub(super) fn calibrate(x: A, eps: A, eps_mod: A, a: f32, omega: f32, out: A) -> Result<()> {
    check_calibrate(&x, &eps, &eps_mod, a, &out)?;
    let (sa, s1a) = (a.sqrt(), (1.0 - a).sqrt());
    let len = out.sample_len();
    let mut p = vec![0f32; len];
    let mut pm = vec![0f32; len];
    for b in 0..out.n {
        // SAFETY: regions validated and disjoint from the output.
        let (xs, es, ms, o) = unsafe { (sample(&x, b), sample(&eps, b), sample(&eps_mod, b), sample_mut(&out, b)) };
        for i in 0..len {
            p[i] = (xs[i] - s1a * es[i]) / sa;
            pm[i] = (xs[i] - s1a * ms[i]) / sa;
        }
        let n = len as f64;
        let (mean_p, mean_pm) = (sum_f64(&p) / n, sum_f64(&pm) / n);
        let (std_p, std_pm) = ((sum_sq_dev(&p, mean_p) / n).sqrt(), (sum_sq_dev(&pm, mean_pm) / n).sqrt());
        let ratio = if std_pm > 0.0 { std_p / std_pm } else { 1.0 };
        for i in 0..len {
            let pm_new = (mean_pm + (pm[i] as f64 - mean_pm) * ratio) as f32;
            o[i] = xs[i] + sa * (pm_new - p[i]) + omega * s1a * (ms[i] - es[i]);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::backend::Backend;

    #[test]
    fn ddim_step_with_and_without_noise() {
        let be = CpuBackend::new(2);
        let (n, c, h, w) = (3, 3, 5, 7);
        let len = c * h * w;
        let xd = rand_vec(1, n * len);
        let e0 = rand_vec(2, n * len);
        let ed = rand_vec(3, len); // broadcast over the batch
        let (xb, e0b, edb) = (place(&be, &xd), place(&be, &e0), place(&be, &ed));
        for c_noise in [0.0f32, 0.37] {
            let ob = poisoned(&be, n * len);
            let (a_i, a_j, c_dir) = (0.31f32, 0.58f32, 0.42f32);
            be.ddim_step(&DdimStep {
                x: act(&xb, n, c, h, w),
                eps_x0: act(&e0b, n, c, h, w),
                eps_dir: act(&edb, 1, c, h, w),
                out: act(&ob, n, c, h, w),
                a_i,
                a_j,
                c_dir,
                c_noise,
                seed: 1234,
                stream: 9,
            })
            .unwrap();
            let got = read(&be, &ob, n * len);
            let mut want = vec![0f64; n * len];
            for b in 0..n {
                let mut z = vec![0f32; len];
                fill_gaussian(1234, 9, 0, &mut z);
                for i in 0..len {
                    let (ai, aj) = (a_i as f64, a_j as f64);
                    let x0 = (xd[b * len + i] as f64 - e0[b * len + i] as f64 * (1.0 - ai).sqrt()) / ai.sqrt();
                    want[b * len + i] = aj.sqrt() * x0 + c_dir as f64 * ed[i] as f64 + c_noise as f64 * z[i] as f64;
                }
            }
            assert_close(&got, &want, "ddim_step");
        }
    }

    #[test]
    fn calibrate_matches_formula() {
        let be = CpuBackend::new(1);
        let (n, c, h, w) = (2, 3, 6, 5);
        let len = c * h * w;
        let xd = rand_vec(4, n * len);
        let ed = rand_vec(5, n * len);
        let md: Vec<f32> = rand_vec(6, n * len).iter().map(|v| v * 1.7 + 0.2).collect();
        let (xb, eb, mb) = (place(&be, &xd), place(&be, &ed), place(&be, &md));
        let (a, omega) = (0.43f32, 0.8f32);
        let ob = poisoned(&be, n * len);
        be.calibrate(act(&xb, n, c, h, w), act(&eb, n, c, h, w), act(&mb, n, c, h, w), a, omega, act(&ob, n, c, h, w))
            .unwrap();
        let got = read(&be, &ob, n * len);
        let a = a as f64;
        let mut want = vec![0f64; n * len];
        for b in 0..n {
            let r = b * len..(b + 1) * len;
            let p: Vec<f64> = r.clone().map(|i| (xd[i] as f64 - (1.0 - a).sqrt() * ed[i] as f64) / a.sqrt()).collect();
            let q: Vec<f64> = r.clone().map(|i| (xd[i] as f64 - (1.0 - a).sqrt() * md[i] as f64) / a.sqrt()).collect();
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            let std =
                |v: &[f64], m: f64| (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() - 1) as f64).sqrt();
            let (mp, mq) = (mean(&p), mean(&q));
            let ratio = std(&p, mp) / std(&q, mq);
            for (k, i) in r.enumerate() {
                let qn = mq + (q[k] - mq) * ratio;
                want[i] =
                    xd[i] as f64 + a.sqrt() * (qn - p[k]) + omega as f64 * (1.0 - a).sqrt() * (md[i] - ed[i]) as f64;
            }
        }
        assert_close(&got, &want, "calibrate");

        // eps_mod == eps: P' == P, the ratio is 1 and out == x.
        let ob = poisoned(&be, n * len);
        be.calibrate(
            act(&xb, n, c, h, w),
            act(&eb, n, c, h, w),
            act(&eb, n, c, h, w),
            0.43,
            omega,
            act(&ob, n, c, h, w),
        )
        .unwrap();
        let got = read(&be, &ob, n * len);
        assert_close(&got, &xd.iter().map(|&v| v as f64).collect::<Vec<_>>(), "calibrate identity");

        // Constant P' (zero spread) must not divide by zero.
        let cx = vec![0.25f32; len];
        let (cxb, zb) = (place(&be, &cx), place(&be, &vec![0f32; len]));
        let ob = poisoned(&be, len);
        be.calibrate(
            act(&cxb, 1, c, h, w),
            act(&eb, 1, c, h, w),
            act(&zb, 1, c, h, w),
            0.43,
            omega,
            act(&ob, 1, c, h, w),
        )
        .unwrap();
        read(&be, &ob, len);
    }
}
