//! The GPU backend: every op of the `Backend` trait is one launch of a hand-written
//! kernel from `kernels/*.cu`, on a `Device` that is either a real GPU (`cuda.rs`) or
//! the host emulation of the same kernels (`emu.rs`, what CI tests).
//!
//! Memory: activations are f32 buffers poisoned with NaN on allocation; conv weights
//! are stored in the run's precision (f32 / f16 / bf16, `[cout][cin*k*k]`), linear and
//! vector weights in f32. Allocations are counted so tests can assert that the step
//! loop allocates nothing. Each op family's launcher and its reference tests live in
//! the file named after it, next to the kernel of the same name in `kernels/`.

pub mod cuda;
pub mod device;
pub mod emu;
#[cfg(test)]
mod emu_checks;
pub mod params;

mod attention;
mod conv;
mod elementwise;
mod hspace;
pub mod limits;
pub mod micro;
mod norm;
mod resample;
mod step;
#[cfg(test)]
pub(crate) mod testutil;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{ensure, Context, Result};
use bytemuck::Pod;

use super::{Act, Backend, Cat, Conv2d, DdimStep, WeightKind};
use crate::dtype::Precision;
use crate::tensor::HostTensor;
use device::{DevPtr, Device, GraphId, Launch};

/// Allocation statistics of one backend (device bytes, all buffers and weights).
#[derive(Default)]
struct Stats {
    allocs: AtomicUsize,
    live: AtomicUsize,
    peak: AtomicUsize,
}

impl Stats {
    fn add(&self, bytes: usize) {
        self.allocs.fetch_add(1, Ordering::Relaxed);
        let live = self.live.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.peak.fetch_max(live, Ordering::Relaxed);
    }
    fn sub(&self, bytes: usize) {
        self.live.fetch_sub(bytes, Ordering::Relaxed);
    }
}

/// One device allocation, freed on drop.
struct Alloc {
    dev: Arc<dyn Device>,
    stats: Arc<Stats>,
    ptr: DevPtr,
    bytes: usize,
}

impl Drop for Alloc {
    fn drop(&mut self) {
        self.dev.free(self.ptr);
        self.stats.sub(self.bytes);
    }
}

/// An f32 device buffer.
pub struct GpuBuf {
    mem: Alloc,
    len: usize,
}

impl GpuBuf {
    /// Length in floats.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A size as the kernels' 32-bit `int`, or an error naming it.
pub(crate) fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).ok().with_context(|| format!("{what}: {v} does not fit the kernel's 32-bit int"))
}

impl super::check::WeightMeta for GpuWeight {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn kind(&self) -> WeightKind {
        self.kind
    }
}

impl super::check::Floats for GpuBuf {
    fn floats(&self) -> usize {
        self.len
    }
}

/// An uploaded weight: conv weights in the backend's storage type, the rest f32.
pub struct GpuWeight {
    mem: Alloc,
    pub(crate) shape: Vec<usize>,
    pub(crate) kind: WeightKind,
    /// A 3x3 conv weight stored `[cout][ky][kx][cin]` (K ordered tap by tap), for the
    /// kernels' per-tap gather; `[cout][cin][ky][kx]` otherwise.
    pub(crate) tap_major: bool,
}

/// Whether a conv weight of `shape` is stored tap-major: 3x3 weights whose input
/// channels come in whole 32-channel K slices (both conv kernels gather per tap then).
fn tap_major(shape: &[usize]) -> bool {
    shape.len() == 4 && shape[2] == 3 && shape[3] == 3 && shape[1].is_multiple_of(params::launch::DS_CONV_BK)
}

