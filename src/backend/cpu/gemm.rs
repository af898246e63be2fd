//! Blocked single-precision GEMM, `C += A * B`, in the BLIS layout: A packed into
//! MR-row panels `[panel][k][MR]`, B into NR-column panels `[panel][k][NR]`, one
//! register-tile micro-kernel. The tile shape is a pair of const parameters of
//! [`Kernel`]: 6 x 16 for AVX2 and the portable kernel, 14 x 32 for AVX-512 and its
//! twin (`vec16.rs`); [`with_kernel!`] turns the backend's [`F32Kernel`] into one.
//! Threading is left to callers, which know the better split (pixels, heads, rows).

use super::isa::F32Kernel;

/// Rows of A packed at once by `gemm` (a few hundred KB: stays in L2).
const MC: usize = 168;
/// Columns of B packed at once by `gemm`.
const NC: usize = 2048;

/// A strided read-only matrix view: element `(i, j)` is at `ptr[i*rs + j*cs]`.
#[derive(Clone, Copy)]
pub struct MatRef {
    pub ptr: *const f32,
    pub rs: isize,
    pub cs: isize,
}

impl MatRef {
    /// The view shifted to start at `(i, j)`.
    ///
    /// # Safety
    /// `(i, j)` must lie inside the viewed allocation.
    unsafe fn at(self, i: usize, j: usize) -> Self {
        Self { ptr: self.ptr.offset(i as isize * self.rs + j as isize * self.cs), ..self }
    }
}

#[repr(C, packed)]
#[derive(Clone, Copy)]
struct Unaligned<T>(T);

/// Reads a `T` (e.g. `[f32; 16]`) at any alignment as plain loads. `copy_from_slice`
/// and `read_unaligned` become `memcpy` calls behind debug-build precondition checks,
/// which the test profile (debug assertions on) would pay per tiny copy.
///
/// # Safety
/// `p` valid for reading `size_of::<T>()` bytes.
#[inline(always)]
pub unsafe fn load<T: Copy>(p: *const f32) -> T {
    (*(p as *const Unaligned<T>)).0
}

/// Writes a `T` at any alignment (see [`load`]).
///
/// # Safety
/// `p` valid for writing `size_of::<T>()` bytes.
#[inline(always)]
pub unsafe fn store<T: Copy>(p: *mut f32, v: T) {
    *(p as *mut Unaligned<T>) = Unaligned(v);
}

/// A micro-kernel `ukr(k, a_panel, b_panel, c, ldc)`: `C[MR x NR] += A_panel * B_panel`
/// over depth `k`, A panel `[k][MR]`, B panel `[k][NR]`, C row stride `ldc`.
pub type Ukr = unsafe fn(usize, *const f32, *const f32, *mut f32, usize);

/// A micro-kernel with its tile shape; the packing and the blocking follow the shape.
#[derive(Clone, Copy)]
pub struct Kernel<const MR: usize, const NR: usize> {
    pub ukr: Ukr,
}

/// Binds `$k` to the [`Kernel`] of an [`F32Kernel`] and runs `$body` (monomorphised
/// per tile shape).
macro_rules! with_kernel {
    ($kind:expr, |$k:ident| $body:expr) => {{
        use $crate::backend::cpu::gemm::Kernel;
        use $crate::backend::cpu::isa::F32Kernel;
        match $kind {
            F32Kernel::Portable => {
                let $k = Kernel::<6, 16> { ukr: $crate::backend::cpu::gemm::ukr_generic::<6, 16> };
                $body
            }
            #[cfg(target_arch = "x86_64")]
            F32Kernel::Avx2 => {
                let $k = Kernel::<6, 16> { ukr: $crate::backend::cpu::gemm::ukr_avx2 };
                $body
            }
            #[cfg(target_arch = "x86_64")]
            F32Kernel::Avx512 => {
                let $k = Kernel::<14, 32> { ukr: $crate::backend::cpu::vec16::ukr_avx512 };
                $body
            }
            #[cfg(not(target_arch = "x86_64"))]
            F32Kernel::Avx2 | F32Kernel::Avx512 => unreachable!("x86-64 kernels are never chosen elsewhere"),
            F32Kernel::Avx512Emu => {
                let $k = Kernel::<14, 32> { ukr: $crate::backend::cpu::vec16::ukr_emu };
                $body
            }
        }
    }};
}
pub(super) use with_kernel;

