//! U-Net configuration, weight loading and the U-Net itself.

pub mod adm;
pub mod arch;
pub mod config;
pub mod graph;
pub mod plan;
pub mod schedule;
pub mod unet;
pub mod weights;
