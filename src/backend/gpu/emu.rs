//! The emulated device: `kernels/*.cu` compiled for the host (build.rs) and run by the
//! fiber runtime of `kernels/emu/`. Device memory is host memory, so a device address
//! is a host pointer. Slow (one fiber per CUDA thread), exact, and always available:
//! it is how the GPU backend is tested in CI.

use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};

use super::device::{DevPtr, Device, GraphId, Launch};

extern "C" {
    fn ds_emu_launch(
        name: *const c_char,
        grid: *const c_uint,
        block: *const c_uint,
        smem: c_uint,
        params: *const c_void,
        params_size: usize,
        checks: c_uint,
        seed: u64,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn ds_emu_param_size(name: *const c_char) -> usize;
    fn ds_emu_param_struct(name: *const c_char) -> *const c_char;
    fn ds_emu_kernel_name(i: usize) -> *const c_char;
    fn ds_emu_param_field(
        i: usize,
        strukt: *mut *const c_char,
        field: *mut *const c_char,
        offset: *mut usize,
        size: *mut usize,
        align: *mut usize,
    ) -> bool;
    fn ds_emu_note_alloc(p: *const c_void, bytes: usize);
    fn ds_emu_note_free(p: *const c_void);
}

/// A static C string of the runtime (null: none).
fn c_str(p: *const c_char) -> Option<String> {
    // SAFETY: the runtime returns null or a NUL-terminated string that lives as long as
    // the program (registry keys and string literals).
    (!p.is_null()).then(|| unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
}

/// Names of every kernel of the emulated build.
pub fn kernel_names() -> Vec<String> {
    // SAFETY: plain calls; out of range gives null.
    (0..).map_while(|i| c_str(unsafe { ds_emu_kernel_name(i) })).collect()
}

/// Name of the C parameter struct a kernel takes, `None` if there is no such kernel.
pub fn kernel_param_struct(name: &str) -> Option<String> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string; the call only reads it.
    c_str(unsafe { ds_emu_param_struct(c.as_ptr()) })
}

/// One field of a C parameter struct, as the C compiler laid it out.
#[derive(Clone, Debug)]
pub struct CField {
    pub strukt: String,
    pub name: String,
    pub offset: usize,
    pub size: usize,
    pub align: usize,
}

/// Every field of every parameter struct (kernels/emu/kernels.cpp), in declaration
/// order.
pub fn param_fields() -> Vec<CField> {
    let mut out = vec![];
    loop {
        let (mut s, mut f) = (std::ptr::null(), std::ptr::null());
        let (mut offset, mut size, mut align) = (0, 0, 0);
        // SAFETY: valid out-pointers; the strings are static in the runtime.
        if !unsafe { ds_emu_param_field(out.len(), &mut s, &mut f, &mut offset, &mut size, &mut align) } {
            return out;
        }
        let (strukt, name) = (c_str(s).unwrap_or_default(), c_str(f).unwrap_or_default());
        out.push(CField { strukt, name, offset, size, align });
    }
}

/// Parameter-block size of an emulated kernel, `None` if there is no such kernel.
pub fn kernel_param_size(name: &str) -> Option<usize> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string; the call only reads it.
    let n = unsafe { ds_emu_param_size(c.as_ptr()) };
    (n != 0).then_some(n)
}

/// The emulator's checks (compute-sanitizer style), chosen with
/// `DIFFSTYLE_EMU_CHECK=race,init,mem,async,sched,sync,align` (or `all`) and
/// `DIFFSTYLE_EMU_SEED`:
/// - `race`: two threads of a block access one byte of shared memory in one barrier
///   interval (read after write, write after read or write after write, no
///   `__syncthreads` / `__syncwarp` between them); the cp.async / ldmatrix / mma
///   wrappers' accesses included;
/// - `init`: a read of shared memory (dynamic or static `__shared__`) that no thread of
///   the block has written;
/// - `mem`: a global access outside every allocation of the device, or a shared access
///   past the block's dynamic shared memory;
/// - `async`: `cp.async` reads its source at issue and lands at the `wait_group` that
///   covers its group, the destination holding NaN bit patterns until then (a missing or
///   too-large wait shows);
/// - `sched`: the fibers of each block run in a seeded permutation of their order (a
///   missing barrier shows as a changed result);
/// - `sync`: a barrier or warp collective reached from different call sites by threads
///   of one block / warp fails the launch (as does a barrier that can never complete);
/// - `align`: `cp.async` and `ldmatrix` addresses checked for their alignment.
///
/// Not a check but a model: `fma` runs a copy of the kernels compiled with `a*b+c`
/// contracted into fused multiply-adds as nvcc does (the plain copy keeps the CPU
/// oracle's rounding of each operation), so the real-GPU tests' tolerances can be
/// checked against a GPU's kind of rounding here; `all` leaves it out.
///
/// A failed check fails the launch with the kernel, block, thread and access site.
/// `race`, `init` and `mem` run an instrumented copy of the kernels (every load and
/// store calls a hook; kernels/emu/memcheck.cpp), several times slower than the plain one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EmuChecks {
    pub bits: u32,
    pub seed: u64,
}

