//! Elementwise launchers (kernels/elementwise.cu): broadcast copy, timestep embedding,
//! linear. Also the shape checks shared by this family, hspace.rs and step.rs (the
//! CPU backend's rules: validated regions, batch broadcast, output disjoint from the
//! inputs), so that a bad call is an error and never an out-of-bounds launch.

use anyhow::{ensure, Result};

use super::device::Device;
use super::params::launch::{DS_ELEMENTWISE_THREADS, DS_GRID_STRIDE_MAX_BLOCKS, DS_TEMB_THREADS};
use super::params::{CopyParams, LinearParams, TembParams, MAX_T};
use super::{GpuBackend, GpuBuf, GpuWeight};
use crate::backend::{Act, WeightKind};

pub(super) use super::int;
pub(super) use crate::backend::check::{check_disjoint, check_input, check_region, check_timestep_embedding};

type A<'a> = Act<'a, GpuBuf>;

/// Samples go on grid.y (at most 65535).
pub(super) fn grid_y(n: usize, what: &str) -> Result<u32> {
    ensure!(n <= 65535, "{what}: batch {n} exceeds 65535");
    Ok(n as u32)
}

/// Grid x of the grid-stride kernels (`copy_f32`, `resample_f32`): one element per
/// thread up to DS_GRID_STRIDE_MAX_BLOCKS blocks of DS_ELEMENTWISE_THREADS.
pub(super) fn grid_stride_x(len: usize) -> u32 {
    len.div_ceil(DS_ELEMENTWISE_THREADS).min(DS_GRID_STRIDE_MAX_BLOCKS) as u32
}

/// Launch contract of `copy_f32`: grid (grid_stride_x(len), n), block
/// DS_ELEMENTWISE_THREADS, grid-stride over the sample.
pub(super) fn copy<D: Device>(be: &GpuBackend<D>, src: A, dst: A) -> Result<()> {
    check_region(&dst, "copy dst")?;
    check_input(&src, dst.c, dst.h, dst.w, dst.n, "copy src")?;
    check_disjoint(&dst, &[Some(&src)], "copy")?;
    if dst.is_empty() {
        return Ok(());
    }
    let len = dst.sample_len();
    let p = CopyParams {
        src: be.addr(&src, "copy src")?,
        dst: be.addr(&dst, "copy dst")?,
        n: int(dst.n, "copy n")?,
        len: int(len, "copy len")?,
        src_n: int(src.n, "copy src n")?,
        _pad: 0,
    };
    let block = [DS_ELEMENTWISE_THREADS as u32, 1, 1];
    be.launch("copy_f32", [grid_stride_x(len), grid_y(dst.n, "copy")?, 1], block, 0, &p)
}

/// Launch contract of `timestep_embedding_f32`: grid (n <= MAX_T), block
/// DS_TEMB_THREADS; larger
/// batches go in chunks of MAX_T samples.
pub(super) fn timestep_embedding<D: Device>(
    be: &GpuBackend<D>,
    t: &[f32],
    flip: bool,
    shift: f32,
    out: A,
) -> Result<()> {
    check_timestep_embedding(t, &out)?;
    let dim = int(out.c, "timestep_embedding dim")?;
    for (k, ts) in t.chunks(MAX_T).enumerate() {
        let o = out.samples(k * MAX_T, ts.len());
        let mut p = TembParams {
            out: be.addr(&o, "timestep_embedding out")?,
            n: ts.len() as i32,
            dim,
            flip: flip as i32,
            shift,
            t: [0.0; MAX_T],
        };
        p.t[..ts.len()].copy_from_slice(ts);
        be.launch("timestep_embedding_f32", [ts.len() as u32, 1, 1], [DS_TEMB_THREADS as u32, 1, 1], 0, &p)?;
    }
    Ok(())
}

