//! The CPU backend: the oracle every GPU kernel is tested against and the fallback when
//! no GPU is present. Convolutions and attention run on a blocked GEMM (`gemm.rs`) whose
//! micro-kernel and tile shape follow the instruction set chosen once per backend
//! (`isa.rs`: AMX, AVX-512, AVX2 or portable, and the software twins of the first two);
//! 3x3 stride-1 convolutions by Winograd F(2x2,3x3) (`winograd.rs`); with bf16 weights
//! on a CPU that multiplies bf16, the convolutions run on AMX tiles (`amx.rs`,
//! `gemm_bf16.rs`) or the `vdpbf16ps` pair kernel (`vec16.rs`). Everything else is
//! straightforward loops with f64 where a reduction could lose precision.
//!
//! Every op validates its regions (bounds, shapes, broadcast, output/input overlap)
//! and returns an error instead of panicking; after that the kernels work on raw
//! pointers, since outputs and inputs may be regions of the same buffer.

#[macro_use]
mod simd;
mod amx;
mod attention;
mod bf16;
mod conv;
mod elementwise;
mod gemm;
mod gemm_bf16;
mod hspace;
pub mod isa;
mod linear;
mod norm;
mod pad;
mod step;
#[cfg(test)]
pub(crate) mod testutil;
mod threads;
mod vec16;
mod winograd;

use anyhow::{ensure, Result};

use super::{Act, Backend, Cat, Conv2d, DdimStep, WeightKind};
use crate::dtype::Precision;
use crate::tensor::HostTensor;
use isa::{Bf16Tiles, Isa};
use threads::Pool;

pub(super) use super::check::{check_disjoint, check_input, check_region, check_vector};
use super::check::{Floats, WeightMeta};

/// An f32 buffer written through shared references: ops take `&CpuBuf` for inputs and
/// outputs alike (the trait's `Act` borrows immutably), so the storage is a raw
/// allocation that is only ever accessed through pointers into validated regions.
pub struct CpuBuf {
    ptr: *mut f32,
    len: usize,
}

// SAFETY: the buffer owns its allocation; concurrent access goes through disjoint
// regions, which every op checks (outputs never overlap inputs).
unsafe impl Send for CpuBuf {}
unsafe impl Sync for CpuBuf {}

impl CpuBuf {
    /// Fallible: an arena too large for memory is an error, not an abort.
    fn new(len: usize, fill: f32) -> Result<Self> {
        let mut v: Vec<f32> = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|e| anyhow::anyhow!("out of memory ({:.1} MiB requested: {e})", len as f64 * 4.0 / 1048576.0))?;
        v.resize(len, fill);
        let b: Box<[f32]> = v.into_boxed_slice();
        Ok(Self { ptr: Box::into_raw(b) as *mut f32, len })
    }
    /// Length in floats.
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    fn ptr(&self) -> *mut f32 {
        self.ptr
    }
}

impl WeightMeta for CpuWeight {
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn kind(&self) -> WeightKind {
        self.kind
    }
}

impl Floats for CpuBuf {
    fn floats(&self) -> usize {
        self.len
    }
}