impl EmuChecks {
    /// Every check and its bit (kernels/emu/emu.h, `emu::Check`).
    pub const KNOWN: [(&'static str, u32); 7] = [
        ("race", 1 << 0),
        ("init", 1 << 1),
        ("mem", 1 << 2),
        ("async", 1 << 3),
        ("sched", 1 << 4),
        ("sync", 1 << 5),
        ("align", 1 << 6),
    ];

    /// race, init and mem: the checks that run the instrumented copy of the kernels.
    const INSTRUMENTED: u32 = 0b111;
    /// The FMA-contraction mode's name and bit (`emu::kModeFma`).
    pub const FMA: (&'static str, u32) = ("fma", 1 << 7);

    /// Every check, seed 0.
    pub fn all() -> Self {
        Self { bits: Self::KNOWN.iter().map(|k| k.1).fold(0, |a, b| a | b), seed: 0 }
    }

    /// The kernels compiled with FMA contraction, no check.
    pub fn fma() -> Self {
        Self { bits: Self::FMA.1, seed: 0 }
    }

    /// The checks' names, for messages.
    fn listed() -> String {
        let mut names: Vec<&str> = Self::KNOWN.iter().map(|k| k.0).collect();
        names.extend(["all", Self::FMA.0]);
        names.join(", ")
    }

    /// Parses a `DIFFSTYLE_EMU_CHECK` value (comma-separated names, or `all`; empty:
    /// none) and an optional `DIFFSTYLE_EMU_SEED`.
    pub fn parse(spec: &str, seed: Option<&str>) -> Result<Self> {
        let mut bits = 0;
        for name in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            if name == "all" {
                bits |= Self::all().bits;
            } else if let Some((_, b)) = Self::KNOWN.iter().chain([&Self::FMA]).find(|k| k.0 == name) {
                bits |= b;
            } else {
                bail!("DIFFSTYLE_EMU_CHECK: unknown check `{name}` (known: {})", Self::listed());
            }
        }
        if bits & Self::FMA.1 != 0 && bits & Self::INSTRUMENTED != 0 {
            bail!("DIFFSTYLE_EMU_CHECK: `fma` runs its own copy of the kernels and cannot be combined with race, init or mem");
        }
        let seed = match seed.map(str::trim) {
            None | Some("") => 0,
            Some(s) => s.parse().map_err(|_| anyhow!("DIFFSTYLE_EMU_SEED: `{s}` is not a whole number"))?,
        };
        Ok(Self { bits, seed })
    }

    /// The checks the environment asks for.
    pub fn from_env() -> Result<Self> {
        let spec = std::env::var("DIFFSTYLE_EMU_CHECK").unwrap_or_default();
        Self::parse(&spec, std::env::var("DIFFSTYLE_EMU_SEED").ok().as_deref())
    }
}

/// The factor by which a test's error must stay under its bound on the FMA model
/// (`EmuChecks::fma`) for the bound to count as calibrated for a GPU: the per-op tests'
/// `testutil::bound` under `DIFFSTYLE_EMU_CHECK=fma`, and tests/gpu_emu.rs for the
/// real-GPU tests' bounds. Two: a GPU's rounding differs from the model's only in
/// order (tensor-core sums, libm), which moves an error by a small factor, not by
/// orders; most bounds are dominated by 16-bit storage, the same everywhere.
pub const FMA_MARGIN: f64 = 2.0;

/// Bytes after every emulated allocation that belong to none (see `alloc`).
const REDZONE: usize = 256;

#[derive(Default)]
pub struct EmuDevice {
    checks: EmuChecks,
    /// Live allocations (address -> layout), to free them and to reject bad frees.
    allocs: Mutex<HashMap<DevPtr, Layout>>,
    /// Graphs: their launch lists, replayed in order.
    graphs: Mutex<HashMap<GraphId, Vec<Launch>>>,
    next_graph: std::sync::atomic::AtomicU64,
}

impl EmuDevice {
    /// The emulator without checks.
    pub fn new() -> Self {
        Self::default()
    }

    /// The emulator running `checks` on every launch.
    pub fn with_checks(checks: EmuChecks) -> Self {
        Self { checks, ..Self::default() }
    }

