//! Winograd F(2x2, 3x3) for the 3x3 stride-1 convolutions, which are ~90 % of a DDPM
//! U-Net's time on the CPU. Each 2x2 block ("tile") of outputs comes from a 4x4 block of
//! the padded input: with the input transform `V = Bt d B`, the weight transform
//! `U = G g Gt` and the output transform `Y = At (U . V) A`, a tile costs 16 multiplies
//! per (input, output) channel pair instead of 36, so 2.25x fewer FLOPs. The 16
//! element-wise products summed over input channels are 16 GEMMs
//! `M_xi[cout][tiles] = U_xi[cout][cin] x V_xi[cin][tiles]` on the same f32 micro-kernels
//! as the direct convolution (`gemm.rs`); the transforms only add and subtract (and
//! halve, in G), so the rounding stays close to the direct sum's (measured in the
//! tests).
//!
//! The products are one of [`Products`]: f32 on the f32 GEMM kernels, bf16 on the
//! `vdpbf16ps` pair kernel, or bf16 on AMX tiles (U and V rounded to bf16 after the
//! f32 transforms, f32 accumulation). A work item is `NT` tiles (one B panel) x a block
//! of output channels; it loops over sub-blocks of up to 128 output channels (the 16
//! partial products of one sub-block stay in L2) and over input-channel chunks,
//! transforming each chunk of the input as it goes, then writes bias + time embedding +
//! residual + Y. Every sum runs
//! over input channels in the same order whatever the batch, threads or split, so the
//! results do not depend on them.

use super::amx::Tiles;
use super::bf16;
use super::gemm::{Kernel, MatRef};
use super::gemm_bf16;
use super::pad::{sample_planes, Padding};
use super::threads::{par_for, row_split, workers_for, SyncPtr};
use super::{base, sample_ptr, CpuBackend};
use crate::backend::check::{check_conv2d, ConvShape};
use crate::backend::Conv2d;
use anyhow::Result;

/// The 16 positions of a 4x4 tile.
const XI: usize = 16;

/// `U = G g Gt` for one 3x3 filter `g` (row-major), as 16 values in tile order.
fn filter_transform(g: &[f32]) -> [f32; XI] {
    // G = [[1, 0, 0], [1/2, 1/2, 1/2], [1/2, -1/2, 1/2], [0, 0, 1]]
    let gm = |r: [f32; 3]| [r[0], 0.5 * (r[0] + r[1] + r[2]), 0.5 * (r[0] - r[1] + r[2]), r[2]];
    // Rows of G g (4 x 3): G applied down each column of g.
    let cols: [[f32; 4]; 3] = std::array::from_fn(|j| gm([g[j], g[3 + j], g[6 + j]]));
    let mut u = [0f32; XI];
    for i in 0..4 {
        let row = gm([cols[0][i], cols[1][i], cols[2][i]]);
        u[4 * i..4 * i + 4].copy_from_slice(&row);
    }
    u
}

/// The 16 transformed weight matrices of a `[cout, cin, 3, 3]` conv, row-major:
/// `[XI][cout][cin]`.
fn weight_planes(w: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    let mut planes = vec![0f32; XI * cout * cin];
    for co in 0..cout {
        for ci in 0..cin {
            let u = filter_transform(&w[(co * cin + ci) * 9..][..9]);
            for (xi, &v) in u.iter().enumerate() {
                planes[xi * cout * cin + co * cin + ci] = v;
            }
        }
    }
    planes
}

