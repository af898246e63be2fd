//! Fused conv2d as an implicit GEMM: `out[co, p] = W[co, K] * col[K, p]` per sample,
//! `K = cin*k*k` in the weight's own `(ci, ky, kx)` order. The im2col matrix is never
//! materialised: the sample's channels (a then b) are copied once into a zero-padded,
//! optionally 2x up-sampled scratch image (skipped when there is neither), and each
//! work item packs its `KC x nc` im2col block from it into GEMM B panels with no
//! bounds tests. Weights arrive pre-packed as A panels. The output is initialised
//! with bias + temb + residual and the GEMM accumulates onto it.

use anyhow::Result;

#[cfg(target_arch = "x86_64")]
use super::amx::real::AmxTiles;
use super::amx::{EmuTiles, Tiles};
use super::bf16;
use super::gemm::{self, with_kernel, Kernel, MatRef};
use super::gemm_bf16;
use super::isa::{Bf16Tiles, F32Kernel};
use super::pad::{sample_planes, Padding};
use super::threads::{par_for, row_split, workers_for, SyncPtr};
use super::vec16;
use super::winograd;
use super::{base, sample_ptr, CpuBackend};
use crate::backend::check::{check_conv2d, ConvShape};
use crate::backend::Conv2d;

/// Output pixels per work item (a multiple of NR); a `KC x NC` B block is 256 KB.
const NC: usize = 512;

/// Packs a row-major `[cout, kk]` weight into the A panels of `kind`'s tile shape.
pub(super) fn pack_weight(kind: F32Kernel, w: &[f32], cout: usize, kk: usize) -> Vec<f32> {
    with_kernel!(kind, |kern| {
        let mut dst = vec![0f32; kern.packed_a_len(cout, kk)];
        // SAFETY: `w` holds `cout * kk` floats (checked by the caller), `dst` is sized for it.
        unsafe { kern.pack_a(MatRef { ptr: w.as_ptr(), rs: kk as isize, cs: 1 }, cout, kk, &mut dst) };
        dst
    })
}

/// A 3x3 stride-1 convolution by Winograd on `prod` when the backend uses it, else
/// `direct()`. The transformed weights are made from `raw()` (the row-major weight) at
/// the first stride-1 use, so a 3x3 weight used only with stride 2 (a downsampler's)
/// never pays for them.
fn winograd_or<P: winograd::Products>(
    be: &CpuBackend,
    p: &Conv2d<'_, CpuBackend>,
    prod: P,
    raw: impl FnOnce(usize, usize) -> Vec<f32>,
    direct: impl FnOnce() -> Result<()>,
) -> Result<()> {
    if !(be.winograd && p.k == 3 && p.stride == 1) {
        return direct();
    }
    check_conv2d(p)?;
    let (cout, cin) = (p.w.shape[0], p.w.shape[1]);
    let u = p.w.winograd.get_or_init(|| winograd::pack_weights(&prod, &raw(cout, cin * 9), cout, cin));
    winograd::conv2d(be, p, &prod, u)
}

/// A bf16 convolution on the vector tile's bf16 pairs.
fn pair_conv(be: &CpuBackend, p: &Conv2d<'_, CpuBackend>, kern: Kernel<14, 32>, w: SyncPtr<u16>) -> Result<()> {
    let raw = |cout, kk| unpack_pairs(&p.w.tiles, cout, kk);
    winograd_or(be, p, winograd::Pairs::new(kern), raw, || conv2d_with(be, p, &PairGemm { kern, w }))
}

/// A bf16 convolution on AMX tiles (real or twin).
fn amx_conv<T: Tiles, F: Fn() -> T + Sync + Copy>(
    be: &CpuBackend,
    p: &Conv2d<'_, CpuBackend>,
    tiles: F,
    w: SyncPtr<u16>,
) -> Result<()> {
    let raw = |cout, kk| unpack_blocks(&p.w.tiles, cout, kk);
    winograd_or(be, p, winograd::Amx(tiles), raw, || conv2d_with(be, p, &Bf16Gemm { w, tiles }))
}

/// The row-major `[cout, kk]` weight (bf16 values) back from the AMX A blocks of
/// `pack_weight_bf16` (`[m/32][k/32][32 rows][32 k]`).
fn unpack_blocks(a: &[u16], cout: usize, kk: usize) -> Vec<f32> {
    const B: usize = gemm_bf16::BLK;
    let kb = kk.div_ceil(B);
    let mut w = vec![0f32; cout * kk];
    for (i, row) in w.chunks_exact_mut(kk).enumerate() {
        for (k, v) in row.iter_mut().enumerate() {
            *v = f32::from_bits((a[((i / B) * kb + k / B) * B * B + (i % B) * B + k % B] as u32) << 16);
        }
    }
    w
}

