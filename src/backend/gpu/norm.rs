//! Group norm launcher (kernels/norm.cu), f64 statistics as in the CPU oracle
//! (src/backend/cpu/norm.rs): `group_norm_f32` with one block per (group, sample) when
//! that fills the GPU, else each group split into chunks over two launches
//! (`group_norm_stats_f32`, `group_norm_apply_f32`) through a small scratch buffer.
//! The same kernels apply the ADM's FiLM conditioning (`group_norm_film`).

use anyhow::{ensure, Result};

use super::device::Device;
use super::params::launch::DS_NORM_MAX_THREADS;
use super::params::GroupNormParams;
use super::{GpuBackend, GpuBuf, GpuWeight, SCRATCH_BYTES};
use crate::backend::{Act, Cat};

use super::int;
use crate::backend::check::{check_film, check_group_norm};

#[allow(clippy::too_many_arguments)]
pub(super) fn group_norm<D: Device>(
    be: &GpuBackend<D>,
    x: Cat<'_, GpuBuf>,
    gamma: &GpuWeight,
    beta: &GpuWeight,
    groups: usize,
    eps: f32,
    film: Option<Act<'_, GpuBuf>>,
    silu: bool,
    out: Act<'_, GpuBuf>,
) -> Result<()> {
    group_norm_with(be, x, gamma, beta, groups, eps, film, silu, out, None)
}

/// `group_norm` with the number of chunks per group forced (`Some`: micro-benchmarks).
#[allow(clippy::too_many_arguments)]
fn group_norm_with<D: Device>(
    be: &GpuBackend<D>,
    x: Cat<'_, GpuBuf>,
    gamma: &GpuWeight,
    beta: &GpuWeight,
    groups: usize,
    eps: f32,
    film: Option<Act<'_, GpuBuf>>,
    silu: bool,
    out: Act<'_, GpuBuf>,
    force_splits: Option<usize>,
) -> Result<()> {
    check_group_norm(&x, gamma, beta, groups, &out)?;
    if let Some(f) = &film {
        check_film(f, &out)?;
    }
    let pf = film.map(|f| be.addr(&f, "group_norm film")).transpose()?.unwrap_or(0);
    let po = be.addr(&out, "group_norm out")?;
    let pa = be.addr(&x.a, "group_norm x")?;
    let pb = x.b.map(|b| be.addr(&b, "group_norm x (second part)")).transpose()?.unwrap_or(0);
    let c = x.channels();
    if out.is_empty() {
        return Ok(());
    }
    let hw = out.h * out.w;
    let cg = c / groups;
    let (nb, cb) = x.b.map_or((1, 0), |b| (b.n, b.c));
    let mut p = GroupNormParams {
        xa: pa,
        xb: pb,
        gamma: be.wptr(gamma),
        beta: be.wptr(beta),
        film: pf,
        out: po,
        n: int(out.n, "group_norm batch")?,
        na: int(x.a.n, "group_norm batch")?,
        nb: int(nb, "group_norm batch")?,
        ca: int(x.a.c, "group_norm channels")?,
        cb: int(cb, "group_norm channels")?,
        hw: int(hw, "group_norm h*w")?,
        groups: int(groups, "group_norm groups")?,
        silu: silu as i32,
        nf: film.map_or(1, |f| f.n) as i32,
        eps,
        partial: 0,
        splits: 1,
        _pad: 0,
    };
    ensure!(out.n <= 65535, "group_norm: batch {} exceeds the grid", out.n);
    let count = cg * hw;
    let mut splits = force_splits.unwrap_or_else(|| splits(count)).clamp(1, 64);
    let partial_bytes = 2 * 8 * groups * out.n * splits;
    if partial_bytes > SCRATCH_BYTES {
        // Batches beyond any pair batch in use: one block per group (correct, slower).
        splits = 1;
    }
    let smem = (8 * cg) as u32;
    // Large chunks get many threads, small ones few (the block reductions cost per warp).
    let threads = |elems: usize| (elems / 8).next_multiple_of(32).clamp(64, DS_NORM_MAX_THREADS) as u32;
    if splits == 1 {
        return be.launch("group_norm_f32", [groups as u32, out.n as u32, 1], [threads(count), 1, 1], smem, &p);
    }
    p.partial = be.scratch(partial_bytes)?;
    p.splits = splits as i32;
    let grid = [(groups * splits) as u32, out.n as u32, 1];
    let t = threads(count / splits);
    be.launch("group_norm_stats_f32", grid, [t, 1, 1], 0, &p)?;
    be.launch("group_norm_apply_f32", grid, [t, 1, 1], smem, &p)
}

