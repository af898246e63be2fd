//! The weight storage precision: a bottom-layer type that every layer uses and that
//! uses nothing of the crate (as candle's `DType`). Its name is written once, in
//! [`Precision::name`]; the command line, the kernels' name suffixes and the reports all
//! read it from there.

use std::fmt;
use std::str::FromStr;

/// Storage precision of the weights (activations, latents and the h-space op stay f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub const ALL: [Precision; 3] = [Precision::F32, Precision::F16, Precision::Bf16];

    /// The lower-case name (`f32`, `f16`, `bf16`): the CLI value and the kernels' suffix.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }

    /// Rounds a value through the storage format.
    pub fn round(self, v: f32) -> f32 {
        match self {
            Precision::F32 => v,
            Precision::F16 => half::f16::from_f32(v).to_f32(),
            Precision::Bf16 => half::bf16::from_f32(v).to_f32(),
        }
    }

    /// Bytes per stored weight.
    pub fn bytes(self) -> usize {
        if self == Precision::F32 {
            4
        } else {
            2
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let known: Vec<&str> = Self::ALL.iter().map(|p| p.name()).collect();
            format!("unknown precision {s:?} (known: {})", known.join(", "))
        })
    }
}

/// The CLI's parser reads the same names.
impl clap::ValueEnum for Precision {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Precision::ALL {
            assert_eq!(p.name().parse::<Precision>(), Ok(p));
        }
        assert!("fp8".parse::<Precision>().unwrap_err().contains("bf16"));
        assert_eq!(Precision::Bf16.round(1.0 + 1.0 / 1024.0), 1.0);
    }
}
