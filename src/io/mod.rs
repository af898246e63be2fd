//! Images in and out, grids, masks.

pub mod image;
pub mod cache;
