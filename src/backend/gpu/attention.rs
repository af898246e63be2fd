//! Attention launcher (kernels/attention.cu): one fused flash-style kernel per call
//! (online softmax, no score matrix in memory), checked against the CPU oracle
//! (src/backend/cpu/attention.rs). f32 runs use the SIMT `attention_f32`; f16 / bf16
//! runs the tensor-core `attention_f16` / `attention_bf16`, which round q, k, v and the
//! probabilities to that type (f32 softmax and accumulation).

use std::ffi::{c_int, c_uint};

use anyhow::{ensure, Result};

use super::device::Device;
use super::int;
use super::params::launch::{DS_ATTN_BQ, DS_ATTN_MAX_D, DS_ATTN_SMALL_D, DS_ATTN_THREADS};
use super::params::AttentionParams;
use super::{GpuBackend, GpuBuf};
use crate::backend::check::{check_disjoint, check_input};
use crate::backend::Act;

/// Largest head dimension (the output tile lives in registers).
pub(super) const MAX_HEAD_DIM: usize = DS_ATTN_MAX_D;

extern "C" {
    /// Dynamic shared memory of the attention kernels for head dim `d`: the kernels'
    /// own `attn::smem_floats` / `attn::tc_smem_bytes` (kernels/emu/kernels.cpp), from
    /// the host build of the same source, so the launcher never restates the layout.
    fn ds_attention_smem_bytes(d: c_int, tensor_cores: bool) -> c_uint;
}

fn smem_bytes(d: usize, tensor_cores: bool) -> u32 {
    debug_assert!(d <= MAX_HEAD_DIM);
    // SAFETY: a pure function of its arguments.
    unsafe { ds_attention_smem_bytes(d as c_int, tensor_cores) }
}

/// The kernel, block and dynamic shared memory for head dim `d` at precision `suffix`:
/// head dims up to 128 (multi-head layers) get the variant with fewer output registers
/// (two blocks per SM instead of one).
fn variant(suffix: &str, d: usize) -> (String, [u32; 3], u32) {
    let kernel = format!("attention_{suffix}{}", if d <= DS_ATTN_SMALL_D { "_d128" } else { "" });
    (kernel, [DS_ATTN_THREADS as u32, 1, 1], smem_bytes(d, suffix != "f32"))
}

pub(super) fn attention<D: Device>(
    be: &GpuBackend<D>,
    qkv: Act<'_, GpuBuf>,
    heads: usize,
    out: Act<'_, GpuBuf>,
) -> Result<()> {
    let po = be.addr(&out, "attention out")?;
    let pq = be.addr(&qkv, "attention qkv")?;
    let c = out.c;
    ensure!(heads >= 1 && c.is_multiple_of(heads), "attention: {c} channels in {heads} heads");
    check_input(&qkv, 3 * c, out.h, out.w, out.n, "attention qkv")?;
    check_disjoint(&out, &[Some(&qkv)], "attention")?;
    if out.is_empty() {
        return Ok(());
    }
    let d = c / heads;
    ensure!(d <= MAX_HEAD_DIM, "attention: head dim {d} > {MAX_HEAD_DIM} is not supported by the GPU kernel");
    let t = out.h * out.w;
    ensure!(heads <= 65535 && out.n <= 65535, "attention: {heads} heads x batch {} exceeds the grid", out.n);
    let mut p = AttentionParams {
        qkv: pq,
        out: po,
        n: int(out.n, "attention batch")?,
        c: int(c, "attention channels")?,
        heads: heads as i32,
        p: int(t, "attention tokens")?,
        scale: 1.0 / (d as f32).sqrt(),
        _pad: 0,
    };
    int(3 * c * t, "attention sample size")?;
    let grid = |n: usize| [t.div_ceil(DS_ATTN_BQ) as u32, heads as u32, n as u32];
    let (kernel, block, smem) = variant(be.suffix(), d);
    let kernel = kernel.as_str();
    if qkv.n == out.n {
        return be.launch(kernel, grid(out.n), block, smem, &p);
    }
    // Broadcast batch: the kernel reads qkv sample b, so launch per output sample.
    p.n = 1;
    for b in 0..out.n {
        p.qkv = pq + 4 * ((b % qkv.n) * qkv.sample_len()) as u64;
        p.out = po + 4 * (b * out.sample_len()) as u64;
        be.launch(kernel, grid(1), block, smem, &p)?;
    }
    Ok(())
}