/// The row-major `[cout, kk]` weight (bf16 values) back from the pair panels of
/// `pack_weight_bf16`.
fn unpack_pairs(a: &[u16], cout: usize, kk: usize) -> Vec<f32> {
    const MR: usize = vec16::MR16;
    let kp = kk.div_ceil(2);
    let mut w = vec![0f32; cout * kk];
    for (co, row) in w.chunks_exact_mut(kk).enumerate() {
        for (k, v) in row.iter_mut().enumerate() {
            *v = f32::from_bits((a[((co / MR * kp + k / 2) * MR + co % MR) * 2 + k % 2] as u32) << 16);
        }
    }
    w
}

/// The row-major `[cout, kk]` weight back from `pack_weight`'s A panels.
fn unpack_weight<const MR: usize, const NR: usize>(_: Kernel<MR, NR>, a: &[f32], cout: usize, kk: usize) -> Vec<f32> {
    let mut w = vec![0f32; cout * kk];
    for (co, row) in w.chunks_exact_mut(kk).enumerate() {
        let panel = &a[co / MR * kk * MR..][..kk * MR];
        row.iter_mut().zip(panel.chunks_exact(MR)).for_each(|(v, p)| *v = p[co % MR]);
    }
    w
}

/// Packs a row-major `[cout, kk]` weight for the bf16 products of `path`: the AMX
/// tiles' A blocks (`gemm_bf16`), or the vector tile's A panels of bf16 pairs
/// (`[ceil(cout/14)][ceil(kk/2)][14]` pairs, zero-padded).
pub(super) fn pack_weight_bf16(path: Bf16Tiles, w: &[f32], cout: usize, kk: usize) -> Vec<u16> {
    match path {
        Bf16Tiles::Amx | Bf16Tiles::AmxEmu => {
            let mut dst = vec![0u16; gemm_bf16::packed_len(cout, kk)];
            gemm_bf16::pack_a(cout, kk, |i, p| w[i * kk + p], &mut dst);
            dst
        }
        Bf16Tiles::Avx512Bf16 | Bf16Tiles::Avx512Bf16Emu => {
            const MR: usize = vec16::MR16;
            let kp = kk.div_ceil(2);
            let mut dst = vec![0u16; cout.div_ceil(MR) * MR * kp * 2];
            for (i, panel) in dst.chunks_exact_mut(MR * kp * 2).enumerate() {
                for (q, lanes) in panel.chunks_exact_mut(MR * 2).enumerate() {
                    for (r, pair) in lanes.chunks_exact_mut(2).enumerate() {
                        let co = i * MR + r;
                        for (h, v) in pair.iter_mut().enumerate() {
                            let k = 2 * q + h;
                            *v = if co < cout && k < kk { bf16::round(w[co * kk + k]) } else { 0 };
                        }
                    }
                }
            }
            dst
        }
    }
}

pub(super) fn conv2d(be: &CpuBackend, p: &Conv2d<'_, CpuBackend>) -> Result<()> {
    if !p.w.tiles.is_empty() {
        // SAFETY (of `AmxTiles::new`): `Bf16Tiles::Amx` is only chosen once
        // `isa::cpu::amx` has been granted; `ukr_pairs_avx512` only where the CPU has
        // AVX512-BF16 (`Isa::bf16_tiles`).
        let w = SyncPtr(p.w.tiles.as_ptr() as *mut u16);
        return match be.bf16.expect("bf16-packed weights on a backend without bf16 products") {
            #[cfg(target_arch = "x86_64")]
            Bf16Tiles::Amx => amx_conv(be, p, || unsafe { AmxTiles::new() }, w),
            #[cfg(target_arch = "x86_64")]
            Bf16Tiles::Avx512Bf16 => pair_conv(be, p, Kernel::<14, 32> { ukr: vec16::ukr_pairs_avx512 }, w),
            #[cfg(not(target_arch = "x86_64"))]
            Bf16Tiles::Amx | Bf16Tiles::Avx512Bf16 => unreachable!("x86-64 paths are never chosen elsewhere"),
            Bf16Tiles::AmxEmu => amx_conv(be, p, EmuTiles::default, w),
            Bf16Tiles::Avx512Bf16Emu => pair_conv(be, p, Kernel::<14, 32> { ukr: vec16::ukr_pairs_emu }, w),
        };
    }
    let w = SyncPtr(p.w.data.as_ptr() as *mut f32);
    with_kernel!(be.isa.f32_kernel(), |kern| {
        let raw = |cout, kk| unpack_weight(kern, &p.w.data, cout, kk);
        winograd_or(be, p, winograd::F32::new(kern), raw, || conv2d_with(be, p, &F32Gemm { kern, w }))
    })
}

