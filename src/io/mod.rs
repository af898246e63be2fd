//! Images in and out: decoding with the authors' torchvision preprocessing (PIL-exact
//! bilinear resize), PNG output, torchvision-style grids, local-mixing masks, the
//! inversion cache, and atomic file writes.

pub mod atomic;
pub mod cache;
pub mod font;
pub mod grid;
pub mod image;
pub mod mask;
pub mod safetensors;

pub use self::atomic::write_atomic;
pub use self::grid::{authors_grid, make_grid};
pub use self::image::{latent_to_rgb8, load_image, save_png};
pub use self::mask::load_mask;
