//! Resample launcher (kernels/resample.cu): `resample_f32`, the ADM res block's nearest
//! 2x up-sampling and 2x2 average pooling, checked against the CPU oracle
//! (`resample` in src/backend/cpu/elementwise.rs).

use anyhow::Result;

use super::device::Device;
use super::elementwise::{grid_stride_x, grid_y};
use super::int;
use super::params::launch::DS_ELEMENTWISE_THREADS;
use super::params::ResampleParams;
use super::{GpuBackend, GpuBuf};
use crate::backend::check::check_resample;
use crate::backend::Act;

/// Launch contract of `resample_f32`: grid (grid_stride_x(len), n), block
/// DS_ELEMENTWISE_THREADS, grid-stride over the output sample.
pub(super) fn resample<D: Device>(
    be: &GpuBackend<D>,
    x: Act<'_, GpuBuf>,
    up: bool,
    out: Act<'_, GpuBuf>,
) -> Result<()> {
    check_resample(&x, up, &out)?;
    if out.is_empty() {
        return Ok(());
    }
    let len = out.sample_len();
    int(x.sample_len(), "resample input size")?;
    let p = ResampleParams {
        x: be.addr(&x, "resample x")?,
        out: be.addr(&out, "resample out")?,
        n: int(out.n, "resample batch")?,
        xn: int(x.n, "resample batch")?,
        c: int(out.c, "resample channels")?,
        h: int(x.h, "resample height")?,
        w: int(x.w, "resample width")?,
        ho: int(out.h, "resample height")?,
        wo: int(out.w, "resample width")?,
        up: up as i32,
    };
    let block = [DS_ELEMENTWISE_THREADS as u32, 1, 1];
    be.launch("resample_f32", [grid_stride_x(len), grid_y(out.n, "resample")?, 1], block, 0, &p)
}

/// Micro-benchmarks: the res block's resampling at the DDPM-256 U-Net's 128-channel
/// resolutions (2x2 average pooling 256x256 -> 128x128, nearest up-sampling 128x128 ->
/// 256x256), batch 1.
pub(super) fn micro<D: Device>(s: &mut super::micro::Sink<'_, D>) -> Result<()> {
    use crate::backend::Backend;
    let div = if s.small { 8 } else { 1 };
    for (case, side, up) in [("avg-pool 128x256x256 -> 128x128", 256, false), ("up2 128x128x128 -> 256x256", 128, true)]
    {
        let (c, side) = (128 / div, side / div);
        let so = if up { 2 * side } else { side / 2 };
        let x = s.random(c * side * side, 1)?;
        let out = s.be.alloc(c * so * so)?;
        let (xa, o) = (Act::new(&x, 0, 1, c, side, side), Act::new(&out, 0, 1, c, so, so));
        // Pooling: 3 adds and a multiply per output; up-sampling moves data only.
        let gflop = if up { 0.0 } else { 4e-9 * (c * so * so) as f64 };
        let bytes = 4.0 * (c * (side * side + so * so)) as f64;
        let be = s.be;
        s.time("resample", case, "auto", gflop, bytes, o, &mut || be.resample(xa, up, o))?;
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

    /// GPU vs CPU: identical results (both are exact or the same f32 sums).
    fn check<D: Device>(gpu: &GpuBackend<D>, n: usize, nx: usize, c: usize, (h, w): (usize, usize), up: bool) {
        let cpu = cpu_for(gpu);
        let (ho, wo) = if up { (2 * h, 2 * w) } else { (h / 2, w / 2) };
        let x = rand_vec(41 + c as u64, nx * c * h * w);
        let mut outs = Vec::new();
        macro_rules! go {
            ($be:expr) => {{
                let be = $be;
                let bx = place(be, &x);
                let bo = poisoned(be, n * c * ho * wo);
                be.resample(act(&bx, nx, c, h, w), up, act(&bo, n, c, ho, wo)).unwrap();
                outs.push(read(be, &bo, n * c * ho * wo));
            }};
        }
        go!(gpu);
        go!(&cpu);
        assert_eq!(outs[0], outs[1], "resample n={n} nx={nx} c={c} {h}x{w} up={up}");
    }

    #[test]
    fn resample_matches_cpu() {
        let be = emu(Precision::F32);
        for up in [true, false] {
            check(&be, 2, 2, 3, (6, 5), up);
            check(&be, 3, 1, 4, (4, 4), up); // broadcast
            check(&be, 1, 1, 2, (1, 1), up);
        }
        check(&be, 1, 1, 8, (64, 64), false); // longer than one grid sweep
        let xb = place(&be, &rand_vec(1, 16));
        let ob = poisoned(&be, 64);
        assert!(be.resample(act(&xb, 1, 1, 4, 4), true, act(&ob, 1, 1, 4, 4)).is_err());
    }

    /// On a real GPU (skipped without one): the ADM-256 res-block shapes.
    #[test]
    fn cuda_adm_shapes() {
        let Some(gpu) = cuda(Precision::F32) else { return };
        check(&gpu, 2, 2, 128, (256, 256), false);
        check(&gpu, 2, 1, 512, (8, 8), true);
    }
}
