//! Which instructions the CPU backend's matrix products run on, chosen once per backend:
//! AMX-BF16 -> AVX-512 -> AVX2+FMA -> portable, or forced with `DIFFSTYLE_CPU_ISA`.
//! The two `-emu` choices run the AMX and AVX-512 kernels on their software twins
//! (`amx::EmuTiles`, `vec16::Emu`) on any CPU: slow, for tests and for checking the
//! packing where the hardware is absent.
//!
//! What each choice means for the two products (see `F32Kernel`, `Bf16Tiles`):
//!
//! | isa | f32 GEMM | bf16 convolutions (weights stored as bf16) |
//! |---|---|---|
//! | `amx` | AVX-512 14x32 | AMX tiles (`tdpbf16ps`) |
//! | `amx-emu` | AVX-512 twin 14x32 | software AMX tiles |
//! | `avx512` | AVX-512 14x32 | `vdpbf16ps` 14x32 on pairs where the CPU has AVX512-BF16, else f32 |
//! | `avx512-emu` | AVX-512 twin 14x32 | `vdpbf16ps` twin 14x32 on pairs |
//! | `avx2` | AVX2+FMA 6x16 | f32 (bf16-rounded weights) |
//! | `portable` | plain Rust 6x16 | f32 (bf16-rounded weights) |
//!
//! 3x3 stride-1 convolutions go through Winograd on every path (`winograd.rs`);
//! `DIFFSTYLE_CPU_WINOGRAD=0` turns it off.

use std::fmt;

/// The environment variable that forces a choice.
pub const ENV: &str = "DIFFSTYLE_CPU_ISA";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    Amx,
    Avx512,
    Avx2,
    Portable,
    AmxEmu,
    Avx512Emu,
}

/// The f32 micro-kernel of an [`Isa`]: tile shape and instructions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum F32Kernel {
    /// 6x16, plain Rust.
    Portable,
    /// 6x16, AVX2+FMA assembly.
    Avx2,
    /// 14x32 on `vec16::Avx512`.
    Avx512,
    /// 14x32 on `vec16::Emu` (bit-identical to `Avx512`).
    Avx512Emu,
}

/// What multiplies the bf16 convolutions of an [`Isa`]: AMX tiles (`gemm_bf16.rs`) or
/// the vector tile on bf16 pairs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Bf16Tiles {
    /// The AMX registers (`amx::real::AmxTiles`).
    Amx,
    /// The SDM's semantics in software (`amx::EmuTiles`).
    AmxEmu,
    /// The 14x32 vector tile on bf16 pairs, `vdpbf16ps` (`vec16::ukr_pairs`).
    Avx512Bf16,
    /// The same on the 16-lane twin.
    Avx512Bf16Emu,
}

impl Isa {
    /// Best first: the order of automatic choice, then the twins.
    pub const ALL: [Isa; 6] = [Isa::Amx, Isa::Avx512, Isa::Avx2, Isa::Portable, Isa::AmxEmu, Isa::Avx512Emu];

