//! `out = W @ silu?(x) + b` for the time-embedding MLP and projections: tiny matrices
//! times a handful of vectors, so plain dot products beat packing for a GEMM.

use anyhow::{ensure, Result};

use super::elementwise::silu;
use super::threads::{par_for, workers_for};
use super::{check_disjoint, check_input, check_region, check_vector, sample, sample_mut, CpuBackend, CpuWeight, A};
use crate::backend::WeightKind;

/// Dot product with 16 independent f32 lanes (vectorises; shorter add chains).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 16];
    let (ca, cb) = (a.chunks_exact(16), b.chunks_exact(16));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for l in 0..16 {
            acc[l] += x[l] * y[l];
        }
    }
    acc.iter().sum::<f32>() + tail
}

pub(super) fn linear(be: &CpuBackend, x: A, w: &CpuWeight, b: &CpuWeight, silu_input: bool, out: A) -> Result<()> {
    ensure!(w.kind == WeightKind::Linear, "linear: weight uploaded as {:?}", w.kind);
    let (o, i) = (w.shape[0], w.shape[1]);
    check_region(&out, "linear out")?;
    ensure!((out.c, out.h, out.w) == (o, 1, 1), "linear: out ({}, {}, {}) for W {o}x{i}", out.c, out.h, out.w);
    check_input(&x, i, 1, 1, out.n, "linear x")?;
    check_vector(b, o, "linear bias")?;
    check_disjoint(&out, &[Some(&x)], "linear")?;
    let workers = workers_for(be.threads, 2 * o * i * out.n);
    par_for(workers, out.n, |s| {
        // SAFETY: regions validated; one sample per item.
        let (xs, os) = unsafe { (sample(&x, s), sample_mut(&out, s)) };
        let xin: Vec<f32> = if silu_input { xs.iter().map(|&v| silu(v)).collect() } else { xs.to_vec() };
        for (r, ov) in os.iter_mut().enumerate() {
            *ov = dot(&w.data[r * i..(r + 1) * i], &xin) + b.data[r];
        }
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::testutil::*;
    use super::*;
    use crate::backend::Backend;

    #[test]
    fn linear_matches_naive() {
        let be = CpuBackend::new(1);
        for &(n, nx, i, o, s) in
            &[(1usize, 1usize, 128usize, 512usize, false), (3, 3, 37, 5, true), (2, 1, 512, 33, true)]
        {
            let xd = rand_vec(1, nx * i);
            let wd = rand_vec(2, o * i);
            let bd = rand_vec(3, o);
            let xb = place(&be, &xd);
            let ob = poisoned(&be, n * o);
            let w = weight(&be, &[o, i], wd.clone(), WeightKind::Linear);
            let b = weight(&be, &[o], bd.clone(), WeightKind::Vector);
            be.linear(act(&xb, nx, i, 1, 1), &w, &b, s, act(&ob, n, o, 1, 1)).unwrap();
            let got = read(&be, &ob, n * o);
            let mut want = vec![0f64; n * o];
            for sm in 0..n {
                for r in 0..o {
                    let mut acc = bd[r] as f64;
                    for c in 0..i {
                        let v = xd[(sm % nx) * i + c] as f64;
                        let v = if s { v / (1.0 + (-v).exp()) } else { v };
                        acc += wd[r * i + c] as f64 * v;
                    }
                    want[sm * o + r] = acc;
                }
            }
            assert_close(&got, &want, "linear");
            assert!(be.linear(act(&xb, nx, i, 1, 1), &w, &b, s, act(&ob, n, o - 1, 1, 1)).is_err());
        }
    }
}