impl Drop for CpuBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` came from `Box::into_raw` of a boxed slice in `new`.
        unsafe { drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len))) }
    }
}

/// An uploaded weight. Conv weights are stored pre-packed, so the conv never repacks
/// them: as the f32 kernel's A panels (`[ceil(cout/MR)][cin*k*k][MR]`, zero-padded) in
/// `data`, or, on a backend with bf16 tiles, as the tiles' A blocks in `tiles` (then
/// `data` is empty).
pub struct CpuWeight {
    shape: Vec<usize>,
    kind: WeightKind,
    data: Vec<f32>,
    tiles: Vec<u16>,
    /// A 3x3 conv weight's Winograd transform (`winograd.rs`), made at its first
    /// stride-1 use.
    winograd: std::sync::OnceLock<Vec<f32>>,
}

impl CpuWeight {
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn kind(&self) -> WeightKind {
        self.kind
    }
    /// Number of logical elements (not the packed length).
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// The CPU backend. `threads` workers are used for ops large enough to benefit; the
/// matrix products run on the instructions of `isa` (`isa.rs`).
pub struct CpuBackend {
    threads: usize,
    pool: Pool,
    isa: Isa,
    /// The tiles of the bf16 products, when the weights are stored as bf16 and the ISA
    /// has them; otherwise every product is f32.
    bf16: Option<Bf16Tiles>,
    /// Why better ISAs were passed over (or that the choice was forced), for `describe`.
    passed: Vec<String>,
    /// 3x3 stride-1 f32 convolutions by Winograd F(2x2, 3x3) (`winograd.rs`); off:
    /// all by the direct implicit GEMM (`DIFFSTYLE_CPU_WINOGRAD=0`).
    winograd: bool,
}

impl CpuBackend {
    /// The best ISA of this CPU, f32 products (`DIFFSTYLE_CPU_ISA` is not read; see
    /// [`CpuBackend::from_env`]). `threads == 0` uses `std::thread::available_parallelism`.
    pub fn new(threads: usize) -> Self {
        let (isa, passed) = Isa::best();
        Self::build(threads, isa, None, passed)
    }

    /// `isa`, refused with the reason when this CPU lacks it; with `precision` bf16 the
    /// convolutions multiply on the ISA's bf16 tiles (where it has them).
    pub fn with_isa(threads: usize, isa: Isa, precision: Precision) -> Result<Self> {
        isa.available().map_err(|why| anyhow::anyhow!("CPU instruction set {isa}: {why}"))?;
        Ok(Self::build(threads, isa, Self::tiles_for(isa, precision), Vec::new()))
    }

    /// The ISA forced by `DIFFSTYLE_CPU_ISA`, else the best; precision as in
    /// [`CpuBackend::with_isa`].
    pub fn from_env(threads: usize, precision: Precision) -> Result<Self> {
        let (isa, passed) = Isa::from_env().map_err(|e| anyhow::anyhow!(e))?;
        let be = Self::build(threads, isa, Self::tiles_for(isa, precision), passed);
        Ok(match std::env::var("DIFFSTYLE_CPU_WINOGRAD").as_deref() {
            Ok("0") => be.with_winograd(false),
            Ok("1") | Ok("") | Err(_) => be,
            Ok(other) => anyhow::bail!("DIFFSTYLE_CPU_WINOGRAD={other}: expected 0 (off) or 1 (on, the default)"),
        })
    }

    /// With Winograd for the 3x3 stride-1 f32 convolutions (the default) or without.
    pub fn with_winograd(mut self, on: bool) -> Self {
        self.winograd = on;
        self
    }

    fn tiles_for(isa: Isa, precision: Precision) -> Option<Bf16Tiles> {
        if precision == Precision::Bf16 {
            isa.bf16_tiles()
        } else {
            None
        }
    }

    fn build(threads: usize, isa: Isa, bf16: Option<Bf16Tiles>, passed: Vec<String>) -> Self {
        let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
        Self { threads, pool: Pool::default(), isa, bf16, passed, winograd: true }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// The bf16 tiles the convolutions use, if any.
    pub fn bf16_tiles(&self) -> Option<Bf16Tiles> {
        self.bf16
    }
}

impl Default for CpuBackend {
    fn default() -> Self {
        Self::new(0)
    }
}

// ---- region validation, shared by the op files ----

type A<'a> = Act<'a, CpuBuf>;

/// First float of the region.
fn base(a: &A) -> *mut f32 {
    // SAFETY: callers validated the region, so `off <= len`.
    unsafe { a.buf.ptr().add(a.off) }
}

/// First float of the input sample read by output sample `b` (broadcast rule).
fn sample_ptr(a: &A, b: usize) -> *const f32 {
    // SAFETY: callers validated the region and `a.n >= 1`.
    unsafe { base(a).add((b % a.n) * a.sample_len()) }
}

/// The sample of `a` read by output sample `b`, as a slice.
///
/// # Safety
/// `a` validated, and no other thread writes that sample meanwhile.
unsafe fn sample<'a>(a: &A<'a>, b: usize) -> &'a [f32] {
    std::slice::from_raw_parts(sample_ptr(a, b), a.sample_len())
}

/// Output sample `b` of `a`, as a mutable slice.
///
/// # Safety
/// `a` validated, disjoint from every input, and sample `b` written by one thread only.
#[allow(clippy::mut_from_ref)]
unsafe fn sample_mut<'a>(a: &A<'a>, b: usize) -> &'a mut [f32] {
    std::slice::from_raw_parts_mut(base(a).add(b * a.sample_len()), a.sample_len())
}

impl Backend for CpuBackend {
    type Buf = CpuBuf;
    type Weight = CpuWeight;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn describe(&self) -> String {
        let mut products = self.isa.f32_kernel().describe().to_string();
        if let Some(t) = self.bf16 {
            products += &format!(", conv weights {}", t.describe());
        }
        if self.winograd {
            products += ", 3x3 convs by Winograd F(2x2,3x3)";
        }
        let mut s = format!("cpu, isa {} ({products}), {} threads", self.isa, self.threads);
        if !self.passed.is_empty() {
            s += &format!("; {}", self.passed.join("; "));
        }
        s
    }

    fn alloc(&self, len: usize) -> Result<CpuBuf> {
        CpuBuf::new(len, f32::NAN)
    }

    fn upload(&self, dst: A<'_>, data: &[f32]) -> Result<()> {
        check_region(&dst, "upload")?;
        ensure!(data.len() == dst.len(), "upload: {} floats for a region of {}", data.len(), dst.len());
        // SAFETY: region validated; `data` is host memory, not part of any CpuBuf.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), base(&dst), data.len()) };
        Ok(())
    }

    fn download(&self, src: A<'_>) -> Result<Vec<f32>> {
        check_region(&src, "download")?;
        // SAFETY: region validated.
        Ok(unsafe { std::slice::from_raw_parts(base(&src), src.len()) }.to_vec())
    }

    fn upload_weight(&self, t: &HostTensor, kind: WeightKind) -> Result<CpuWeight> {
        let shape = t.shape.clone();
        ensure!(
            shape.iter().product::<usize>() == t.data.len(),
            "upload_weight: shape {shape:?} does not match {} floats",
            t.data.len()
        );
        let mut tiles = Vec::new();
        let data = match kind {
            WeightKind::Conv => {
                ensure!(
                    shape.len() == 4 && shape[2] == shape[3] && shape[2] >= 1,
                    "upload_weight: conv weight must be [cout, cin, k, k], got {shape:?}"
                );
                let (cout, kk) = (shape[0], shape[1] * shape[2] * shape[3]);
                if let Some(path) = self.bf16 {
                    tiles = conv::pack_weight_bf16(path, &t.data, cout, kk);
                    Vec::new()
                } else {
                    conv::pack_weight(self.isa.f32_kernel(), &t.data, cout, kk)
                }
            }
            WeightKind::Linear => {
                ensure!(shape.len() == 2, "upload_weight: linear weight must be [out, in], got {shape:?}");
                t.data.clone()
            }
            WeightKind::Vector => t.data.clone(),
        };
        Ok(CpuWeight { shape, kind, data, tiles, winograd: Default::default() })
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }

    fn copy(&self, src: A<'_>, dst: A<'_>) -> Result<()> {
        elementwise::copy(self, src, dst)
    }

    fn timestep_embedding(&self, t: &[f32], flip_sin_to_cos: bool, freq_shift: f32, out: A<'_>) -> Result<()> {
        elementwise::timestep_embedding(t, flip_sin_to_cos, freq_shift, out)
    }

    fn linear(&self, x: A<'_>, w: &CpuWeight, b: &CpuWeight, silu_input: bool, out: A<'_>) -> Result<()> {
        linear::linear(self, x, w, b, silu_input, out)
    }

    fn group_norm(
        &self,
        x: Cat<'_, CpuBuf>,
        gamma: &CpuWeight,
        beta: &CpuWeight,
        groups: usize,
        eps: f32,
        silu: bool,
        out: A<'_>,
    ) -> Result<()> {
        norm::group_norm(self, x, gamma, beta, groups, eps, None, silu, out)
    }

    fn group_norm_film(
        &self,
        x: A<'_>,
        gamma: &CpuWeight,
        beta: &CpuWeight,
        groups: usize,
        eps: f32,
        film: A<'_>,
        silu: bool,
        out: A<'_>,
    ) -> Result<()> {
        norm::group_norm(self, x.into(), gamma, beta, groups, eps, Some(film), silu, out)
    }

    fn resample(&self, x: A<'_>, up: bool, out: A<'_>) -> Result<()> {
        elementwise::resample(self, x, up, out)
    }

    fn conv2d(&self, p: &Conv2d<'_, Self>) -> Result<()> {
        conv::conv2d(self, p)
    }

    fn attention(&self, qkv: A<'_>, heads: usize, out: A<'_>) -> Result<()> {
        attention::attention(self, qkv, heads, out)
    }

    fn hspace_mix(&self, h: A<'_>, hc: A<'_>, gamma: f32, mask: Option<A<'_>>, out: A<'_>) -> Result<()> {
        hspace::hspace_mix(h, hc, gamma, mask, out)
    }

    fn ddim_step(&self, p: &DdimStep<'_, CpuBuf>) -> Result<()> {
        step::ddim_step(self, p)
    }

    fn calibrate(&self, x: A<'_>, eps: A<'_>, eps_mod: A<'_>, a: f32, omega: f32, out: A<'_>) -> Result<()> {
        step::calibrate(x, eps, eps_mod, a, omega, out)
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn alloc_is_nan_and_roundtrips() {
        let be = CpuBackend::new(1);
        let buf = be.alloc(10).unwrap();
        assert!(be.download(Act::new(&buf, 0, 1, 10, 1, 1)).unwrap().iter().all(|v| v.is_nan()));
        let d = rand_vec(1, 4);
        be.upload(Act::new(&buf, 3, 1, 4, 1, 1), &d).unwrap();
        assert_eq!(be.download(Act::new(&buf, 3, 1, 2, 2, 1)).unwrap(), d);
        assert!(be.download(Act::new(&buf, 7, 1, 4, 1, 1)).is_err());
        assert!(be.upload(Act::new(&buf, 0, 1, 4, 1, 1), &d[..3]).is_err());
        assert!(be.download(Act::new(&buf, usize::MAX, 1, 4, 1, 1)).is_err());
        assert_eq!(be.name(), "cpu");
        be.sync().unwrap();
    }

    #[test]
    fn alloc_failure_is_an_error() {
        let be = CpuBackend::new(1);
        // More than the address space: refused up front, never an abort.
        let e = be.alloc(usize::MAX / 2).err().expect("absurd allocation must fail");
        assert!(e.to_string().contains("out of memory"), "{e}");
    }

    #[test]
    fn weight_shapes_are_checked() {
        let be = CpuBackend::new(1);
        let t = |shape: Vec<usize>| HostTensor::new(shape.clone(), rand_vec(1, shape.iter().product()));
        assert!(be.upload_weight(&t(vec![4, 3, 3, 2]), WeightKind::Conv).is_err());
        assert!(be.upload_weight(&t(vec![4, 27]), WeightKind::Conv).is_err());
        assert!(be.upload_weight(&t(vec![4, 3, 1, 1]), WeightKind::Linear).is_err());
        let w = be.upload_weight(&t(vec![5, 3, 3, 3]), WeightKind::Conv).unwrap();
        assert_eq!((w.shape(), w.kind(), w.numel()), (&[5, 3, 3, 3][..], WeightKind::Conv, 135));
        // A conv weight is not a bias.
        let xb = place(&be, &rand_vec(2, 3));
        let ob = poisoned(&be, 5);
        assert!(be.linear(act(&xb, 1, 3, 1, 1), &w, &w, false, act(&ob, 1, 5, 1, 1)).is_err());
    }

    #[test]
    fn overlap_is_an_error() {
        let be = CpuBackend::new(1);
        let buf = be.alloc(32).unwrap();
        be.upload(Act::new(&buf, 0, 1, 32, 1, 1), &rand_vec(2, 32)).unwrap();
        assert!(be.copy(Act::new(&buf, 0, 1, 16, 1, 1), Act::new(&buf, 8, 1, 16, 1, 1)).is_err());
        be.copy(Act::new(&buf, 0, 1, 16, 1, 1), Act::new(&buf, 16, 1, 16, 1, 1)).unwrap();
    }
}

#[cfg(test)]
mod timing {
    use super::testutil::*;
    use super::*;
    use crate::backend::DdimStep;

    /// Per-op timings at U-Net sizes: `cargo test --lib cpu_op_timings -- --ignored
    /// --nocapture`. CPU seconds are reported too, since the machine may be shared.
    #[test]
    #[ignore]
    fn cpu_op_timings() {
        let be = CpuBackend::new(0);
        let report = |what: &str, (wall, cpu): (f64, f64)| {
            println!("{what:<48} {:>9.3} ms wall {:>9.3} ms cpu", wall * 1e3, cpu * 1e3)
        };
        let (c, hw) = (128, 256);
        let xb = place(&be, &rand_vec(1, 2 * c * hw * hw));
        let ob = poisoned(&be, 2 * c * hw * hw);
        let g = weight(&be, &[2 * c], rand_vec(2, 2 * c), WeightKind::Vector);
        let x = Cat { a: act(&xb, 1, c, hw, hw), b: Some(Act::new(&xb, OFF + c * hw * hw, 1, c, hw, hw)) };
        report(
            "group_norm+silu cat 128+128 x 256x256",
            time_it(3, || be.group_norm(x, &g, &g, 32, 1e-6, true, act(&ob, 1, 2 * c, hw, hw)).unwrap()),
        );
        for &(c, hw, heads) in &[(256, 16, 1), (512, 32, 8)] {
            let qb = place(&be, &rand_vec(3, 3 * c * hw * hw));
            let ob = poisoned(&be, c * hw * hw);
            report(
                &format!("attention C {c}, {} tokens, {heads} heads", hw * hw),
                time_it(3, || be.attention(act(&qb, 1, 3 * c, hw, hw), heads, act(&ob, 1, c, hw, hw)).unwrap()),
            );
        }
        let n = 3 * 256 * 256;
        let (xb, ob) = (place(&be, &rand_vec(4, 2 * n)), poisoned(&be, 2 * n));
        let step = |c_noise| DdimStep {
            x: act(&xb, 2, 3, 256, 256),
            eps_x0: act(&xb, 2, 3, 256, 256),
            eps_dir: act(&xb, 2, 3, 256, 256),
            out: act(&ob, 2, 3, 256, 256),
            a_i: 0.5,
            a_j: 0.6,
            c_dir: 0.3,
            c_noise,
            seed: 1,
            stream: 2,
        };
        report("ddim_step 2x3x256x256", time_it(5, || be.ddim_step(&step(0.0)).unwrap()));
        report("ddim_step 2x3x256x256 with noise", time_it(5, || be.ddim_step(&step(0.1)).unwrap()));
        let hb = place(&be, &rand_vec(5, 2 * 512 * 64));
        let ob = poisoned(&be, 512 * 64);
        report(
            "hspace_mix 512x8x8",
            time_it(20, || {
                be.hspace_mix(
                    act(&hb, 1, 512, 8, 8),
                    act(&hb, 1, 512, 8, 8).samples(0, 1),
                    0.3,
                    None,
                    act(&ob, 1, 512, 8, 8),
                )
                .unwrap()
            }),
        );

        // Tiny-U-Net-sized ops: per-call overhead matters more than throughput here.
        let (c, hw) = (32, 16);
        let xb = place(&be, &rand_vec(6, c * hw * hw));
        let ob = poisoned(&be, c * hw * hw);
        let wt = weight(&be, &[c, c, 3, 3], rand_vec(7, c * c * 9), WeightKind::Conv);
        let bias = weight(&be, &[c], rand_vec(8, c), WeightKind::Vector);
        let p = Conv2d::<CpuBackend> {
            x: act(&xb, 1, c, hw, hw).into(),
            w: &wt,
            bias: &bias,
            k: 3,
            stride: 1,
            pad: [1; 4],
            upsample: false,
            temb: None,
            residual: None,
            out: act(&ob, 1, c, hw, hw),
        };
        report("conv3x3 32->32 at 16x16", time_it(200, || be.conv2d(&p).unwrap()));
        report(
            "group_norm+silu 32 x 16x16",
            time_it(200, || {
                be.group_norm(act(&xb, 1, c, hw, hw).into(), &bias, &bias, 8, 1e-6, true, act(&ob, 1, c, hw, hw))
                    .unwrap()
            }),
        );
        let qb = place(&be, &rand_vec(9, 3 * c * 64));
        report(
            "attention C 32, 64 tokens",
            time_it(200, || be.attention(act(&qb, 1, 3 * c, 8, 8), 1, act(&ob, 1, c, 8, 8)).unwrap()),
        );
    }
}
