//! The emulator's checks (`emu::EmuChecks`) against the deliberately broken kernels of
//! `kernels/emu/broken.cu`: each check catches its bug, which the plain emulator lets
//! through, and passes the fixed version. (A file of its own: it needs both the
//! emulator and the parameter mirrors, which already use each other's test helpers.)

use anyhow::Result;

use super::device::Device;
use super::emu::{EmuChecks, EmuDevice};
use super::params::{BrokenParams, BROKEN_KERNELS};

/// Runs broken kernel `name` (or its fixed version) on 2 blocks of 64 threads;
/// returns the outputs or the launch's error.
fn run(dev: &EmuDevice, name: &str, fixed: bool) -> Result<Vec<f32>> {
    let threads = 64usize;
    let src: Vec<f32> = (0..threads * 4 + 8).map(|i| 1.0 + i as f32).collect();
    let (s, o) = (dev.alloc(src.len() * 4)?, dev.alloc(2 * threads * 4)?);
    dev.htod(s, bytemuck::cast_slice(&src))?;
    dev.fill_u32(o, u32::MAX, 2 * threads)?;
    let p = BrokenParams { out: o, src: s, fixed: fixed as i32, _pad: 0 };
    let r = dev.launch(name, [2, 1, 1], [threads as u32, 1, 1], (src.len() * 4) as u32, bytemuck::bytes_of(&p));
    let mut out = vec![0f32; 2 * threads];
    dev.dtoh(o, bytemuck::cast_slice_mut(&mut out))?;
    dev.free(s);
    dev.free(o);
    r.map(|_| out)
}

fn with(names: &str, seed: u64) -> EmuDevice {
    EmuDevice::with_checks(EmuChecks { seed, ..EmuChecks::parse(names, None).unwrap() })
}

/// Each check catches its broken kernel, which the plain emulator lets through, and
/// passes the fixed version under every check.
#[test]
fn checks_catch_broken_kernels() {
    let plain = EmuDevice::new();
    let all = with("all", 1);
    let finite = |v: &[f32]| v.iter().all(|x| x.is_finite());
    // Every broken kernel but the deadlock, which fails in any mode (below).
    for name in &BROKEN_KERNELS[..BROKEN_KERNELS.len() - 1] {
        let ok = run(&plain, name, true).unwrap();
        assert!(finite(&ok), "{name}: the fixed kernel");
        assert_eq!(run(&all, name, true).unwrap(), ok, "{name}: the fixed kernel under every check");
        // The plain emulator does not see the bug.
        assert_eq!(run(&plain, name, false).unwrap(), ok, "{name}: passes unchecked");
    }
    // A barrier that can never complete fails the launch, checks or not.
    assert!(run(&plain, "broken_deadlock", true).is_ok());
    let e = format!("{:#}", run(&plain, "broken_deadlock", false).unwrap_err());
    assert!(e.contains("kernel broken_deadlock") && e.contains("deadlock"), "{e}");
    // async: the block reads shared memory its copies have not landed in.
    let out = run(&with("async", 0), "broken_missing_wait", false).unwrap();
    assert!(out.iter().any(|x| x.is_nan()), "a missing cp.async wait shows");
    // sched: some seed runs a reader before its writer.
    let caught = (0..8)
        .any(|seed| run(&with("sched", seed), "broken_missing_barrier", false).unwrap().iter().any(|x| x.is_nan()));
    assert!(caught, "a missing barrier shows under sched");
    for (name, check, needle) in [
        ("broken_missing_barrier", "race", "reads byte 0 of dynamic shared memory while thread (0,0,0)"),
        ("broken_racy_write", "race", "writes byte 4 of dynamic shared memory while thread (0,0,0)"),
        ("broken_unwritten_shared", "init", "which no thread of this block has written"),
        ("broken_out_of_bounds", "mem", "4 bytes past the end of the 512-byte allocation"),
        ("broken_divergent_barrier", "sync", "__syncthreads reached here while thread"),
        ("broken_divergent_shuffle", "sync", "a warp collective reached here while thread"),
        ("broken_misaligned_cp_async", "align", "cp.async of 16 bytes"),
        ("broken_misaligned_ldmatrix", "align", "ldmatrix row address"),
    ] {
        let e = format!("{:#}", run(&with(check, 0), name, false).unwrap_err());
        assert!(e.contains(&format!("emu check `{check}`: kernel {name}, block (")), "{e}");
        assert!(e.contains(needle) && e.contains("broken.cu:"), "{e}");
    }
}
