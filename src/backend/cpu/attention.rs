//! Spatial self-attention core on channel-major `qkv`. Per (sample, head, block of
//! queries) it computes the transposed scores `S^T[s, p] = k_s . q_p` (both GEMM
//! operands then read contiguously along tokens), a softmax down each column, and
//! `out[c, p] = sum_s v[c, s] S^T[s, p]`, again as a GEMM.

use anyhow::{ensure, Result};

use super::elementwise::exp;
use super::gemm::{with_kernel, MatRef};
use super::threads::{par_for, workers_for, SyncPtr};
use super::{base, check_disjoint, check_input, check_region, sample_ptr, CpuBackend, A};

/// Queries per work item: a 1024-token score block is 512 KB.
const PB: usize = 128;

pub(super) fn attention(be: &CpuBackend, qkv: A, heads: usize, out: A) -> Result<()> {
    check_region(&out, "attention out")?;
    let c = out.c;
    ensure!(heads >= 1 && c.is_multiple_of(heads), "attention: {c} channels in {heads} heads");
    check_input(&qkv, 3 * c, out.h, out.w, out.n, "attention qkv")?;
    check_disjoint(&out, &[Some(&qkv)], "attention")?;
    if out.is_empty() {
        return Ok(());
    }
    let t = out.h * out.w;
    let d = c / heads;
    let pbs = t.div_ceil(PB);
    let scale = 1.0 / (d as f32).sqrt();
    let o = SyncPtr(base(&out));
    let workers = workers_for(be.threads, 4 * t * t * c * out.n);
    par_for(workers, out.n * heads * pbs, |item| {
        let (b, rest) = (item / (heads * pbs), item % (heads * pbs));
        let (hd, pb) = (rest / pbs, rest % pbs);
        let p0 = pb * PB;
        let np = PB.min(t - p0);
        let mut st = be.pool.take(t * np);
        let (mut apack, mut bpack) = (be.pool.take(0), be.pool.take(0));
        // SAFETY: regions validated; items write disjoint (head, query-block) tiles.
        unsafe {
            let q = sample_ptr(&qkv, b).add(hd * d * t);
            let k = q.add(c * t);
            let v = k.add(c * t);
            let s = st.as_mut_ptr();
            std::slice::from_raw_parts_mut(s, t * np).fill(0.0);
            let kt = MatRef { ptr: k, rs: 1, cs: t as isize };
            let qb = MatRef { ptr: q.add(p0), rs: t as isize, cs: 1 };
            with_kernel!(be.isa.f32_kernel(), |kern| kern.gemm(t, np, d, kt, qb, s, np, &mut apack, &mut bpack));
            softmax_columns(std::slice::from_raw_parts_mut(s, t * np), np, scale);
            let dst = o.get().add((b * c + hd * d) * t + p0);
            for r in 0..d {
                std::slice::from_raw_parts_mut(dst.add(r * t), np).fill(0.0);
            }
            let va = MatRef { ptr: v, rs: t as isize, cs: 1 };
            let sb = MatRef { ptr: s, rs: np as isize, cs: 1 };
            with_kernel!(be.isa.f32_kernel(), |kern| kern.gemm(d, np, t, va, sb, dst, t, &mut apack, &mut bpack));
        }
    });
    Ok(())
}

multiversion! {
    /// In place: each column `p` of the row-major `[rows][np]` block becomes
    /// `softmax_s(scale * st[s][p])`, max-subtracted, sums in f64.
    fn softmax_columns(st: &mut [f32], np: usize, scale: f32) {
        let mut max = vec![f32::NEG_INFINITY; np];
        for row in st.chunks_exact(np) {
            max.iter_mut().zip(row).for_each(|(m, &v)| *m = m.max(v));
        }
        let mut sum = vec![0f64; np];
        for row in st.chunks_exact_mut(np) {
            for ((v, &m), s) in row.iter_mut().zip(&max).zip(sum.iter_mut()) {
                *v = exp((*v - m) * scale);
                *s += *v as f64;
            }
        }
        let inv: Vec<f32> = sum.iter().map(|&s| (1.0 / s) as f32).collect();
        for row in st.chunks_exact_mut(np) {
            row.iter_mut().zip(&inv).for_each(|(v, &i)| *v *= i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::isa::Isa;
    use super::super::testutil::*;
    use super::*;
    use crate::backend::Backend;
    use crate::dtype::Precision;

    /// On every f32 kernel this CPU runs (the twins everywhere).
    fn run(n: usize, nq: usize, c: usize, h: usize, w: usize, heads: usize, threads: usize) {
        for isa in Isa::ALL.into_iter().filter(|i| i.available().is_ok()) {
            run_on(&CpuBackend::with_isa(threads, isa, Precision::F32).unwrap(), n, nq, c, h, w, heads);
        }
    }

    fn run_on(be: &CpuBackend, n: usize, nq: usize, c: usize, h: usize, w: usize, heads: usize) {
        let t = h * w;
        // Scaled up so the softmax is far from uniform.
        let qd: Vec<f32> = rand_vec(7, nq * 3 * c * t).iter().map(|v| v * 3.0).collect();
        let qb = place(be, &qd);
        let ob = poisoned(be, n * c * t);
        be.attention(act(&qb, nq, 3 * c, h, w), heads, act(&ob, n, c, h, w)).unwrap();
        let got = read(be, &ob, n * c * t);
        let d = c / heads;
        let mut want = vec![0f64; n * c * t];
        for b in 0..n {
            let x = |ch: usize, p: usize| qd[((b % nq) * 3 * c + ch) * t + p] as f64;
            for hd in 0..heads {
                for p in 0..t {
                    let logits: Vec<f64> = (0..t)
                        .map(|s| {
                            (0..d).map(|i| x(hd * d + i, p) * x(c + hd * d + i, s)).sum::<f64>() / (d as f64).sqrt()
                        })
                        .collect();
                    let m = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
                    let z: f64 = e.iter().sum();
                    for i in 0..d {
                        let ch = hd * d + i;
                        want[(b * c + ch) * t + p] = (0..t).map(|s| e[s] / z * x(2 * c + ch, s)).sum();
                    }
                }
            }
        }
        assert_close(&got, &want, &format!("attention on {}", be.describe()));
    }

    #[test]
    fn attention_single_head() {
        run(1, 1, 8, 4, 4, 1, 1);
        run(2, 1, 33, 3, 5, 1, 1);
    }

    #[test]
    fn attention_multi_head() {
        run(2, 2, 32, 4, 4, 4, 1); // 16 tokens
        run(1, 1, 64, 8, 8, 2, 2); // 64 tokens
        run(3, 1, 24, 8, 8, 3, 2);
    }

    #[test]
    fn attention_many_tokens() {
        // More tokens than one query block, two workers.
        run(1, 1, 64, 16, 18, 2, 2);
    }
}