impl F32Kernel {
    /// Rows of its register tile (the A panel height of packed weights).
    pub fn mr(self) -> usize {
        with_kernel!(self, |k| k.mr())
    }
}

impl<const MR: usize, const NR: usize> Kernel<MR, NR> {
    /// Depth of one packed block: the B sliver (16 KB) stays in L1 while A slivers
    /// stream past it.
    pub const KC: usize = 4096 / NR;

    pub fn mr(self) -> usize {
        MR
    }

    /// Packed length of an `m x k` A block.
    pub fn packed_a_len(self, m: usize, k: usize) -> usize {
        m.div_ceil(MR) * MR * k
    }

    /// Packed length of a `k x n` B block.
    pub fn packed_b_len(self, k: usize, n: usize) -> usize {
        n.div_ceil(NR) * NR * k
    }

    /// Packs `a[0..m, 0..k]` into `[m/MR][k][MR]` panels, zero-padding the last panel.
    ///
    /// # Safety
    /// `a` must be readable over `m x k`; `dst.len() >= packed_a_len(m, k)`.
    pub unsafe fn pack_a(self, a: MatRef, m: usize, k: usize, dst: &mut [f32]) {
        for (i, panel) in dst[..self.packed_a_len(m, k)].chunks_exact_mut(MR * k).enumerate() {
            let rows = MR.min(m - i * MR);
            if a.rs == 1 && rows == MR {
                // Column-major source (a transposed operand): MR contiguous floats per k.
                for (p, dst) in panel.chunks_exact_mut(MR).enumerate() {
                    store::<[f32; MR]>(dst.as_mut_ptr(), load(a.at(i * MR, p).ptr));
                }
                continue;
            }
            for r in 0..MR {
                if r >= rows {
                    panel.iter_mut().skip(r).step_by(MR).for_each(|v| *v = 0.0);
                    continue;
                }
                let src = a.at(i * MR + r, 0);
                if src.cs == 1 {
                    let row = std::slice::from_raw_parts(src.ptr, k);
                    panel.chunks_exact_mut(MR).zip(row).for_each(|(d, &v)| d[r] = v);
                } else {
                    for (p, d) in panel.chunks_exact_mut(MR).enumerate() {
                        d[r] = load(src.ptr.wrapping_offset(p as isize * src.cs));
                    }
                }
            }
        }
    }

