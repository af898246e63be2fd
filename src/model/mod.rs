//! U-Net configuration, weight loading and the U-Net itself.
//!
//! `arch` (the normalised architecture) → `config` (reading config files and presets)
//! → `graph` (the op list and the checkpoint tensors it reads; built by `ddpm` / `adm`,
//! picked in `families`) → `validate` (architecture checks on the built graph) →
//! `weights` (loading checkpoints against the graph's tensor list) → `plan` / `unet`
//! (running it on a backend). `schedule` is the model's training noise schedule.

pub mod adm;
pub mod arch;
pub mod config;
pub mod ddpm;
pub mod families;
pub mod graph;
pub mod plan;
pub mod schedule;
pub mod unet;
pub mod validate;
pub mod weights;
