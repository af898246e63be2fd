//! The tile interface of `amx.rs` implemented on 16-lane vectors, so that the one bf16
//! GEMM (`gemm_bf16.rs`) also runs on CPUs with AVX512-BF16 but no AMX: the eight
//! tiles are 1 KiB buffers in memory and `dpbf16ps` is 16 rows x (pairs) `vdpbf16ps`
//! ([`V16::dpbf16`]), one accumulator vector per row of C. On [`Emu`] it is the
//! portable twin of that path (`DIFFSTYLE_CPU_ISA=avx512-emu`).
//!
//! Only C tiles 16 f32 wide are supported (the GEMM's shape: 16 x 64 bytes); other
//! shapes are refused with a panic naming them, a programming error.

use std::marker::PhantomData;

use super::amx::{TileConfig, Tiles, MAX_COLSB, MAX_ROWS, TILES};
#[cfg(target_arch = "x86_64")]
use super::vec16::Avx512;
use super::vec16::{Emu, V16};

/// Eight tiles in memory, products on `V`. A tile loaded from 64-byte rows (the
/// GEMM's packed A and B blocks) is not copied: it keeps the address and is read there
/// (see [`Tiles::load`] for the rule that makes this safe).
pub struct VecTiles<V: V16> {
    cfg: TileConfig,
    regs: Box<[Tile; TILES]>,
    at: [Option<*const u8>; TILES],
    _v: PhantomData<V>,
}

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Tile([u8; MAX_ROWS * MAX_COLSB]);

impl<V: V16> Default for VecTiles<V> {
    fn default() -> Self {
        Self {
            cfg: TileConfig::default(),
            regs: Box::new([Tile([0; MAX_ROWS * MAX_COLSB]); TILES]),
            at: [None; TILES],
            _v: PhantomData,
        }
    }
}

impl<V: V16> VecTiles<V> {
    /// Where tile `t`'s rows are (64 bytes apart).
    fn rows(&self, t: usize) -> *const u8 {
        self.at[t].unwrap_or(self.regs[t].0.as_ptr())
    }

    /// Copies a tile kept at its address into its buffer (before it is written).
    unsafe fn own(&mut self, t: usize) {
        if let Some(p) = self.at[t].take() {
            std::ptr::copy_nonoverlapping(p, self.regs[t].0.as_mut_ptr(), self.cfg.rows[t] as usize * MAX_COLSB);
        }
    }
}

/// The real `vdpbf16ps` tiles.
///
/// # Safety (of use)
/// Only where the CPU has AVX-512 F and AVX512-BF16 (`isa::cpu::avx512_bf16`).
#[cfg(target_arch = "x86_64")]
pub type Avx512Tiles = VecTiles<Avx512>;
/// Their portable twin.
pub type EmuVecTiles = VecTiles<Emu>;

/// `C[rows x 16] += A[rows x pairs] . B[pairs x 16]` on tile buffers (64-byte rows):
/// row `r` of C is one vector; for each pair `p`, A's pair `(r, p)` is broadcast and
/// multiplied with B's row `p` (16 columns x 2). `R` rows at a time, so that the
/// accumulators stay in registers (a loop bound known at compile time).
///
/// # Safety
/// `V`'s instructions available.
#[inline(always)]
unsafe fn dp_body<V: V16>(rows: usize, pairs: usize, c: *mut u8, a: *const u8, b: *const u8) {
    if rows == MAX_ROWS {
        dp_rows::<V, MAX_ROWS>(pairs, c, a, b);
    } else {
        for r in 0..rows {
            dp_rows::<V, 1>(pairs, c.add(r * MAX_COLSB), a.add(r * MAX_COLSB), b);
        }
    }
}

#[inline(always)]
unsafe fn dp_rows<V: V16, const R: usize>(pairs: usize, c: *mut u8, a: *const u8, b: *const u8) {
    let mut acc = [V::zero(); R];
    for (r, v) in acc.iter_mut().enumerate() {
        *v = V::load(c.add(r * MAX_COLSB) as *const f32);
    }
    for p in 0..pairs {
        let bv = V::load(b.add(p * MAX_COLSB) as *const f32);
        for (r, v) in acc.iter_mut().enumerate() {
            let ap = (a.add(r * MAX_COLSB + 4 * p) as *const u32).read_unaligned();
            *v = v.dpbf16(V::splat_bits(ap), bv);
        }
    }
    for (r, v) in acc.iter().enumerate() {
        v.store(c.add(r * MAX_COLSB) as *mut f32);
    }
}

/// The products on one vector type; the real one compiled with its features enabled.
pub trait DpTile: V16 {
    /// # Safety
    /// As [`dp_body`].
    unsafe fn dp_tile(rows: usize, pairs: usize, c: *mut u8, a: *const u8, b: *const u8);
}

impl DpTile for Emu {
    unsafe fn dp_tile(rows: usize, pairs: usize, c: *mut u8, a: *const u8, b: *const u8) {
        dp_body::<Emu>(rows, pairs, c, a, b)
    }
}