impl GpuWeight {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Graph counters (tests and `--verbose`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GraphStats {
    /// Graphs instantiated (one per distinct step shape).
    pub created: usize,
    /// Steps run by replaying an existing graph.
    pub replayed: usize,
    /// Node parameter blocks rewritten before a replay.
    pub updated_nodes: usize,
}

/// Steps recorded as launch lists and run as graphs: one graph per distinct sequence of
/// launch shapes, replayed with only the changed parameter blocks rewritten.
#[derive(Default)]
struct Graphs {
    recording: Option<Vec<Launch>>,
    cache: Vec<(GraphId, Vec<Launch>)>,
    stats: GraphStats,
}

/// Most distinct step shapes kept (plain, injecting, mixing, calibrating, ...).
const MAX_GRAPHS: usize = 16;

pub struct GpuBackend<D: Device> {
    dev: Arc<D>,
    precision: Precision,
    stats: Arc<Stats>,
    graphs: Mutex<Graphs>,
    use_graphs: bool,
    /// Synchronise after every launch and name the kernel that failed
    /// (`DIFFSTYLE_CUDA_SYNC=1`): how to find a faulting kernel on a GPU.
    sync_each: bool,
    /// Scratch for ops that pass partial results between two launches (split group
    /// norm): allocated once, at the first use, and shared by every op (launches are
    /// ordered, so one op's use ends before the next one's begins).
    scratch: Mutex<Option<Alloc>>,
}

/// Bytes of the shared scratch buffer: the group norm partial sums of 64 samples x 32
/// groups x 64 chunks (a batch of 32 pairs at mixed steps).
pub(crate) const SCRATCH_BYTES: usize = 2 * 1024 * 1024;

impl<D: Device> GpuBackend<D> {
    /// The backend on `dev`; with `DIFFSTYLE_CUDA_SYNC=1` in the environment it runs
    /// as [`Self::synchronous`].
    pub fn new(dev: D, precision: Precision) -> Self {
        let be = Self {
            dev: Arc::new(dev),
            precision,
            stats: Arc::default(),
            graphs: Mutex::default(),
            use_graphs: true,
            sync_each: false,
            scratch: Mutex::default(),
        };
        if std::env::var_os("DIFFSTYLE_CUDA_SYNC").is_some_and(|v| v != "0" && !v.is_empty()) {
            be.synchronous()
        } else {
            be
        }
    }

    /// Runs every op as a direct launch, never as a graph (for comparisons).
    pub fn without_graphs(mut self) -> Self {
        self.use_graphs = false;
        self
    }

    /// No graphs, and a synchronisation after every launch, so that a kernel that
    /// faults is named by the error (a graph or an asynchronous launch reports the
    /// fault at some later call).
    pub fn synchronous(mut self) -> Self {
        self.use_graphs = false;
        self.sync_each = true;
        self
    }

    pub fn graph_stats(&self) -> GraphStats {
        self.lock_graphs().stats
    }

    fn lock_graphs(&self) -> MutexGuard<'_, Graphs> {
        self.graphs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs what has been recorded so far of the current step (as a graph), so that a
    /// host copy in the middle of a step sees its results; recording goes on.
    fn flush(&self) -> Result<()> {
        let mut g = self.lock_graphs();
        let Some(rec) = g.recording.take() else { return Ok(()) };
        g.recording = Some(Vec::new());
        self.run_graph(&mut g, rec)
    }

    fn run_graph(&self, g: &mut Graphs, rec: Vec<Launch>) -> Result<()> {
        if rec.is_empty() {
            return Ok(());
        }
        let same =
            |cached: &[Launch]| cached.len() == rec.len() && cached.iter().zip(&rec).all(|(a, b)| a.same_shape(b));
        if let Some(k) = g.cache.iter().position(|(_, c)| same(c)) {
            let id = g.cache[k].0;
            let mut updated = 0;
            for (i, l) in rec.iter().enumerate() {
                if g.cache[k].1[i].params != l.params {
                    self.dev.graph_set_params(id, i, &l.params)?;
                    updated += 1;
                }
            }
            g.cache[k].1 = rec;
            g.stats.replayed += 1;
            g.stats.updated_nodes += updated;
            return self.dev.graph_launch(id);
        }
        let id = self.dev.graph_create(&rec)?;
        if g.cache.len() == MAX_GRAPHS {
            let (old, _) = g.cache.remove(0);
            self.dev.graph_destroy(old);
        }
        g.cache.push((id, rec));
        g.stats.created += 1;
        self.dev.graph_launch(id)
    }

    pub fn device(&self) -> &D {
        &self.dev
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Storage type of conv weights, as the kernels' name suffix.
    pub fn suffix(&self) -> &'static str {
        self.precision.name()
    }

    /// Device allocations made so far (buffers and weights).
    pub fn alloc_count(&self) -> usize {
        self.stats.allocs.load(Ordering::Relaxed)
    }

    /// Largest number of device bytes held at once so far.
    pub fn peak_bytes(&self) -> usize {
        self.stats.peak.load(Ordering::Relaxed)
    }

    fn raw_alloc(&self, bytes: usize) -> Result<Alloc> {
        let ptr = self.dev.alloc(bytes)?;
        self.stats.add(bytes);
        Ok(Alloc { dev: self.dev.clone(), stats: self.stats.clone(), ptr, bytes })
    }

    /// Device address of `a`'s first element, after checking that `a` lies inside its
    /// buffer.
    pub(crate) fn addr(&self, a: &Act<'_, GpuBuf>, what: &str) -> Result<u64> {
        ensure!(
            a.off.checked_add(a.len()).is_some_and(|end| end <= a.buf.len),
            "{what}: region [{}, {}) outside its buffer of {} floats",
            a.off,
            a.off + a.len(),
            a.buf.len
        );
        Ok(a.buf.mem.ptr + 4 * a.off as u64)
    }

    /// Device address of a weight.
    /// `upload_weight`, with the tap-major layout allowed or not (micro-benchmarks time
    /// both conv gathers).
    pub(crate) fn upload_weight_as(&self, t: &HostTensor, kind: WeightKind, allow_tap: bool) -> Result<GpuWeight> {
        self.flush()?;
        // Only conv weights are stored reduced (the bulk of the bytes and the tensor-core
        // operand); the host already rounded every weight through the precision.
        let tap = allow_tap && kind == WeightKind::Conv && tap_major(&t.shape);
        let reordered;
        let data: &[f32] = if tap {
            let (cout, cin, taps) = (t.shape[0], t.shape[1], t.shape[2] * t.shape[3]);
            let mut v = vec![0f32; t.data.len()];
            for co in 0..cout {
                for ci in 0..cin {
                    for k in 0..taps {
                        v[(co * taps + k) * cin + ci] = t.data[(co * cin + ci) * taps + k];
                    }
                }
            }
            reordered = v;
            &reordered
        } else {
            &t.data
        };
        let bytes: Vec<u8> = match (kind, self.precision) {
            (WeightKind::Conv, Precision::F16) => {
                data.iter().flat_map(|&v| half::f16::from_f32(v).to_bits().to_le_bytes()).collect()
            }
            (WeightKind::Conv, Precision::Bf16) => {
                data.iter().flat_map(|&v| half::bf16::from_f32(v).to_bits().to_le_bytes()).collect()
            }
            _ => bytemuck::cast_slice(data).to_vec(),
        };
        let mem = self.raw_alloc(bytes.len())?;
        self.dev.htod(mem.ptr, &bytes)?;
        Ok(GpuWeight { mem, shape: t.shape.clone(), kind, tap_major: tap })
    }

    /// The device address of the scratch buffer, which must hold `bytes`.
    pub(crate) fn scratch(&self, bytes: usize) -> Result<u64> {
        ensure!(bytes <= SCRATCH_BYTES, "an op needs {bytes} bytes of scratch, more than the {SCRATCH_BYTES} reserved");
        let mut s = self.scratch.lock().unwrap_or_else(|e| e.into_inner());
        if s.is_none() {
            *s = Some(self.raw_alloc(SCRATCH_BYTES)?);
        }
        Ok(s.as_ref().expect("allocated above").ptr)
    }

    pub(crate) fn wptr(&self, w: &GpuWeight) -> u64 {
        w.mem.ptr
    }

    /// Launches `kernel` with one parameter block (or records it inside a step). The
    /// block and its shared memory must fit the kernel's compiled limits on every
    /// architecture of the fatbin (`limits`), on the emulator too.
    pub(crate) fn launch<P: Pod>(&self, kernel: &str, grid: [u32; 3], block: [u32; 3], smem: u32, p: &P) -> Result<()> {
        limits::check(kernel, block, smem)?;
        let params = bytemuck::bytes_of(p);
        if let Some(rec) = self.lock_graphs().recording.as_mut() {
            rec.push(Launch { kernel: kernel.to_string(), grid, block, smem, params: params.to_vec() });
            return Ok(());
        }
        self.dev.launch(kernel, grid, block, smem, params)?;
        if self.sync_each {
            self.dev
                .sync()
                .with_context(|| format!("kernel {kernel} (grid {grid:?}, block {block:?}, {smem} B shared) failed"))?;
        }
        Ok(())
    }
}

impl<D: Device> Drop for GpuBackend<D> {
    fn drop(&mut self) {
        for (id, _) in self.lock_graphs().cache.drain(..) {
            self.dev.graph_destroy(id);
        }
    }
}

impl<D: Device> Backend for GpuBackend<D> {
    type Buf = GpuBuf;
    type Weight = GpuWeight;

    fn name(&self) -> &'static str {
        self.dev.kind()
    }

    fn describe(&self) -> String {
        format!("{}, {:?} weights", self.dev.describe(), self.precision)
    }

    fn peak_device_bytes(&self) -> Option<usize> {
        Some(self.peak_bytes())
    }

    fn time_ms(&self, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
        self.dev.time_ms(f)
    }

    fn alloc(&self, len: usize) -> Result<GpuBuf> {
        let bytes = len.checked_mul(4).context("out of memory: buffer size overflows")?;
        let mem = self.raw_alloc(bytes)?;
        // Poison: an op that forgets to write an element leaves a NaN that tests see.
        self.dev.fill_u32(mem.ptr, f32::NAN.to_bits(), len)?;
        Ok(GpuBuf { mem, len })
    }

    fn upload(&self, dst: Act<'_, GpuBuf>, data: &[f32]) -> Result<()> {
        self.flush()?;
        ensure!(data.len() == dst.len(), "upload: {} values for a region of {}", data.len(), dst.len());
        let p = self.addr(&dst, "upload")?;
        self.dev.htod(p, bytemuck::cast_slice(data))
    }

    fn download(&self, src: Act<'_, GpuBuf>) -> Result<Vec<f32>> {
        self.flush()?;
        let p = self.addr(&src, "download")?;
        let mut v = vec![0f32; src.len()];
        self.dev.dtoh(p, bytemuck::cast_slice_mut(&mut v))?;
        Ok(v)
    }

    fn upload_weight(&self, t: &HostTensor, kind: WeightKind) -> Result<GpuWeight> {
        self.upload_weight_as(t, kind, true)
    }

    fn sync(&self) -> Result<()> {
        self.flush()?;
        self.dev.sync()
    }

    fn begin_step(&self) -> Result<()> {
        // A recording left over from a step that failed part-way never ran; its error
        // has been reported, so it is dropped.
        self.lock_graphs().recording = self.use_graphs.then(Vec::new);
        Ok(())
    }

    fn end_step(&self) -> Result<()> {
        let mut g = self.lock_graphs();
        match g.recording.take() {
            Some(rec) => self.run_graph(&mut g, rec),
            None => Ok(()),
        }
    }

    fn copy(&self, src: Act<'_, GpuBuf>, dst: Act<'_, GpuBuf>) -> Result<()> {
        elementwise::copy(self, src, dst)
    }

    fn timestep_embedding(&self, t: &[f32], flip: bool, shift: f32, out: Act<'_, GpuBuf>) -> Result<()> {
        elementwise::timestep_embedding(self, t, flip, shift, out)
    }

    fn linear(
        &self,
        x: Act<'_, GpuBuf>,
        w: &GpuWeight,
        b: &GpuWeight,
        silu_input: bool,
        out: Act<'_, GpuBuf>,
    ) -> Result<()> {
        elementwise::linear(self, x, w, b, silu_input, out)
    }

    fn group_norm(
        &self,
        x: Cat<'_, GpuBuf>,
        gamma: &GpuWeight,
        beta: &GpuWeight,
        groups: usize,
        eps: f32,
        silu: bool,
        out: Act<'_, GpuBuf>,
    ) -> Result<()> {
        norm::group_norm(self, x, gamma, beta, groups, eps, None, silu, out)
    }

    fn group_norm_film(
        &self,
        x: Act<'_, GpuBuf>,
        gamma: &GpuWeight,
        beta: &GpuWeight,
        groups: usize,
        eps: f32,
        film: Act<'_, GpuBuf>,
        silu: bool,
        out: Act<'_, GpuBuf>,
    ) -> Result<()> {
        norm::group_norm(self, x.into(), gamma, beta, groups, eps, Some(film), silu, out)
    }

    fn resample(&self, x: Act<'_, GpuBuf>, up: bool, out: Act<'_, GpuBuf>) -> Result<()> {
        resample::resample(self, x, up, out)
    }

    fn conv2d(&self, p: &Conv2d<'_, Self>) -> Result<()> {
        conv::conv2d(self, p)
    }

    fn attention(&self, qkv: Act<'_, GpuBuf>, heads: usize, out: Act<'_, GpuBuf>) -> Result<()> {
        attention::attention(self, qkv, heads, out)
    }

    fn hspace_mix(
        &self,
        h: Act<'_, GpuBuf>,
        hc: Act<'_, GpuBuf>,
        gamma: f32,
        mask: Option<Act<'_, GpuBuf>>,
        out: Act<'_, GpuBuf>,
    ) -> Result<()> {
        hspace::hspace_mix(self, h, hc, gamma, mask, out)
    }

    fn ddim_step(&self, p: &DdimStep<'_, GpuBuf>) -> Result<()> {
        step::ddim_step(self, p)
    }

    fn calibrate(
        &self,
        x: Act<'_, GpuBuf>,
        eps: Act<'_, GpuBuf>,
        eps_mod: Act<'_, GpuBuf>,
        a: f32,
        omega: f32,
        out: Act<'_, GpuBuf>,
    ) -> Result<()> {
        step::calibrate(self, x, eps, eps_mod, a, omega, out)
    }
}

/// Every kernel family's micro-benchmarks on `be`: each family file holds its own
/// `micro` next to its reference tests; `micro.rs` times them. The list lives here so
/// that `micro.rs` names no family file.
pub fn micro_benchmarks<D: Device>(be: &GpuBackend<D>, small: bool) -> Result<Vec<micro::KernelTiming>> {
    let mut sink = micro::Sink::new(be, small)?;
    conv::micro(&mut sink)?;
    norm::micro(&mut sink)?;
    attention::micro(&mut sink)?;
    elementwise::micro(&mut sink)?;
    resample::micro(&mut sink)?;
    hspace::micro(&mut sink)?;
    step::micro(&mut sink)?;
    Ok(sink.out)
}
