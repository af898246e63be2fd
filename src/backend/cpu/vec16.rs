//! The 16-lane vector layer of the CPU fast path (issue 24): an interface of the few
//! operations the f32 micro-kernel needs, the real AVX-512 implementation, and a
//! portable twin with the same semantics that runs on any CPU.
//!
//! Same semantics means the same bits: the only arithmetic is a fused multiply-add,
//! which `vfmadd231ps` and `f32::mul_add` both round once, lane by lane. So the
//! micro-kernel written once against [`V16`] gives identical results on both, and the
//! twin checks the kernel's packing and blocking on machines without AVX-512.
//!
//! Register blocking for 32 vector registers: an `MR x 2` tile of accumulators (two
//! 16-lane vectors per row, NR = 32 columns) plus the two B vectors and one broadcast:
//! MR = 14 uses 28 + 3 = 31 registers.
//!
//! The bf16 products of CPUs with AVX512-BF16 but no AMX use the same tile with
//! [`V16::dpbf16`] (`vdpbf16ps`) in place of the FMA: [`ukr_pairs`], on panels of bf16
//! pairs (two consecutive k of a row or column in one 32-bit lane). The twin follows
//! the SDM's pseudocode; the hardware is compared with it to f32 rounding (as for AMX),
//! and on the one AVX512-BF16 CPU measured (AMD EPYC, 2026-12-06) it gave the same bits.

use super::bf16::{daz, ftz};

/// The operations of a 16-lane f32 vector. `unsafe`: loads and stores take raw
/// pointers, and the AVX-512 implementation may only run where the CPU has it.
pub trait V16: Copy {
    /// All lanes zero.
    ///
    /// # Safety
    /// The implementation's instructions must be available.
    unsafe fn zero() -> Self;
    /// Lanes `p[0..16]`, any alignment.
    ///
    /// # Safety
    /// `p` readable over 16 floats; the instructions available.
    unsafe fn load(p: *const f32) -> Self;
    /// Writes the lanes to `p[0..16]`, any alignment.
    ///
    /// # Safety
    /// `p` writable over 16 floats; the instructions available.
    unsafe fn store(self, p: *mut f32);
    /// Every lane `v`.
    ///
    /// # Safety
    /// The instructions available.
    unsafe fn splat(v: f32) -> Self;
    /// `self + a * b` per lane, rounded once (fused).
    ///
    /// # Safety
    /// The instructions available.
    unsafe fn fma(self, a: Self, b: Self) -> Self;
    /// Every lane holding the bits `v` (a pair of bf16 for [`V16::dpbf16`]).
    ///
    /// # Safety
    /// The instructions available.
    unsafe fn splat_bits(v: u32) -> Self;
    /// `vdpbf16ps`: each lane of `a` and `b` read as two bf16 (low half first), and
    /// `self += a.hi * b.hi`, then `+= a.lo * b.lo`, each rounded to nearest even, input
    /// denormals read as zero and results flushed (the SDM's order and modes).
    ///
    /// # Safety
    /// The instructions available (AVX512-BF16 for the real layer).
    unsafe fn dpbf16(self, a: Self, b: Self) -> Self;
}

/// The portable twin: plain arrays and `f32::mul_add`.
#[derive(Clone, Copy)]
pub struct Emu([f32; 16]);

