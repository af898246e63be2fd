//! Builds the kernels twice from the same sources:
//! 1. for the host, as C++17 against the emulation runtime in `kernels/emu/` (always;
//!    this is what `--device emu` and the emulated tests run), plus two more copies
//!    of the same: instrumented for the emulator's race / init / mem checks, and with
//!    FMA contraction (the model of a GPU's rounding);
//! 2. with nvcc into one fatbin (SASS for sm_80/86/89/90a, PTX for compute_80; or the
//!    list in `DS_CUDA_ARCHS`, e.g. `sm_90a` alone for the H200 binaries carried to a
//!    lent GPU) that the binary embeds, when nvcc can be found, recording ptxas's
//!    registers and shared memory per kernel and architecture and each kernel's
//!    `__launch_bounds__` (`kernel_limits.rs`, checked at every launch by
//!    src/backend/gpu/limits.rs). Without nvcc the build still succeeds with one
//!    warning (and empty tables), and `--device cuda` explains how to get it.
//!
//! Reruns: when the kernels change, when any of the environment variables it reads
//! changes, and when the toolchain changes or appears: the nvcc it used is watched, and
//! while none is found every path it probed is watched, the pinned
//! `.toolchain/cuda/.../nvcc` included. Cargo treats a watched path that does not exist
//! as changed, so a build without nvcc reruns this script (and rebuilds the crate) on
//! every build until nvcc is installed (tools/install_nvcc.sh) or `DS_SKIP_NVCC` is set.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The fatbin's targets unless `DS_CUDA_ARCHS` says otherwise: `sm_XY` is SASS for that
/// GPU, `compute_XY` is PTX (JIT-compiled by the driver for newer GPUs).
const DEFAULT_ARCHS: &str = "sm_80,sm_86,sm_89,sm_90a,compute_80";
/// Where tools/install_nvcc.sh puts the pinned nvcc, relative to the manifest.
const PINNED_NVCC: &str = ".toolchain/cuda/nvidia/cu13/bin/nvcc";

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    for v in ["NVCC", "CUDA_HOME", "CUDA_PATH", "DS_SKIP_NVCC", "DS_CUDA_ARCHS"] {
        println!("cargo:rerun-if-env-changed={v}");
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    write_launch_constants(&out.join("launch.rs"));

    // The host copies (C++) and the fatbin (nvcc) do not depend on each other: built
    // side by side (together they were most of a build's critical path).
    std::thread::scope(|scope| {
        scope.spawn(build_emulator);
        build_fatbin(&out);
    });
}

/// The kernels' host copies and the emulation runtime, as the static library `ds_emu`.
fn build_emulator() {
    // The copy of the kernels for the race / init / mem checks: every load and store
    // calls a hook (GCC's -fsanitize=thread instrumentation, whose hooks
    // kernels/emu/memcheck.cpp defines in place of the TSAN runtime); line tables name
    // the access sites. Its objects join the plain build's library.
    let checked = emu_build()
        .file("kernels/emu/kernels_checked.cpp")
        .flag("-fsanitize=thread")
        .flag_if_supported("--param=tsan-instrument-func-entry-exit=0")
        .flag("-g1")
        .compile_intermediates();
    // The copy with a*b+c contracted into FMA, as nvcc does: the model of a GPU's
    // rounding that the real-GPU tests' tolerances are checked against (the last
    // -ffp-contract wins; with no FMA on the build machine it equals the plain copy).
    let fma = emu_build().file("kernels/emu/kernels_fma.cpp").flag("-ffp-contract=fast").compile_intermediates();
    emu_build()
        .file("kernels/emu/runtime.cpp")
        .file("kernels/emu/memcheck.cpp")
        .file("kernels/emu/kernels.cpp")
        .objects(checked)
        .objects(fma)
        .compile("ds_emu");
}

/// The fatbin (when nvcc is found and not skipped) and the launch-limit tables.
fn build_fatbin(out: &Path) {
    let fatbin = out.join("kernels.fatbin");
    let skip = env::var_os("DS_SKIP_NVCC").is_some();
    let nvcc = if skip { None } else { find_nvcc() };
    if !skip {
        watch_toolchain(nvcc.as_deref());
    }
    let limits = out.join("kernel_limits.rs");
    std::fs::write(&limits, limits_source(&[], &[])).expect("write kernel_limits.rs");
    let status = match nvcc {
        _ if skip => {
            std::fs::write(&fatbin, []).expect("write empty fatbin");
            "skipped: DS_SKIP_NVCC was set when this binary was built".to_string()
        }
        None => {
            println!(
                "cargo:warning=nvcc not found (NVCC, CUDA_HOME, CUDA_PATH, PATH, .toolchain/cuda): building \
                 without GPU kernels; run tools/install_nvcc.sh to get the pinned toolchain (until then \
                 every build reruns build.rs to look for it; DS_SKIP_NVCC=1 stops that)"
            );
            std::fs::write(&fatbin, []).expect("write empty fatbin");
            "nvcc was not found when this binary was built".to_string()
        }
        Some(nvcc) => {
            std::fs::write(&limits, compile_fatbin(&nvcc, &fatbin, out)).expect("write kernel_limits.rs");
            format!("compiled by {} for {}", nvcc.display(), arch_list())
        }
    };
    println!("cargo:rustc-env=DS_KERNELS_STATUS={status}");
}