    /// The name `DIFFSTYLE_CPU_ISA` takes and reports print.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Amx => "amx",
            Isa::Avx512 => "avx512",
            Isa::Avx2 => "avx2",
            Isa::Portable => "portable",
            Isa::AmxEmu => "amx-emu",
            Isa::Avx512Emu => "avx512-emu",
        }
    }

    pub fn parse(s: &str) -> Result<Isa, String> {
        Self::ALL.into_iter().find(|i| i.name() == s).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|i| i.name()).collect();
            format!("{ENV}={s:?} is not an instruction set this build knows (known: {})", known.join(", "))
        })
    }

    /// `Ok` when this CPU (and OS) runs it, else why not. Asking for AMX also asks
    /// Linux for the tile state, once per process.
    pub fn available(self) -> Result<(), String> {
        match self {
            Isa::Portable | Isa::AmxEmu | Isa::Avx512Emu => Ok(()),
            Isa::Avx2 if cpu::avx2() => Ok(()),
            Isa::Avx2 => Err("the CPU has no AVX2+FMA".into()),
            Isa::Avx512 if cpu::avx512() => Ok(()),
            Isa::Avx512 => Err("the CPU has no AVX-512 F".into()),
            Isa::Amx if !cpu::avx512() => Err("the CPU has no AVX-512 F (the f32 products need it)".into()),
            Isa::Amx => cpu::amx(),
        }
    }

    /// The best available choice, and why each better one was passed over.
    pub fn best() -> (Isa, Vec<String>) {
        let mut passed = Vec::new();
        for isa in [Isa::Amx, Isa::Avx512, Isa::Avx2] {
            match isa.available() {
                Ok(()) => return (isa, passed),
                Err(why) => passed.push(format!("passed over {}: {why}", isa.name())),
            }
        }
        (Isa::Portable, passed)
    }

    /// `DIFFSTYLE_CPU_ISA` when set (refused with the reason when the CPU lacks it),
    /// else [`Isa::best`].
    pub fn from_env() -> Result<(Isa, Vec<String>), String> {
        match std::env::var(ENV) {
            Ok(s) if !s.is_empty() => {
                let isa = Isa::parse(&s)?;
                isa.available().map_err(|why| format!("{ENV}={s} cannot be used here: {why}"))?;
                Ok((isa, vec![format!("forced by {ENV}")]))
            }
            _ => Ok(Isa::best()),
        }
    }

    pub fn f32_kernel(self) -> F32Kernel {
        match self {
            Isa::Amx | Isa::Avx512 => F32Kernel::Avx512,
            Isa::AmxEmu | Isa::Avx512Emu => F32Kernel::Avx512Emu,
            Isa::Avx2 => F32Kernel::Avx2,
            Isa::Portable => F32Kernel::Portable,
        }
    }

    /// The tiles of the bf16 products; `None`: bf16 weights are multiplied in f32.
    pub fn bf16_tiles(self) -> Option<Bf16Tiles> {
        match self {
            Isa::Amx => Some(Bf16Tiles::Amx),
            Isa::AmxEmu => Some(Bf16Tiles::AmxEmu),
            Isa::Avx512 if cpu::avx512_bf16() => Some(Bf16Tiles::Avx512Bf16),
            Isa::Avx512Emu => Some(Bf16Tiles::Avx512Bf16Emu),
            _ => None,
        }
    }
}

impl fmt::Display for Isa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl F32Kernel {
    pub fn describe(self) -> &'static str {
        match self {
            F32Kernel::Portable => "f32 6x16 portable",
            F32Kernel::Avx2 => "f32 6x16 AVX2+FMA",
            F32Kernel::Avx512 => "f32 14x32 AVX-512",
            F32Kernel::Avx512Emu => "f32 14x32 AVX-512 twin (software)",
        }
    }
}

impl Bf16Tiles {
    pub fn describe(self) -> &'static str {
        match self {
            Bf16Tiles::Amx => "bf16 on AMX tiles",
            Bf16Tiles::AmxEmu => "bf16 on software AMX tiles",
            Bf16Tiles::Avx512Bf16 => "bf16 on vdpbf16ps 14x32",
            Bf16Tiles::Avx512Bf16Emu => "bf16 on the vdpbf16ps twin 14x32 (software)",
        }
    }
}

/// What the CPU has. std caches its feature queries; the AMX permission is asked once.
pub mod cpu {
    pub fn avx2() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    pub fn avx512() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    pub fn avx512_bf16() -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }

    /// AMX-BF16 present and permitted by Linux, or why not.
    pub fn amx() -> Result<(), String> {
        static ONCE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        ONCE.get_or_init(super::super::amx::request_amx).clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for isa in Isa::ALL {
            assert_eq!(Isa::parse(isa.name()), Ok(isa));
        }
        let e = Isa::parse("sse9").unwrap_err();
        assert!(e.contains(ENV) && e.contains("sse9") && e.contains("amx-emu"), "{e}");
    }

    /// The twins run everywhere; the automatic choice is available and no better
    /// available choice was passed over.
    #[test]
    fn best_is_available_and_twins_always_are() {
        assert!(Isa::Portable.available().is_ok() && Isa::AmxEmu.available().is_ok());
        assert!(Isa::Avx512Emu.available().is_ok());
        let (best, passed) = Isa::best();
        assert!(best.available().is_ok());
        let rank = Isa::ALL.iter().position(|&i| i == best).unwrap();
        assert_eq!(passed.len(), rank, "{passed:?}");
        for isa in &Isa::ALL[..rank] {
            assert!(isa.available().is_err(), "{isa} is available but was passed over");
        }
        println!("this CPU: {best} (passed over: {passed:?})");
    }
}
