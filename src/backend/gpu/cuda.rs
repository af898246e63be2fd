//! The real GPU through the CUDA driver API (cudarc's raw bindings, libcuda loaded at
//! run time). Kernels come from the fatbin that build.rs embedded; nothing is compiled
//! at run time. Every call is checked and turned into a message that says what to do.

use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::sync::Mutex;

use anyhow::{anyhow, bail, Result};
use cudarc::driver::sys::{self, CUresult};

use super::device::{DevPtr, Device, GraphId, Launch};

/// The kernels compiled by nvcc at build time (empty when nvcc was not found).
static FATBIN: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/kernels.fatbin"));

/// How this binary's kernels were built, for error messages and `info`.
pub const KERNELS_STATUS: &str = env!("DS_KERNELS_STATUS");

/// Dynamic shared memory a kernel may use without opting in.
const DEFAULT_SMEM: u32 = 48 * 1024;

fn err_name(r: CUresult) -> String {
    let mut p: *const c_char = std::ptr::null();
    // SAFETY: cuGetErrorString writes a pointer to a static string (or leaves it null).
    unsafe { sys::cuGetErrorString(r, &mut p) };
    if p.is_null() {
        format!("{r:?}")
    } else {
        // SAFETY: non-null results point at static NUL-terminated strings.
        format!("{r:?}: {}", unsafe { CStr::from_ptr(p) }.to_string_lossy())
    }
}

/// Why the kernels did not load: only an image the GPU cannot run means "not for this
/// GPU"; anything else (a context broken by an earlier fault, out of memory) is named
/// as it is.
fn module_load_error(r: CUresult, name: &str, cc: (i32, i32)) -> anyhow::Error {
    use CUresult as R;
    let e = err_name(r);
    match r {
        R::CUDA_ERROR_NO_BINARY_FOR_GPU
        | R::CUDA_ERROR_INVALID_IMAGE
        | R::CUDA_ERROR_INVALID_PTX
        | R::CUDA_ERROR_UNSUPPORTED_PTX_VERSION
        | R::CUDA_ERROR_JIT_COMPILER_NOT_FOUND => {
            anyhow!(
                "CUDA error in loading the kernels: {e} (the embedded kernels do not run on {name}, sm_{}{})",
                cc.0,
                cc.1
            )
        }
        R::CUDA_ERROR_ILLEGAL_ADDRESS
        | R::CUDA_ERROR_LAUNCH_FAILED
        | R::CUDA_ERROR_ILLEGAL_INSTRUCTION
        | R::CUDA_ERROR_MISALIGNED_ADDRESS
        | R::CUDA_ERROR_HARDWARE_STACK_ERROR
        | R::CUDA_ERROR_ASSERT => anyhow!(
            "CUDA error in loading the kernels: {e}: the GPU context is broken by an earlier kernel fault in this \
             process; rerun with DIFFSTYLE_CUDA_SYNC=1 to name the kernel that faulted"
        ),
        _ => anyhow!("CUDA error in loading the kernels on {name}: {e}"),
    }
}

fn check(r: CUresult, what: &str) -> Result<()> {
    if r == CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(anyhow!("CUDA error in {what}: {}", err_name(r)))
    }
}

/// An instantiated graph and its kernel nodes, in launch order.
struct Graph {
    graph: sys::CUgraph,
    exec: sys::CUgraphExec,
    nodes: Vec<(sys::CUgraphNode, Launch, sys::CUfunction)>,
}

struct Raw {
    /// The device whose primary context `ctx` is: released by `Drop` whatever state
    /// the context is in (after a fault every call in it fails).
    dev: sys::CUdevice,
    ctx: sys::CUcontext,
    module: sys::CUmodule,
    funcs: HashMap<String, (sys::CUfunction, u32)>,
    graphs: HashMap<GraphId, Graph>,
    next_graph: GraphId,
}

impl Raw {
    /// The kernel's handle, allowed `smem` bytes of dynamic shared memory.
    fn function(&mut self, kernel: &str, smem: u32) -> Result<sys::CUfunction> {
        let (f, allowed) = match self.funcs.get(kernel) {
            Some(f) => *f,
            None => {
                let c = CString::new(kernel).map_err(|_| anyhow!("bad kernel name {kernel:?}"))?;
                let mut f: sys::CUfunction = std::ptr::null_mut();
                // SAFETY: valid module and NUL-terminated name.
                check(unsafe { sys::cuModuleGetFunction(&mut f, self.module, c.as_ptr()) }, "cuModuleGetFunction")
                    .map_err(|e| anyhow!("kernel {kernel} is not in this build's fatbin: {e}"))?;
                (f, DEFAULT_SMEM)
            }
        };
        let allowed = if smem > allowed {
            // Opt in to more than 48 KiB of dynamic shared memory.
            // SAFETY: valid function handle.
            let r = unsafe {
                sys::cuFuncSetAttribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    smem as c_int,
                )
            };
            check(r, &format!("allowing {smem} bytes of shared memory for {kernel}"))?;
            smem
        } else {
            allowed
        };
        self.funcs.insert(kernel.to_string(), (f, allowed));
        Ok(f)
    }
}

