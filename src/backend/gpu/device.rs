//! What the GPU backend needs from a device: memory, copies, launches by kernel name
//! with one parameter block, synchronisation. Two implementations: the real GPU
//! through the CUDA driver (`cuda.rs`) and the host emulation of the same kernel
//! sources (`emu.rs`).

use anyhow::Result;

/// A device address.
pub type DevPtr = u64;

pub trait Device: Send + Sync + 'static {
    /// What this device is, for messages (`emu`, `NVIDIA H100 80GB HBM3 (sm_90)`).
    fn describe(&self) -> String;
    /// Short backend name (`cuda` / `emu`).
    fn kind(&self) -> &'static str;
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
}
