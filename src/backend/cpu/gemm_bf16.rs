//! The bf16 GEMM of the CPU fast path (issue 24), written once against the tile
//! interface of `amx.rs`: `C[m x n] += A[m x k] * B[k x n]` with A and B rounded to bf16
//! (nearest even) while packing, f32 accumulation, C in f32.
//!
//! Blocking: 2 x 2 tiles of C (32 x 32 f32: tiles 0..4) from two A tiles (4, 5: 16 rows
//! x 32 bf16 each) and two B tiles (6, 7: 16 k-pairs x 16 columns x 2), the usual AMX
//! register blocking (8 tile registers). Packed layouts, zero-padded to whole blocks:
//! A `[m/32][k/32][2 tiles][16 rows][32 k]`; B `[n/32][k/32][2 tiles][16 pairs][16 cols][2]`
//! (pairs of k interleaved, the layout `tdpbf16ps` reads). Weights (A in a convolution)
//! are to be packed once at load; activations (B) while packing the implicit-GEMM panels.

use super::amx::{TileConfig, Tiles};
use super::bf16::round as bf16;

/// Rows and columns of a C block, and the depth of one step.
pub const BLK: usize = 32;

/// Length in bf16 values of a packed `rows x k` operand (A: rows = m; B: rows = n).
pub fn packed_len(rows: usize, k: usize) -> usize {
    rows.div_ceil(BLK) * BLK * k.div_ceil(BLK) * BLK
}

/// Packs `a(i, p)` (`i < m`, `p < k`) into A blocks.
pub fn pack_a(m: usize, k: usize, a: impl Fn(usize, usize) -> f32, dst: &mut [u16]) {
    let kb = k.div_ceil(BLK);
    for (blk, d) in dst[..packed_len(m, k)].chunks_exact_mut(BLK * BLK).enumerate() {
        let (ib, pb) = (blk / kb, blk % kb);
        for (o, v) in d.iter_mut().enumerate() {
            // [2 tiles][16 rows][32 k]
            let (i, p) = (ib * BLK + o / BLK, pb * BLK + o % BLK);
            *v = if i < m && p < k { bf16(a(i, p)) } else { 0 };
        }
    }
}

/// Packs `b(p, j)` (`p < k`, `j < n`) into B blocks: the layout's reference (the
/// convolution packs its columns itself, `conv::pack_cols_bf16`).
#[cfg(test)]
pub fn pack_b(k: usize, n: usize, b: impl Fn(usize, usize) -> f32, dst: &mut [u16]) {
    let kb = k.div_ceil(BLK);
    for (blk, d) in dst[..packed_len(n, k)].chunks_exact_mut(BLK * BLK).enumerate() {
        let (jb, pb) = (blk / kb, blk % kb);
        for (o, v) in d.iter_mut().enumerate() {
            // [2 tiles][16 pairs][16 cols][2]
            let (t, pair, col, h) = (o / 512, o % 512 / 32, o % 32 / 2, o % 2);
            let (p, j) = (pb * BLK + 2 * pair + h, jb * BLK + 16 * t + col);
            *v = if p < k && j < n { bf16(b(p, j)) } else { 0 };
        }
    }
}

/// `C[0..m, 0..n] += A * B` from packed operands (`pack_a` over `m x k`, `pack_b` over
/// `k x n`); `c` has row stride `ldc` floats.
///
/// # Safety
/// `a` and `b` hold the packed lengths; `c` writable over `m x n` with stride `ldc`;
/// the tiles usable (real ones: AMX permitted in this process).
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm<T: Tiles>(
    tiles: &mut T,
    m: usize,
    n: usize,
    k: usize,
    a: &[u16],
    b: &[u16],
    c: *mut f32,
    ldc: usize,
) {
    gemm_blocks(tiles, m, n, k, a.as_ptr(), k.div_ceil(BLK) * BLK * BLK, b.as_ptr(), c, ldc)
}