/// Micro-benchmarks: the DDPM U-Net's attention (16x16 tokens, 512 channels, one head)
/// and a multi-head layer (32x32 tokens, 256 channels, 4 heads of 64: ADM-like).
pub(super) fn micro<D: Device>(s: &mut super::micro::Sink<'_, D>) -> Result<()> {
    use crate::backend::Backend;
    let div = if s.small { 4 } else { 1 };
    for (case, c, side, heads) in [("16x16 512ch 1 head", 512, 16, 1), ("32x32 256ch 4 heads", 256, 32, 4)] {
        let (c, side) = (c / div, side / div);
        let t = side * side;
        let qkv = s.random(3 * c * t, 1)?;
        let out = s.be.alloc(c * t)?;
        let q = Act::new(&qkv, 0, 1, 3 * c, side, side);
        let o = Act::new(&out, 0, 1, c, side, side);
        let gflop = 4e-9 * (t * t * c) as f64;
        let bytes = 4.0 * (4 * c * t) as f64;
        let be = s.be;
        s.time("attention", case, "auto", gflop, bytes, o, &mut || be.attention(q, heads, o))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Every head dim the launcher takes fits every architecture of the fatbin (shared
    /// memory grows with it; the tests' shapes reach only a few).
    #[test]
    fn every_head_dim_fits_the_launch_limits() {
        for suffix in ["f32", "f16", "bf16"] {
            for d in 1..=super::MAX_HEAD_DIM {
                let (kernel, block, smem) = super::variant(suffix, d);
                super::super::limits::check(&kernel, block, smem).unwrap();
            }
        }
    }

    use super::super::device::Device;
    use super::super::testutil::*;
    use super::super::GpuBackend;
    use crate::backend::{Act, Backend};
    use crate::dtype::Precision;

    /// GPU (emulated) vs CPU on `(n, 3c, h, w)` random qkv (scaled up so the softmax is
    /// far from uniform) with a batch of `nq` broadcast to `n`.
    fn run(n: usize, nq: usize, c: usize, (h, w): (usize, usize), heads: usize, amp: f32) -> f64 {
        run_at(Precision::F32, n, nq, c, (h, w), heads, amp)
    }

    fn run_at(pr: Precision, n: usize, nq: usize, c: usize, hw: (usize, usize), heads: usize, amp: f32) -> f64 {
        check(&emu(pr), n, nq, c, hw, heads, amp)
    }

    /// `gpu` vs the CPU oracle, against the bound of `gpu`'s precision.
    fn check<D: Device>(
        gpu: &GpuBackend<D>,
        n: usize,
        nq: usize,
        c: usize,
        (h, w): (usize, usize),
        heads: usize,
        amp: f32,
    ) -> f64 {
        let (pr, cpu) = (gpu.precision(), cpu_for(gpu));
        let t = h * w;
        let qd: Vec<f32> = rand_vec(7 + c as u64, nq * 3 * c * t).iter().map(|v| v * amp).collect();
        let mut outs = Vec::new();
        macro_rules! go {
            ($be:expr) => {{
                let be = $be;
                let bq = place(be, &qd);
                let bo = poisoned(be, n * c * t);
                be.attention(act(&bq, nq, 3 * c, h, w), heads, act(&bo, n, c, h, w)).unwrap();
                outs.push(read(be, &bo, n * c * t));
            }};
        }
        go!(gpu);
        go!(&cpu);
        let e = rel_l2(&outs[0], &outs[1]);
        assert!(e < bound(pr), "attention {pr:?} n={n} nq={nq} c={c} {h}x{w} heads={heads}: rel L2 {e:.3e}");
        e
    }

    #[test]
    fn attention_single_head() {
        run(1, 1, 8, (4, 4), 1, 3.0);
        run(2, 2, 33, (3, 5), 1, 3.0); // head dim not a multiple of the chunk
        run(1, 1, 48, (7, 7), 1, 3.0); // 49 tokens
        run(2, 1, 160, (3, 3), 1, 3.0); // the general kernel (head dim > 128), ragged chunk
    }

    #[test]
    fn attention_multi_head_and_broadcast() {
        run(2, 2, 32, (4, 4), 4, 3.0);
        run(3, 1, 24, (8, 8), 3, 3.0); // broadcast qkv batch
        run(2, 1, 16, (3, 4), 2, 3.0); // 12 tokens
        run(1, 1, 64, (16, 18), 2, 3.0); // several query blocks and key tiles, ragged end
    }

    #[test]
    fn attention_unet_shapes() {
        // The U-Net's shapes, batch 1: head dim 512 at 64 tokens, 256 at 256 tokens,
        // d = 64 at 1024 tokens (one head: the emulator is slow).
        for (c, hw, heads) in [(512, (8, 8), 1), (256, (16, 16), 1), (64, (32, 32), 1)] {
            let e = run(1, 1, c, hw, heads, 1.0);
            eprintln!("attention c={c} {}x{} heads={heads}: rel L2 {e:.3e}", hw.0, hw.1);
        }
    }

    #[test]
    fn attention_tensor_cores() {
        // Ragged token counts, head dims below / across the 64-channel chunk, broadcast.
        for pr in [Precision::F16, Precision::Bf16] {
            for (n, nq, c, hw, heads) in
                [(2, 1, 24, (7, 7), 3), (1, 1, 96, (3, 4), 1), (1, 1, 128, (9, 10), 2), (2, 1, 200, (3, 3), 1)]
            {
                let e = run_at(pr, n, nq, c, hw, heads, 3.0);
                eprintln!("attention {pr:?} c={c} {}x{} heads={heads}: rel L2 {e:.3e}", hw.0, hw.1);
            }
        }
    }

    #[test]
    fn attention_tensor_cores_unet_shapes() {
        // Head dim 512 at 64 tokens; d = 64 over several key tiles (1024 tokens would
        // take seconds in the emulator).
        for pr in [Precision::F16, Precision::Bf16] {
            for (c, hw, heads) in [(512, (8, 8), 1), (128, (16, 16), 2)] {
                let e = run_at(pr, 1, 1, c, hw, heads, 1.0);
                eprintln!("attention {pr:?} c={c} {}x{} heads={heads}: rel L2 {e:.3e}", hw.0, hw.1);
            }
        }
    }

    #[test]
    fn shared_memory_sizes() {
        // attn::smem_floats(d) * 4 and attn::tc_smem_bytes(d) of kernels/attention.cu,
        // as the launcher gets them; d = 512 must stay within sm_86 / sm_89's 99 KiB.
        let both = |d| (super::smem_bytes(d, false), super::smem_bytes(d, true));
        assert_eq!(both(33), (41344, 55552));
        assert_eq!(both(512), (98688, 84224));
        assert!(both(512).0.max(both(512).1) <= 99 * 1024);
    }

    #[test]
    fn attention_rejects_bad_shapes() {
        let be = emu(Precision::F32);
        let q = place(&be, &rand_vec(1, 3 * 8 * 4));
        let o = poisoned(&be, 8 * 4);
        assert!(be.attention(act(&q, 1, 24, 2, 2), 3, act(&o, 1, 8, 2, 2)).is_err()); // 8 % 3
        assert!(be.attention(act(&q, 1, 24, 2, 2), 2, act(&o, 1, 8, 4, 1)).is_err()); // shape
        assert!(be.attention(act(&q, 1, 24, 2, 2), 2, Act::new(&q, 0, 1, 8, 2, 2)).is_err()); // overlap
        let big = place(&be, &rand_vec(2, 3 * 520));
        let ob = poisoned(&be, 520);
        assert!(be.attention(act(&big, 1, 3 * 520, 1, 1), 1, act(&ob, 1, 520, 1, 1)).is_err()); // d > 512
        be.attention(act(&q, 1, 24, 2, 2), 2, act(&o, 1, 8, 2, 2)).unwrap();
    }

    /// On a real GPU (skipped without one): the U-Net's attention shapes at batch 2,
    /// in every precision, including the kernels' large shared-memory configurations.
    #[test]
    fn cuda_unet_shapes() {
        for pr in [Precision::F32, Precision::F16, Precision::Bf16] {
            let Some(gpu) = cuda(pr) else { return };
            for (n, nq, c, hw, heads) in [
                (2, 2, 512, (8, 8), 1),
                (2, 1, 256, (16, 16), 1),
                (2, 2, 256, (32, 32), 4),
                (1, 1, 512, (16, 16), 8),
                (2, 2, 96, (7, 9), 1),
            ] {
                let e = check(&gpu, n, nq, c, hw, heads, 1.0);
                eprintln!("cuda attention {pr:?} n={n} c={c} {}x{} heads={heads}: rel L2 {e:.3e}", hw.0, hw.1);
            }
        }
    }
}