#[cfg(target_arch = "x86_64")]
impl DpTile for Avx512 {
    unsafe fn dp_tile(rows: usize, pairs: usize, c: *mut u8, a: *const u8, b: *const u8) {
        dp_avx512(rows, pairs, c, a, b)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dp_avx512(rows: usize, pairs: usize, c: *mut u8, a: *const u8, b: *const u8) {
    dp_body::<Avx512>(rows, pairs, c, a, b)
}

impl<V: DpTile> Tiles for VecTiles<V> {
    unsafe fn configure(&mut self, cfg: &TileConfig) {
        self.cfg = *cfg;
        self.at = [None; TILES];
        self.regs.iter_mut().for_each(|t| t.0.fill(0));
    }
    unsafe fn zero(&mut self, t: usize) {
        self.at[t] = None;
        self.regs[t].0.fill(0);
    }
    unsafe fn load(&mut self, t: usize, p: *const u8, stride: usize) {
        let (rows, w) = (self.cfg.rows[t] as usize, self.cfg.colsb[t] as usize);
        if stride == MAX_COLSB && w == MAX_COLSB {
            self.at[t] = Some(p);
            return;
        }
        self.at[t] = None;
        let dst = self.regs[t].0.as_mut_ptr();
        for r in 0..rows {
            std::ptr::copy_nonoverlapping(p.add(r * stride), dst.add(r * MAX_COLSB), w);
            // Bytes past the configured width read as zero, as in the registers.
            std::ptr::write_bytes(dst.add(r * MAX_COLSB + w), 0, MAX_COLSB - w);
        }
    }
    unsafe fn store(&self, t: usize, p: *mut u8, stride: usize) {
        let (rows, w) = (self.cfg.rows[t] as usize, self.cfg.colsb[t] as usize);
        for r in 0..rows {
            std::ptr::copy_nonoverlapping(self.rows(t).add(r * MAX_COLSB), p.add(r * stride), w);
        }
    }
    unsafe fn dpbf16ps(&mut self, c: usize, a: usize, b: usize) {
        let cfg = &self.cfg;
        assert!(
            cfg.colsb[c] as usize == MAX_COLSB && cfg.colsb[b] as usize == MAX_COLSB,
            "vector tiles multiply into 16-column C tiles only (tile {c}: {} bytes, tile {b}: {} bytes)",
            cfg.colsb[c],
            cfg.colsb[b]
        );
        let (rows, pairs) = (cfg.rows[c] as usize, cfg.colsb[a] as usize / 4);
        self.own(c);
        let (pa, pb) = (self.rows(a), self.rows(b));
        V::dp_tile(rows, pairs, self.regs[c].0.as_mut_ptr(), pa, pb);
    }
    unsafe fn release(&mut self) {
        self.cfg = TileConfig::default();
        self.at = [None; TILES];
    }
}

#[cfg(test)]
mod tests {
    use super::super::amx::EmuTiles;
    use super::super::bf16::round;
    use super::super::isa::cpu;
    use super::super::testutil::rand_vec;
    use super::*;

    /// One 16 x 16 tile product through `T` from random bf16 A (16 x 2*pairs), B
    /// (pairs x 32) and f32 C: the result.
    fn run<T: Tiles + Default>(pairs: usize, seed: u64, scale: f32) -> Vec<f32> {
        let a: Vec<u16> = rand_vec(seed, 16 * 2 * pairs).iter().map(|v| round(v * scale)).collect();
        let b: Vec<u16> = rand_vec(seed + 1, pairs * 32).iter().map(|&v| round(v)).collect();
        let mut c = rand_vec(seed + 2, 256);
        let mut cfg = TileConfig::default();
        (cfg.rows[0], cfg.colsb[0]) = (16, 64);
        (cfg.rows[1], cfg.colsb[1]) = (16, (4 * pairs) as u16);
        (cfg.rows[2], cfg.colsb[2]) = (pairs as u8, 64);
        let mut t = T::default();
        unsafe {
            t.configure(&cfg);
            t.load(0, c.as_ptr() as *const u8, 64);
            t.load(1, a.as_ptr() as *const u8, 4 * pairs);
            t.load(2, b.as_ptr() as *const u8, 64);
            t.dpbf16ps(0, 1, 2);
            t.store(0, c.as_mut_ptr() as *mut u8, 64);
            t.release();
        }
        c
    }

    /// The twin computes the same dot products as the AMX twin (both exact products,
    /// f32 sums; the order of the two pair members differs, so to f32 rounding), at
    /// every depth the GEMM uses and at shallow ones.
    #[test]
    fn twin_agrees_with_the_amx_twin() {
        for pairs in [1, 3, 16] {
            let (v, amx) = (run::<EmuVecTiles>(pairs, 7, 8.0), run::<EmuTiles>(pairs, 7, 8.0));
            let e = crate::tensor::rel_l2(&v, &amx);
            assert!(e < 1e-6, "{pairs} pairs: {e:.2e}");
        }
    }

    /// The real `vdpbf16ps` tiles agree with the twin to f32 rounding (where the CPU
    /// has AVX512-BF16).
    #[test]
    fn real_vector_tiles_agree_with_the_twin() {
        if !cpu::avx512_bf16() {
            eprintln!("skipped: no AVX512-BF16 on this CPU (the twin is tested everywhere)");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        for pairs in [1, 5, 16] {
            let (hw, twin) = (run::<Avx512Tiles>(pairs, 9, 8.0), run::<EmuVecTiles>(pairs, 9, 8.0));
            let same = hw.iter().zip(&twin).filter(|(x, y)| x.to_bits() == y.to_bits()).count();
            let e = crate::tensor::rel_l2(&hw, &twin);
            println!("vdpbf16ps vs twin, {pairs} pairs: {same}/256 bit-identical, rel. L2 {e:.2e}");
            assert!(e < 1e-6, "{pairs} pairs: {e:.2e}");
        }
    }
}