/// [`gemm`] over a depth slice of a packed A: `a` points at the slice's first block
/// of the first block row, and block rows lie `a_rs` values apart (an A packed over a
/// larger depth `K` has `a_rs = ceil(K/32) * 1024`). `b` is packed over `k x n`.
///
/// # Safety
/// As [`gemm`], with `a` readable over `ceil(m/32)` block rows of `ceil(k/32)` blocks.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gemm_blocks<T: Tiles>(
    tiles: &mut T,
    m: usize,
    n: usize,
    k: usize,
    a: *const u16,
    a_rs: usize,
    b: *const u16,
    c: *mut f32,
    ldc: usize,
) {
    if m == 0 || n == 0 {
        return;
    }
    let kb = k.div_ceil(BLK);
    let mut cfg = TileConfig::default();
    for t in 0..8 {
        (cfg.rows[t], cfg.colsb[t]) = (16, 64);
    }
    tiles.configure(&cfg);
    let mut edge = [0f32; BLK * BLK];
    for jb in 0..n.div_ceil(BLK) {
        let cols = BLK.min(n - jb * BLK);
        for ib in 0..m.div_ceil(BLK) {
            let rows = BLK.min(m - ib * BLK);
            let c0 = c.add(ib * BLK * ldc + jb * BLK);
            // A whole block is loaded from C in place; an edge block through a copy.
            let (cp, cs) = if rows == BLK && cols == BLK {
                (c0, ldc)
            } else {
                edge.fill(0.0);
                for r in 0..rows {
                    std::ptr::copy_nonoverlapping(c0.add(r * ldc), edge[r * BLK..].as_mut_ptr(), cols);
                }
                (edge.as_mut_ptr(), BLK)
            };
            for (t, (r, q)) in [(0, 0), (0, 16), (16, 0), (16, 16)].into_iter().enumerate() {
                tiles.load(t, cp.add(r * cs + q) as *const u8, cs * 4);
            }
            for pb in 0..kb {
                let ab = a.add(ib * a_rs + pb * BLK * BLK);
                let bb = b.add((jb * kb + pb) * BLK * BLK);
                tiles.load(4, ab as *const u8, 64);
                tiles.load(5, ab.add(512) as *const u8, 64);
                tiles.load(6, bb as *const u8, 64);
                tiles.load(7, bb.add(512) as *const u8, 64);
                tiles.dpbf16ps(0, 4, 6);
                tiles.dpbf16ps(1, 4, 7);
                tiles.dpbf16ps(2, 5, 6);
                tiles.dpbf16ps(3, 5, 7);
            }
            for (t, (r, q)) in [(0, 0), (0, 16), (16, 0), (16, 16)].into_iter().enumerate() {
                tiles.store(t, cp.add(r * cs + q) as *mut u8, cs * 4);
            }
            if cp != c0 {
                for r in 0..rows {
                    std::ptr::copy_nonoverlapping(edge[r * BLK..].as_ptr(), c0.add(r * ldc), cols);
                }
            }
        }
    }
    tiles.release();
}

#[cfg(test)]
mod tests {
    use super::super::amx::{request_amx, EmuTiles};
    use super::super::testutil::{rand_vec, rel_err};
    use super::*;

    /// Sizes that cross every block edge (m, n, k not multiples of 32 or 16; C with a
    /// wider stride): against f64 products of the bf16-rounded inputs (the GEMM's own
    /// error: f32 rounding) and of the f32 inputs (bf16's: < 1e-2).
    fn check<T: Tiles>(tiles: &mut T) {
        for &(m, n, k) in &[(1, 1, 1), (33, 17, 40), (64, 64, 96), (70, 45, 130)] {
            let (a, b) = (rand_vec(1, m * k), rand_vec(2, k * n));
            let ldc = n + 3;
            let c0 = rand_vec(3, m * ldc);
            let (mut ap, mut bp) = (vec![0u16; packed_len(m, k)], vec![0u16; packed_len(n, k)]);
            pack_a(m, k, |i, p| a[i * k + p], &mut ap);
            pack_b(k, n, |p, j| b[p * n + j], &mut bp);
            let mut c = c0.clone();
            unsafe { gemm(tiles, m, n, k, &ap, &bp, c.as_mut_ptr(), ldc) };
            let r = |v: f32| f32::from_bits((bf16(v) as u32) << 16) as f64;
            let (mut got, mut want_bf, mut want_f32) = (vec![], vec![], vec![]);
            for i in 0..m {
                for j in 0..ldc {
                    if j >= n {
                        assert_eq!(c[i * ldc + j], c0[i * ldc + j], "{m}x{n}x{k}: wrote outside C at ({i}, {j})");
                        continue;
                    }
                    got.push(c[i * ldc + j]);
                    let base = c0[i * ldc + j] as f64;
                    want_bf.push(base + (0..k).map(|p| r(a[i * k + p]) * r(b[p * n + j])).sum::<f64>());
                    want_f32.push(base + (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum::<f64>());
                }
            }
            let (e_bf, e_f32) = (rel_err(&got, &want_bf), rel_err(&got, &want_f32));
            assert!(e_bf < 1e-6, "{m}x{n}x{k}: {e_bf:.2e} from the bf16 inputs' exact product");
            assert!(e_f32 < 1e-2, "{m}x{n}x{k}: {e_f32:.2e} from the f32 product");
        }
    }

    #[test]
    fn gemm_on_the_twin_tiles() {
        check(&mut EmuTiles::default());
    }

    #[test]
    fn gemm_on_the_real_tiles() {
        if let Err(why) = request_amx() {
            eprintln!("skipped: {why} (the twin is tested everywhere)");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        check(&mut unsafe { super::super::amx::real::AmxTiles::new() });
    }
}
