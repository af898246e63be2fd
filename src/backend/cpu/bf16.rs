//! The bf16 conversions of the CPU's bf16 products, in one place: rounding f32 to bf16
//! as the packing does, and reading bf16 as the instructions do (`tdpbf16ps` and
//! `vdpbf16ps` both read denormals as zero and flush denormal results).

/// f32 -> bf16 bits, rounded to nearest even (NaN stays a quiet NaN).
pub fn round(v: f32) -> u16 {
    (round_hi(v) >> 16) as u16
}

/// [`round`] in the upper half of a 32-bit word (the lower half is not cleared):
/// branch-free, so that loops over it vectorise.
#[inline(always)]
pub fn round_hi(v: f32) -> u32 {
    let b = v.to_bits();
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1));
    if b & 0x7fff_ffff > 0x7f80_0000 {
        b | 0x40_0000
    } else {
        r
    }
}

/// bf16 bits as f32, a denormal read as zero.
pub fn daz(x: u16) -> f32 {
    ftz(f32::from_bits((x as u32) << 16))
}

/// A denormal flushed to a zero of its sign.
pub fn ftz(v: f32) -> f32 {
    if v.is_subnormal() {
        0.0f32.copysign(v)
    } else {
        v
    }
}

multiversion! {
    /// `out[l]` = the bf16 pair (`lo[l]`, `hi[l]`), each [`round`]ed, in 32-bit
    /// lanes the compiler vectorises.
    pub fn interleave(lo: &[f32], hi: &[f32], out: &mut [u32]) {
        for ((o, &l), &h) in out.iter_mut().zip(lo).zip(hi) {
            *o = (round_hi(h) & 0xffff_0000) | (round_hi(l) >> 16);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_is_nearest_even_and_agrees_with_half() {
        for v in
            super::super::testutil::rand_vec(11, 10_000).into_iter().chain([0.0, -0.0, 1e-40, f32::MAX, f32::INFINITY])
        {
            assert_eq!(round(v), half::bf16::from_f32(v).to_bits(), "{v}");
        }
        // Ties go to even: 1 + 2^-8 is halfway between 1 and 1 + 2^-7.
        assert_eq!(round(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(round(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert!(f32::from_bits((round(f32::NAN) as u32) << 16).is_nan());
        assert_eq!(daz(0x0001), 0.0);
        assert_eq!(daz(0x8001).to_bits(), (-0.0f32).to_bits());
        assert_eq!(daz(0x3f80), 1.0);
    }
}
