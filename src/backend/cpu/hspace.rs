//! The DiffStyle h-space mix (method.md): slerp between the style feature and the
//! (norm-matched or masked) content feature, per sample, scalars in f64. Nearly
//! parallel / anti-parallel / zero vectors fall back to lerp instead of dividing by
//! sin(theta) ~ 0.

use anyhow::Result;

use super::{sample, sample_mut, A};
use crate::backend::check::check_hspace_mix;

/// Coefficients `(s0, s1)` of `s0 v0 + s1 v1` for slerp in the authors' order, given
/// `|v0|`, `|v1|` and `<v0, v1>`.
fn slerp_coeffs(gamma: f64, n0: f64, n1: f64, dot: f64) -> (f64, f64) {
    let lerp = (1.0 - gamma, gamma);
    if n0 == 0.0 || n1 == 0.0 || !(n0 * n1).is_finite() {
        return lerp;
    }
    let cos = (dot / (n0 * n1)).clamp(-1.0, 1.0);
    let theta = cos.acos();
    let st = theta.sin();
    if st < 1e-6 {
        return lerp;
    }
    ((theta - gamma * theta).sin() / st, (gamma * theta).sin() / st)
}

/// Accumulated `(|a|^2, |b|^2, <a, b>)` in f64, each term weighted by `m^2`.
fn moments(a: &[f32], b: &[f32], m: impl Fn(usize) -> f64) -> (f64, f64, f64) {
    let (mut aa, mut bb, mut ab) = (0f64, 0f64, 0f64);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let mm = m(i);
        let (x, y) = (x as f64 * mm, y as f64 * mm);
        aa += x * x;
        bb += y * y;
        ab += x * y;
    }
    (aa, bb, ab)
}