    /// Packs `b[0..k, 0..n]` into `[n/NR][k][NR]` panels, zero-padding the last panel.
    ///
    /// # Safety
    /// `b` must be readable over `k x n`; `dst.len() >= packed_b_len(k, n)`.
    pub unsafe fn pack_b(self, b: MatRef, k: usize, n: usize, dst: &mut [f32]) {
        for (j, panel) in dst[..self.packed_b_len(k, n)].chunks_exact_mut(NR * k).enumerate() {
            let cols = NR.min(n - j * NR);
            for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
                let src = b.at(p, j * NR);
                if src.cs == 1 && cols == NR {
                    store::<[f32; NR]>(row.as_mut_ptr(), load(src.ptr));
                } else if src.cs == 1 {
                    row[..cols].copy_from_slice(std::slice::from_raw_parts(src.ptr, cols));
                } else {
                    for (l, v) in row[..cols].iter_mut().enumerate() {
                        *v = *src.ptr.offset(l as isize * src.cs);
                    }
                }
                row[cols..].fill(0.0);
            }
        }
    }

    /// `C[0..m, 0..n] += A * B` over one packed block of depth `k`. `a` holds
    /// `ceil(m/MR)` panels `a_ps` floats apart (each read from its start); `b` holds
    /// `ceil(n/NR)` panels of `k*NR`. `c` has row stride `ldc`.
    ///
    /// # Safety
    /// Packed buffers as described; `c` writable over `m x n` with stride `ldc`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn macro_kernel(
        self,
        m: usize,
        n: usize,
        k: usize,
        a: *const f32,
        a_ps: usize,
        b: *const f32,
        c: *mut f32,
        ldc: usize,
    ) {
        let mut tmp = [[0f32; NR]; MR];
        // B sliver outer (it stays in L1), A slivers inner (streamed from L2).
        for j in 0..n.div_ceil(NR) {
            let cols = NR.min(n - j * NR);
            let bj = b.add(j * NR * k);
            for i in 0..m.div_ceil(MR) {
                let rows = MR.min(m - i * MR);
                let ai = a.add(i * a_ps);
                let cij = c.add(i * MR * ldc + j * NR);
                if rows == MR && cols == NR {
                    (self.ukr)(k, ai, bj, cij, ldc);
                } else {
                    // Edge tile: run the full tile on a copy, write back the valid part.
                    for (r, t) in tmp.iter_mut().enumerate().take(rows) {
                        std::ptr::copy_nonoverlapping(cij.add(r * ldc), t.as_mut_ptr(), cols);
                    }
                    (self.ukr)(k, ai, bj, tmp.as_mut_ptr() as *mut f32, NR);
                    for (r, t) in tmp.iter().enumerate().take(rows) {
                        std::ptr::copy_nonoverlapping(t.as_ptr(), cij.add(r * ldc), cols);
                    }
                }
            }
        }
    }

    /// Single-threaded `C[0..m, 0..n] += A[0..m, 0..k] * B[0..k, 0..n]` with any strides
    /// for A and B; `apack` / `bpack` are grown as needed and may be reused across calls.
    ///
    /// # Safety
    /// `a`, `b` readable over their extents, `c` writable over `m x n` with stride `ldc`,
    /// and `c` not overlapping `a` or `b`.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn gemm(
        self,
        m: usize,
        n: usize,
        k: usize,
        a: MatRef,
        b: MatRef,
        c: *mut f32,
        ldc: usize,
        apack: &mut Vec<f32>,
        bpack: &mut Vec<f32>,
    ) {
        if m == 0 || n == 0 || k == 0 {
            return;
        }
        let kc_blk = Self::KC;
        let (mc_max, nc_max, kc_max) = (MC.min(m), NC.min(n), kc_blk.min(k));
        grow(apack, self.packed_a_len(mc_max, kc_max));
        grow(bpack, self.packed_b_len(kc_max, nc_max));
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(kc_blk) {
                let kc = kc_blk.min(k - pc);
                self.pack_b(b.at(pc, jc), kc, nc, bpack);
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    self.pack_a(a.at(ic, pc), mc, kc, apack);
                    self.macro_kernel(mc, nc, kc, apack.as_ptr(), MR * kc, bpack.as_ptr(), c.add(ic * ldc + jc), ldc);
                }
            }
        }
    }
}

/// Portable `MR x NR` tile: `C += A_panel * B_panel` (multiply and add rounded
/// separately: Rust does not contract them into FMAs).
///
/// # Safety
/// As [`Ukr`].
pub unsafe fn ukr_generic<const MR: usize, const NR: usize>(
    k: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
) {
    let mut acc = [[0f32; NR]; MR];
    for (r, row) in acc.iter_mut().enumerate() {
        for (l, v) in row.iter_mut().enumerate() {
            *v = *c.add(r * ldc + l);
        }
    }
    for p in 0..k {
        let bp = std::slice::from_raw_parts(b.add(p * NR), NR);
        for (r, row) in acc.iter_mut().enumerate() {
            let ar = *a.add(p * MR + r);
            for (v, &bv) in row.iter_mut().zip(bp) {
                *v += ar * bv;
            }
        }
    }
    for (r, row) in acc.iter().enumerate() {
        for (l, v) in row.iter().enumerate() {
            *c.add(r * ldc + l) = *v;
        }
    }
}