fn node_params(f: sys::CUfunction, l: &Launch, args: &mut [*mut c_void; 1]) -> sys::CUDA_KERNEL_NODE_PARAMS {
    args[0] = l.params.as_ptr() as *mut c_void;
    sys::CUDA_KERNEL_NODE_PARAMS {
        func: f,
        gridDimX: l.grid[0],
        gridDimY: l.grid[1],
        gridDimZ: l.grid[2],
        blockDimX: l.block[0],
        blockDimY: l.block[1],
        blockDimZ: l.block[2],
        sharedMemBytes: l.smem,
        kernelParams: args.as_mut_ptr(),
        extra: std::ptr::null_mut(),
        kern: std::ptr::null_mut(),
        ctx: std::ptr::null_mut(),
    }
}

pub struct CudaDevice {
    raw: Mutex<Raw>,
    name: String,
    cc: (i32, i32),
    l2_bytes: usize,
}

// SAFETY: the driver's handles may be used from any thread once the context is made
// current there; every use goes through the mutex and sets the context first.
unsafe impl Send for CudaDevice {}
unsafe impl Sync for CudaDevice {}

impl CudaDevice {
    /// Opens GPU `ordinal`, or explains why there is none to use.
    pub fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: only probes for the library; cudarc panics if a call is made without it.
        if !unsafe { sys::is_culib_present() } {
            bail!("no NVIDIA driver found (libcuda could not be loaded): this machine has no usable GPU; use --device cpu");
        }
        if FATBIN.is_empty() {
            bail!(
                "this build has no GPU kernels ({KERNELS_STATUS}); install the pinned CUDA compiler with \
                 `tools/install_nvcc.sh` (or set NVCC / CUDA_HOME), then rebuild: cargo build --release"
            );
        }
        // SAFETY: plain driver calls with valid out-pointers.
        unsafe {
            check(sys::cuInit(0), "cuInit (is an NVIDIA GPU present and the driver loaded?)")?;
            let mut count: c_int = 0;
            check(sys::cuDeviceGetCount(&mut count), "cuDeviceGetCount")?;
            if count <= 0 {
                bail!("the NVIDIA driver reports no GPU; use --device cpu");
            }
            if ordinal >= count as usize {
                bail!("GPU {ordinal} requested, this machine has {count}");
            }
            let mut dev: sys::CUdevice = 0;
            check(sys::cuDeviceGet(&mut dev, ordinal as c_int), "cuDeviceGet")?;
            let attr = |a: sys::CUdevice_attribute| -> Result<i32> {
                let mut v: c_int = 0;
                check(sys::cuDeviceGetAttribute(&mut v, a, dev), "cuDeviceGetAttribute")?;
                Ok(v)
            };
            let cc = (
                attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR)?,
                attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR)?,
            );
            let l2_bytes = attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)?.max(0) as usize;
            let mut buf = [0 as c_char; 256];
            check(sys::cuDeviceGetName(buf.as_mut_ptr(), buf.len() as c_int, dev), "cuDeviceGetName")?;
            let name = CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned();
            if cc.0 < 8 {
                bail!(
                    "{name} has compute capability {}.{}; diffstyle's kernels need 8.0 or newer (A100, RTX 30xx, \
                     H100 and later); use --device cpu",
                    cc.0,
                    cc.1
                );
            }
            let mut ctx: sys::CUcontext = std::ptr::null_mut();
            check(sys::cuDevicePrimaryCtxRetain(&mut ctx, dev), "cuDevicePrimaryCtxRetain")?;
            check(sys::cuCtxSetCurrent(ctx), "cuCtxSetCurrent")?;
            // The driver wants the image suitably aligned; include_bytes! gives no guarantee.
            let mut image = vec![0u64; FATBIN.len().div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut image)[..FATBIN.len()].copy_from_slice(FATBIN);
            let mut module: sys::CUmodule = std::ptr::null_mut();
            let r = sys::cuModuleLoadData(&mut module, image.as_ptr() as *const c_void);
            if r != CUresult::CUDA_SUCCESS {
                sys::cuDevicePrimaryCtxRelease_v2(dev);
                return Err(module_load_error(r, &name, cc));
            }
            let raw = Raw { dev, ctx, module, funcs: HashMap::new(), graphs: HashMap::new(), next_graph: 0 };
            Ok(Self { raw: Mutex::new(raw), name, cc, l2_bytes })
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Raw>> {
        let raw = self.raw.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the context was created in `new` and lives as long as the device.
        check(unsafe { sys::cuCtxSetCurrent(raw.ctx) }, "cuCtxSetCurrent")?;
        Ok(raw)
    }

    /// Free and total device memory in bytes.
    pub fn mem_info(&self) -> Result<(usize, usize)> {
        let _g = self.lock()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers.
        check(unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) }, "cuMemGetInfo")?;
        Ok((free, total))
    }
}

