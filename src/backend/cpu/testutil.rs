//! Test helpers: a deterministic PRNG, regions placed at a non-zero offset with NaN
//! guards around them, and error measures against f64 references.

use super::{CpuBackend, CpuBuf, CpuWeight};
use crate::backend::{Act, Backend, WeightKind};
use crate::tensor::HostTensor;

/// Offset of every test region inside its buffer (exercises `off`).
pub const OFF: usize = 5;
/// NaN floats after every test region (catches stray writes).
const GUARD: usize = 7;

/// Uniform values in [-1, 1) from xorshift64 (seeded, never all zero).
pub fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(0x1234_5678) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A fresh NaN buffer holding `data` at `OFF`.
pub fn place(be: &CpuBackend, data: &[f32]) -> CpuBuf {
    let buf = be.alloc(OFF + data.len() + GUARD).unwrap();
    be.upload(Act::new(&buf, OFF, 1, data.len(), 1, 1), data).unwrap();
    buf
}

/// A fresh all-NaN buffer for an output of `len` floats at `OFF`.
pub fn poisoned(be: &CpuBackend, len: usize) -> CpuBuf {
    be.alloc(OFF + len + GUARD).unwrap()
}

pub fn act(buf: &CpuBuf, n: usize, c: usize, h: usize, w: usize) -> Act<'_, CpuBuf> {
    Act::new(buf, OFF, n, c, h, w)
}

/// Downloads the `len` floats at `OFF`, asserting the guards around them stayed NaN.
pub fn read(be: &CpuBackend, buf: &CpuBuf, len: usize) -> Vec<f32> {
    let all = be.download(Act::new(buf, 0, 1, buf.len(), 1, 1)).unwrap();
    assert!(all[..OFF].iter().chain(&all[OFF + len..]).all(|v| v.is_nan()), "write outside the output region");
    let v = all[OFF..OFF + len].to_vec();
    assert!(v.iter().all(|x| x.is_finite()), "output not fully written (NaN/inf left)");
    v
}

pub fn weight(be: &CpuBackend, shape: &[usize], data: Vec<f32>, kind: WeightKind) -> CpuWeight {
    be.upload_weight(&HostTensor::new(shape.to_vec(), data), kind).unwrap()
}

/// Relative L2 error of `got` against an f64 reference.
pub fn rel_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let num: f64 = got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).powi(2)).sum();
    let den: f64 = want.iter().map(|w| w * w).sum();
    (num / den.max(1e-300)).sqrt()
}

pub fn assert_close(got: &[f32], want: &[f64], what: &str) {
    let e = rel_err(got, want);
    assert!(e < 1e-5, "{what}: rel L2 error {e:e}");
}

/// CPU seconds used by this process so far (all threads; from /proc, 10 ms ticks),
/// so throughput can be read on a machine shared with other jobs.
pub fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are the 12th, 13th.
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<f64> = rest.split_whitespace().skip(11).take(2).filter_map(|v| v.parse().ok()).collect();
    f.iter().sum::<f64>() / 100.0
}

/// Runs `f` `reps` times after one warm-up; returns (wall, cpu) seconds per call.
pub fn time_it(reps: usize, mut f: impl FnMut()) -> (f64, f64) {
    f();
    let (t, c) = (std::time::Instant::now(), cpu_secs());
    for _ in 0..reps {
        f();
    }
    (t.elapsed().as_secs_f64() / reps as f64, (cpu_secs() - c) / reps as f64)
}