/// Elements per chunk of a split group: 32 groups of a 256x256x128 tensor make 256
/// blocks, about two per SM of an H100 / H200.
const CHUNK: usize = 32 * 1024;

/// Chunks per group of `count` elements. It depends on the group alone, never on the
/// batch, so that a sample's statistics are summed in the same order whatever batch it
/// is part of (pairs give the same bits alone and in a batch).
fn splits(count: usize) -> usize {
    (count / CHUNK).clamp(1, 64)
}

/// Micro-benchmarks: the U-Net's norms (256x256 encoder, the 256x256 decoder concat,
/// 16x16), one block per group against split groups.
pub(super) fn micro<D: Device>(s: &mut super::micro::Sink<'_, D>) -> Result<()> {
    use crate::backend::{Backend, WeightKind};
    let div = if s.small { 8 } else { 1 };
    for (case, ca, cb, side) in [
        ("256x256x128 +silu", 128, 0, 256),
        ("256x256x(128+128) +silu", 128, 128, 256),
        ("16x16x512 +silu", 512, 0, 16),
    ] {
        let (ca, cb, side) = (ca / div, cb / div, (side / div).max(4));
        let c = ca + cb;
        let hw = side * side;
        let xa = s.random(ca * hw, 1)?;
        let xb = s.random(cb.max(1) * hw, 2)?;
        let out = s.be.alloc(c * hw)?;
        let v = crate::tensor::HostTensor { shape: vec![c], data: vec![1.0; c] };
        let (g, b) = (s.be.upload_weight(&v, WeightKind::Vector)?, s.be.upload_weight(&v, WeightKind::Vector)?);
        let groups = 32.min(c);
        let x =
            Cat { a: Act::new(&xa, 0, 1, ca, side, side), b: (cb > 0).then(|| Act::new(&xb, 0, 1, cb, side, side)) };
        let o = Act::new(&out, 0, 1, c, side, side);
        let auto = splits(c / groups * hw);
        let bytes = 8.0 * (c * hw) as f64;
        let mut variants = vec![("one-block", Some(1))];
        if auto > 1 || s.small {
            variants.push(("split", Some(auto.max(2))));
        }
        for (name, force) in variants {
            let be = s.be;
            s.time("group_norm", case, name, 8e-9 * (c * hw) as f64, bytes, o, &mut || {
                group_norm_with(be, x, &g, &b, groups, 1e-6, None, true, o, force)
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::device::Device;
    use super::super::testutil::*;
    use super::super::GpuBackend;
    use crate::backend::{Act, Backend, Cat, WeightKind};
    use crate::dtype::Precision;

    /// `data` at `off` in a fresh NaN buffer (testutil's `place` uses the unaligned `OFF`).
    fn put<B: Backend>(be: &B, data: &[f32], off: usize) -> B::Buf {
        let buf = be.alloc(off + data.len() + 3).unwrap();
        be.upload(Act::new(&buf, off, 1, data.len(), 1, 1), data).unwrap();
        buf
    }

    /// The `len` floats at `off`, checking the NaN guards and that all were written.
    fn get<B: Backend>(be: &B, buf: &B::Buf, off: usize, len: usize) -> Vec<f32> {
        let all = be.download(Act::new(buf, 0, 1, off + len + 3, 1, 1)).unwrap();
        assert!(all[..off].iter().chain(&all[off + len..]).all(|v| v.is_nan()), "write outside the output");
        let v = all[off..off + len].to_vec();
        assert!(v.iter().all(|x| x.is_finite()), "output not fully written");
        v
    }

    /// GPU (emulated) vs CPU on the same data: `xa` gets values `mean + std * r`; every
    /// region at offset `OFF` (not 16-byte aligned: the kernel's scalar paths).
    #[allow(clippy::too_many_arguments)]
    fn run(
        n: usize,
        a: (usize, usize),
        b: (usize, usize),
        hw: (usize, usize),
        groups: usize,
        silu: bool,
        mean: f32,
        std: f32,
    ) -> f64 {
        run_at(OFF, n, a, b, hw, groups, silu, mean, std)
    }

    /// As `run`, with the regions at `off` (a multiple of 4: the float4 paths).
    #[allow(clippy::too_many_arguments)]
    fn run_at(
        off: usize,
        n: usize,
        (na, ca): (usize, usize),
        (nb, cb): (usize, usize),
        hw: (usize, usize),
        groups: usize,
        silu: bool,
        mean: f32,
        std: f32,
    ) -> f64 {
        check(&emu(Precision::F32), off, n, (na, ca), (nb, cb), hw, groups, silu, mean, std)
    }

    /// `gpu` vs the CPU oracle.
    #[allow(clippy::too_many_arguments)]
    fn check<D: Device>(
        gpu: &GpuBackend<D>,
        off: usize,
        n: usize,
        (na, ca): (usize, usize),
        (nb, cb): (usize, usize),
        hw: (usize, usize),
        groups: usize,
        silu: bool,
        mean: f32,
        std: f32,
    ) -> f64 {
        let cpu = cpu_for(gpu);
        let (h, w) = hw;
        let c = ca + cb;
        let xa: Vec<f32> = rand_vec(11, na * ca * h * w).iter().map(|v| mean + std * v).collect();
        let xb: Vec<f32> = rand_vec(12, nb * cb * h * w).iter().map(|v| 0.5 * mean + 2.0 * std * v).collect();
        let gd: Vec<f32> = rand_vec(13, c).iter().map(|v| 1.0 + 0.5 * v).collect();
        let bd = rand_vec(14, c);
        let mut outs = Vec::new();
        macro_rules! go {
            ($be:expr) => {{
                let be = $be;
                let (ba, bb) = (put(be, &xa, off), put(be, &xb, off));
                let bo = put(be, &vec![f32::NAN; n * c * h * w], off);
                let g = weight(be, &[c], &gd, WeightKind::Vector, Precision::F32);
                let b = weight(be, &[c], &bd, WeightKind::Vector, Precision::F32);
                let a = Act::new(&ba, off, na, ca, h, w);
                let x = Cat { a, b: (cb > 0).then(|| Act::new(&bb, off, nb, cb, h, w)) };
                be.group_norm(x, &g, &b, groups, 1e-6, silu, Act::new(&bo, off, n, c, h, w)).unwrap();
                outs.push(get(be, &bo, off, n * c * h * w));
            }};
        }
        go!(gpu);
        go!(&cpu);
        let e = rel_l2(&outs[0], &outs[1]);
        assert!(
            e < bound(Precision::F32),
            "group_norm n={n} a=({na},{ca}) b=({nb},{cb}) {h}x{w} g={groups}: rel L2 {e:.3e}"
        );
        e
    }

    #[test]
    fn group_norm_plain_and_silu() {
        run(1, (1, 64), (1, 0), (5, 7), 32, false, 0.0, 1.0);
        run(2, (2, 6), (2, 0), (3, 3), 3, true, 0.3, 1.0);
        run(1, (1, 64), (1, 0), (32, 32), 16, true, 0.0, 2.0); // 4096 per group: 512 threads
        run(1, (1, 8), (1, 0), (1, 1), 8, true, 0.0, 1.0); // one element per group
    }

    #[test]
    fn group_norm_concat_broadcast() {
        // Groups of 3 channels straddle the a|b boundary (5 + 4 channels).
        run(3, (1, 5), (3, 4), (4, 6), 3, true, 0.0, 1.0);
        run(2, (2, 33), (1, 3), (2, 5), 4, false, 0.0, 1.0);
        run(3, (2, 32), (1, 32), (4, 4), 32, true, 1.0, 1.0);
    }

    #[test]
    fn group_norm_large_mean() {
        // The variance must survive a mean 100 times the standard deviation.
        let e = run(2, (1, 16), (2, 16), (16, 16), 4, false, 10.0, 0.1);
        eprintln!("group_norm mean 10 std 0.1: rel L2 {e:.3e}");
        run(1, (1, 32), (1, 0), (8, 8), 1, true, -10.0, 0.1);
    }

    #[test]
    fn group_norm_aligned_vector_path() {
        // 16-byte aligned regions: float4 sweeps (h*w % 4 == 0) and, for h*w odd,
        // float4 statistics with the scalar normalise.
        run_at(8, 2, (1, 64), (2, 64), (8, 8), 32, true, 1.0, 1.0);
        run_at(4, 3, (1, 5), (3, 4), (4, 6), 3, false, 10.0, 0.1);
        run_at(8, 1, (1, 32), (1, 0), (5, 5), 4, true, 0.0, 1.0);
        let e = run_at(0, 1, (1, 32), (1, 32), (32, 32), 8, false, -10.0, 0.1);
        eprintln!("group_norm aligned, mean -10 std 0.1: rel L2 {e:.3e}");
    }

    #[test]
    fn split_counts() {
        assert_eq!(super::splits(4096), 1, "a 16x16 group of 16 channels");
        assert_eq!(super::splits(128 * 65536 / 32), 8, "256x256x128, 32 groups: 256 blocks at batch 1");
        assert_eq!(super::splits(70_000), 2);
        assert_eq!(super::splits(1 << 30), 64, "capped");
    }

    /// Groups split into chunks over two launches (few groups, large ones): chunks that
    /// straddle channels and the a|b boundary, broadcast batches, scalar and float4
    /// paths, a large mean.
    #[test]
    fn group_norm_split_groups() {
        // 3 groups of 3 channels of 160x160: 2 chunks per group, chunk edges mid-channel,
        // the middle group across the a|b boundary.
        run(1, (1, 5), (1, 4), (160, 160), 3, true, 0.0, 1.0);
        run_at(8, 2, (1, 5), (2, 4), (160, 160), 3, false, 10.0, 0.1);
        // 4 groups of 16 channels of 64x64: 2 chunks per group.
        let e = run_at(0, 1, (1, 32), (1, 32), (64, 64), 4, true, 1.0, 2.0);
        eprintln!("group_norm split, aligned: rel L2 {e:.3e}");
        let e = run(1, (1, 64), (1, 0), (96, 96), 4, false, -10.0, 0.1);
        eprintln!("group_norm split, mean -10 std 0.1: rel L2 {e:.3e}");
    }

    /// FiLM (the ADM res block): GPU vs CPU with film batch `nf` broadcast to `n`.
    fn check_film_case<D: Device>(
        gpu: &GpuBackend<D>,
        off: usize,
        n: usize,
        nf: usize,
        c: usize,
        hw: usize,
        groups: usize,
    ) -> f64 {
        let cpu = cpu_for(gpu);
        let x: Vec<f32> = rand_vec(31, n * c * hw * hw).iter().map(|v| 0.5 + 2.0 * v).collect();
        let f = rand_vec(32, nf * 2 * c);
        let gd: Vec<f32> = rand_vec(33, c).iter().map(|v| 1.0 + 0.5 * v).collect();
        let bd = rand_vec(34, c);
        let mut outs = Vec::new();
        macro_rules! go {
            ($be:expr) => {{
                let be = $be;
                let (bx, bf) = (put(be, &x, off), put(be, &f, off));
                let bo = put(be, &vec![f32::NAN; n * c * hw * hw], off);
                let g = weight(be, &[c], &gd, WeightKind::Vector, Precision::F32);
                let b = weight(be, &[c], &bd, WeightKind::Vector, Precision::F32);
                let xa = Act::new(&bx, off, n, c, hw, hw);
                let fa = Act::new(&bf, off, nf, 2 * c, 1, 1);
                be.group_norm_film(xa, &g, &b, groups, 1e-5, fa, true, Act::new(&bo, off, n, c, hw, hw)).unwrap();
                outs.push(get(be, &bo, off, n * c * hw * hw));
            }};
        }
        go!(gpu);
        go!(&cpu);
        let e = rel_l2(&outs[0], &outs[1]);
        assert!(e < bound(Precision::F32), "group_norm_film n={n} nf={nf} c={c} {hw}x{hw}: rel L2 {e:.3e}");
        e
    }

    #[test]
    fn group_norm_film() {
        let be = emu(Precision::F32);
        check_film_case(&be, OFF, 2, 1, 12, 5, 3);
        check_film_case(&be, 0, 2, 2, 64, 8, 32);
        check_film_case(&be, 4, 3, 1, 32, 4, 8);
        // Few large groups (8 channels of 96x96 = 2 chunks each): the split statistics /
        // apply launches.
        assert!(super::splits(8 * 96 * 96) > 1);
        check_film_case(&be, 0, 2, 1, 32, 96, 4);
        // A film of the wrong width is refused.
        let xb = place(&be, &rand_vec(1, 6 * 4));
        let fb = place(&be, &rand_vec(2, 6));
        let ob = poisoned(&be, 6 * 4);
        let g = weight(&be, &[6], &rand_vec(2, 6), WeightKind::Vector, Precision::F32);
        let bad =
            be.group_norm_film(act(&xb, 1, 6, 2, 2), &g, &g, 3, 1e-5, act(&fb, 1, 6, 1, 1), true, act(&ob, 1, 6, 2, 2));
        assert!(bad.is_err());
    }

    #[test]
    fn group_norm_rejects_bad_shapes() {
        let be = emu(Precision::F32);
        let xb = place(&be, &rand_vec(1, 6 * 4));
        let ob = poisoned(&be, 6 * 4);
        let g = weight(&be, &[6], &rand_vec(2, 6), WeightKind::Vector, Precision::F32);
        let x = |c, h, w| Cat::from(act(&xb, 1, c, h, w));
        assert!(be.group_norm(x(6, 2, 2), &g, &g, 4, 1e-6, false, act(&ob, 1, 6, 2, 2)).is_err());
        assert!(be.group_norm(x(6, 2, 2), &g, &g, 3, 1e-6, false, act(&ob, 1, 6, 4, 1)).is_err());
        assert!(be.group_norm(x(6, 2, 2), &g, &g, 3, 1e-6, false, act(&ob, 2, 6, 4, 1)).is_err());
        // Output overlapping the input.
        assert!(be.group_norm(x(6, 2, 2), &g, &g, 3, 1e-6, false, Act::new(&xb, 2, 1, 6, 2, 2)).is_err());
        be.group_norm(x(6, 2, 2), &g, &g, 3, 1e-6, false, act(&ob, 1, 6, 2, 2)).unwrap();
        assert!(read(&be, &ob, 24).iter().all(|v| v.is_finite()));
    }

    /// On a real GPU (skipped without one): the U-Net's group norms at batch 2, 256x256
    /// down to 8x8, decoder concats, a large mean, aligned and unaligned regions.
    #[test]
    fn cuda_unet_shapes() {
        let Some(gpu) = cuda(Precision::F32) else { return };
        for (off, n, a, b, hw, groups, mean, std) in [
            (0, 2, (2, 128), (2, 0), (256, 256), 32, 0.0, 1.0),
            (OFF, 2, (2, 128), (2, 128), (128, 128), 32, 1.0, 2.0),
            (0, 2, (1, 256), (2, 256), (64, 64), 32, 10.0, 0.1),
            (0, 1, (1, 512), (1, 512), (8, 8), 32, 0.0, 1.0),
            // Batch 1 at 256x256: split groups.
            (0, 1, (1, 128), (1, 0), (256, 256), 32, 0.0, 1.0),
            (OFF, 1, (1, 128), (1, 128), (256, 256), 32, 1.0, 2.0),
            (OFF, 2, (2, 33), (2, 31), (17, 9), 8, 0.0, 1.0),
        ] {
            for silu in [false, true] {
                let e = check(&gpu, off, n, a, b, hw, groups, silu, mean, std);
                eprintln!("cuda group_norm n={n} a={a:?} b={b:?} {hw:?} g={groups} silu={silu}: rel L2 {e:.3e}");
            }
        }
    }
}
