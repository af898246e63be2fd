//! The normalised U-Net architecture every config format is turned into.

use serde::{Deserialize, Serialize};

/// A DDPM-family U-Net (diffusers `UNet2DModel` with `DownBlock2D` / `AttnDownBlock2D`,
/// `UpBlock2D` / `AttnUpBlock2D`, `UNetMidBlock2D`; equivalently the original DDPM
/// `Model`). Tensor names are the diffusers ones with new-style attention names.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UNetArch {
    pub sample_size: usize,
    pub in_channels: usize,
    pub out_channels: usize,
    /// Channels per resolution level, highest resolution first.
    pub block_out_channels: Vec<usize>,
    /// Res blocks per down level (the up levels have one more).
    pub layers_per_block: usize,
    /// Attention after each res block of down level `i`.
    pub down_attention: Vec<bool>,
    /// Attention after each res block of up block `i` (decoder order: `i = 0` is the
    /// lowest resolution).
    pub up_attention: Vec<bool>,
    /// Attention between the two middle res blocks.
    pub mid_attention: bool,
    /// Channels per attention head; `None` = one head over all channels.
    pub attention_head_dim: Option<usize>,
    pub norm_num_groups: usize,
    /// Groups of the middle block's attention norm (diffusers `attn_norm_num_groups`).
    pub mid_attn_norm_groups: usize,
    pub norm_eps: f32,
    /// 0: pad (0,1,0,1) then stride-2 conv without padding (original DDPM);
    /// 1: stride-2 conv with padding 1.
    pub downsample_padding: usize,
    pub flip_sin_to_cos: bool,
    pub freq_shift: f32,
    /// Width of the time-embedding MLP (4 x block_out_channels[0] by default).
    pub time_embed_dim: usize,
}

impl UNetArch {
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Attention heads for a layer with `channels` channels.
    pub fn heads(&self, channels: usize) -> usize {
        channels / self.attention_head_dim.unwrap_or(channels)
    }

    /// Side of the h-space grid (the middle block's resolution).
    pub fn h_size(&self) -> usize {
        self.sample_size >> (self.levels() - 1)
    }

    /// Channels of h.
    pub fn h_channels(&self) -> usize {
        *self.block_out_channels.last().expect("at least one level")
    }

    /// The 256x256 DDPM U-Net of `google/ddpm-*` and the authors' CelebA-HQ, church and
    /// bedroom models.
    pub fn ddpm_256() -> Self {
        Self {
            sample_size: 256,
            in_channels: 3,
            out_channels: 3,
            block_out_channels: vec![128, 128, 256, 256, 512, 512],
            layers_per_block: 2,
            down_attention: vec![false, false, false, false, true, false],
            up_attention: vec![false, true, false, false, false, false],
            mid_attention: true,
            attention_head_dim: None,
            norm_num_groups: 32,
            mid_attn_norm_groups: 32,
            norm_eps: 1e-6,
            downsample_padding: 0,
            flip_sin_to_cos: false,
            freq_shift: 1.0,
            time_embed_dim: 512,
        }
    }
}