/// The product of one work item's depth chunk: packs the im2col rows `taps` for
/// output pixels `p0..p0+n` and accumulates `W[m0..m0+m, k0..k0+taps.len()] * cols`
/// onto `c` (row stride `pix`). Written for the f32 kernels and for the bf16 tiles.
trait ConvGemm: Sync {
    /// Output channels per block row of packed weights (the cout split's unit).
    const MU: usize;
    /// Pixels per B panel (the pixel split's unit).
    const NU: usize;
    /// Depth of one chunk.
    const KC: usize;
    /// f32 scratch floats for the packed columns of `n` pixels and one chunk.
    fn scratch_len(n: usize) -> usize;
    /// # Safety
    /// `taps` and the tile pointers valid over the chunk (see `pack_cols`), `c` writable
    /// over `m x n` with stride `pix`; `scratch` of `scratch_len(n)` floats.
    #[allow(clippy::too_many_arguments)]
    unsafe fn product(
        &self,
        g: &Geom,
        taps: &[*const f32],
        p0: usize,
        n: usize,
        m0: usize,
        m: usize,
        k0: usize,
        c: *mut f32,
        scratch: &mut [f32],
    );
}

/// Where the im2col columns come from: padded planes `wp` floats wide, the stride, the
/// output width and size, and the full depth.
struct Geom {
    wp: usize,
    stride: usize,
    wo: usize,
    pix: usize,
    kk: usize,
}

struct F32Gemm<const MR: usize, const NR: usize> {
    kern: Kernel<MR, NR>,
    /// Weights packed by `pack_weight` for this kernel.
    w: SyncPtr,
}

impl<const MR: usize, const NR: usize> ConvGemm for F32Gemm<MR, NR> {
    const MU: usize = MR;
    const NU: usize = NR;
    const KC: usize = Kernel::<MR, NR>::KC;
    fn scratch_len(n: usize) -> usize {
        n.div_ceil(NR) * NR * Self::KC
    }
    unsafe fn product(
        &self,
        g: &Geom,
        taps: &[*const f32],
        p0: usize,
        n: usize,
        m0: usize,
        m: usize,
        k0: usize,
        c: *mut f32,
        scratch: &mut [f32],
    ) {
        pack_cols::<NR>(taps, g.wp, g.stride, g.wo, p0, n, scratch);
        let a = (self.w.get() as *const f32).add(m0 / MR * g.kk * MR + k0 * MR);
        self.kern.macro_kernel(m, n, taps.len(), a, g.kk * MR, scratch.as_ptr(), c, g.pix);
    }
}

struct Bf16Gemm<F> {
    /// Weights packed by `pack_weight_bf16`.
    w: SyncPtr<u16>,
    /// Makes the tiles of one product.
    tiles: F,
}

impl<T: Tiles, F: Fn() -> T + Sync> ConvGemm for Bf16Gemm<F> {
    const MU: usize = gemm_bf16::BLK;
    const NU: usize = gemm_bf16::BLK;
    const KC: usize = 8 * gemm_bf16::BLK;
    fn scratch_len(n: usize) -> usize {
        // bf16 values, two per float.
        gemm_bf16::packed_len(n, Self::KC).div_ceil(2)
    }
    unsafe fn product(
        &self,
        g: &Geom,
        taps: &[*const f32],
        p0: usize,
        n: usize,
        m0: usize,
        m: usize,
        k0: usize,
        c: *mut f32,
        scratch: &mut [f32],
    ) {
        let bp: &mut [u16] = bytemuck::cast_slice_mut(scratch);
        pack_cols_bf16(taps, g.wp, g.stride, g.wo, p0, n, bp);
        let blk = gemm_bf16::BLK;
        let a_rs = g.kk.div_ceil(blk) * blk * blk;
        let a = self.w.get().add(m0 / blk * a_rs + k0 / blk * blk * blk);
        let mut tiles = (self.tiles)();
        gemm_bf16::gemm_blocks(&mut tiles, m, n, taps.len(), a, a_rs, bp.as_ptr(), c, g.pix);
    }
}

