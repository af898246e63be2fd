//! The emulated device: `kernels/*.cu` compiled for the host (build.rs) and run by the
//! fiber runtime of `kernels/emu/`. Device memory is host memory, so a device address
//! is a host pointer. Slow (one fiber per CUDA thread), exact, and always available:
//! it is how the GPU backend is tested in CI.

use std::alloc::Layout;
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};

use super::device::{DevPtr, Device};

extern "C" {
    fn ds_emu_launch(
        name: *const c_char,
        grid: *const c_uint,
        block: *const c_uint,
        smem: c_uint,
        params: *const c_void,
        params_size: usize,
        err: *mut c_char,
        err_len: usize,
    ) -> c_int;
    fn ds_emu_param_size(name: *const c_char) -> usize;
}

/// Parameter-block size of an emulated kernel, `None` if there is no such kernel.
pub fn kernel_param_size(name: &str) -> Option<usize> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string; the call only reads it.
    let n = unsafe { ds_emu_param_size(c.as_ptr()) };
    (n != 0).then_some(n)
}

#[derive(Default)]
pub struct EmuDevice {
    /// Live allocations (address -> layout), to free them and to reject bad frees.
    allocs: Mutex<HashMap<DevPtr, Layout>>,
}

impl EmuDevice {
    pub fn new() -> Self {
        Self::default()
    }
}

impl Device for EmuDevice {
    fn describe(&self) -> String {
        "emulated GPU (kernels compiled for the host; slow, for checking kernels)".into()
    }
    fn kind(&self) -> &'static str {
        "emu"
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        let layout = Layout::from_size_align(bytes.max(1), 256)
            .map_err(|_| anyhow!("out of memory: {bytes} bytes is not a valid allocation"))?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            bail!("out of memory ({:.1} MiB requested on the emulated device)", bytes as f64 / 1048576.0);
        }
        let addr = p as DevPtr;
        self.allocs.lock().unwrap_or_else(|e| e.into_inner()).insert(addr, layout);
        Ok(addr)
    }

    fn free(&self, ptr: DevPtr) {
        if let Some(layout) = self.allocs.lock().unwrap_or_else(|e| e.into_inner()).remove(&ptr) {
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
        let mut err = [0 as c_char; 512];
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
}
