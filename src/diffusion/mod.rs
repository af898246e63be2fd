//! Schedules, time sequences, DDIM inversion and the DiffStyle generation loop.

pub mod rng;
pub mod schedule;
pub mod method;