pub(super) fn hspace_mix(h: A, hc: A, gamma: f32, mask: Option<A>, out: A) -> Result<()> {
    check_hspace_mix(&h, &hc, gamma, mask.as_ref(), &out)?;
    let g = gamma as f64;
    let hw = out.h * out.w;
    for b in 0..out.n {
        // SAFETY: regions validated and disjoint from the output.
        let (x, y, o) = unsafe { (sample(&h, b), sample(&hc, b), sample_mut(&out, b)) };
        match &mask {
            None => {
                let (hh, cc, hc_dot) = moments(x, y, |_| 1.0);
                let (nh, nc) = (hh.sqrt(), cc.sqrt());
                // hc_n = hc * |h| / |hc| (zero if hc is zero): |hc_n| = |h|.
                let ratio = if nc > 0.0 { nh / nc } else { 0.0 };
                let (s0, s1) = slerp_coeffs(g, nh, nc * ratio, hc_dot * ratio);
                let s1 = s1 * ratio;
                for ((o, &x), &y) in o.iter_mut().zip(x).zip(y) {
                    *o = (s0 * x as f64 + s1 * y as f64) as f32;
                }
            }
            Some(m) => {
                let ms = unsafe { sample(m, b) };
                let (aa, bb, ab) = moments(x, y, |i| ms[i % hw] as f64);
                let (s0, s1) = slerp_coeffs(g, aa.sqrt(), bb.sqrt(), ab);
                for (i, ((o, &x), &y)) in o.iter_mut().zip(x).zip(y).enumerate() {
                    let (m, x, y) = (ms[i % hw] as f64, x as f64, y as f64);
                    *o = (s0 * x * m + s1 * y * m + (1.0 - m) * x) as f32;
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::super::CpuBackend;
    use crate::backend::Backend;

    /// Reference straight from method.md, in f64.
    fn reference(h: &[f32], hc: &[f32], gamma: f64, mask: Option<&[f32]>) -> Vec<f64> {
        let hw = mask.map_or(1, |m| m.len());
        let m = |i: usize| mask.map_or(1.0, |m| m[i % hw] as f64);
        let v0: Vec<f64> = h.iter().enumerate().map(|(i, &x)| x as f64 * m(i)).collect();
        let mut v1: Vec<f64> = hc.iter().enumerate().map(|(i, &x)| x as f64 * m(i)).collect();
        let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
        if mask.is_none() {
            let (nh, nc) = (norm(&v0), norm(&v1));
            v1.iter_mut().for_each(|x| *x = if nc > 0.0 { *x * nh / nc } else { 0.0 });
        }
        let (n0, n1) = (norm(&v0), norm(&v1));
        let (s0, s1) = if n0 == 0.0 || n1 == 0.0 {
            (1.0 - gamma, gamma)
        } else {
            let dot = v0.iter().zip(&v1).map(|(a, b)| a / n0 * b / n1).sum::<f64>().clamp(-1.0, 1.0);
            let th = dot.acos();
            if th.sin() < 1e-6 {
                (1.0 - gamma, gamma)
            } else {
                ((th - gamma * th).sin() / th.sin(), (gamma * th).sin() / th.sin())
            }
        };
        (0..h.len()).map(|i| s0 * v0[i] + s1 * v1[i] + (1.0 - m(i)) * h[i] as f64).collect()
    }

    /// Runs the op on a batch whose samples are `(h, hc)` pairs (broadcasting `hc` when
    /// only one is given) and checks it against the reference.
    fn check(pairs: &[(Vec<f32>, Vec<f32>)], shared_hc: bool, mask: Option<&[f32]>, gamma: f32, hw: (usize, usize)) {
        let be = CpuBackend::new(1);
        let n = pairs.len();
        let len = pairs[0].0.len();
        let c = len / (hw.0 * hw.1);
        let hd: Vec<f32> = pairs.iter().flat_map(|p| p.0.clone()).collect();
        let nc = if shared_hc { 1 } else { n };
        let cd: Vec<f32> = pairs[..nc].iter().flat_map(|p| p.1.clone()).collect();
        let (hb, cb, mb) = (place(&be, &hd), place(&be, &cd), place(&be, mask.unwrap_or(&[])));
        let ob = poisoned(&be, n * len);
        let m = mask.map(|_| act(&mb, 1, 1, hw.0, hw.1));
        be.hspace_mix(act(&hb, n, c, hw.0, hw.1), act(&cb, nc, c, hw.0, hw.1), gamma, m, act(&ob, n, c, hw.0, hw.1))
            .unwrap();
        let got = read(&be, &ob, n * len);
        for (b, p) in pairs.iter().enumerate() {
            let hc = if shared_hc { &pairs[0].1 } else { &p.1 };
            let want = reference(&p.0, hc, gamma as f64, mask);
            let g = &got[b * len..(b + 1) * len];
            if want.iter().all(|&v| v == 0.0) {
                assert!(g.iter().all(|&v| v == 0.0), "sample {b}: expected zeros");
            } else {
                assert_close(g, &want, "hspace_mix");
            }
        }
    }

    #[test]
    fn hspace_random_and_broadcast() {
        let (c, hw) = (16, (8, 8));
        let len = c * 64;
        let pairs: Vec<_> = (0..3).map(|s| (rand_vec(10 + s, len), rand_vec(20 + s, len))).collect();
        check(&pairs, false, None, 0.3, hw);
        check(&pairs, true, None, 0.7, hw);
        // Very different norms: hc is rescaled to |h|.
        let scaled: Vec<f32> = pairs[0].1.iter().map(|v| v * 40.0).collect();
        check(&[(pairs[0].0.clone(), scaled)], false, None, 0.4, hw);
    }

    #[test]
    fn hspace_degenerate_never_nan() {
        let len = 5 * 12;
        let h = rand_vec(3, len);
        let neg: Vec<f32> = h.iter().map(|v| -v).collect();
        let twice: Vec<f32> = h.iter().map(|v| 2.0 * v).collect();
        let zero = vec![0f32; len];
        let cases = vec![
            (h.clone(), h.clone()), // parallel, identical
            (h.clone(), twice),     // parallel, different norm
            (h.clone(), neg),       // anti-parallel
            (h.clone(), zero.clone()),
            (zero.clone(), h.clone()),
            (zero.clone(), zero),
        ];
        for gamma in [0.0, 0.3, 1.0] {
            check(&cases, false, None, gamma, (3, 4));
        }
        // Parallel vectors give h back exactly (lerp of two equal vectors).
        let be = CpuBackend::new(1);
        let (hb, ob) = (place(&be, &h), poisoned(&be, len));
        be.hspace_mix(act(&hb, 1, 5, 3, 4), act(&hb, 1, 5, 3, 4), 0.3, None, act(&ob, 1, 5, 3, 4)).unwrap();
        let got = read(&be, &ob, len);
        assert_close(&got, &h.iter().map(|&v| v as f64).collect::<Vec<_>>(), "parallel");
    }

    #[test]
    fn hspace_mask() {
        let (c, hw) = (8, (8, 8));
        let len = c * 64;
        let mut mask = vec![0f32; 64];
        for y in 4..7 {
            for x in 3..5 {
                mask[y * 8 + x] = 1.0;
            }
        }
        let pairs: Vec<_> = (0..2).map(|s| (rand_vec(30 + s, len), rand_vec(40 + s, len))).collect();
        check(&pairs, false, Some(&mask), 0.3, hw);
        // A soft mask, and a zero mask (output = h).
        let soft: Vec<f32> = rand_vec(50, 64).iter().map(|v| v * 0.5 + 0.5).collect();
        check(&pairs, true, Some(&soft), 0.6, hw);
        check(&pairs, false, Some(&[0.0; 64]), 0.6, hw);
    }
}