/// How the 16 products of a chunk of input channels are multiplied: f32 kernels, the
/// bf16 pair kernel, or AMX tiles. U and the transforms are f32 in every case.
pub(super) trait Products: Sync {
    /// Output channels per packed block row of U (the output-channel split's unit).
    const MU: usize;
    /// Tiles per work item (the lanes of the transforms).
    const NT: usize;
    /// Input channels per chunk (even).
    const KC: usize;
    /// U (`[XI][cout][cin]` row-major) in this product's packed layout, as 32-bit words.
    fn pack_u(&self, planes: &[f32], cout: usize, cin: usize) -> Vec<f32>;
    /// `M_xi[0..rows][0..NT] += U_xi[m0..m0+rows][k0..k0+kc] V_xi` for every xi: `u` from
    /// `pack_u`, `v` the chunk's transformed input as XI panels `[KC][NT]` (f32; may be
    /// converted in place), `mm` XI blocks of `[mbw][NT]`.
    ///
    /// # Safety
    /// `m0` a multiple of `MU`, `k0` of `KC`; buffers as described.
    #[allow(clippy::too_many_arguments)]
    unsafe fn products(
        &self,
        u: &[f32],
        cout: usize,
        cin: usize,
        m0: usize,
        rows: usize,
        k0: usize,
        kc: usize,
        v: &mut [f32],
        mm: &mut [f32],
        mbw: usize,
    );
}

/// Products on a GEMM kernel of `gemm.rs`: f32 (`PAIRS` false), or bf16 pairs of input
/// channels on the pair kernel (`vec16::ukr_pairs`), U and V rounded to bf16 after the
/// f32 transforms.
pub(super) struct OnKernel<const MR: usize, const NR: usize, const PAIRS: bool>(pub Kernel<MR, NR>);

/// f32 products.
pub(super) type F32<const MR: usize, const NR: usize> = OnKernel<MR, NR, false>;
/// bf16-pair products.
pub(super) type Pairs<const MR: usize, const NR: usize> = OnKernel<MR, NR, true>;

impl<const MR: usize, const NR: usize, const PAIRS: bool> OnKernel<MR, NR, PAIRS> {
    pub fn new(kern: Kernel<MR, NR>) -> Self {
        Self(kern)
    }

    /// Steps of depth for `cin` channels (pairs take one step per two channels).
    fn depth(cin: usize) -> usize {
        if PAIRS {
            cin.div_ceil(2)
        } else {
            cin
        }
    }
}

impl<const MR: usize, const NR: usize, const PAIRS: bool> Products for OnKernel<MR, NR, PAIRS> {
    const MU: usize = MR;
    const NT: usize = NR;
    const KC: usize = Kernel::<MR, NR>::KC;
    fn pack_u(&self, planes: &[f32], cout: usize, cin: usize) -> Vec<f32> {
        let depth = Self::depth(cin);
        let plen = self.0.packed_a_len(cout, depth);
        let mut out = vec![0f32; XI * plen];
        for (xi, dst) in out.chunks_exact_mut(plen).enumerate() {
            let mut src = planes[xi * cout * cin..][..cout * cin].to_vec();
            if PAIRS {
                // Row co's pair q: channels 2q (low half) and 2q + 1 (high half, 0 past cin).
                src = (0..cout * depth)
                    .map(|o| {
                        let (co, q) = (o / depth, o % depth);
                        let lo = bf16::round(src[co * cin + 2 * q]) as u32;
                        let hi = if 2 * q + 1 < cin { bf16::round(src[co * cin + 2 * q + 1]) as u32 } else { 0 };
                        f32::from_bits(lo | hi << 16)
                    })
                    .collect();
            }
            // SAFETY: `src` holds `cout x depth` words; `dst` the packed length.
            unsafe { self.0.pack_a(MatRef { ptr: src.as_ptr(), rs: depth as isize, cs: 1 }, cout, depth, dst) };
        }
        out
    }
    unsafe fn products(
        &self,
        u: &[f32],
        cout: usize,
        cin: usize,
        m0: usize,
        rows: usize,
        k0: usize,
        kc: usize,
        v: &mut [f32],
        mm: &mut [f32],
        mbw: usize,
    ) {
        let depth = Self::depth(cin);
        let plen = self.0.packed_a_len(cout, depth);
        if PAIRS {
            to_pairs::<NR>(v, kc);
        }
        let (kd, k0d) = (Self::depth(kc), Self::depth(k0));
        for xi in 0..XI {
            let a = u.as_ptr().add(xi * plen + m0 / MR * depth * MR + k0d * MR);
            let vb = v.as_ptr().add(xi * Self::KC * NR);
            self.0.macro_kernel(rows, NR, kd, a, depth * MR, vb, mm.as_mut_ptr().add(xi * mbw * NR), NR);
        }
    }
}