/// AVX2+FMA `6 x 16` tile in inline assembly: 12 accumulators (ymm4..15), two B
/// vectors, two broadcast registers. Assembly rather than intrinsics because the test
/// profile builds with debug assertions, whose pointer precondition checks (in
/// `_mm256_loadu_ps`, `ptr::add`, raw derefs) otherwise land in the inner loop.
///
/// # Safety
/// As [`Ukr`], and the CPU must have AVX2+FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
pub unsafe fn ukr_avx2(k: usize, a: *const f32, b: *const f32, c: *mut f32, ldc: usize) {
    let l = ldc * 4;
    let c3 = c.wrapping_add(3 * ldc);
    std::arch::asm!(
        "vmovups ymm4, [{c0}]",
        "vmovups ymm5, [{c0} + 32]",
        "vmovups ymm6, [{c0} + {l}]",
        "vmovups ymm7, [{c0} + {l} + 32]",
        "vmovups ymm8, [{c0} + {l} * 2]",
        "vmovups ymm9, [{c0} + {l} * 2 + 32]",
        "vmovups ymm10, [{c3}]",
        "vmovups ymm11, [{c3} + 32]",
        "vmovups ymm12, [{c3} + {l}]",
        "vmovups ymm13, [{c3} + {l} + 32]",
        "vmovups ymm14, [{c3} + {l} * 2]",
        "vmovups ymm15, [{c3} + {l} * 2 + 32]",
        "test {k}, {k}",
        "jz 3f",
        "2:",
        "vmovups ymm0, [{b}]",
        "vmovups ymm1, [{b} + 32]",
        "vbroadcastss ymm2, dword ptr [{a}]",
        "vfmadd231ps ymm4, ymm2, ymm0",
        "vfmadd231ps ymm5, ymm2, ymm1",
        "vbroadcastss ymm3, dword ptr [{a} + 4]",
        "vfmadd231ps ymm6, ymm3, ymm0",
        "vfmadd231ps ymm7, ymm3, ymm1",
        "vbroadcastss ymm2, dword ptr [{a} + 8]",
        "vfmadd231ps ymm8, ymm2, ymm0",
        "vfmadd231ps ymm9, ymm2, ymm1",
        "vbroadcastss ymm3, dword ptr [{a} + 12]",
        "vfmadd231ps ymm10, ymm3, ymm0",
        "vfmadd231ps ymm11, ymm3, ymm1",
        "vbroadcastss ymm2, dword ptr [{a} + 16]",
        "vfmadd231ps ymm12, ymm2, ymm0",
        "vfmadd231ps ymm13, ymm2, ymm1",
        "vbroadcastss ymm3, dword ptr [{a} + 20]",
        "vfmadd231ps ymm14, ymm3, ymm0",
        "vfmadd231ps ymm15, ymm3, ymm1",
        "add {a}, 24",
        "add {b}, 64",
        "dec {k}",
        "jnz 2b",
        "3:",
        "vmovups [{c0}], ymm4",
        "vmovups [{c0} + 32], ymm5",
        "vmovups [{c0} + {l}], ymm6",
        "vmovups [{c0} + {l} + 32], ymm7",
        "vmovups [{c0} + {l} * 2], ymm8",
        "vmovups [{c0} + {l} * 2 + 32], ymm9",
        "vmovups [{c3}], ymm10",
        "vmovups [{c3} + 32], ymm11",
        "vmovups [{c3} + {l}], ymm12",
        "vmovups [{c3} + {l} + 32], ymm13",
        "vmovups [{c3} + {l} * 2], ymm14",
        "vmovups [{c3} + {l} * 2 + 32], ymm15",
        "vzeroupper",
        k = inout(reg) k => _,
        a = inout(reg) a => _,
        b = inout(reg) b => _,
        c0 = in(reg) c,
        c3 = in(reg) c3,
        l = in(reg) l,
        out("ymm0") _, out("ymm1") _, out("ymm2") _, out("ymm3") _,
        out("ymm4") _, out("ymm5") _, out("ymm6") _, out("ymm7") _,
        out("ymm8") _, out("ymm9") _, out("ymm10") _, out("ymm11") _,
        out("ymm12") _, out("ymm13") _, out("ymm14") _, out("ymm15") _,
        options(nostack),
    );
}

