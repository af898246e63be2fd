//! The sampler's time sequence (which of the training timesteps a run visits).

use crate::model::schedule::numpy_linspace;

/// The time sequence with `n` steps over 1000 training steps:
/// `[int(s + 1e-6) for s in numpy.linspace(0, 1, n) * 999]`, bit-exact.
pub fn seq(n: usize) -> Vec<i64> {
    numpy_linspace(0.0, 1.0, n).into_iter().map(|s| (s * 999.0 + 1e-6) as i64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_cases() {
        assert_eq!(seq(0), Vec::<i64>::new());
        assert_eq!(seq(1), vec![0]);
        assert_eq!(seq(2), vec![0, 999]);
    }
}