/// bf16 products on AMX tiles (`gemm_bf16`): U packed as A blocks, each chunk of V
/// converted to B blocks.
pub(super) struct Amx<F>(pub F);

impl<T: Tiles, F: Fn() -> T + Sync> Products for Amx<F> {
    const MU: usize = gemm_bf16::BLK;
    const NT: usize = gemm_bf16::BLK;
    const KC: usize = 8 * gemm_bf16::BLK;
    fn pack_u(&self, planes: &[f32], cout: usize, cin: usize) -> Vec<f32> {
        let plen = gemm_bf16::packed_len(cout, cin);
        let mut out = vec![0u16; XI * plen];
        for (xi, dst) in out.chunks_exact_mut(plen).enumerate() {
            let src = &planes[xi * cout * cin..][..cout * cin];
            gemm_bf16::pack_a(cout, cin, |i, p| src[i * cin + p], dst);
        }
        // Two bf16 per word (`plen` is a multiple of 1024).
        out.chunks_exact(2).map(|p| f32::from_bits(p[0] as u32 | (p[1] as u32) << 16)).collect()
    }
    unsafe fn products(
        &self,
        u: &[f32],
        cout: usize,
        cin: usize,
        m0: usize,
        rows: usize,
        k0: usize,
        kc: usize,
        v: &mut [f32],
        mm: &mut [f32],
        mbw: usize,
    ) {
        const B: usize = gemm_bf16::BLK;
        let plen = gemm_bf16::packed_len(cout, cin);
        let a_rs = cin.div_ceil(B) * B * B;
        let u16s: &[u16] = bytemuck::cast_slice(u);
        let mut bp = vec![0u16; gemm_bf16::packed_len(B, Self::KC)];
        let mut tiles = (self.0)();
        for xi in 0..XI {
            // V_xi's rows (channels) as B blocks: [kc/32][2 tiles][16 pairs][16 cols][2].
            let vx = &v[xi * Self::KC * B..][..Self::KC * B];
            for (pb, blk) in bp.chunks_exact_mut(B * B).enumerate().take(kc.div_ceil(B)) {
                for pair in 0..B / 2 {
                    let row = |k: usize| -> [f32; B] {
                        if k < kc {
                            vx[k * B..][..B].try_into().expect("B lanes")
                        } else {
                            [0.0; B]
                        }
                    };
                    let (lo, hi) = (row(pb * B + 2 * pair), row(pb * B + 2 * pair + 1));
                    for t in 0..2 {
                        let d: &mut [u32] = bytemuck::cast_slice_mut(&mut blk[t * 512 + pair * 32..][..32]);
                        bf16::interleave(&lo[16 * t..][..16], &hi[16 * t..][..16], d);
                    }
                }
            }
            let a = u16s.as_ptr().add(xi * plen + m0 / B * a_rs + k0 / B * B * B);
            let c = mm.as_mut_ptr().add(xi * mbw * B);
            gemm_bf16::gemm_blocks(&mut tiles, rows, B, kc, a, a_rs, bp.as_ptr(), c, B);
        }
    }
}

/// The packed U of `prod` for a `[cout, cin, 3, 3]` weight `w` (row-major).
pub(super) fn pack_weights<P: Products>(prod: &P, w: &[f32], cout: usize, cin: usize) -> Vec<f32> {
    prod.pack_u(&weight_planes(w, cout, cin), cout, cin)
}