impl V16 for Emu {
    #[inline(always)]
    unsafe fn zero() -> Self {
        Emu([0.0; 16])
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        Emu(std::ptr::read_unaligned(p as *const [f32; 16]))
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        std::ptr::write_unaligned(p as *mut [f32; 16], self.0)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        Emu([v; 16])
    }
    #[inline(always)]
    unsafe fn fma(self, a: Self, b: Self) -> Self {
        let mut r = self.0;
        for (l, v) in r.iter_mut().enumerate() {
            *v = a.0[l].mul_add(b.0[l], *v);
        }
        Emu(r)
    }
    #[inline(always)]
    unsafe fn splat_bits(v: u32) -> Self {
        Emu([f32::from_bits(v); 16])
    }
    #[inline(always)]
    unsafe fn dpbf16(self, a: Self, b: Self) -> Self {
        let mut r = self.0;
        for (l, v) in r.iter_mut().enumerate() {
            let (x, y) = (a.0[l].to_bits(), b.0[l].to_bits());
            for shift in [16, 0] {
                let (xh, yh) = (daz((x >> shift) as u16), daz((y >> shift) as u16));
                *v = ftz(xh.mul_add(yh, *v));
            }
        }
        Emu(r)
    }
}

#[cfg(target_arch = "x86_64")]
pub use avx512::Avx512;

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    use super::V16;

    /// The real layer: one `zmm` register.
    #[derive(Clone, Copy)]
    pub struct Avx512(__m512);

    impl V16 for Avx512 {
        #[inline(always)]
        unsafe fn zero() -> Self {
            Avx512(_mm512_setzero_ps())
        }
        #[inline(always)]
        unsafe fn load(p: *const f32) -> Self {
            Avx512(_mm512_loadu_ps(p))
        }
        #[inline(always)]
        unsafe fn store(self, p: *mut f32) {
            _mm512_storeu_ps(p, self.0)
        }
        #[inline(always)]
        unsafe fn splat(v: f32) -> Self {
            Avx512(_mm512_set1_ps(v))
        }
        #[inline(always)]
        unsafe fn fma(self, a: Self, b: Self) -> Self {
            Avx512(_mm512_fmadd_ps(a.0, b.0, self.0))
        }
        #[inline(always)]
        unsafe fn splat_bits(v: u32) -> Self {
            Avx512(_mm512_castsi512_ps(_mm512_set1_epi32(v as i32)))
        }
        #[inline(always)]
        unsafe fn dpbf16(self, a: Self, b: Self) -> Self {
            let a = std::mem::transmute::<__m512, __m512bh>(a.0);
            let b = std::mem::transmute::<__m512, __m512bh>(b.0);
            Avx512(_mm512_dpbf16_ps(self.0, a, b))
        }
    }
}

/// Rows of the AVX-512 register tile.
pub const MR16: usize = 14;
/// Columns of the AVX-512 register tile: two vectors.
pub const NR16: usize = 32;

/// The `MR16 x NR16` tile `C += A_panel * B_panel` over depth `k`, written once against
/// [`V16`]. A panel: `[k][MR16]`; B panel: `[k][NR16]`; C row stride `ldc`. Each result
/// is the FMA chain over `p = 0..k` in order, starting from C.
///
/// # Safety
/// Panels readable over `k` steps, C writable over the tile; `V`'s instructions available.
#[inline(always)]
pub unsafe fn ukr<V: V16>(k: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
    let mut acc = [[V::zero(); 2]; MR16];
    for (r, row) in acc.iter_mut().enumerate() {
        row[0] = V::load(c.add(r * ldc));
        row[1] = V::load(c.add(r * ldc + 16));
    }
    for p in 0..k {
        let b0 = V::load(b.add(p * NR16));
        let b1 = V::load(b.add(p * NR16 + 16));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = V::splat(*a.add(p * MR16 + r));
            row[0] = row[0].fma(av, b0);
            row[1] = row[1].fma(av, b1);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        row[0].store(c.add(r * ldc));
        row[1].store(c.add(r * ldc + 16));
    }
}

