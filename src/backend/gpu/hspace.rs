//! h-space mix launcher (kernels/hspace.cu).

use anyhow::Result;

use super::device::Device;
use super::int;
use super::params::launch::DS_HSPACE_THREADS;
use super::params::HspaceParams;
use super::{GpuBackend, GpuBuf};
use crate::backend::check::check_hspace_mix;
use crate::backend::Act;

/// Launch contract of `hspace_mix_f32`: grid (n), block DS_HSPACE_THREADS, one block per sample
/// (per-sample f64 moments, then the slerp coefficients, then the elementwise mix).
/// The kernel reads one mask `[hw]` for every sample; a mask with a batch of its own
/// (allowed by the CPU's broadcast rule) is handled by one launch per sample.
pub(super) fn hspace_mix<'a, D: Device>(
    be: &GpuBackend<D>,
    h: Act<'a, GpuBuf>,
    hc: Act<'a, GpuBuf>,
    gamma: f32,
    mask: Option<Act<'a, GpuBuf>>,
    out: Act<'a, GpuBuf>,
) -> Result<()> {
    check_hspace_mix(&h, &hc, gamma, mask.as_ref(), &out)?;
    if out.is_empty() {
        return Ok(());
    }
    int(out.len(), "hspace_mix size")?;
    let launch = |h: &Act<'_, GpuBuf>, hc: &Act<'_, GpuBuf>, m: Option<&Act<'_, GpuBuf>>, o: &Act<'_, GpuBuf>| {
        let p = HspaceParams {
            h: be.addr(h, "hspace_mix h")?,
            hc: be.addr(hc, "hspace_mix hc")?,
            mask: match m {
                Some(m) => be.addr(m, "hspace_mix mask")?,
                None => 0,
            },
            out: be.addr(o, "hspace_mix out")?,
            n: o.n as i32,
            hn: h.n as i32,
            hcn: hc.n as i32,
            c: o.c as i32,
            hw: (o.h * o.w) as i32,
            gamma,
        };
        be.launch("hspace_mix_f32", [o.n as u32, 1, 1], [DS_HSPACE_THREADS as u32, 1, 1], 0, &p)
    };
    match &mask {
        Some(m) if m.n > 1 => {
            for b in 0..out.n {
                let (s, sm) = (|a: &Act<'a, GpuBuf>| a.samples(b % a.n, 1), m.samples(b % m.n, 1));
                launch(&s(&h), &s(&hc), Some(&sm), &out.samples(b, 1))?;
            }
            Ok(())
        }
        _ => launch(&h, &hc, mask.as_ref(), &out),
    }
}

/// Micro-benchmarks: the DDPM-256 U-Net's h-space (512x8x8) mixed for a batch of 2
/// against one content h (broadcast), without and with a mask.
pub(super) fn micro<D: Device>(s: &mut super::micro::Sink<'_, D>) -> Result<()> {
    use crate::backend::Backend;
    let (c, side) = (if s.small { 64 } else { 512 }, 8);
    let len = c * side * side;
    let h = s.random(2 * len, 1)?;
    let hc = s.random(len, 2)?;
    let m: Vec<f32> = (0..side * side).map(|i| (i % 3) as f32 * 0.5).collect();
    let mask = s.be.alloc(side * side)?;
    let ma = Act::new(&mask, 0, 1, 1, side, side);
    s.be.upload(ma, &m)?;
    let out = s.be.alloc(2 * len)?;
    let (ha, hca, o) =
        (Act::new(&h, 0, 2, c, side, side), Act::new(&hc, 0, 1, c, side, side), Act::new(&out, 0, 2, c, side, side));
    for (case, mask) in [("512x8x8 batch 2", None), ("512x8x8 batch 2 +mask", Some(ma))] {
        // Moments (6 flops per element) and the mix (3, or 6 with a mask).
        let gflop = 1e-9 * (2 * len * if mask.is_some() { 12 } else { 9 }) as f64;
        let bytes = 4.0 * (5 * len + side * side) as f64;
        let be = s.be;
        s.time("hspace_mix", case, "auto", gflop, bytes, o, &mut || be.hspace_mix(ha, hca, 0.6, mask, o))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::device::Device;
    use super::super::testutil::*;
    use super::super::GpuBackend;
    use crate::backend::Backend;
    use crate::dtype::Precision;

    /// Runs the mix on backend `be`: `hs` holds `hn` samples, `hcs` holds `hcn`, the
    /// mask (if any) `mn` samples of `[hw]`.
    #[allow(clippy::too_many_arguments)]
    fn mix<B: Backend>(
        be: &B,
        hs: &[f32],
        hcs: &[f32],
        mask: Option<(&[f32], usize)>,
        n: usize,
        c: usize,
        hw: (usize, usize),
        gamma: f32,
    ) -> Vec<f32> {
        let len = c * hw.0 * hw.1;
        let (hb, cb) = (place(be, hs), place(be, hcs));
        let mb = place(be, mask.map_or(&[][..], |m| m.0));
        let ob = poisoned(be, n * len);
        let m = mask.map(|(_, mn)| act(&mb, mn, 1, hw.0, hw.1));
        let (hn, hcn) = (hs.len() / len, hcs.len() / len);
        let (h, hc, out) = (act(&hb, hn, c, hw.0, hw.1), act(&cb, hcn, c, hw.0, hw.1), act(&ob, n, c, hw.0, hw.1));
        be.hspace_mix(h, hc, gamma, m, out).unwrap();
        read(be, &ob, n * len)
    }

    /// GPU against CPU: the f64 scalars agree to rounding, so allow 1e-6 (rel. L2) and
    /// demand exact zeros where the CPU gives them.
    #[allow(clippy::too_many_arguments)]
    fn check<D: Device>(
        g: &GpuBackend<D>,
        hs: &[f32],
        hcs: &[f32],
        mask: Option<(&[f32], usize)>,
        n: usize,
        c: usize,
        hw: (usize, usize),
        gamma: f32,
    ) {
        let cp = cpu_for(g);
        let got = mix(g, hs, hcs, mask, n, c, hw, gamma);
        let want = mix(&cp, hs, hcs, mask, n, c, hw, gamma);
        let len = c * hw.0 * hw.1;
        for b in 0..n {
            let (gs, ws) = (&got[b * len..(b + 1) * len], &want[b * len..(b + 1) * len]);
            if ws.iter().all(|&v| v == 0.0) {
                assert!(gs.iter().all(|&v| v == 0.0), "sample {b}: expected zeros");
            } else {
                let e = rel_l2(gs, ws);
                eprintln!(
                    "hspace_mix {} n {n} c {c} gamma {gamma} mask {}: sample {b} rel l2 {e:e}",
                    g.device().kind(),
                    mask.is_some()
                );
                assert!(e < 1e-6, "sample {b} gamma {gamma} mask {}: rel l2 {e:e}", mask.is_some());
            }
        }
    }

    fn random_and_broadcast<D: Device>(g: &GpuBackend<D>) {
        let (c, hw) = (16, (8, 8));
        let len = c * 64;
        let h = rand_vec(10, 3 * len);
        let hc = rand_vec(20, 3 * len);
        for gamma in [0.0, 0.3, 1.0] {
            check(g, &h, &hc, None, 3, c, hw, gamma);
        }
        check(g, &h, &hc[..len], None, 3, c, hw, 0.7); // one content feature for all
        check(g, &h[..len], &hc, None, 3, c, hw, 0.7); // one style feature for all
                                                       // Very different norms: hc is rescaled to |h|.
        let scaled: Vec<f32> = hc[..len].iter().map(|v| v * 40.0).collect();
        check(g, &h[..len], &scaled, None, 1, c, hw, 0.4);
        // A large sample (more elements than threads many times over).
        let (hb, cb) = (rand_vec(11, 2 * 512 * 64), rand_vec(21, 2 * 512 * 64));
        check(g, &hb, &cb, None, 2, 512, hw, 0.3);
    }

    fn degenerate_never_nan<D: Device>(g: &GpuBackend<D>) {
        let (c, hw) = (5, (3, 4));
        let len = c * 12;
        let h = rand_vec(3, len);
        let neg: Vec<f32> = h.iter().map(|v| -v).collect();
        let twice: Vec<f32> = h.iter().map(|v| 2.0 * v).collect();
        let nearly: Vec<f32> = h.iter().enumerate().map(|(i, v)| v + if i == 0 { 1e-7 } else { 0.0 }).collect();
        let zero = vec![0f32; len];
        let cases = [
            (&h, &h),       // parallel, identical
            (&h, &twice),   // parallel, different norm
            (&h, &nearly),  // sin(theta) below the threshold
            (&h, &neg),     // anti-parallel
            (&h, &zero),    // zero content
            (&zero, &h),    // zero style
            (&zero, &zero), // both zero
        ];
        let hs: Vec<f32> = cases.iter().flat_map(|p| p.0.iter().copied()).collect();
        let hcs: Vec<f32> = cases.iter().flat_map(|p| p.1.iter().copied()).collect();
        let n = cases.len();
        let mask: Vec<f32> = rand_vec(5, 12).iter().map(|v| v * 0.5 + 0.5).collect();
        for gamma in [0.0, 0.3, 1.0] {
            check(g, &hs, &hcs, None, n, c, hw, gamma);
            check(g, &hs, &hcs, Some((&mask, 1)), n, c, hw, gamma);
        }
        // Parallel vectors give h back (lerp of two equal vectors).
        let got = mix(g, &h, &h, None, 1, c, hw, 0.3);
        let e = rel_l2(&got, &h);
        assert!(e < 1e-7, "parallel: {e:e}");
    }

    fn mask_checks<D: Device>(g: &GpuBackend<D>) {
        let (c, hw) = (8, (8, 8));
        let len = c * 64;
        let mut rect = vec![0f32; 64];
        for y in 4..7 {
            for x in 3..5 {
                rect[y * 8 + x] = 1.0;
            }
        }
        let h = rand_vec(30, 2 * len);
        let hc = rand_vec(40, 2 * len);
        for gamma in [0.0, 0.3, 1.0] {
            check(g, &h, &hc, Some((&rect, 1)), 2, c, hw, gamma);
        }
        // A soft mask with broadcast content, a zero mask (out = h), and one mask per
        // sample (one launch per sample).
        let soft: Vec<f32> = rand_vec(50, 2 * 64).iter().map(|v| v * 0.5 + 0.5).collect();
        check(g, &h, &hc[..len], Some((&soft[..64], 1)), 2, c, hw, 0.6);
        check(g, &h, &hc, Some((&[0.0; 64], 1)), 2, c, hw, 0.6);
        check(g, &h, &hc, Some((&soft, 2)), 2, c, hw, 0.6);
        let got = mix(g, &h, &hc, Some((&[0.0; 64], 1)), 2, c, hw, 0.6);
        assert_eq!(got, h, "a zero mask leaves h unchanged");
    }

    #[test]
    fn hspace_random_and_broadcast() {
        random_and_broadcast(&emu(Precision::F32));
    }

    #[test]
    fn hspace_degenerate_never_nan() {
        degenerate_never_nan(&emu(Precision::F32));
    }

    #[test]
    fn hspace_mask() {
        mask_checks(&emu(Precision::F32));
    }

    /// On a real GPU (skipped without one): the emulated checks, then DDPM-256's h
    /// (512x8x8) at batch 2 with broadcast content / style, hard and soft masks (shared
    /// and per sample), and a batch of 8.
    #[test]
    fn cuda_hspace() {
        let Some(g) = cuda(Precision::F32) else { return };
        random_and_broadcast(&g);
        degenerate_never_nan(&g);
        mask_checks(&g);
        let (c, hw) = (512, (8, 8));
        let len = c * 64;
        let (h, hc) = (rand_vec(60, 8 * len), rand_vec(61, 8 * len));
        let soft: Vec<f32> = rand_vec(62, 2 * 64).iter().map(|v| v * 0.5 + 0.5).collect();
        let hard: Vec<f32> = (0..64).map(|i| ((i % 8) >= 4) as u8 as f32).collect();
        for gamma in [0.0, 0.1, 0.5, 1.0] {
            check(&g, &h[..2 * len], &hc[..2 * len], None, 2, c, hw, gamma);
            check(&g, &h[..2 * len], &hc[..len], None, 2, c, hw, gamma);
            check(&g, &h[..len], &hc[..2 * len], Some((&hard, 1)), 2, c, hw, gamma);
            check(&g, &h[..2 * len], &hc[..2 * len], Some((&soft[..64], 1)), 2, c, hw, gamma);
            check(&g, &h[..2 * len], &hc[..len], Some((&soft, 2)), 2, c, hw, gamma);
        }
        check(&g, &h, &hc, None, 8, c, hw, 0.3);
    }

    #[test]
    fn hspace_rejects_bad_shapes() {
        let g = emu(Precision::F32);
        let (hb, ob) = (place(&g, &rand_vec(1, 2 * 4 * 9)), poisoned(&g, 2 * 4 * 9));
        let mb = place(&g, &rand_vec(2, 9));
        let a = |b, n, c| act(b, n, c, 3, 3);
        assert!(g.hspace_mix(a(&hb, 2, 4), a(&hb, 2, 4), 0.3, None, a(&hb, 1, 4)).is_err(), "overlap");
        assert!(g.hspace_mix(a(&hb, 2, 4), a(&hb, 1, 8), 0.3, None, a(&ob, 2, 4)).is_err(), "shape");
        assert!(g.hspace_mix(a(&hb, 2, 4), a(&hb, 2, 4), f32::NAN, None, a(&ob, 2, 4)).is_err(), "gamma");
        assert!(g.hspace_mix(a(&hb, 2, 4), a(&hb, 2, 4), 0.3, Some(act(&mb, 1, 1, 9, 1)), a(&ob, 2, 4)).is_err());
        assert!(g.hspace_mix(a(&hb, 2, 4), a(&hb, 2, 4), 0.3, Some(a(&mb, 1, 1)), a(&ob, 2, 4)).is_ok());
    }
}