/// Rows `2q` and `2q + 1` of each of the XI panels `[kc_blk][NR]` of `v` (f32) become
/// row `q`, bf16 pairs (`bf16::round`), in place; an odd last row pairs with zero.
fn to_pairs<const NR: usize>(v: &mut [f32], kc: usize) {
    let stride = v.len() / XI;
    for panel in v.chunks_exact_mut(stride) {
        for q in 0..kc.div_ceil(2) {
            let lo: [f32; NR] = panel[2 * q * NR..][..NR].try_into().expect("NR lanes");
            let hi: [f32; NR] =
                if 2 * q + 1 < kc { panel[(2 * q + 1) * NR..][..NR].try_into().expect("NR lanes") } else { [0.0; NR] };
            let dst: &mut [u32] = bytemuck::cast_slice_mut(&mut panel[q * NR..][..NR]);
            bf16::interleave(&lo, &hi, dst);
        }
    }
}

/// The tile geometry of one convolution.
struct Grid {
    /// Tiles per row, and in all.
    tw: usize,
    count: usize,
    /// Row length of the padded input planes (`2 tw + 2`).
    wp: usize,
    ho: usize,
    wo: usize,
}

impl Grid {
    /// Offset in a padded plane of the top-left input of each of `NR` lanes' tiles
    /// (tiles `t0..`; lanes past the last tile repeat the first), and whether the lanes
    /// are consecutive tiles of one tile row.
    fn lanes<const NR: usize>(&self, t0: usize) -> ([usize; NR], bool) {
        let offs = std::array::from_fn(|l| {
            let t = if t0 + l < self.count { t0 + l } else { t0 };
            2 * (t / self.tw) * self.wp + 2 * (t % self.tw)
        });
        (offs, t0 + NR <= self.count && t0 % self.tw + NR <= self.tw)
    }
}

/// The convolution, its products by `prod` on `u` (from `pack_weights(prod, ..)`).
pub(super) fn conv2d<P: Products>(be: &CpuBackend, p: &Conv2d<'_, CpuBackend>, prod: &P, u: &[f32]) -> Result<()> {
    const { assert!(P::KC % 2 == 0) };
    let (mr, nr) = (P::MU, P::NT);
    let out = &p.out;
    let ConvShape { cout, cin, k, hu, wu, ho, wo } = check_conv2d(p)?;
    debug_assert!(k == 3 && p.stride == 1);
    if out.is_empty() {
        return Ok(());
    }
    let [pt, pl, _, _] = p.pad;
    let (tw, th) = (wo.div_ceil(2), ho.div_ceil(2));
    let tiles = Grid { tw, count: tw * th, wp: 2 * tw + 2, ho, wo };
    let hp = 2 * th + 2;
    // The padded plane reaches one row / column further than the direct conv's when the
    // output size is odd (the last tile's unused half reads zeros).
    let pad = [pt, pl, hp - pt - hu, tiles.wp - pl - wu];
    let pix = ho * wo;

    let kc_blk = P::KC;
    // Output channels per sub-block: the 16 products of the item's tiles stay in L2
    // (each sub-block transforms the input again).
    let mbw = mr * 128usize.div_ceil(mr);
    let workers = workers_for(be.threads, 2 * cout * cin * 16 * tiles.count * out.n);
    let nb = tiles.count.div_ceil(nr);
    let (per_mb, mb) = row_split(workers, nb, cout.div_ceil(mr));

    let out_ptr = SyncPtr(base(out));
    let bias = &p.bias.data[..];
    let mut padded = be.pool.take(cin * hp * tiles.wp);
    for b in 0..out.n {
        let padding = Padding { up: p.upsample, pad, hp, wp: tiles.wp };
        // SAFETY: the input validated by `check_conv2d`; `padded` holds cin planes.
        unsafe { sample_planes(be, &p.x, b, Some(padding), &mut padded) };
        let plane_len = hp * tiles.wp;
        let padded_ptr = SyncPtr(padded.as_mut_ptr());
        let tiles = &tiles;
        par_for(workers, nb * mb, |item| {
            let (jb, ib) = (item / mb, item % mb);
            let t0 = jb * nr;
            let m0 = ib * per_mb * mr;
            let m = (per_mb * mr).min(cout - m0);
            let mut v = be.pool.take(XI * kc_blk * nr);
            let mut mm = be.pool.take(XI * mbw * nr);
            for mc0 in (0..m).step_by(mbw) {
                let rows = mbw.min(m - mc0);
                mm[..XI * mbw * nr].fill(0.0);
                for k0 in (0..cin).step_by(kc_blk) {
                    let kc = kc_blk.min(cin - k0);
                    // SAFETY: channel planes k0..k0+kc of `padded`, tile offsets inside
                    // them (`lanes`); `v` holds XI x kc_blk x NT floats; U's rows from
                    // m0 + mc0 (a multiple of MU), depth k0 (of KC).
                    unsafe {
                        let planes = padded_ptr.get().add(k0 * plane_len) as *const f32;
                        let vs = &mut v[..XI * kc_blk * nr];
                        transform_lanes::<P>(planes, plane_len, kc, tiles, t0, vs);
                        prod.products(u, cout, cin, m0 + mc0, rows, k0, kc, vs, &mut mm[..XI * mbw * nr], mbw);
                    }
                }
                // SAFETY: output rows m0 + mc0.. of sample b, this item's tiles only.
                unsafe {
                    let o = out_ptr.get().add(b * cout * pix);
                    output_lanes::<P>(p, bias, b, m0 + mc0, rows, t0, tiles, &mm, mbw, o);
                }
            }
        });
    }
    Ok(())
}