/// The vector tile on bf16 pairs: the f32 GEMM's blocking over pairs of k.
struct PairGemm<const MR: usize, const NR: usize> {
    kern: Kernel<MR, NR>,
    /// Weights packed by `pack_weight_bf16` (pairs).
    w: SyncPtr<u16>,
}

impl<const MR: usize, const NR: usize> ConvGemm for PairGemm<MR, NR> {
    const MU: usize = MR;
    const NU: usize = NR;
    // Even, so that a chunk starts on a pair.
    const KC: usize = 2 * Kernel::<MR, NR>::KC;
    fn scratch_len(n: usize) -> usize {
        n.div_ceil(NR) * NR * Self::KC / 2
    }
    unsafe fn product(
        &self,
        g: &Geom,
        taps: &[*const f32],
        p0: usize,
        n: usize,
        m0: usize,
        m: usize,
        k0: usize,
        c: *mut f32,
        scratch: &mut [f32],
    ) {
        let pairs: &mut [u32] = bytemuck::cast_slice_mut(scratch);
        pack_col_pairs::<NR>(taps, g.wp, g.stride, g.wo, p0, n, pairs);
        let kp = g.kk.div_ceil(2);
        let a = (self.w.get() as *const f32).add(m0 / MR * kp * MR + k0 / 2 * MR);
        self.kern.macro_kernel(m, n, taps.len().div_ceil(2), a, kp * MR, scratch.as_ptr(), c, g.pix);
    }
}

fn conv2d_with<G: ConvGemm>(be: &CpuBackend, p: &Conv2d<'_, CpuBackend>, gm: &G) -> Result<()> {
    let out = &p.out;
    let ConvShape { cout, cin, k, hu, wu, ho, wo } = check_conv2d(p)?;
    let [pt, pl, pb, pr] = p.pad;
    if out.is_empty() {
        return Ok(());
    }

    let kk = cin * k * k;
    let pix = ho * wo;
    let (hp, wp) = (hu + pt + pb, wu + pl + pr);
    let geom = Geom { wp, stride: p.stride, wo, pix, kk };
    // Without padding or up-sampling the input planes are read in place; otherwise
    // each sample is first copied into a zero-padded (up-sampled) scratch image, so
    // that packing never tests bounds.
    let direct = !p.upsample && p.pad == [0; 4];

    // Work items within a sample: (pixel block, cout block). Cout is split only when
    // there are too few pixel blocks to keep every worker busy (deep, small layers).
    let workers = workers_for(be.threads, 2 * cout * kk * pix * out.n);
    let nb = pix.div_ceil(NC);
    let nc = pix.div_ceil(nb).next_multiple_of(G::NU);
    let nb = pix.div_ceil(nc);
    let (per_mb, mb) = row_split(workers, nb, cout.div_ceil(G::MU));

    let out_ptr = SyncPtr(base(out));
    let bias = &p.bias.data[..];
    let mut padded = be.pool.take(if direct { 0 } else { cin * hp * wp });
    for b in 0..out.n {
        let padding = (!direct).then_some(Padding { up: p.upsample, pad: p.pad, hp, wp });
        // SAFETY: the input validated by `check_conv2d`; `padded` holds cin * hp * wp
        // floats when padding.
        let planes = unsafe { sample_planes(be, &p.x, b, padding, &mut padded) };
        let planes = &planes;
        par_for(workers, nb * mb, |item| {
            let (jb, ib) = (item / mb, item % mb);
            let p0 = jb * nc;
            let n = nc.min(pix - p0);
            let m0 = ib * per_mb * G::MU;
            let m = (per_mb * G::MU).min(cout - m0);
            // SAFETY: all regions were validated above; items write disjoint output tiles.
            unsafe {
                let c = out_ptr.get().add(b * cout * pix + m0 * pix + p0);
                init_output(p, bias, b, m0, m, p0, n, pix, c);
                let mut scratch = be.pool.take(G::scratch_len(n));
                let mut taps = Vec::with_capacity(G::KC.min(kk));
                for k0 in (0..kk).step_by(G::KC) {
                    let kc = G::KC.min(kk - k0);
                    taps.clear();
                    taps.extend((k0..k0 + kc).map(|r| {
                        let (ci, ky, kx) = (r / (k * k), r % (k * k) / k, r % k);
                        planes[ci].get().add(ky * wp + kx) as *const f32
                    }));
                    gm.product(&geom, &taps, p0, n, m0, m, k0, c, &mut scratch);
                }
            }
        });
    }
    Ok(())
}

