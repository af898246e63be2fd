//! What the GPU backend needs from a device: memory, copies, launches by kernel name
//! with one parameter block, synchronisation. Two implementations: the real GPU
//! through the CUDA driver (`cuda.rs`) and the host emulation of the same kernel
//! sources (`emu.rs`).

use anyhow::Result;

/// A device address.
pub type DevPtr = u64;

/// Handle of an instantiated launch graph.
pub type GraphId = u64;

/// One kernel launch, as recorded for a graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    pub kernel: String,
    pub grid: [u32; 3],
    pub block: [u32; 3],
    pub smem: u32,
    pub params: Vec<u8>,
}

impl Launch {
    /// Everything but the parameter values: two launches with the same shape can share
    /// a graph node whose parameters are updated.
    pub fn same_shape(&self, o: &Launch) -> bool {
        self.kernel == o.kernel && self.grid == o.grid && self.block == o.block && self.smem == o.smem
    }
}

pub trait Device: Send + Sync + 'static {
    /// What this device is, for messages (`emu`, `NVIDIA H100 80GB HBM3 (sm_90)`).
    fn describe(&self) -> String;
    /// Short backend name (`cuda` / `emu`).
    fn kind(&self) -> &'static str;
    /// Bytes of L2 cache (the micro-benchmarks overwrite twice that between timed runs).
    fn l2_cache_bytes(&self) -> usize;
    /// `bytes` of device memory, 256-byte aligned; out of memory is an error.
    fn alloc(&self, bytes: usize) -> Result<DevPtr>;
    /// Frees an allocation (errors are ignored: this runs in `Drop`).
    fn free(&self, ptr: DevPtr);
    fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<()>;
    fn dtoh(&self, src: DevPtr, dst: &mut [u8]) -> Result<()>;
    /// Sets `count` 32-bit words at `dst` to `value`.
    fn fill_u32(&self, dst: DevPtr, value: u32, count: usize) -> Result<()>;
    /// Launches `kernel` over `grid` x `block` threads with `smem` bytes of dynamic
    /// shared memory and one parameter block (the bytes of a `params.rs` struct).
    fn launch(&self, kernel: &str, grid: [u32; 3], block: [u32; 3], smem: u32, params: &[u8]) -> Result<()>;
    /// Waits for every launch and copy issued so far; reports asynchronous errors.
    fn sync(&self) -> Result<()>;

    /// Instantiates `launches` as one graph (a chain: each launch after the previous).
    fn graph_create(&self, launches: &[Launch]) -> Result<GraphId>;
    /// Replaces the parameters of launch `index` of graph `g` (same shape).
    fn graph_set_params(&self, g: GraphId, index: usize, params: &[u8]) -> Result<()>;
    /// Runs graph `g`, ordered after everything issued before.
    fn graph_launch(&self, g: GraphId) -> Result<()>;
    fn graph_destroy(&self, g: GraphId);

    /// Milliseconds of device time taken by the work `f` issues. The default times the
    /// host clock between synchronisations; the real GPU records events around `f`.
    fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        crate::backend::host_timed(&|| self.sync(), f)
    }
}