    /// The emulator with the checks of `DIFFSTYLE_EMU_CHECK` / `DIFFSTYLE_EMU_SEED`.
    pub fn from_env() -> Result<Self> {
        Ok(Self::with_checks(EmuChecks::from_env()?))
    }
}

impl Device for EmuDevice {
    fn describe(&self) -> String {
        "emulated GPU (kernels compiled for the host; slow, for checking kernels)".into()
    }
    fn kind(&self) -> &'static str {
        "emu"
    }
    /// No cache to speak of; small, so that the micro-benchmarks' flush stays cheap
    /// while its code path still runs in the tests.
    fn l2_cache_bytes(&self) -> usize {
        64 * 1024
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        // A red zone after each allocation: a small overrun lands there, as within a
        // GPU allocation's granularity, and the mem check (which knows `bytes`) names it.
        let layout = Layout::from_size_align(bytes.max(1) + REDZONE, 256)
            .map_err(|_| anyhow!("out of memory: {bytes} bytes is not a valid allocation"))?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            bail!("out of memory ({:.1} MiB requested on the emulated device)", bytes as f64 / 1048576.0);
        }
        let addr = p as DevPtr;
        // SAFETY: records the address range for the mem check; nothing is dereferenced.
        unsafe { ds_emu_note_alloc(p as *const c_void, bytes) };
        self.allocs.lock().unwrap_or_else(|e| e.into_inner()).insert(addr, layout);
        Ok(addr)
    }

    fn free(&self, ptr: DevPtr) {
        if let Some(layout) = self.allocs.lock().unwrap_or_else(|e| e.into_inner()).remove(&ptr) {
            // SAFETY: forgets the range before the memory goes back to the allocator.
            unsafe { ds_emu_note_free(ptr as *const c_void) };
            // SAFETY: `ptr` was returned by `alloc` with this layout and is freed once.
            unsafe { std::alloc::dealloc(ptr as *mut u8, layout) }
        }
    }

    fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        // SAFETY: the backend checks that [dst, dst + len) lies inside one allocation.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    fn dtoh(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        // SAFETY: as in `htod`.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    fn fill_u32(&self, dst: DevPtr, value: u32, count: usize) -> Result<()> {
        // SAFETY: as in `htod`; allocations are 256-byte aligned.
        unsafe { std::slice::from_raw_parts_mut(dst as *mut u32, count).fill(value) };
        Ok(())
    }

    fn launch(&self, kernel: &str, grid: [u32; 3], block: [u32; 3], smem: u32, params: &[u8]) -> Result<()> {
        let name = CString::new(kernel).map_err(|_| anyhow!("bad kernel name {kernel:?}"))?;
        let mut err = [0 as c_char; 1024];
        // SAFETY: pointers are valid for the sizes passed; the runtime copies the
        // parameter block and writes at most err.len() bytes of message.
        let rc = unsafe {
            ds_emu_launch(
                name.as_ptr(),
                grid.as_ptr(),
                block.as_ptr(),
                smem,
                params.as_ptr() as *const c_void,
                params.len(),
                self.checks.bits,
                self.checks.seed,
                err.as_mut_ptr(),
                err.len(),
            )
        };
        if rc != 0 {
            // SAFETY: the runtime NUL-terminates the message (snprintf).
            let msg = unsafe { CStr::from_ptr(err.as_ptr()) }.to_string_lossy().into_owned();
            bail!("emulated launch of {kernel} failed: {msg}");
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn graph_create(&self, launches: &[Launch]) -> Result<GraphId> {
        let id = self.next_graph.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.graphs.lock().unwrap_or_else(|e| e.into_inner()).insert(id, launches.to_vec());
        Ok(id)
    }

    fn graph_set_params(&self, g: GraphId, index: usize, params: &[u8]) -> Result<()> {
        let mut graphs = self.graphs.lock().unwrap_or_else(|e| e.into_inner());
        let l = graphs
            .get_mut(&g)
            .and_then(|v| v.get_mut(index))
            .ok_or_else(|| anyhow!("no launch {index} in graph {g}"))?;
        anyhow::ensure!(l.params.len() == params.len(), "graph {g} launch {index}: parameter block size changed");
        l.params.copy_from_slice(params);
        Ok(())
    }

    fn graph_launch(&self, g: GraphId) -> Result<()> {
        let launches = self.graphs.lock().unwrap_or_else(|e| e.into_inner()).get(&g).cloned();
        for l in launches.ok_or_else(|| anyhow!("no graph {g}"))? {
            self.launch(&l.kernel, l.grid, l.block, l.smem, &l.params)?;
        }
        Ok(())
    }

    fn graph_destroy(&self, g: GraphId) {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner()).remove(&g);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_parse_and_unknown_ones_are_refused() {
        assert_eq!(EmuChecks::parse("", None).unwrap(), EmuChecks::default());
        assert_eq!(EmuChecks::parse("all", Some("7")).unwrap(), EmuChecks { seed: 7, ..EmuChecks::all() });
        assert_eq!(EmuChecks::parse(" sync , align", None).unwrap().bits, (1 << 5) | (1 << 6));
        assert_eq!(EmuChecks::parse("race,init,mem", None).unwrap().bits, 0b111);
        assert_eq!(EmuChecks::parse("fma,sched", None).unwrap().bits, (1 << 7) | (1 << 4));
        assert!(EmuChecks::parse("fma,all", None).unwrap_err().to_string().contains("cannot be combined"));
        assert!(EmuChecks::parse("speed", None).unwrap_err().to_string().contains("unknown check `speed`"));
        assert!(EmuChecks::parse("all", Some("x")).unwrap_err().to_string().contains("DIFFSTYLE_EMU_SEED"));
    }
}