/// `c[r, 0..n] = bias + temb + residual` for output channels `m0..m0+m` of sample `b`.
#[allow(clippy::too_many_arguments)]
unsafe fn init_output(
    p: &Conv2d<'_, CpuBackend>,
    bias: &[f32],
    b: usize,
    m0: usize,
    m: usize,
    p0: usize,
    n: usize,
    pix: usize,
    c: *mut f32,
) {
    let temb = p.temb.as_ref().map(|t| sample_ptr(t, b));
    let res = p.residual.as_ref().map(|r| sample_ptr(r, b));
    for r in 0..m {
        let co = m0 + r;
        let v = bias[co] + temb.map_or(0.0, |t| *t.add(co));
        let row = std::slice::from_raw_parts_mut(c.add(r * pix), n);
        match res {
            Some(rp) => {
                let src = std::slice::from_raw_parts(rp.add(co * pix + p0), n);
                row.iter_mut().zip(src).for_each(|(o, &s)| *o = v + s);
            }
            None => row.fill(v),
        }
    }
}

/// Packs im2col rows (`taps`: each the address of tap `(ci, ky, kx)` for output pixel
/// (0, 0) on the padded grid) x output pixels `p0..p0+n` into B panels. Every read is
/// in bounds by construction, so the loops carry no checks.
unsafe fn pack_cols<const NR: usize>(
    taps: &[*const f32],
    wp: usize,
    s: usize,
    wo: usize,
    p0: usize,
    n: usize,
    dst: &mut [f32],
) {
    let kc = taps.len();
    for (j, panel) in dst[..n.div_ceil(NR) * NR * kc].chunks_exact_mut(NR * kc).enumerate() {
        let q = p0 + j * NR;
        let cols = NR.min(n - j * NR);
        // Offset of each pixel's receptive field; absent pixels repeat the first (their
        // products land in tile columns that are never stored).
        let mut offs = [0usize; NR];
        for (l, o) in offs.iter_mut().enumerate() {
            let qq = q + if l < cols { l } else { 0 };
            *o = (qq / wo) * s * wp + (qq % wo) * s;
        }
        let contiguous = s == 1 && cols == NR && q % wo + NR <= wo;
        for (row, &t) in panel.chunks_exact_mut(NR).zip(taps) {
            let src = t.wrapping_add(offs[0]);
            if contiguous {
                gemm::store::<[f32; NR]>(row.as_mut_ptr(), gemm::load(src));
            } else {
                for (v, &o) in row.iter_mut().zip(&offs) {
                    *v = gemm::load::<f32>(t.wrapping_add(o));
                }
            }
        }
    }
}

/// [`pack_cols`] for the bf16 tiles: the columns rounded to bf16 into B blocks
/// `[n/32][kc/32][2 tiles][16 pairs][16 cols][2]` (`gemm_bf16::pack_b`'s layout),
/// rows past `taps.len()` zero.
unsafe fn pack_cols_bf16(taps: &[*const f32], wp: usize, s: usize, wo: usize, p0: usize, n: usize, dst: &mut [u16]) {
    const B: usize = gemm_bf16::BLK;
    let kc = taps.len();
    let kb = kc.div_ceil(B);
    for jb in 0..n.div_ceil(B) {
        let q = p0 + jb * B;
        let cols = B.min(n - jb * B);
        // As in `pack_cols`: absent pixels repeat the first.
        let mut offs = [0usize; B];
        for (l, o) in offs.iter_mut().enumerate() {
            let qq = q + if l < cols { l } else { 0 };
            *o = (qq / wo) * s * wp + (qq % wo) * s;
        }
        let contiguous = s == 1 && cols == B && q % wo + B <= wo;
        for pb in 0..kb {
            let blk = &mut dst[(jb * kb + pb) * B * B..][..B * B];
            for pair in 0..B / 2 {
                let mut rows = [[0f32; B]; 2];
                for (h, row) in rows.iter_mut().enumerate() {
                    let Some(&t) = taps.get(pb * B + 2 * pair + h) else { continue };
                    if contiguous {
                        *row = gemm::load::<[f32; B]>(t.wrapping_add(offs[0]));
                    } else {
                        for (v, &o) in row.iter_mut().zip(&offs) {
                            *v = gemm::load::<f32>(t.wrapping_add(o));
                        }
                    }
                }
                for t in 0..2 {
                    let d: &mut [u32] = bytemuck::cast_slice_mut(&mut blk[t * 512 + pair * 32..][..32]);
                    bf16::interleave(&rows[0][16 * t..][..16], &rows[1][16 * t..][..16], d);
                }
            }
        }
    }
}