/// Launch contract of `linear_f32`: grid (ceil(out_f / warps per block), n), block
/// DS_ELEMENTWISE_THREADS: one warp per output row.
pub(super) fn linear<D: Device>(
    be: &GpuBackend<D>,
    x: A,
    w: &GpuWeight,
    b: &GpuWeight,
    silu_input: bool,
    out: A,
) -> Result<()> {
    ensure!(
        w.kind == WeightKind::Linear && w.shape.len() == 2,
        "linear: weight uploaded as {:?} {:?}",
        w.kind,
        w.shape
    );
    let (o, i) = (w.shape[0], w.shape[1]);
    check_region(&out, "linear out")?;
    ensure!((out.c, out.h, out.w) == (o, 1, 1), "linear: out ({}, {}, {}) for W {o}x{i}", out.c, out.h, out.w);
    check_input(&x, i, 1, 1, out.n, "linear x")?;
    ensure!(b.kind == WeightKind::Vector, "linear bias: expected a vector weight, got {:?}", b.kind);
    ensure!(b.numel() == o, "linear bias: {} elements, expected {o}", b.numel());
    check_disjoint(&out, &[Some(&x)], "linear")?;
    if out.is_empty() {
        return Ok(());
    }
    let p = LinearParams {
        x: be.addr(&x, "linear x")?,
        w: be.wptr(w),
        bias: be.wptr(b),
        out: be.addr(&out, "linear out")?,
        n: int(out.n, "linear n")?,
        xn: int(x.n, "linear x n")?,
        in_f: int(i, "linear in")?,
        out_f: int(o, "linear out")?,
        silu: silu_input as i32,
        _pad: 0,
    };
    let rows = DS_ELEMENTWISE_THREADS / 32;
    let grid = [o.div_ceil(rows) as u32, grid_y(out.n, "linear")?, 1];
    be.launch("linear_f32", grid, [DS_ELEMENTWISE_THREADS as u32, 1, 1], 0, &p)
}

