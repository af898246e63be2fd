//! Schedules, time sequences, DDIM inversion and the DiffStyle generation loop.

pub mod method;
pub mod steps;
pub mod timesteps;
