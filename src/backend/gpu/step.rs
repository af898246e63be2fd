//! Sampler-step launchers (kernels/step.cu): the DDIM / Asyrp step with counter-based
//! noise (bit-compatible with `crate::rng`), and DiffStyle calibration.

use anyhow::Result;

use super::device::Device;
use super::elementwise::grid_y;
use super::int;
use super::params::launch::{DS_CALIBRATE_THREADS, DS_ELEMENTWISE_THREADS};
use super::params::{CalibrateParams, StepParams};
use super::{GpuBackend, GpuBuf};
use crate::backend::check::{check_calibrate, check_ddim_step};
use crate::backend::{Act, DdimStep};

/// Launch contract of `ddim_step_f32`: grid (ceil(ceil(len / 2) / DS_ELEMENTWISE_THREADS),
/// n), block DS_ELEMENTWISE_THREADS;
/// one thread per element pair (one Philox call per pair when `c_noise != 0`).
pub(super) fn ddim_step<D: Device>(be: &GpuBackend<D>, p: &DdimStep<'_, GpuBuf>) -> Result<()> {
    let out = &p.out;
    check_ddim_step(p)?;
    if out.is_empty() {
        return Ok(());
    }
    let len = out.sample_len();
    let params = StepParams {
        x: be.addr(&p.x, "ddim_step x")?,
        eps_x0: be.addr(&p.eps_x0, "ddim_step eps_x0")?,
        eps_dir: be.addr(&p.eps_dir, "ddim_step eps_dir")?,
        out: be.addr(out, "ddim_step out")?,
        seed: p.seed,
        n: int(out.n, "ddim_step n")?,
        len: int(len, "ddim_step len")?,
        xn: p.x.n as i32,
        e0n: p.eps_x0.n as i32,
        edn: p.eps_dir.n as i32,
        stream: p.stream,
        a_i: p.a_i,
        a_j: p.a_j,
        c_dir: p.c_dir,
        c_noise: p.c_noise,
    };
    let gx = len.div_ceil(2).div_ceil(DS_ELEMENTWISE_THREADS) as u32;
    let block = [DS_ELEMENTWISE_THREADS as u32, 1, 1];
    be.launch("ddim_step_f32", [gx, grid_y(out.n, "ddim_step")?, 1], block, 0, &params)
}

/// Launch contract of `calibrate_f32`: grid (n), block DS_CALIBRATE_THREADS, one block per sample (two
/// reduction passes in f64, then the elementwise update). The kernel reads inputs of
/// the output's batch; broadcast inputs are handled by one launch per sample.
pub(super) fn calibrate<'a, D: Device>(
    be: &GpuBackend<D>,
    x: Act<'a, GpuBuf>,
    eps: Act<'a, GpuBuf>,
    eps_mod: Act<'a, GpuBuf>,
    a: f32,
    omega: f32,
    out: Act<'a, GpuBuf>,
) -> Result<()> {
    check_calibrate(&x, &eps, &eps_mod, a, &out)?;
    if out.is_empty() {
        return Ok(());
    }
    let len = int(out.sample_len(), "calibrate len")?;
    int(out.n, "calibrate n")?;
    let launch = |x: &Act<'_, GpuBuf>, e: &Act<'_, GpuBuf>, m: &Act<'_, GpuBuf>, o: &Act<'_, GpuBuf>| {
        let p = CalibrateParams {
            x: be.addr(x, "calibrate x")?,
            eps: be.addr(e, "calibrate eps")?,
            eps_mod: be.addr(m, "calibrate eps_mod")?,
            out: be.addr(o, "calibrate out")?,
            n: o.n as i32,
            len,
            a,
            omega,
        };
        be.launch("calibrate_f32", [o.n as u32, 1, 1], [DS_CALIBRATE_THREADS as u32, 1, 1], 0, &p)
    };
    if x.n == out.n && eps.n == out.n && eps_mod.n == out.n {
        return launch(&x, &eps, &eps_mod, &out);
    }
    for b in 0..out.n {
        let s = |t: &Act<'a, GpuBuf>| t.samples(b % t.n, 1);
        launch(&s(&x), &s(&eps), &s(&eps_mod), &out.samples(b, 1))?;
    }
    Ok(())
}