/// The `MR16 x NR16` tile `C += A_panel * B_panel` over `kp` pairs of k, on bf16 pairs:
/// A panel `[kp][MR16]` and B panel `[kp][NR16]` of 32-bit lanes, each holding the bf16
/// values of k = 2q (low half) and 2q + 1 (high half), passed as `f32` pointers so that
/// the f32 GEMM's blocking (`gemm::Kernel`) carries them unchanged.
///
/// # Safety
/// As [`ukr`]; `V`'s `dpbf16` available.
#[inline(always)]
pub unsafe fn ukr_pairs<V: V16>(kp: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
    let mut acc = [[V::zero(); 2]; MR16];
    for (r, row) in acc.iter_mut().enumerate() {
        row[0] = V::load(c.add(r * ldc));
        row[1] = V::load(c.add(r * ldc + 16));
    }
    for p in 0..kp {
        let b0 = V::load(b.add(p * NR16));
        let b1 = V::load(b.add(p * NR16 + 16));
        for (r, row) in acc.iter_mut().enumerate() {
            let av = V::splat_bits((*a.add(p * MR16 + r)).to_bits());
            row[0] = row[0].dpbf16(av, b0);
            row[1] = row[1].dpbf16(av, b1);
        }
    }
    for (r, row) in acc.iter().enumerate() {
        row[0].store(c.add(r * ldc));
        row[1].store(c.add(r * ldc + 16));
    }
}

/// [`ukr_pairs`] on the portable twin.
///
/// # Safety
/// As [`ukr_pairs`].
pub unsafe fn ukr_pairs_emu(kp: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
    ukr_pairs::<Emu>(kp, a, b, c, ldc)
}

/// [`ukr_pairs`] on AVX-512 with `vdpbf16ps`.
///
/// # Safety
/// As [`ukr_pairs`], and the CPU must have AVX-512 F and AVX512-BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
pub unsafe fn ukr_pairs_avx512(kp: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
    ukr_pairs::<Avx512>(kp, a, b, c, ldc)
}

/// [`ukr`] on the portable twin.
///
/// # Safety
/// As [`ukr`].
pub unsafe fn ukr_emu(k: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
    ukr::<Emu>(k, a, b, c, ldc)
}

/// [`ukr`] on AVX-512, compiled with the feature enabled so the vectors stay in `zmm`
/// registers.
///
/// # Safety
/// As [`ukr`], and the CPU must have AVX-512 F (`isa::cpu::avx512`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn ukr_avx512(k: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
    ukr::<Avx512>(k, a, b, c, ldc)
}

#[cfg(test)]
mod tests {
    use super::super::testutil::rand_vec;
    use super::*;

    /// A tile on packed random panels: `(a_panel, b_panel, c, ldc)`, C with a wider
    /// stride than the tile so that a write outside it would show.
    fn case(k: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>, usize) {
        let ldc = NR16 + 5;
        (rand_vec(1, k * MR16), rand_vec(2, k * NR16), rand_vec(3, MR16 * ldc), ldc)
    }

    /// The twin computes the exact FMA chain of every element: compared with a scalar
    /// chain bit for bit, and with f64 sums to f32 accuracy; nothing outside the tile
    /// is touched.
    #[test]
    fn twin_is_the_fma_chain() {
        for k in [0, 1, 7, 64] {
            let (a, b, c0, ldc) = case(k);
            let mut c = c0.clone();
            unsafe { ukr_emu(k, a.as_ptr(), b.as_ptr(), c.as_mut_ptr(), ldc) };
            for r in 0..MR16 {
                for j in 0..ldc {
                    let got = c[r * ldc + j];
                    if j >= NR16 {
                        assert_eq!(got.to_bits(), c0[r * ldc + j].to_bits(), "wrote outside the tile at ({r}, {j})");
                        continue;
                    }
                    let chain = (0..k).fold(c0[r * ldc + j], |s, p| a[p * MR16 + r].mul_add(b[p * NR16 + j], s));
                    assert_eq!(got.to_bits(), chain.to_bits(), "k {k} ({r}, {j})");
                    let exact: f64 = c0[r * ldc + j] as f64
                        + (0..k).map(|p| a[p * MR16 + r] as f64 * b[p * NR16 + j] as f64).sum::<f64>();
                    assert!(
                        (got as f64 - exact).abs() <= 1e-5 * (1.0 + exact.abs()),
                        "k {k} ({r}, {j}): {got} vs {exact}"
                    );
                }
            }
        }
    }