/// [`pack_cols`] for the vector tile on bf16 pairs: panels `[n/NR][ceil(kc/2)][NR]` of
/// 32-bit lanes, each the bf16 pair of rows 2q and 2q + 1 (zero past `taps.len()`).
unsafe fn pack_col_pairs<const NR: usize>(
    taps: &[*const f32],
    wp: usize,
    s: usize,
    wo: usize,
    p0: usize,
    n: usize,
    dst: &mut [u32],
) {
    let kp = taps.len().div_ceil(2);
    for (j, panel) in dst[..n.div_ceil(NR) * NR * kp].chunks_exact_mut(NR * kp).enumerate() {
        let q = p0 + j * NR;
        let cols = NR.min(n - j * NR);
        let mut offs = [0usize; NR];
        for (l, o) in offs.iter_mut().enumerate() {
            let qq = q + if l < cols { l } else { 0 };
            *o = (qq / wo) * s * wp + (qq % wo) * s;
        }
        let contiguous = s == 1 && cols == NR && q % wo + NR <= wo;
        for (pair, row) in panel.chunks_exact_mut(NR).enumerate() {
            let mut rows = [[0f32; NR]; 2];
            for (h, r) in rows.iter_mut().enumerate() {
                let Some(&t) = taps.get(2 * pair + h) else { continue };
                if contiguous {
                    *r = gemm::load::<[f32; NR]>(t.wrapping_add(offs[0]));
                } else {
                    for (v, &o) in r.iter_mut().zip(&offs) {
                        *v = gemm::load::<f32>(t.wrapping_add(o));
                    }
                }
            }
            bf16::interleave(&rows[0], &rows[1], row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::isa::Isa;
    use super::super::testutil::*;
    use super::*;
    use crate::backend::{Act, Backend, Cat, WeightKind};
    use crate::dtype::Precision;

    /// One conv configuration; batch sizes of 0 mean "absent".
    #[derive(Clone, Copy)]
    struct Case {
        n: usize,
        na: usize,
        ca: usize,
        nb: usize,
        cb: usize,
        h: usize,
        w: usize,
        cout: usize,
        k: usize,
        stride: usize,
        pad: [usize; 4],
        up: bool,
        temb_n: usize,
        res_n: usize,
        threads: usize,
    }

    const BASE: Case = Case {
        n: 1,
        na: 1,
        ca: 3,
        nb: 0,
        cb: 0,
        h: 7,
        w: 7,
        cout: 5,
        k: 3,
        stride: 1,
        pad: [1, 1, 1, 1],
        up: false,
        temb_n: 0,
        res_n: 0,
        threads: 1,
    };

    /// Every path of this CPU: each available ISA's f32 kernel and bf16 products, each
    /// with 3x3 stride-1 convs by Winograd (where the path has it) and direct; the
    /// relative L2 bound of each (bf16 rounds both operands).
    pub(crate) fn backends(threads: usize) -> Vec<(CpuBackend, f64)> {
        let mut out = Vec::new();
        for isa in Isa::ALL.into_iter().filter(|i| i.available().is_ok()) {
            let f32_be = || CpuBackend::with_isa(threads, isa, Precision::F32).unwrap();
            out.push((f32_be(), 1e-5));
            out.push((f32_be().with_winograd(false), 1e-5));
            if isa.bf16_tiles().is_some() {
                let bf16_be = || CpuBackend::with_isa(threads, isa, Precision::Bf16).unwrap();
                out.push((bf16_be(), 1e-2));
                out.push((bf16_be().with_winograd(false), 1e-2));
            }
        }
        out
    }

    fn run(cs: Case, seed: u64) {
        for (be, bound) in backends(cs.threads) {
            run_on(&be, bound, cs, seed);
        }
    }

    fn run_on(be: &CpuBackend, bound: f64, cs: Case, seed: u64) {
        let cin = cs.ca + cs.cb;
        let (k, s) = (cs.k, cs.stride);
        let u = if cs.up { 2 } else { 1 };
        let (hu, wu) = (cs.h * u, cs.w * u);
        let ho = (hu + cs.pad[0] + cs.pad[2] - k) / s + 1;
        let wo = (wu + cs.pad[1] + cs.pad[3] - k) / s + 1;
        let hw = cs.h * cs.w;
        let xa = rand_vec(seed, cs.na * cs.ca * hw);
        let xb = rand_vec(seed + 1, cs.nb * cs.cb * hw);
        let wd = rand_vec(seed + 2, cs.cout * cin * k * k);
        let bd = rand_vec(seed + 3, cs.cout);
        let td = rand_vec(seed + 4, cs.temb_n * cs.cout);
        let rd = rand_vec(seed + 5, cs.res_n * cs.cout * ho * wo);

        let (ba, bb, bt, br) = (place(be, &xa), place(be, &xb), place(be, &td), place(be, &rd));
        let olen = cs.n * cs.cout * ho * wo;
        let bo = poisoned(be, olen);
        let wt = weight(be, &[cs.cout, cin, k, k], wd.clone(), WeightKind::Conv);
        let bias = weight(be, &[cs.cout], bd.clone(), WeightKind::Vector);
        let x =
            Cat { a: act(&ba, cs.na, cs.ca, cs.h, cs.w), b: (cs.cb > 0).then(|| act(&bb, cs.nb, cs.cb, cs.h, cs.w)) };
        let p = Conv2d::<CpuBackend> {
            x,
            w: &wt,
            bias: &bias,
            k,
            stride: s,
            pad: cs.pad,
            upsample: cs.up,
            temb: (cs.temb_n > 0).then(|| act(&bt, cs.temb_n, cs.cout, 1, 1)),
            residual: (cs.res_n > 0).then(|| act(&br, cs.res_n, cs.cout, ho, wo)),
            out: act(&bo, cs.n, cs.cout, ho, wo),
        };
        be.conv2d(&p).unwrap();
        let got = read(be, &bo, olen);

        // Naive f64 reference, straight from the definition.
        let mut want = vec![0f64; olen];
        for b in 0..cs.n {
            for co in 0..cs.cout {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = bd[co] as f64;
                        if cs.temb_n > 0 {
                            acc += td[(b % cs.temb_n) * cs.cout + co] as f64;
                        }
                        for ci in 0..cin {
                            for ky in 0..k {
                                for kx in 0..k {
                                    let iy = (oy * s + ky) as isize - cs.pad[0] as isize;
                                    let ix = (ox * s + kx) as isize - cs.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= hu as isize || ix >= wu as isize {
                                        continue;
                                    }
                                    let (iy, ix) = (iy as usize / u, ix as usize / u);
                                    let v = if ci < cs.ca {
                                        xa[((b % cs.na) * cs.ca + ci) * hw + iy * cs.w + ix]
                                    } else {
                                        xb[((b % cs.nb) * cs.cb + ci - cs.ca) * hw + iy * cs.w + ix]
                                    };
                                    acc += v as f64 * wd[((co * cin + ci) * k + ky) * k + kx] as f64;
                                }
                            }
                        }
                        let o = ((b * cs.cout + co) * ho + oy) * wo + ox;
                        if cs.res_n > 0 {
                            acc += rd[(b % cs.res_n) * cs.cout * ho * wo + o % (cs.cout * ho * wo)] as f64;
                        }
                        want[o] = acc;
                    }
                }
            }
        }
        let e = rel_err(&got, &want);
        assert!(e < bound, "{}: rel L2 {e:e}", be.describe());
    }

    #[test]
    fn conv_3x3_basic() {
        run(BASE, 1);
    }

    #[test]
    fn conv_concat_odd_channels() {
        run(Case { n: 2, na: 2, ca: 5, nb: 2, cb: 3, h: 9, w: 11, cout: 33, ..BASE }, 2);
        run(Case { n: 1, ca: 33, nb: 1, cb: 5, h: 5, w: 19, cout: 7, ..BASE }, 3);
    }

    #[test]
    fn conv_broadcast_temb_residual() {
        run(Case { n: 4, na: 1, ca: 5, nb: 2, cb: 3, cout: 9, temb_n: 1, res_n: 4, ..BASE }, 4);
        run(Case { n: 2, na: 2, ca: 4, temb_n: 2, res_n: 1, cout: 13, h: 6, w: 17, ..BASE }, 5);
    }

    #[test]
    fn conv_upsample() {
        run(Case { up: true, h: 5, w: 6, ca: 5, cout: 7, ..BASE }, 6);
        run(Case { up: true, h: 9, w: 9, ca: 3, nb: 1, cb: 2, cout: 17, res_n: 1, ..BASE }, 7);
    }

    #[test]
    fn conv_stride2() {
        for (i, &(h, w)) in [(9, 9), (8, 8), (34, 37)].iter().enumerate() {
            let seed = 10 + 2 * i as u64;
            run(Case { stride: 2, pad: [0, 0, 1, 1], h, w, ca: 5, cout: 6, ..BASE }, seed);
            run(Case { stride: 2, pad: [1, 1, 1, 1], h, w, ca: 3, cout: 7, ..BASE }, seed + 1);
        }
        // Stride 2 over an up-sampled input with uneven padding.
        run(Case { stride: 2, pad: [2, 0, 1, 3], up: true, h: 5, w: 7, ..BASE }, 20);
    }

    #[test]
    fn conv_1x1() {
        run(Case { k: 1, pad: [0; 4], ca: 33, cout: 17, h: 6, w: 5, res_n: 1, ..BASE }, 21);
        run(Case { k: 1, pad: [0; 4], n: 2, na: 1, ca: 3, nb: 2, cb: 5, cout: 6, h: 17, w: 16, ..BASE }, 22);
    }

    #[test]
    fn conv_unpadded() {
        // No padding and no up-sampling: the input planes are read in place.
        run(Case { pad: [0; 4], ca: 5, cout: 7, h: 9, w: 20, ..BASE }, 26);
        run(Case { k: 1, stride: 2, pad: [0; 4], ca: 6, nb: 1, cb: 3, cout: 5, h: 9, w: 8, ..BASE }, 27);
        run(Case { stride: 2, pad: [0; 4], ca: 4, cout: 8, h: 10, w: 11, ..BASE }, 28);
    }

    #[test]
    fn conv_blocked_and_threaded() {
        // K > KC, several pixel blocks, edge tiles in both directions, 2 workers.
        run(Case { ca: 40, nb: 1, cb: 3, cout: 70, h: 40, w: 41, temb_n: 1, res_n: 1, threads: 2, ..BASE }, 23);
        // Few pixels: the cout dimension is split between workers.
        run(Case { ca: 128, cout: 257, h: 4, w: 4, threads: 2, ..BASE }, 24);
        // Batch > 1 with broadcast over threads.
        run(Case { n: 3, na: 1, ca: 32, cout: 64, h: 24, w: 24, temb_n: 3, threads: 2, ..BASE }, 25);
    }

    #[test]
    fn conv_rejects_bad_shapes() {
        let be = CpuBackend::new(1);
        let xb = place(&be, &rand_vec(1, 3 * 16));
        let ob = poisoned(&be, 5 * 16);
        let wt = weight(&be, &[5, 3, 3, 3], rand_vec(2, 135), WeightKind::Conv);
        let bias = weight(&be, &[5], rand_vec(3, 5), WeightKind::Vector);
        let mk = |out: Act<'_, _>, k: usize| {
            be.conv2d(&Conv2d::<CpuBackend> {
                x: act(&xb, 1, 3, 4, 4).into(),
                w: &wt,
                bias: &bias,
                k,
                stride: 1,
                pad: [1; 4],
                upsample: false,
                temb: None,
                residual: None,
                out,
            })
        };
        mk(act(&ob, 1, 5, 4, 4), 3).unwrap();
        assert!(mk(act(&ob, 1, 5, 3, 4), 3).is_err());
        assert!(mk(act(&ob, 1, 4, 4, 4), 3).is_err());
        assert!(mk(act(&ob, 1, 5, 4, 4), 1).is_err());
        assert!(mk(Act::new(&ob, 20, 1, 5, 4, 4), 3).is_err());
    }

    /// Throughput of the two reference shapes; `cargo test --release conv_gflops --
    /// --ignored --nocapture`.
    #[test]
    #[ignore]
    fn conv_gflops() {
        let shapes = [(1, 256usize, 64usize), (1, 128, 256), (0, 256, 64), (0, 128, 256)];
        for (threads, c, hw) in shapes {
            // The real paths of this CPU (the twins are far slower by design).
            for (be, _) in backends(threads).into_iter().filter(|(b, _)| !b.isa().name().ends_with("-emu")) {
                let xb = place(&be, &rand_vec(1, c * hw * hw));
                let ob = poisoned(&be, c * hw * hw);
                let wt = weight(&be, &[c, c, 3, 3], rand_vec(2, c * c * 9), WeightKind::Conv);
                let bias = weight(&be, &[c], rand_vec(3, c), WeightKind::Vector);
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
                let (wall, cpu) = time_it(5, || be.conv2d(&p).unwrap());
                let gflop = 2.0 * (c * c * 9 * hw * hw) as f64 / 1e9;
                println!(
                    "conv3x3 {c}->{c} at {hw}x{hw}: {:.1} ms, {:.1} GFLOP/s wall, {:.1} GFLOP/s per CPU-second [{}]",
                    wall * 1e3,
                    gflop / wall,
                    gflop / cpu,
                    be.describe()
                );
            }
        }
    }
}