/// Micro-benchmarks: the sampler's per-step updates on the DDPM-256 latent
/// (3x256x256) for a batch of 2: the DDIM step without and with noise (one Philox call
/// per element pair), and the calibration.
pub(super) fn micro<D: Device>(s: &mut super::micro::Sink<'_, D>) -> Result<()> {
    use crate::backend::Backend;
    let side = if s.small { 32 } else { 256 };
    let len = 2 * 3 * side * side;
    let bufs = [s.random(len, 1)?, s.random(len, 2)?, s.random(len, 3)?];
    let out = s.be.alloc(len)?;
    let [x, e0, ed] = bufs.each_ref().map(|b| Act::new(b, 0, 2, 3, side, side));
    let o = Act::new(&out, 0, 2, 3, side, side);
    for (case, c_noise) in [("3x256x256 batch 2", 0.0), ("3x256x256 batch 2 +noise", 0.1)] {
        let p = DdimStep {
            x,
            eps_x0: e0,
            eps_dir: ed,
            out: o,
            a_i: 0.3,
            a_j: 0.5,
            c_dir: 0.6,
            c_noise,
            seed: 7,
            stream: 1,
        };
        // x0 (3 flops), the combination (3) and the noise term (2); Philox is integer work.
        let gflop = 1e-9 * (len * if c_noise != 0.0 { 8 } else { 6 }) as f64;
        let be = s.be;
        s.time("ddim_step", case, "auto", gflop, 16.0 * len as f64, o, &mut || be.ddim_step(&p))?;
    }
    // Two predictions and two moment passes, then the update: about 20 flops per element.
    let be = s.be;
    s.time("calibrate", "3x256x256 batch 2", "auto", 2e-8 * len as f64, 16.0 * len as f64, o, &mut || {
        be.calibrate(x, e0, ed, 0.4, 0.3, o)
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::params::PhiloxTestParams;

    use super::super::device::Device;
    use super::super::testutil::*;
    use super::super::GpuBackend;
    use crate::backend::{Backend, DdimStep};
    use crate::dtype::Precision;
    use crate::rng::{fill_gaussian, gaussian_pair, philox4x32_10};

    /// Distance in units in the last place between two finite f32 (0 when equal).
    fn ulps(a: f32, b: f32) -> u32 {
        // Map the sign-magnitude bits to a monotonic integer line.
        let key = |v: f32| {
            let b = v.to_bits() as i32;
            if b < 0 {
                i32::MIN.wrapping_sub(b) as i64
            } else {
                b as i64
            }
        };
        (key(a) - key(b)).unsigned_abs().min(u32::MAX as u64) as u32
    }

    /// Gaussian noise from the kernel's f64 Box-Muller vs `crate::rng`: bit-exact in
    /// the emulation (the host's libm); on a real GPU, whose f64 log / sin / cos may
    /// differ from glibc by an ulp, within one f32 ulp.
    fn assert_noise_eq<D: Device>(g: &GpuBackend<D>, got: &[f32], want: &[f32], what: &str) {
        if is_cuda(g) {
            let (worst, k) = got
                .iter()
                .zip(want)
                .map(|(&a, &b)| ulps(a, b))
                .enumerate()
                .fold((0, 0), |(w, k), (i, u)| if u > w { (u, i) } else { (w, k) });
            let off = got.iter().zip(want).filter(|(a, b)| a != b).count();
            eprintln!("{what}: {off} of {} values differ, worst {worst} ulp", got.len());
            assert!(worst <= 1, "{what}: value {k}: {} vs {} ({worst} ulp)", got[k], want[k]);
        } else {
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(got), bits(want), "{what}: bit-exact in the emulation");
        }
    }

    fn philox_checks<D: Device>(g: &GpuBackend<D>) {
        let ob = poisoned(g, 6);
        let cases = [
            ([0u32; 4], [0u32; 2]),
            ([u32::MAX; 4], [u32::MAX; 2]),
            ([0x243f_6a88, 0x85a3_08d3, 0x1319_8a2e, 0x0370_7344], [0xa409_3822, 0x299f_31d0]),
            ([7, 0, 9, 2], [1234, 0]),
        ];
        for (c, k) in cases {
            let p = PhiloxTestParams { out: g.addr(&act(&ob, 1, 6, 1, 1), "out").unwrap(), c, k };
            g.launch("philox_test", [1, 1, 1], [32, 1, 1], 0, &p).unwrap();
            let all = g.download(act(&ob, 1, 6, 1, 1)).unwrap();
            let got: Vec<u32> = all.iter().map(|v| v.to_bits()).collect();
            assert_eq!(got[..4], philox4x32_10(c, k), "philox({c:x?}, {k:x?})");
            let seed = k[0] as u64 | (k[1] as u64) << 32;
            let (z0, z1) = gaussian_pair(seed, c[2], c[3], c[0] as u64 | (c[1] as u64) << 32);
            assert_noise_eq(g, &all[4..], &[z0, z1], "gaussian pair");
        }
        // Random123's published known-answer vectors.
        let p = PhiloxTestParams { out: g.addr(&act(&ob, 1, 6, 1, 1), "out").unwrap(), c: [0; 4], k: [0; 2] };
        g.launch("philox_test", [1, 1, 1], [32, 1, 1], 0, &p).unwrap();
        let got: Vec<u32> = g.download(act(&ob, 1, 6, 1, 1)).unwrap().iter().map(|v| v.to_bits()).collect();
        assert_eq!(got[..4], [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8]);
    }

    #[test]
    fn philox_matches_rng_rs() {
        philox_checks(&emu(Precision::F32));
    }

    struct StepCase<'a> {
        x: &'a [f32],
        e0: &'a [f32],
        ed: &'a [f32],
        n: usize,
        shape: (usize, usize, usize),
        a: (f32, f32),
        c_dir: f32,
        c_noise: f32,
        seed: u64,
        stream: u32,
    }

    fn step<B: Backend>(be: &B, s: &StepCase) -> Vec<f32> {
        let (c, h, w) = s.shape;
        let len = c * h * w;
        let (xb, e0b, edb) = (place(be, s.x), place(be, s.e0), place(be, s.ed));
        let ob = poisoned(be, s.n * len);
        be.ddim_step(&DdimStep {
            x: act(&xb, s.x.len() / len, c, h, w),
            eps_x0: act(&e0b, s.e0.len() / len, c, h, w),
            eps_dir: act(&edb, s.ed.len() / len, c, h, w),
            out: act(&ob, s.n, c, h, w),
            a_i: s.a.0,
            a_j: s.a.1,
            c_dir: s.c_dir,
            c_noise: s.c_noise,
            seed: s.seed,
            stream: s.stream,
        })
        .unwrap();
        read(be, &ob, s.n * len)
    }

    fn max_abs(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// The DDIM step on `g` against the CPU for `n` samples of `shape` (x and eps_x0
    /// given per sample or broadcast, eps_dir broadcast), without and with noise.
    fn check_ddim<D: Device>(g: &GpuBackend<D>, n: usize, shape: (usize, usize, usize)) {
        let cp = cpu_for(g);
        let len = shape.0 * shape.1 * shape.2;
        let (x, e0, ed) = (rand_vec(1, n * len), rand_vec(2, n * len), rand_vec(3, len));
        for c_noise in [0.0f32, 0.37] {
            for (xs, e0s) in [(&x[..], &e0[..]), (&x[..len], &e0[..])] {
                let s = StepCase {
                    x: xs,
                    e0: e0s,
                    ed: &ed,
                    n,
                    shape,
                    a: (0.31, 0.58),
                    c_dir: 0.42,
                    c_noise,
                    seed: 0x1_0000_04d2,
                    stream: 9,
                };
                let (got, want) = (step(g, &s), step(&cp, &s));
                // Same f32 operations in the same order: bit-exact in the emulation;
                // on a GPU the f64 Box-Muller may differ by an ulp of the noise, which
                // can move the output by one ulp of its own.
                let d = max_abs(&got, &want);
                let r = rel_l2(&got, &want);
                eprintln!("ddim_step {} {shape:?} c_noise {c_noise}: max abs {d:e}, rel l2 {r:e}", g.device().kind());
                if is_cuda(g) && c_noise != 0.0 {
                    let bad = got.iter().zip(&want).position(|(&a, &b)| (a - b).abs() > 2e-7 && ulps(a, b) > 1);
                    assert!(bad.is_none(), "c_noise {c_noise}: value {bad:?} differs by more than 2e-7 and 1 ulp");
                } else {
                    assert!(d <= 2e-7, "c_noise {c_noise}: max abs diff {d:e}");
                }
                assert!(r < 1e-6);
            }
        }
    }

    #[test]
    fn ddim_step_matches_cpu() {
        // Odd sample length: a lone last element.
        check_ddim(&emu(Precision::F32), 3, (3, 5, 7));
    }

    /// x = eps = 0, c_dir = 0, c_noise = 1: the output is the noise term alone, which
    /// must be `crate::rng`'s for every sample.
    fn check_noise<D: Device>(g: &GpuBackend<D>, n: usize, shape: (usize, usize, usize)) {
        let len = shape.0 * shape.1 * shape.2;
        let zero = vec![0f32; len];
        for (seed, stream) in [(42u64, 0u32), (0xdead_beef_0bad_cafe, 77)] {
            let s = StepCase {
                x: &zero,
                e0: &zero,
                ed: &zero,
                n,
                shape,
                a: (0.5, 0.7),
                c_dir: 0.0,
                c_noise: 1.0,
                seed,
                stream,
            };
            let got = step(g, &s);
            for b in 0..n {
                let mut z = vec![0f32; len];
                fill_gaussian(seed, stream, 0, &mut z);
                let d = max_abs(&got[b * len..(b + 1) * len], &z);
                eprintln!("noise {shape:?} seed {seed:#x} stream {stream} sample {b}: max abs {d:e}");
                assert!(d <= 1e-6, "sample {b}: max abs diff {d:e}");
                assert_noise_eq(g, &got[b * len..(b + 1) * len], &z, &format!("noise sample {b}"));
            }
        }
    }

    #[test]
    fn ddim_noise_is_rng_rs() {
        check_noise(&emu(Precision::F32), 2, (3, 33, 31));
    }

    #[allow(clippy::too_many_arguments)]
    fn calib<B: Backend>(
        be: &B,
        x: &[f32],
        e: &[f32],
        m: &[f32],
        n: usize,
        s: (usize, usize, usize),
        a: f32,
        omega: f32,
    ) -> Vec<f32> {
        let len = s.0 * s.1 * s.2;
        let (xb, eb, mb) = (place(be, x), place(be, e), place(be, m));
        let ob = poisoned(be, n * len);
        let t = |b, k| act(b, k, s.0, s.1, s.2);
        let (xa, ea, ma) = (t(&xb, x.len() / len), t(&eb, e.len() / len), t(&mb, m.len() / len));
        be.calibrate(xa, ea, ma, a, omega, t(&ob, n)).unwrap();
        read(be, &ob, n * len)
    }

    /// Calibration on `g` against the CPU for `n` samples of `s`, at several (a, omega),
    /// with every input per sample and with x broadcast.
    fn check_calibrate<D: Device>(g: &GpuBackend<D>, n: usize, s: (usize, usize, usize)) {
        let cp = cpu_for(g);
        let len = s.0 * s.1 * s.2;
        let x = rand_vec(4, n * len);
        let e = rand_vec(5, n * len);
        let m: Vec<f32> = rand_vec(6, n * len).iter().map(|v| v * 1.7 + 0.2).collect();
        for (a, omega) in [(0.43f32, 0.8f32), (0.9, -0.5), (0.05, 0.0)] {
            let (got, want) = (calib(g, &x, &e, &m, n, s, a, omega), calib(&cp, &x, &e, &m, n, s, a, omega));
            let r = rel_l2(&got, &want);
            eprintln!("calibrate {} {s:?} a {a} omega {omega}: rel l2 {r:e}", g.device().kind());
            assert!(r < 1e-6, "a {a} omega {omega}: rel l2 {r:e}");
        }
        // Broadcast inputs (one launch per sample).
        let (got, want) =
            (calib(g, &x[..len], &e, &m, n, s, 0.43, 0.8), calib(&cp, &x[..len], &e, &m, n, s, 0.43, 0.8));
        assert!(rel_l2(&got, &want) < 1e-6);
    }

    fn calibrate_checks<D: Device>(g: &GpuBackend<D>) {
        let (n, s) = (2, (3, 6, 5));
        let len = 90;
        check_calibrate(g, n, s);
        // A larger sample.
        let cp = cpu_for(g);
        let big = (4, 32, 32);
        let (xb, eb, mb) = (rand_vec(7, 2 * 4096), rand_vec(8, 2 * 4096), rand_vec(9, 2 * 4096));
        let (got, want) = (calib(g, &xb, &eb, &mb, 2, big, 0.6, 0.3), calib(&cp, &xb, &eb, &mb, 2, big, 0.6, 0.3));
        assert!(rel_l2(&got, &want) < 1e-6);
        // eps_mod == eps: out == x. Constant P' (zero spread): finite output.
        let (x, e) = (rand_vec(4, n * len), rand_vec(5, n * len));
        let got = calib(g, &x, &e, &e, n, s, 0.43, 0.8);
        assert!(rel_l2(&got, &x) < 1e-6);
        let cx = vec![0.25f32; len];
        calib(g, &cx, &e[..len], &vec![0f32; len], 1, s, 0.43, 0.8);
        // Bad alpha_bar.
        let (xb, ob) = (place(g, &x), poisoned(g, n * len));
        let t = |b, k| act(b, k, 3, 6, 5);
        assert!(g.calibrate(t(&xb, n), t(&xb, n), t(&xb, n), 0.0, 0.8, t(&ob, n)).is_err());
        assert!(g.calibrate(t(&xb, n), t(&xb, n), t(&xb, n), 0.4, 0.8, t(&xb, 1)).is_err(), "overlap");
    }

    #[test]
    fn calibrate_matches_cpu() {
        calibrate_checks(&emu(Precision::F32));
    }

    /// On a real GPU (skipped without one): the emulated checks (the Box-Muller noise
    /// within one f32 ulp of `crate::rng` instead of bit-exact), then DDPM-256's
    /// latent (3x256x256) at batch 2: the DDIM step with and without noise, its noise
    /// alone, and calibration; plus the step at h's size (512x8x8, an even length).
    #[test]
    fn cuda_step() {
        let Some(g) = cuda(Precision::F32) else { return };
        philox_checks(&g);
        check_ddim(&g, 3, (3, 5, 7));
        check_noise(&g, 2, (3, 33, 31));
        calibrate_checks(&g);
        check_ddim(&g, 2, (3, 256, 256));
        check_ddim(&g, 2, (512, 8, 8));
        check_noise(&g, 2, (3, 256, 256));
        check_calibrate(&g, 2, (3, 256, 256));
    }
}