/// Micro-benchmarks: the DDPM-256 U-Net's small ops at batch 1. The broadcast copy of
/// a latent and of an h-space tensor into a batch of 2 (the decoders' inputs), the
/// timestep embedding (dim 128), and the linears of the time path: the embedding MLP
/// (128 -> 512, 512 -> 512 on SiLU) and a res block's projection (512 -> 256 on SiLU).
pub(super) fn micro<D: Device>(s: &mut super::micro::Sink<'_, D>) -> Result<()> {
    use crate::backend::Backend;
    use crate::tensor::HostTensor;
    let div = if s.small { 8 } else { 1 };
    for (case, c, side) in [("3x256x256 latent -> batch 2", 3usize, 256), ("512x8x8 h -> batch 2", 512, 8)] {
        let (c, side) = (c.div_ceil(div), (side / div).max(4));
        let src = s.random(c * side * side, 1)?;
        let dst = s.be.alloc(2 * c * side * side)?;
        let (a, o) = (Act::new(&src, 0, 1, c, side, side), Act::new(&dst, 0, 2, c, side, side));
        let bytes = 4.0 * (3 * c * side * side) as f64;
        let be = s.be;
        s.time("copy", case, "auto", 0.0, bytes, o, &mut || be.copy(a, o))?;
    }
    for (case, n) in [("dim 128, 1 step", 1), ("dim 128, 64 steps", MAX_T)] {
        let dim = 128 / div;
        let t: Vec<f32> = (0..n).map(|i| (999 - 15 * i) as f32).collect();
        let out = s.be.alloc(n * dim)?;
        let o = Act::new(&out, 0, n, dim, 1, 1);
        // One operation per output value: the transcendentals dominate, uncounted.
        let (gflop, bytes) = (1e-9 * (n * dim) as f64, 4.0 * (n * dim) as f64);
        let be = s.be;
        s.time("timestep_embedding", case, "auto", gflop, bytes, o, &mut || be.timestep_embedding(&t, true, 0.0, o))?;
    }
    for (case, i, o, silu) in [
        ("temb MLP 128->512", 128, 512, false),
        ("temb MLP 512->512 +silu", 512, 512, true),
        ("res temb 512->256 +silu", 512, 256, true),
    ] {
        let (i, o) = (i / div, o / div);
        let x = s.random(i, 1)?;
        let out = s.be.alloc(o)?;
        let w = HostTensor {
            shape: vec![o, i],
            data: (0..o * i).map(|k| ((k * 7919) % 1000) as f32 * 1e-3 - 0.5).collect(),
        };
        let w = s.be.upload_weight(&w, WeightKind::Linear)?;
        let b = s.be.upload_weight(&HostTensor { shape: vec![o], data: vec![0.1; o] }, WeightKind::Vector)?;
        let (xa, oa) = (Act::new(&x, 0, 1, i, 1, 1), Act::new(&out, 0, 1, o, 1, 1));
        let (gflop, bytes) = (2e-9 * (o * i) as f64, 4.0 * (o * i + i + 2 * o) as f64);
        let be = s.be;
        s.time("linear", case, "auto", gflop, bytes, oa, &mut || be.linear(xa, &w, &b, silu, oa))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::device::Device;
    use super::super::testutil::*;
    use super::super::GpuBackend;
    use crate::backend::{Backend, WeightKind};
    use crate::dtype::Precision;

    /// Broadcast copies of `(c, h, w)` samples, `n` out of `sn`, on `g` and the CPU:
    /// bit-exact.
    fn check_copy<D: Device>(g: &GpuBackend<D>, (c, h, w): (usize, usize, usize), cases: &[(usize, usize)]) {
        let cp = cpu_for(g);
        let len = c * h * w;
        let src = rand_vec(3, 3 * len);
        for &(n, sn) in cases {
            let sd = &src[..sn * len];
            let want = {
                let (sb, ob) = (place(&cp, sd), poisoned(&cp, n * len));
                cp.copy(act(&sb, sn, c, h, w), act(&ob, n, c, h, w)).unwrap();
                read(&cp, &ob, n * len)
            };
            let (sb, ob) = (place(g, sd), poisoned(g, n * len));
            g.copy(act(&sb, sn, c, h, w), act(&ob, n, c, h, w)).unwrap();
            assert_eq!(read(g, &ob, n * len), want, "copy n {n} from {sn} of ({c}, {h}, {w})");
        }
    }

    /// The emulated checks: broadcast, a sample longer than the grid, bad shapes.
    fn copy_checks<D: Device>(g: &GpuBackend<D>) {
        check_copy(g, (3, 4, 5), &[(5, 2), (3, 3), (4, 1)]);
        // A sample longer than the grid (grid-stride loop).
        let big = rand_vec(4, 300_000);
        let (sb, ob) = (place(g, &big), poisoned(g, 2 * 300_000));
        g.copy(act(&sb, 1, 3, 100, 1000), act(&ob, 2, 3, 100, 1000)).unwrap();
        let got = read(g, &ob, 600_000);
        assert!(got[..300_000] == big[..] && got[300_000..] == big[..]);
        let src = rand_vec(3, 120);
        let (sb, ob) = (place(g, &src), poisoned(g, 5 * 60));
        assert!(g.copy(act(&sb, 2, 3, 4, 5), act(&ob, 1, 3, 4, 5)).is_err());
        assert!(g.copy(act(&sb, 1, 3, 4, 5), act(&ob, 2, 3, 5, 4)).is_err());
        assert!(g.copy(act(&sb, 1, 3, 4, 5), act(&sb, 1, 3, 4, 5)).is_err(), "overlap");
    }

    #[test]
    fn copy_broadcasts() {
        copy_checks(&emu(Precision::F32));
    }

    fn max_abs(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    fn temb<B: Backend>(be: &B, t: &[f32], dim: usize, flip: bool, shift: f32) -> Vec<f32> {
        let ob = poisoned(be, t.len() * dim);
        be.timestep_embedding(t, flip, shift, act(&ob, t.len(), dim, 1, 1)).unwrap();
        read(be, &ob, t.len() * dim)
    }

    /// The embedding of timesteps `t` at each `(dim, flip, shift)` on `g` against the CPU.
    fn check_temb<D: Device>(g: &GpuBackend<D>, t: &[f32], cases: &[(usize, bool, f32)]) {
        let c = cpu_for(g);
        for &(dim, flip, shift) in cases {
            let (got, want) = (temb(g, t, dim, flip, shift), temb(&c, t, dim, flip, shift));
            let e = rel_l2(&got, &want);
            eprintln!("timestep_embedding n {} dim {dim}: rel l2 {e:e}, max abs {:e}", t.len(), max_abs(&got, &want));
            assert!(e < 1e-6, "dim {dim} flip {flip} shift {shift}: rel l2 {e:e}");
        }
    }

    fn temb_checks<D: Device>(g: &GpuBackend<D>) {
        let t = [0.0f32, 1.0, 37.0, 999.0, 500.5];
        check_temb(g, &t, &[(128, true, 0.0), (33, false, 1.0), (8, false, 0.5), (320, true, 1.0)]);
        // More timesteps than one launch holds.
        let many: Vec<f32> = (0..150).map(|i| (i * 7) as f32).collect();
        check_temb(g, &many, &[(32, false, 1.0)]);
        let ob = poisoned(g, 8);
        assert!(g.timestep_embedding(&t[..3], false, 0.0, act(&ob, 4, 2, 1, 1)).is_err());
    }

    #[test]
    fn timestep_embedding_matches_cpu() {
        temb_checks(&emu(Precision::F32));
    }

    fn lin<B: Backend>(
        be: &B,
        xd: &[f32],
        wd: &[f32],
        bd: &[f32],
        dims: (usize, usize, usize, usize),
        s: bool,
    ) -> Vec<f32> {
        let (n, nx, i, o) = dims;
        let xb = place(be, xd);
        let ob = poisoned(be, n * o);
        let w = weight(be, &[o, i], wd, WeightKind::Linear, Precision::F32);
        let b = weight(be, &[o], bd, WeightKind::Vector, Precision::F32);
        be.linear(act(&xb, nx, i, 1, 1), &w, &b, s, act(&ob, n, o, 1, 1)).unwrap();
        assert!(be.linear(act(&xb, nx, i, 1, 1), &w, &b, s, act(&ob, n, o - 1, 1, 1)).is_err());
        assert!(be.linear(act(&xb, nx, i, 1, 1), &b, &b, s, act(&ob, n, o, 1, 1)).is_err());
        read(be, &ob, n * o)
    }

    /// `linear` on `g` against the CPU for each `(n, nx, in, out, silu)`: the kernel
    /// reads f32 weights at every precision of the run, so the f32 bound applies.
    fn check_linear<D: Device>(g: &GpuBackend<D>, cases: &[(usize, usize, usize, usize, bool)]) {
        let (prec, c) = (g.precision(), cpu_for(g));
        for &(n, nx, i, o, s) in cases {
            let (xd, wd, bd) = (rand_vec(1, nx * i), rand_vec(2, o * i), rand_vec(3, o));
            let xd: Vec<f32> = xd.iter().map(|v| v * 4.0).collect(); // SiLU's curved range
            let got = lin(g, &xd, &wd, &bd, (n, nx, i, o), s);
            let want = lin(&c, &xd, &wd, &bd, (n, nx, i, o), s);
            let e = rel_l2(&got, &want);
            eprintln!("linear {} {prec:?} {n} {nx} {i} {o} {s}: rel l2 {e:e}", g.device().kind());
            assert!(e < bound(Precision::F32), "linear {n} {nx} {i} {o} {s}: rel l2 {e:e}");
        }
    }

    const LINEAR: &[(usize, usize, usize, usize, bool)] =
        &[(1, 1, 128, 512, false), (3, 3, 37, 5, true), (2, 1, 512, 33, true), (2, 2, 1280, 9, false)];

    #[test]
    fn linear_matches_cpu() {
        for prec in [Precision::F32, Precision::Bf16] {
            check_linear(&emu(prec), LINEAR);
        }
    }

    /// On a real GPU (skipped without one): the emulated checks, then DDPM-256 sizes:
    /// copies of the 3x256x256 latent and the 512x8x8 h, the embedding of a batch of
    /// timesteps at the U-Net's widths, and its time-MLP / per-block projections.
    #[test]
    fn cuda_elementwise() {
        for prec in [Precision::F32, Precision::F16, Precision::Bf16] {
            let Some(g) = cuda(prec) else { return };
            if prec == Precision::F32 {
                copy_checks(&g);
                check_copy(&g, (3, 256, 256), &[(2, 1), (2, 2), (1, 1)]);
                check_copy(&g, (512, 8, 8), &[(2, 1), (2, 2)]);
                temb_checks(&g);
                let t: Vec<f32> = (0..200).map(|i| (i * 5) as f32).collect();
                check_temb(&g, &t, &[(128, true, 0.0), (256, false, 1.0), (512, true, 1.0)]);
            }
            check_linear(&g, LINEAR);
            check_linear(&g, &[(2, 2, 128, 512, false), (2, 2, 512, 512, true), (2, 1, 512, 1024, true)]);
            check_linear(&g, &[(2, 2, 1024, 1024, true), (4, 2, 1024, 2048, true), (2, 2, 2048, 7, false)]);
        }
    }
}