/// The host build of the kernels and their emulation runtime. Always optimised: at -O0
/// the fibers are far too slow.
fn emu_build() -> cc::Build {
    let mut emu = cc::Build::new();
    emu.cpp(true)
        .std("c++17")
        .opt_level(2)
        .include("kernels")
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
    emu
}

/// The launch contract's constants (`#define DS_<NAME> <integer>` in kernels/params.h)
/// as Rust `const`s, so the launchers use the very values the kernels are compiled
/// with. Generated rather than read from the emulated build at run time so that they
/// are constants (array lengths, `const` arithmetic) and need no FFI call. Any other
/// `#define DS_` line in params.h is an error: a value the parser cannot read must not
/// silently fall out of the contract.
fn write_launch_constants(dst: &Path) {
    let src = std::fs::read_to_string("kernels/params.h").expect("read kernels/params.h");
    let mut rs = String::from("// Generated by build.rs from kernels/params.h; do not edit.\n");
    for (i, line) in src.lines().enumerate() {
        let Some(def) = line.trim_start().strip_prefix("#define DS_") else { continue };
        let (def, comment) = def.split_once("//").map_or((def, ""), |(d, c)| (d, c.trim()));
        let mut it = def.split_whitespace();
        let (name, value) = (it.next().unwrap_or(""), it.next().and_then(|v| v.parse::<u32>().ok()));
        let Some(value) = value.filter(|_| it.next().is_none()) else {
            panic!("kernels/params.h:{}: `{}`: a DS_ define must be `#define DS_NAME <integer>`", i + 1, line.trim());
        };
        let doc = if comment.is_empty() { String::new() } else { format!(": {comment}") };
        rs += &format!("/// `DS_{name}` (kernels/params.h){doc}\npub const DS_{name}: usize = {value};\n");
    }
    std::fs::write(dst, rs).expect("write launch.rs");
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

/// Every path `find_nvcc` probes, in its order: `NVCC` (alone when set), then
/// `$CUDA_HOME/bin/nvcc`, `$CUDA_PATH/bin/nvcc`, each `PATH` entry's nvcc and the pinned
/// toolchain's.
fn nvcc_candidates() -> Vec<PathBuf> {
    if let Some(p) = env::var_os("NVCC") {
        return vec![PathBuf::from(p)];
    }
    let mut c: Vec<PathBuf> =
        ["CUDA_HOME", "CUDA_PATH"].iter().filter_map(env::var_os).map(|d| Path::new(&d).join("bin/nvcc")).collect();
    if let Some(path) = env::var_os("PATH") {
        c.extend(env::split_paths(&path).map(|d| d.join("nvcc")));
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    c.push(manifest.join(PINNED_NVCC));
    c
}

fn find_nvcc() -> Option<PathBuf> {
    nvcc_candidates().into_iter().find(|p| p.is_file())
}

/// Makes cargo rerun this script when the toolchain changes or appears. With an nvcc:
/// that file (through symlinks: replacing or removing it, or the `.toolchain` link it
/// sits behind, reruns). Without one: every probed path and `PATH` itself, so that
/// installing the pinned nvcc (or linking `.toolchain` in) after a first build gives a
/// real fatbin on the next build instead of the empty one.
fn watch_toolchain(nvcc: Option<&Path>) {
    match nvcc {
        Some(p) => println!("cargo:rerun-if-changed={}", p.display()),
        None => {
            println!("cargo:rerun-if-env-changed=PATH");
            for p in nvcc_candidates() {
                println!("cargo:rerun-if-changed={}", p.display());
            }
        }
    }
}

/// `DS_CUDA_ARCHS` (comma-separated `sm_XY` / `compute_XY`, default `DEFAULT_ARCHS`) as
/// nvcc `-gencode` values.
fn gencodes() -> Vec<String> {
    let list = arch_list();
    let codes: Vec<String> = list
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| match (a.strip_prefix("sm_"), a.strip_prefix("compute_")) {
            (Some(n), _) if is_arch_number(n) => format!("arch=compute_{n},code=sm_{n}"),
            (_, Some(n)) if is_arch_number(n) => format!("arch=compute_{n},code=compute_{n}"),
            _ => {
                panic!("DS_CUDA_ARCHS={list}: `{a}` is not sm_<NN>[a|f] or compute_<NN>[a|f] (e.g. sm_90a,compute_80)")
            }
        })
        .collect();
    assert!(!codes.is_empty(), "DS_CUDA_ARCHS={list} names no architecture");
    codes
}

fn arch_list() -> String {
    let list = env::var("DS_CUDA_ARCHS").unwrap_or_default();
    if list.trim().is_empty() {
        DEFAULT_ARCHS.to_string()
    } else {
        list
    }
}

fn is_arch_number(n: &str) -> bool {
    let digits = n.trim_end_matches(['a', 'f']);
    digits.len() >= 2 && digits.len() + 1 >= n.len() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Compiles the fatbin and returns the kernels' launch limits as the Rust source of
/// `kernel_limits.rs`. One ptxas at a time (no `--threads`): its per-kernel report
/// spans several lines that parallel runs would interleave.
fn compile_fatbin(nvcc: &Path, fatbin: &Path, out: &Path) -> String {
    let keep = out.join("nvcc-keep");
    let _ = std::fs::remove_dir_all(&keep);
    std::fs::create_dir_all(&keep).expect("create the nvcc keep folder");
    let mut cmd = Command::new(nvcc);
    cmd.args(["--fatbin", "-O3", "-std=c++17", "-lineinfo", "-Ikernels", "--resource-usage", "--keep"]);
    cmd.arg("--keep-dir").arg(&keep);
    for g in gencodes() {
        cmd.arg("-gencode").arg(g);
    }
    cmd.arg("-o").arg(fatbin).arg("kernels/all.cu");
    let res = cmd.output().unwrap_or_else(|e| panic!("cannot run {}: {e}", nvcc.display()));
    let report = format!("{}{}", String::from_utf8_lossy(&res.stdout), String::from_utf8_lossy(&res.stderr));
    if !res.status.success() {
        panic!("nvcc failed to compile kernels/all.cu ({}):\n{report}", nvcc.display());
    }
    let mut ptx = String::new();
    for e in std::fs::read_dir(&keep).expect("read the nvcc keep folder").flatten() {
        if e.path().extension().is_some_and(|x| x == "ptx") {
            ptx += &std::fs::read_to_string(e.path()).expect("read a kept PTX file");
        }
    }
    let _ = std::fs::remove_dir_all(&keep);
    limits_source(&ptxas_usage(&report), &launch_bounds(&ptx))
}

/// (arch, kernel, registers per thread, static shared memory bytes) for every kernel
/// ptxas compiled, from its `--resource-usage` report: "Compiling entry function 'K'
/// for 'sm_XY'" then, after the function's properties, "Used R registers, ..., S bytes
/// smem, ..." (no smem figure: none).
fn ptxas_usage(report: &str) -> Vec<(String, String, u32, u32)> {
    let mut out = vec![];
    let mut cur: Option<(String, String)> = None;
    for line in report.lines() {
        if let Some(rest) = line.split("Compiling entry function '").nth(1) {
            let kernel = rest.split('\'').next().unwrap_or("").to_string();
            let arch = rest.split("for '").nth(1).and_then(|a| a.split('\'').next()).unwrap_or("").to_string();
            cur = Some((arch, kernel));
        } else if let (Some(used), Some((arch, kernel))) = (line.split("Used ").nth(1), cur.as_ref()) {
            let number_before = |unit: &str| {
                used.split(", ").find_map(|f| f.trim().strip_suffix(unit).and_then(|n| n.trim().parse::<u32>().ok()))
            };
            let regs = number_before("registers")
                .unwrap_or_else(|| panic!("ptxas report for {kernel} ({arch}): no register count in `{line}`"));
            out.push((arch.clone(), kernel.clone(), regs, number_before("bytes smem").unwrap_or(0)));
            cur = None;
        }
    }
    out
}

/// (kernel, threads per block) of each PTX entry's `.maxntid` (its `__launch_bounds__`);
/// one entry per kernel (every architecture's PTX says the same).
fn launch_bounds(ptx: &str) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = vec![];
    let mut entry: Option<String> = None;
    for line in ptx.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix(".visible .entry ").or_else(|| t.strip_prefix(".entry ")) {
            entry = Some(rest.split('(').next().unwrap_or("").trim().to_string());
        } else if let (Some(dims), Some(k)) = (t.strip_prefix(".maxntid "), entry.as_ref()) {
            let n = dims.split(',').map(|d| d.trim().parse::<u32>().unwrap_or(0)).product::<u32>();
            if !out.iter().any(|(name, _)| name == k) {
                out.push((k.clone(), n));
            }
        } else if t.starts_with('{') {
            entry = None;
        }
    }
    out
}

/// `kernel_limits.rs`: the tables of `src/backend/gpu/limits.rs`.
fn limits_source(usage: &[(String, String, u32, u32)], bounds: &[(String, u32)]) -> String {
    let mut rs = String::from("// Generated by build.rs from ptxas's report and the PTX; do not edit.\n");
    rs += "pub const PTXAS: &[Usage] = &[\n";
    for (arch, kernel, regs, smem) in usage {
        rs += &format!("    Usage {{ arch: {arch:?}, kernel: {kernel:?}, registers: {regs}, static_smem: {smem} }},\n");
    }
    rs += "];\npub const LAUNCH_BOUNDS: &[(&str, u32)] = &[\n";
    for (kernel, n) in bounds {
        rs += &format!("    ({kernel:?}, {n}),\n");
    }
    rs + "];\n"
}
