//! Launch limits: every launch's block size and shared memory checked against what the
//! build's ptxas reported for the kernel on each architecture of the fatbin (registers
//! per thread, static shared memory) and against the kernel's `__launch_bounds__`, so a
//! launch that a GPU would refuse ("too many resources requested for launch", "invalid
//! argument") fails the same way in the emulated tests, on any machine. The tables come
//! from build.rs (`kernel_limits.rs`); a build without nvcc has empty tables and checks
//! nothing here.

use anyhow::{bail, Result};

/// What ptxas reported for one kernel on one architecture.
#[derive(Clone, Copy, Debug)]
pub struct Usage {
    pub arch: &'static str,
    pub kernel: &'static str,
    pub registers: u32,
    pub static_smem: u32,
}

include!(concat!(env!("OUT_DIR"), "/kernel_limits.rs"));

const MAX_THREADS: u32 = 1024;
const REGISTERS_PER_BLOCK: u32 = 65536;

/// Shared memory a block may have (static + dynamic, after opting in) on `arch`
/// (`sm_XY[a|f]`), per the CUDA programming guide's compute-capability table; `None`
/// for an architecture this table does not know (not checked).
fn max_smem(arch: &str) -> Option<u32> {
    let cc = arch.strip_prefix("sm_")?.trim_end_matches(['a', 'f']);
    Some(match cc {
        "80" | "87" => 163 * 1024,
        "86" | "89" => 99 * 1024,
        "90" | "100" | "103" => 227 * 1024,
        "120" | "121" => 99 * 1024,
        _ => return None,
    })
}

/// Registers a block takes: each warp's allocation is per thread rounded up to a
/// multiple of 8, times 32 lanes.
fn block_registers(per_thread: u32, threads: u32) -> u32 {
    per_thread.div_ceil(8) * 8 * 32 * threads.div_ceil(32)
}

/// Checks one launch of `kernel` against this build's tables.
pub fn check(kernel: &str, block: [u32; 3], smem: u32) -> Result<()> {
    check_with(PTXAS, LAUNCH_BOUNDS, kernel, block, smem)
}

fn check_with(usage: &[Usage], bounds: &[(&str, u32)], kernel: &str, block: [u32; 3], smem: u32) -> Result<()> {
    let threads = block.iter().product::<u32>();
    if let Some(&(_, max)) = bounds.iter().find(|b| b.0 == kernel) {
        if threads > max {
            bail!("{kernel}: a block of {threads} threads exceeds the kernel's __launch_bounds__ ({max})");
        }
    }
    for u in usage.iter().filter(|u| u.kernel == kernel) {
        let Some(max_smem) = max_smem(u.arch) else { continue };
        let arch = u.arch;
        if threads > MAX_THREADS {
            bail!("{kernel} on {arch}: a block of {threads} threads (at most {MAX_THREADS})");
        }
        let regs = block_registers(u.registers, threads);
        if regs > REGISTERS_PER_BLOCK {
            bail!(
                "{kernel} on {arch}: {threads} threads x {} registers = {regs} registers per block, over the \
                 {REGISTERS_PER_BLOCK} a block may have (the GPU would refuse the launch: too many resources)",
                u.registers
            );
        }
        let total = u.static_smem + smem;
        if total > max_smem {
            bail!(
                "{kernel} on {arch}: {} bytes of static + {smem} bytes of dynamic shared memory, over the \
                 {max_smem} a block may have",
                u.static_smem
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const USAGE: [Usage; 2] = [
        Usage { arch: "sm_80", kernel: "k", registers: 65, static_smem: 16 * 1024 },
        Usage { arch: "sm_90a", kernel: "k", registers: 65, static_smem: 16 * 1024 },
    ];

    /// Each limit fails a launch past it and passes one inside it.
    #[test]
    fn launches_past_a_limit_fail() {
        let run = |block: u32, smem: u32| check_with(&USAGE, &[("k", 1024)], "k", [block, 1, 1], smem);
        run(512, 0).unwrap();
        // 65 registers are allocated as 72: 1024 x 72 > 65536, 896 x 72 fits.
        let e = run(1024, 0).unwrap_err().to_string();
        assert!(e.contains("k on sm_80: 1024 threads x 65 registers = 73728"), "{e}");
        run(896, 0).unwrap();
        // 16 KiB static: 147 KiB dynamic fits on both, 200 KiB only on sm_90a.
        run(256, 147 * 1024).unwrap();
        let e = run(256, 200 * 1024).unwrap_err().to_string();
        assert!(e.contains("k on sm_80: 16384 bytes of static + 204800 bytes of dynamic"), "{e}");
        let sm90 = check_with(&USAGE[1..], &[], "k", [256, 1, 1], 200 * 1024);
        sm90.unwrap();
        let e = check_with(&USAGE, &[("k", 256)], "k", [16, 32, 1], 0).unwrap_err().to_string();
        assert!(e.contains("a block of 512 threads exceeds the kernel's __launch_bounds__ (256)"), "{e}");
        // Kernels and architectures the tables do not know are not checked.
        check_with(&USAGE, &[], "other", [4096, 1, 1], u32::MAX).unwrap();
    }

    /// Every kernel of this build's fatbin declares its __launch_bounds__, and the
    /// tables hold the architectures the check is for.
    #[test]
    fn every_kernel_has_launch_bounds() {
        if PTXAS.is_empty() {
            eprintln!("skipped: this build has no ptxas report ({})", env!("DS_KERNELS_STATUS"));
            return;
        }
        let missing: Vec<&str> =
            PTXAS.iter().map(|u| u.kernel).filter(|k| !LAUNCH_BOUNDS.iter().any(|b| b.0 == *k)).collect();
        assert!(missing.is_empty(), "kernels without __launch_bounds__: {missing:?}");
        for u in PTXAS {
            assert!(u.registers > 0 && u.registers <= 255, "{u:?}");
        }
    }
}