    /// The pair kernel computes the bf16 dot products: against f64 sums of the bf16
    /// values (f32 rounding), on the twin everywhere and on `vdpbf16ps` where the CPU
    /// has it (also compared with the twin).
    #[test]
    fn pair_kernel_computes_bf16_dot_products() {
        use super::super::bf16::{daz, round};
        let kp = 37;
        let av: Vec<u16> = rand_vec(11, 2 * kp * MR16).iter().map(|&v| round(v)).collect();
        let bv: Vec<u16> = rand_vec(12, 2 * kp * NR16).iter().map(|&v| round(v)).collect();
        let (a, b): (Vec<f32>, Vec<f32>) = (
            av.chunks_exact(2).map(|p| f32::from_bits(p[0] as u32 | (p[1] as u32) << 16)).collect(),
            bv.chunks_exact(2).map(|p| f32::from_bits(p[0] as u32 | (p[1] as u32) << 16)).collect(),
        );
        let ldc = NR16 + 3;
        let c0 = rand_vec(13, MR16 * ldc);
        let mut want = vec![0f64; MR16 * NR16];
        for r in 0..MR16 {
            for j in 0..NR16 {
                let mut s = c0[r * ldc + j] as f64;
                for q in 0..kp {
                    for h in 0..2 {
                        s += daz(av[2 * (q * MR16 + r) + h]) as f64 * daz(bv[2 * (q * NR16 + j) + h]) as f64;
                    }
                }
                want[r * NR16 + j] = s;
            }
        }
        let tile = |c: &[f32]| -> Vec<f32> { (0..MR16).flat_map(|r| c[r * ldc..r * ldc + NR16].to_vec()).collect() };
        let mut twin = c0.clone();
        unsafe { ukr_pairs_emu(kp, a.as_ptr(), b.as_ptr(), twin.as_mut_ptr(), ldc) };
        let e = super::super::testutil::rel_err(&tile(&twin), &want);
        assert!(e < 1e-6, "twin: {e:.2e}");
        assert_eq!(&twin[NR16..ldc], &c0[NR16..ldc], "wrote outside the tile");
        if !super::super::isa::cpu::avx512_bf16() {
            eprintln!("skipped: no AVX512-BF16 on this CPU (the twin is tested everywhere)");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        {
            let mut hw = c0.clone();
            unsafe { ukr_pairs_avx512(kp, a.as_ptr(), b.as_ptr(), hw.as_mut_ptr(), ldc) };
            let same = hw.iter().zip(&twin).filter(|(x, y)| x.to_bits() == y.to_bits()).count();
            let e = crate::tensor::rel_l2(&hw, &twin);
            println!("vdpbf16ps vs twin: {same}/{} bit-identical, rel. L2 {e:.2e}", hw.len());
            assert!(e < 1e-6, "vdpbf16ps: {e:.2e} from the twin");
        }
    }

    /// The real AVX-512 layer gives the twin's bits (where the CPU has it).
    #[test]
    fn avx512_equals_the_twin() {
        if !super::super::isa::cpu::avx512() {
            eprintln!("skipped: no AVX-512 on this CPU (the twin is tested everywhere)");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        for k in [0, 1, 7, 64, 300] {
            let (a, b, c0, ldc) = case(k);
            let (mut want, mut got) = (c0.clone(), c0.clone());
            unsafe {
                ukr_emu(k, a.as_ptr(), b.as_ptr(), want.as_mut_ptr(), ldc);
                ukr_avx512(k, a.as_ptr(), b.as_ptr(), got.as_mut_ptr(), ldc);
            }
            let diff = want.iter().zip(&got).filter(|(x, y)| x.to_bits() != y.to_bits()).count();
            assert_eq!(diff, 0, "k {k}: {diff} values differ from the twin");
        }
    }
}
