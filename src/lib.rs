//! diffstyle: training-free style transfer through the h-space of a frozen,
//! unconditional, pixel-space diffusion U-Net (DiffStyle / InjectFusion), with no ML
//! framework at run time. See `README.md` and `shared/docs/method.md`.

pub mod backend;
pub mod bench;
pub mod commands;
pub mod diffusion;
pub mod dtype;
pub mod eval;
pub mod io;
pub mod model;
pub mod pipeline;
pub mod rng;
pub mod serve;
pub mod tensor;