fn grow(v: &mut Vec<f32>, len: usize) {
    if v.len() < len {
        v.resize(len, 0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::super::isa::Isa;
    use super::super::testutil::rand_vec;
    use super::*;

    /// The f32 kernels of every ISA this CPU runs (the twins everywhere).
    pub(crate) fn kernels() -> Vec<F32Kernel> {
        let mut ks: Vec<F32Kernel> = Vec::new();
        for isa in Isa::ALL {
            if isa.available().is_ok() && !ks.contains(&isa.f32_kernel()) {
                ks.push(isa.f32_kernel());
            }
        }
        ks
    }

    /// Strided A (transposed) and B, odd sizes crossing every block and tile edge, on
    /// every kernel: against f64 sums.
    #[test]
    fn gemm_matches_naive_on_every_kernel() {
        for kind in kernels() {
            for &(m, n, k) in &[(1, 1, 1), (7, 17, 5), (23, 37, 41), (170, 40, 300), (13, 2100, 9)] {
                let at = rand_vec(1, m * k); // stored k-major: a(i, p) = at[p*m + i]
                let b = rand_vec(2, k * n);
                let c0 = rand_vec(3, m * n);
                let mut c = c0.clone();
                let (mut ap, mut bp) = (Vec::new(), Vec::new());
                let (am, bm) = (
                    MatRef { ptr: at.as_ptr(), rs: 1, cs: m as isize },
                    MatRef { ptr: b.as_ptr(), rs: n as isize, cs: 1 },
                );
                with_kernel!(kind, |kern| unsafe { kern.gemm(m, n, k, am, bm, c.as_mut_ptr(), n, &mut ap, &mut bp) });
                let mut want = vec![0f32; m * n];
                for i in 0..m {
                    for j in 0..n {
                        let mut s = c0[i * n + j] as f64;
                        for p in 0..k {
                            s += at[p * m + i] as f64 * b[p * n + j] as f64;
                        }
                        want[i * n + j] = s as f32;
                    }
                }
                let e = crate::tensor::rel_l2(&c, &want);
                assert!(e < 1e-5, "{kind:?} {m}x{n}x{k}: {e}");
            }
        }
    }

    /// The AVX-512 kernel gives its twin's bits through the whole GEMM (packing,
    /// blocking, edges), where the CPU has it.
    #[test]
    fn avx512_gemm_equals_the_twin() {
        if Isa::Avx512.available().is_err() {
            eprintln!("skipped: no AVX-512 on this CPU (the twin is tested everywhere)");
            return;
        }
        let (m, n, k) = (45, 77, 300);
        let (a, b) = (rand_vec(4, m * k), rand_vec(5, k * n));
        let (am, bm) =
            (MatRef { ptr: a.as_ptr(), rs: k as isize, cs: 1 }, MatRef { ptr: b.as_ptr(), rs: n as isize, cs: 1 });
        let run = |kind: F32Kernel| {
            let mut c = rand_vec(6, m * n);
            let (mut ap, mut bp) = (Vec::new(), Vec::new());
            with_kernel!(kind, |kern| unsafe { kern.gemm(m, n, k, am, bm, c.as_mut_ptr(), n, &mut ap, &mut bp) });
            c
        };
        let (hw, twin) = (run(F32Kernel::Avx512), run(F32Kernel::Avx512Emu));
        assert!(hw.iter().zip(&twin).all(|(x, y)| x.to_bits() == y.to_bits()), "AVX-512 GEMM differs from its twin");
    }
}