/// [`input_transform`] for `P::NT` lanes (16 or 32).
///
/// # Safety
/// As [`input_transform`].
unsafe fn transform_lanes<P: Products>(
    planes: *const f32,
    plane_len: usize,
    kc: usize,
    tiles: &Grid,
    t0: usize,
    v: &mut [f32],
) {
    match P::NT {
        16 => {
            let (offs, contiguous) = tiles.lanes::<16>(t0);
            input_transform::<16>(planes, plane_len, kc, tiles.wp, &offs, contiguous, v)
        }
        32 => {
            let (offs, contiguous) = tiles.lanes::<32>(t0);
            input_transform::<32>(planes, plane_len, kc, tiles.wp, &offs, contiguous, v)
        }
        n => unreachable!("no Winograd transforms for {n} lanes"),
    }
}

/// [`output_transform`] for `P::NT` lanes (16 or 32).
///
/// # Safety
/// As [`output_transform`].
#[allow(clippy::too_many_arguments)]
unsafe fn output_lanes<P: Products>(
    p: &Conv2d<'_, CpuBackend>,
    bias: &[f32],
    b: usize,
    co0: usize,
    rows: usize,
    t0: usize,
    tiles: &Grid,
    mm: &[f32],
    mbw: usize,
    out: *mut f32,
) {
    match P::NT {
        16 => output_transform::<16>(p, bias, b, co0, rows, t0, tiles, mm, mbw, out),
        32 => output_transform::<32>(p, bias, b, co0, rows, t0, tiles, mm, mbw, out),
        n => unreachable!("no Winograd transforms for {n} lanes"),
    }
}

