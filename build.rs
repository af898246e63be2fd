//! Builds the kernels twice from the same sources:
//! 1. for the host, as C++17 against the emulation runtime in `kernels/emu/` (always;
//!    this is what `--device emu` and the emulated tests run);
//! 2. with nvcc into one fatbin (SASS for sm_80/86/89/90a, PTX for compute_80) that the
//!    binary embeds, when nvcc can be found. Without nvcc the build still succeeds with
//!    one warning, and `--device cuda` explains how to get it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const ARCHS: &[(&str, &str)] =
    &[("compute_80", "sm_80"), ("compute_86", "sm_86"), ("compute_89", "sm_89"), ("compute_90a", "sm_90a")];

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    for v in ["NVCC", "CUDA_HOME", "CUDA_PATH", "DS_SKIP_NVCC"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));

    // The emulated kernels are always optimised: at -O0 the fibers are far too slow.
    let mut emu = cc::Build::new();
    emu.cpp(true)
        .std("c++17")
        .opt_level(2)
        .include("kernels")
        .file("kernels/emu/runtime.cpp")
        .file("kernels/emu/kernels.cpp")
        .warnings(false)
        .flag_if_supported("-Wno-unknown-pragmas")
        // No contraction of a*b+c: the emulated kernels keep the f32 rounding of each
        // operation as written (the CPU oracle's order).
        .flag_if_supported("-ffp-contract=off");
    // The kernels call fmaf() as the GPU's FMA; without the instruction it is a slow
    // library routine. Enabled when the build machine has it (the emulator runs where
    // it was built: tests, --device emu).
    if host_has_fma() {
        emu.flag("-mfma");
    }
    emu.compile("ds_emu");

    let fatbin = out.join("kernels.fatbin");
    let status = match find_nvcc() {
        _ if env::var_os("DS_SKIP_NVCC").is_some() => {
            std::fs::write(&fatbin, []).expect("write empty fatbin");
            "skipped: DS_SKIP_NVCC was set when this binary was built".to_string()
        }
        None => {
            println!(
                "cargo:warning=nvcc not found (NVCC, CUDA_HOME, CUDA_PATH, PATH, .toolchain/cuda): building \
                 without GPU kernels; run tools/install_nvcc.sh to get the pinned toolchain"
            );
            std::fs::write(&fatbin, []).expect("write empty fatbin");
            "nvcc was not found when this binary was built".to_string()
        }
        Some(nvcc) => {
            compile_fatbin(&nvcc, &fatbin);
            format!("compiled by {}", nvcc.display())
        }
    };
    println!("cargo:rustc-env=DS_KERNELS_STATUS={status}");
}

fn host_has_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        env::var("CARGO_CFG_TARGET_ARCH").as_deref() == Ok("x86_64") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn find_nvcc() -> Option<PathBuf> {
    let exe = |p: PathBuf| p.is_file().then_some(p);
    if let Some(p) = env::var_os("NVCC") {
        return exe(PathBuf::from(p));
    }
    for var in ["CUDA_HOME", "CUDA_PATH"] {
        if let Some(p) = env::var_os(var).and_then(|d| exe(Path::new(&d).join("bin/nvcc"))) {
            return Some(p);
        }
    }
    if let Some(p) = env::var_os("PATH").and_then(|path| env::split_paths(&path).find_map(|d| exe(d.join("nvcc")))) {
        return Some(p);
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    exe(manifest.join(".toolchain/cuda/nvidia/cu13/bin/nvcc"))
}

fn compile_fatbin(nvcc: &Path, fatbin: &Path) {
    let mut cmd = Command::new(nvcc);
    cmd.args(["--fatbin", "-O3", "-std=c++17", "--threads", "0", "-lineinfo", "-Ikernels"]);
    for (virt, real) in ARCHS {
        cmd.arg("-gencode").arg(format!("arch={virt},code={real}"));
    }
    cmd.args(["-gencode", "arch=compute_80,code=compute_80"]);
    cmd.arg("-o").arg(fatbin).arg("kernels/all.cu");
    let res = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    if !res.status.success() {
        panic!(
            "nvcc failed to compile kernels/all.cu ({}):\n{}{}",
            nvcc.display(),
            String::from_utf8_lossy(&res.stdout),
            String::from_utf8_lossy(&res.stderr)
        );
    }
}
