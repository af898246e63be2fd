//! Kernel micro-benchmarks (llm.c's `dev/cuda` discipline): each family file has, next
//! to its reference checks, a `micro` function that times its kernels on their own at
//! the DDPM-256 U-Net's shapes (or small ones, for the emulator), including the
//! variants a launcher chooses between, so a kernel change is measured where it is
//! made. `diffstyle kernels` runs them all; times are device events, medians after
//! warm-up, on random data in NaN-poisoned buffers, each run from a cold L2 (as llm.c's
//! `benchmark_kernel`: a buffer twice the L2 is overwritten before each timed run, so a
//! kernel is not credited with inputs the previous run left in the cache).

use anyhow::{ensure, Result};
use serde::Serialize;

use super::device::Device;
use super::{GpuBackend, GpuBuf};
use crate::backend::{Act, Backend};

/// One timed kernel configuration.
#[derive(Clone, Debug, Serialize)]
pub struct KernelTiming {
    pub family: &'static str,
    /// The shape, as the U-Net uses it.
    pub case: String,
    /// The launcher's choice being timed (`auto` = what the launcher picks).
    pub variant: String,
    pub precision: String,
    pub ms: f64,
    pub runs: usize,
    pub gflop: f64,
    /// The fewest bytes the op must move (inputs once, output once, weights once).
    pub mbytes: f64,
    pub tflops: f64,
    pub gb_s: f64,
}

/// Where the timings go, with the backend's precision and the size class.
pub struct Sink<'a, D: Device> {
    pub be: &'a GpuBackend<D>,
    /// Small shapes (the emulator) instead of the U-Net's.
    pub small: bool,
    pub out: Vec<KernelTiming>,
    /// Twice the device's L2, overwritten before each timed run.
    flush: GpuBuf,
}

impl<'a, D: Device> Sink<'a, D> {
    pub fn new(be: &'a GpuBackend<D>, small: bool) -> Result<Self> {
        let flush = be.alloc(2 * be.device().l2_cache_bytes() / 4)?;
        Ok(Self { be, small, out: vec![], flush })
    }

    /// Evicts the previous run's data from the L2 (outside the timed region).
    fn flush_l2(&self) -> Result<()> {
        self.be.device().fill_u32(self.flush.mem.ptr, 0, self.flush.len)
    }

    /// A poisoned buffer holding `len` random floats (seeded).
    pub fn random(&self, len: usize, seed: u64) -> Result<GpuBuf> {
        let buf = self.be.alloc(len)?;
        let mut v = vec![0f32; len];
        crate::rng::fill_gaussian(seed, 7, 0, &mut v);
        self.be.upload(Act::new(&buf, 0, 1, len, 1, 1), &v)?;
        Ok(buf)
    }

    /// Times `f` (one op): 2 warm-up runs, then at least 5 runs and 0.1 s (0 s on the
    /// emulator), each after an L2 flush; records the median. Checks that `check` (the
    /// op's output) is finite.
    #[allow(clippy::too_many_arguments)]
    pub fn time(
        &mut self,
        family: &'static str,
        case: &str,
        variant: &str,
        gflop: f64,
        bytes: f64,
        check: Act<'_, GpuBuf>,
        f: &mut dyn FnMut() -> Result<()>,
    ) -> Result<()> {
        for _ in 0..2 {
            f()?;
        }
        let (min_runs, min_secs) = if self.small { (2, 0.0) } else { (5, 0.1) };
        let mut times = vec![];
        let start = std::time::Instant::now();
        while times.len() < min_runs || start.elapsed().as_secs_f64() < min_secs {
            self.flush_l2()?;
            times.push(self.be.time_ms(f)?);
        }
        let out = self.be.download(check)?;
        ensure!(out.iter().all(|v| v.is_finite()), "{family} {case} {variant}: output not finite");
        times.sort_by(f64::total_cmp);
        let ms = times[times.len() / 2];
        self.out.push(KernelTiming {
            family,
            case: case.to_string(),
            variant: variant.to_string(),
            precision: self.be.precision().name().to_string(),
            ms,
            runs: times.len(),
            gflop,
            mbytes: bytes / 1e6,
            tflops: gflop / ms / 1e3,
            gb_s: bytes / ms / 1e6,
        });
        Ok(())
    }
}

/// A table of timings as text.
pub fn format(rows: &[KernelTiming]) -> String {
    let mut s = format!(
        "{:<10} {:<34} {:<12} {:<5} {:>9} {:>9} {:>9}\n",
        "family", "case", "variant", "prec", "ms", "TFLOP/s", "GB/s"
    );
    for r in rows {
        s += &format!(
            "{:<10} {:<34} {:<12} {:<5} {:>9.4} {:>9.2} {:>9.1}\n",
            r.family, r.case, r.variant, r.precision, r.ms, r.tflops, r.gb_s
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::super::testutil::emu;
    use crate::dtype::Precision;

    /// Every family's micro-benchmarks run (small shapes) through the emulator, with
    /// finite outputs and consistent numbers.
    #[test]
    fn micro_benchmarks_run_on_the_emulator() {
        for prec in [Precision::F32, Precision::Bf16] {
            let rows = super::super::micro_benchmarks(&emu(prec), true).unwrap();
            let families = [
                "conv",
                "group_norm",
                "attention",
                "copy",
                "linear",
                "timestep_embedding",
                "resample",
                "hspace_mix",
                "ddim_step",
                "calibrate",
            ];
            for fam in families {
                assert!(rows.iter().any(|r| r.family == fam), "{prec:?}: no {fam} rows");
            }
            for r in &rows {
                // Data movement (a copy, up-sampling) counts no flops: 0, never NaN.
                assert!(r.ms > 0.0 && r.runs >= 2 && r.mbytes > 0.0 && r.gflop >= 0.0, "{r:?}");
            }
            if prec == Precision::Bf16 {
                assert!(rows.iter().any(|r| r.variant == "per-element"), "the conv gather variants");
            }
            assert!(rows.iter().any(|r| r.variant == "split"), "the group norm variants");
        }
    }
}