/// `V_xi[c][l] = (Bt d B)[xi]` for the 4x4 input `d` of lane `l`'s tile in channel
/// plane `c` (`kc` planes `plane_len` apart, rows `wp` long), into `v` as XI equal
/// panels of `[v.len() / XI / NR][NR]`.
///
/// # Safety
/// The planes hold every tile's 4x4 block at `offs` (`Grid::lanes`).
unsafe fn input_transform<const NR: usize>(
    planes: *const f32,
    plane_len: usize,
    kc: usize,
    wp: usize,
    offs: &[usize; NR],
    contiguous: bool,
    v: &mut [f32],
) {
    // Adds and subtracts only: the AVX2 copy gives the same bits.
    #[cfg(target_arch = "x86_64")]
    if super::isa::cpu::avx2() {
        return input_transform_avx2(planes, plane_len, kc, wp, offs, contiguous, v);
    }
    input_transform_body(planes, plane_len, kc, wp, offs, contiguous, v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_transform_avx2<const NR: usize>(
    planes: *const f32,
    plane_len: usize,
    kc: usize,
    wp: usize,
    offs: &[usize; NR],
    contiguous: bool,
    v: &mut [f32],
) {
    input_transform_body(planes, plane_len, kc, wp, offs, contiguous, v)
}

#[inline(always)]
unsafe fn input_transform_body<const NR: usize>(
    planes: *const f32,
    plane_len: usize,
    kc: usize,
    wp: usize,
    offs: &[usize; NR],
    contiguous: bool,
    v: &mut [f32],
) {
    let stride = v.len() / XI;
    for c in 0..kc {
        let pl = planes.add(c * plane_len);
        // d[i][j][l]: row i, column j of lane l's 4x4 block.
        let mut d = [[[0f32; NR]; 4]; 4];
        for (i, di) in d.iter_mut().enumerate() {
            if contiguous {
                let row = std::slice::from_raw_parts(pl.add(offs[0] + i * wp), 2 * NR + 2);
                for (j, dij) in di.iter_mut().enumerate() {
                    for (l, x) in dij.iter_mut().enumerate() {
                        *x = row[2 * l + j];
                    }
                }
            } else {
                for (j, dij) in di.iter_mut().enumerate() {
                    for (l, x) in dij.iter_mut().enumerate() {
                        *x = *pl.add(offs[l] + i * wp + j);
                    }
                }
            }
        }
        // Bt = [[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], down the
        // columns, then across the rows (B = Bt transposed).
        let bt = |x: &[[f32; NR]; 4]| -> [[f32; NR]; 4] {
            let mut r = [[0f32; NR]; 4];
            for l in 0..NR {
                r[0][l] = x[0][l] - x[2][l];
                r[1][l] = x[1][l] + x[2][l];
                r[2][l] = x[2][l] - x[1][l];
                r[3][l] = x[1][l] - x[3][l];
            }
            r
        };
        let cols: [[[f32; NR]; 4]; 4] = std::array::from_fn(|j| bt(&[d[0][j], d[1][j], d[2][j], d[3][j]]));
        for i in 0..4 {
            let row = bt(&[cols[0][i], cols[1][i], cols[2][i], cols[3][i]]);
            for (j, r) in row.iter().enumerate() {
                v[(4 * i + j) * stride + c * NR..][..NR].copy_from_slice(r);
            }
        }
    }
}

/// `out = bias + temb + residual + At M A` for output channels `co0..co0+rows` of
/// sample `b` and the tiles of lanes `t0..` (`M`: XI blocks of `[mbw][NR]`), clipped to
/// the output.
///
/// # Safety
/// `out` is sample `b`'s output, written here only for this item's tiles and rows.
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform<const NR: usize>(
    p: &Conv2d<'_, CpuBackend>,
    bias: &[f32],
    b: usize,
    co0: usize,
    rows: usize,
    t0: usize,
    tiles: &Grid,
    mm: &[f32],
    mbw: usize,
    out: *mut f32,
) {
    #[cfg(target_arch = "x86_64")]
    if super::isa::cpu::avx2() {
        return output_transform_avx2::<NR>(p, bias, b, co0, rows, t0, tiles, mm, mbw, out);
    }
    output_transform_body::<NR>(p, bias, b, co0, rows, t0, tiles, mm, mbw, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform_avx2<const NR: usize>(
    p: &Conv2d<'_, CpuBackend>,
    bias: &[f32],
    b: usize,
    co0: usize,
    rows: usize,
    t0: usize,
    tiles: &Grid,
    mm: &[f32],
    mbw: usize,
    out: *mut f32,
) {
    output_transform_body::<NR>(p, bias, b, co0, rows, t0, tiles, mm, mbw, out)
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform_body<const NR: usize>(
    p: &Conv2d<'_, CpuBackend>,
    bias: &[f32],
    b: usize,
    co0: usize,
    rows: usize,
    t0: usize,
    tiles: &Grid,
    mm: &[f32],
    mbw: usize,
    out: *mut f32,
) {
    let (ho, wo) = (tiles.ho, tiles.wo);
    let pix = ho * wo;
    let temb = p.temb.as_ref().map(|t| sample_ptr(t, b));
    let res = p.residual.as_ref().map(|r| sample_ptr(r, b));
    let lanes = NR.min(tiles.count - t0);
    for r in 0..rows {
        let co = co0 + r;
        let add = bias[co] + temb.map_or(0.0, |t| *t.add(co));
        // At = [[1, 1, 1, 0], [0, 1, -1, -1]], down the columns then across the rows.
        let m = |xi: usize| &mm[xi * mbw * NR + r * NR..][..NR];
        let mut t = [[[0f32; NR]; 4]; 2];
        let [t0r, t1r] = &mut t;
        for (j, (t0j, t1j)) in t0r.iter_mut().zip(t1r.iter_mut()).enumerate() {
            let (m0, m1, m2, m3) = (m(j), m(4 + j), m(8 + j), m(12 + j));
            for l in 0..NR {
                t0j[l] = m0[l] + m1[l] + m2[l];
                t1j[l] = m1[l] - m2[l] - m3[l];
            }
        }
        for (a, ta) in t.iter().enumerate() {
            let mut y = [[0f32; NR]; 2];
            for l in 0..NR {
                y[0][l] = ta[0][l] + ta[1][l] + ta[2][l];
                y[1][l] = ta[1][l] - ta[2][l] - ta[3][l];
            }
            for l in 0..lanes {
                let t = t0 + l;
                let (oy, ox) = (2 * (t / tiles.tw) + a, 2 * (t % tiles.tw));
                if oy >= ho {
                    continue;
                }
                for (bx, yb) in y.iter().enumerate() {
                    if ox + bx < wo {
                        let px = oy * wo + ox + bx;
                        let rv = res.map_or(0.0, |rp| *rp.add(co * pix + px));
                        *out.add(co * pix + px) = add + rv + yb[l];
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The transforms reproduce a direct 3x3 correlation of a 4x4 block exactly enough
    /// (f64 reference): `At (U . V) A` = the 2x2 valid outputs.
    #[test]
    fn one_tile_equals_the_direct_sum() {
        let g = super::super::testutil::rand_vec(1, 9);
        let d = super::super::testutil::rand_vec(2, 16);
        let u = filter_transform(&g);
        let bt = [[1., 0., -1., 0.], [0., 1., 1., 0.], [0., -1., 1., 0.], [0., 1., 0., -1.]];
        let mut v = [[0f64; 4]; 4];
        for i in 0..4 {
            for j in 0..4 {
                for a in 0..4 {
                    for c in 0..4 {
                        v[i][j] += bt[i][a] * d[4 * a + c] as f64 * bt[j][c];
                    }
                }
            }
        }
        let at = [[1., 1., 1., 0.], [0., 1., -1., -1.]];
        for y in 0..2 {
            for x in 0..2 {
                let mut got = 0f64;
                for i in 0..4 {
                    for j in 0..4 {
                        got += at[y][i] * u[4 * i + j] as f64 * v[i][j] * at[x][j];
                    }
                }
                let want: f64 = (0..9).map(|q| g[q] as f64 * d[4 * (y + q / 3) + x + q % 3] as f64).sum();
                assert!((got - want).abs() < 1e-6, "({y}, {x}): {got} vs {want}");
            }
        }
    }
}