impl Drop for CudaDevice {
    fn drop(&mut self) {
        // Every buffer and weight holds the device, so nothing uses it any more.
        let raw = self.raw.get_mut().unwrap_or_else(|e| e.into_inner());
        // SAFETY: handles created in `new` / `graph_create`, released once; errors
        // cannot be reported from Drop.
        unsafe {
            sys::cuCtxSetCurrent(raw.ctx);
            for (_, g) in raw.graphs.drain() {
                sys::cuGraphExecDestroy(g.exec);
                sys::cuGraphDestroy(g.graph);
            }
            sys::cuModuleUnload(raw.module);
            // Unconditionally: a context left retained after a fault would poison the
            // next device opened in this process (the primary context is shared).
            sys::cuDevicePrimaryCtxRelease_v2(raw.dev);
        }
    }
}

impl Device for CudaDevice {
    fn describe(&self) -> String {
        format!("{} (sm_{}{})", self.name, self.cc.0, self.cc.1)
    }
    fn kind(&self) -> &'static str {
        "cuda"
    }
    fn l2_cache_bytes(&self) -> usize {
        self.l2_bytes
    }

    fn alloc(&self, bytes: usize) -> Result<DevPtr> {
        let _g = self.lock()?;
        let mut p: sys::CUdeviceptr = 0;
        // SAFETY: valid out-pointer.
        let r = unsafe { sys::cuMemAlloc_v2(&mut p, bytes.max(1)) };
        if r == CUresult::CUDA_ERROR_OUT_OF_MEMORY {
            let (mut free, mut total) = (0usize, 0usize);
            // SAFETY: valid out-pointers.
            unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) };
            bail!(
                "out of GPU memory: {:.1} MiB requested, {:.1} of {:.1} MiB free on {}",
                bytes as f64 / 1048576.0,
                free as f64 / 1048576.0,
                total as f64 / 1048576.0,
                self.name
            );
        }
        check(r, "cuMemAlloc")?;
        Ok(p)
    }

    fn free(&self, ptr: DevPtr) {
        if let Ok(_g) = self.lock() {
            // SAFETY: `ptr` came from `alloc`; errors cannot be reported from Drop.
            unsafe { sys::cuMemFree_v2(ptr) };
        }
    }

    fn htod(&self, dst: DevPtr, src: &[u8]) -> Result<()> {
        let _g = self.lock()?;
        // SAFETY: the backend checked that the destination lies inside an allocation.
        check(unsafe { sys::cuMemcpyHtoD_v2(dst, src.as_ptr() as *const c_void, src.len()) }, "copy to the GPU")
    }

    fn dtoh(&self, src: DevPtr, dst: &mut [u8]) -> Result<()> {
        let _g = self.lock()?;
        // SAFETY: as in `htod`.
        check(unsafe { sys::cuMemcpyDtoH_v2(dst.as_mut_ptr() as *mut c_void, src, dst.len()) }, "copy from the GPU")
    }

    fn fill_u32(&self, dst: DevPtr, value: u32, count: usize) -> Result<()> {
        let _g = self.lock()?;
        // SAFETY: as in `htod`.
        check(unsafe { sys::cuMemsetD32_v2(dst, value, count) }, "cuMemsetD32")
    }

    fn launch(&self, kernel: &str, grid: [u32; 3], block: [u32; 3], smem: u32, params: &[u8]) -> Result<()> {
        let mut raw = self.lock()?;
        let f = raw.function(kernel, smem)?;
        let mut args = [params.as_ptr() as *mut c_void];
        // SAFETY: the kernel takes exactly one parameter block of this layout
        // (params.rs, checked against the emulated build by a test).
        let r = unsafe {
            sys::cuLaunchKernel(
                f,
                grid[0],
                grid[1],
                grid[2],
                block[0],
                block[1],
                block[2],
                smem,
                std::ptr::null_mut(),
                args.as_mut_ptr(),
                std::ptr::null_mut(),
            )
        };
        check(r, &format!("launching {kernel} (grid {grid:?}, block {block:?}, {smem} B shared)"))
    }

    fn sync(&self) -> Result<()> {
        let _g = self.lock()?;
        // SAFETY: plain driver call.
        check(unsafe { sys::cuCtxSynchronize() }, "a GPU kernel (reported at synchronisation)")
    }

    fn graph_create(&self, launches: &[Launch]) -> Result<GraphId> {
        let mut raw = self.lock()?;
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: valid out-pointer.
        check(unsafe { sys::cuGraphCreate(&mut graph, 0) }, "cuGraphCreate")?;
        let mut g = Graph { graph, exec: std::ptr::null_mut(), nodes: Vec::with_capacity(launches.len()) };
        let built = (|| -> Result<()> {
            for l in launches {
                let f = raw.function(&l.kernel, l.smem)?;
                let mut args = [std::ptr::null_mut(); 1];
                let p = node_params(f, l, &mut args);
                let mut node: sys::CUgraphNode = std::ptr::null_mut();
                let prev = g.nodes.last().map(|n| n.0);
                let deps = prev.as_slice();
                // SAFETY: the parameters are copied by the driver during the call.
                let r = unsafe { sys::cuGraphAddKernelNode_v2(&mut node, graph, deps.as_ptr(), deps.len(), &p) };
                check(r, &format!("adding {} to a graph", l.kernel))?;
                g.nodes.push((node, l.clone(), f));
            }
            // SAFETY: a complete graph; valid out-pointer.
            check(unsafe { sys::cuGraphInstantiateWithFlags(&mut g.exec, graph, 0) }, "cuGraphInstantiate")
        })();
        if let Err(e) = built {
            // SAFETY: the graph was created above and is not used again.
            unsafe { sys::cuGraphDestroy(graph) };
            return Err(e);
        }
        let id = raw.next_graph;
        raw.next_graph += 1;
        raw.graphs.insert(id, g);
        Ok(id)
    }

    fn graph_set_params(&self, id: GraphId, index: usize, params: &[u8]) -> Result<()> {
        let mut raw = self.lock()?;
        let g = raw.graphs.get_mut(&id).ok_or_else(|| anyhow!("no graph {id}"))?;
        let exec = g.exec;
        let (node, l, f) = g.nodes.get_mut(index).ok_or_else(|| anyhow!("no launch {index} in graph {id}"))?;
        anyhow::ensure!(l.params.len() == params.len(), "graph {id} launch {index}: parameter block size changed");
        l.params.copy_from_slice(params);
        let mut args = [std::ptr::null_mut(); 1];
        let p = node_params(*f, l, &mut args);
        // SAFETY: same kernel and shape as the node was created with; params copied.
        check(unsafe { sys::cuGraphExecKernelNodeSetParams_v2(exec, *node, &p) }, "updating a graph node")
    }

    fn graph_launch(&self, id: GraphId) -> Result<()> {
        let raw = self.lock()?;
        let g = raw.graphs.get(&id).ok_or_else(|| anyhow!("no graph {id}"))?;
        // SAFETY: an instantiated graph, launched on the legacy default stream so it is
        // ordered with the synchronous copies.
        check(unsafe { sys::cuGraphLaunch(g.exec, std::ptr::null_mut()) }, "cuGraphLaunch")
    }

    fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        let mut ev: [sys::CUevent; 2] = [std::ptr::null_mut(); 2];
        {
            let _g = self.lock()?;
            for e in ev.iter_mut() {
                // SAFETY: valid out-pointer; default flags (timing enabled).
                check(unsafe { sys::cuEventCreate(e, 0) }, "cuEventCreate")?;
            }
        }
        let timed = (|| -> Result<f64> {
            // Both events go on the legacy default stream, where launches and graphs run.
            {
                let _g = self.lock()?;
                // SAFETY: events created above, null = the default stream.
                check(unsafe { sys::cuEventRecord(ev[0], std::ptr::null_mut()) }, "cuEventRecord")?;
            }
            f()?;
            let _g = self.lock()?;
            let mut ms = 0f32;
            // SAFETY: as above; valid out-pointer.
            unsafe {
                check(sys::cuEventRecord(ev[1], std::ptr::null_mut()), "cuEventRecord")?;
                check(sys::cuEventSynchronize(ev[1]), "a GPU kernel (reported at an event)")?;
                check(sys::cuEventElapsedTime(&mut ms, ev[0], ev[1]), "cuEventElapsedTime")?;
            }
            Ok(f64::from(ms))
        })();
        if let Ok(_g) = self.lock() {
            for e in ev.into_iter().filter(|e| !e.is_null()) {
                // SAFETY: created above and no longer used.
                unsafe { sys::cuEventDestroy_v2(e) };
            }
        }
        timed
    }

    fn graph_destroy(&self, id: GraphId) {
        if let Ok(mut raw) = self.lock() {
            if let Some(g) = raw.graphs.remove(&id) {
                // SAFETY: created by graph_create; not used after this.
                unsafe {
                    sys::cuGraphExecDestroy(g.exec);
                    sys::cuGraphDestroy(g.graph);
                }
            }
        }
    }
}
