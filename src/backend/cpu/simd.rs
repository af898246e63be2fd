//! Function multi-versioning for the autovectorised loops (norm statistics, SiLU,
//! softmax): the body is compiled twice, baseline and AVX2+FMA, and picked at run
//! time. Rust never contracts `a * b + c` into an FMA, and the loops fix their own
//! reduction order, so both versions give bit-identical results.

/// `multiversion! { fn name(args) -> ret { body } }` defines `name` as described above.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? $body:block) => {
        $(#[$m])*
        $vis fn $name($($a: $t),*) $(-> $r)? {
            #[inline(always)]
            fn imp($($a: $t),*) $(-> $r)? $body
            #[cfg(target_arch = "x86_64")]
            #[target_feature(enable = "avx2,fma")]
            unsafe fn avx2($($a: $t),*) $(-> $r)? {
                imp($($a),*)
            }
            #[cfg(target_arch = "x86_64")]
            if $crate::backend::cpu::isa::cpu::avx2() {
                // SAFETY: the CPU supports the features `avx2` was compiled for.
                return unsafe { avx2($($a),*) };
            }
            imp($($a),*)
        }
    };
}
