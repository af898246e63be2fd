//! The normalised U-Net architecture every config format is turned into.

use serde::{Deserialize, Serialize};

/// The options of the ADM family (guided-diffusion / improved-diffusion `UNetModel`)
/// that have no counterpart in the DDPM family. Its other hyperparameters map onto the
/// shared fields of [`UNetArch`]: `block_out_channels = channel_mult * model_channels`,
/// `layers_per_block = num_res_blocks`, attention flags from `attention_resolutions`,
/// `attention_head_dim = num_head_channels` (or `None` with `num_heads`), GroupNorm(32,
/// eps 1e-5), cos-first sinusoids without shift, `time_embed_dim = 4 * model_channels`,
/// `out_channels = 6` with a learned variance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AdmOptions {
    /// Width of the sinusoidal timestep embedding (`model_channels`).
    pub model_channels: usize,
    /// FiLM conditioning: `norm(h) * (1 + scale) + shift` in the second half of every
    /// res block, scale / shift from the time embedding (2 x channels).
    pub use_scale_shift_norm: bool,
    /// Res blocks with nearest-2x / 2x2 average-pool resampling instead of the
    /// Upsample / Downsample convolutions.
    pub resblock_updown: bool,
    /// `QKVAttention` (q, k, v each over all heads) rather than `QKVAttentionLegacy`
    /// (per head: q, k, v).
    pub use_new_attention_order: bool,
    /// Heads of the encoder / middle and of the decoder attention layers when
    /// `attention_head_dim` is `None` (`num_head_channels == -1`).
    pub num_heads: usize,
    pub num_heads_upsample: usize,
}

/// A U-Net of one of the supported families. Without `adm` it is a DDPM-family U-Net
/// (diffusers `UNet2DModel` with `DownBlock2D` / `AttnDownBlock2D`, `UpBlock2D` /
/// `AttnUpBlock2D`, `UNetMidBlock2D`; equivalently the original DDPM `Model`), whose
/// tensor names are the diffusers ones with new-style attention names. With `adm` it is
/// the guided-diffusion `UNetModel`, whose canonical tensor names are its own
/// (`input_blocks.N.0.in_layers.0.weight`, ...).
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
    /// Width of the time-embedding MLP (4 x `block_out_channels[0]` by default).
    pub time_embed_dim: usize,
    /// The ADM family's options; `None` for the DDPM family.
    #[serde(default)]
    pub adm: Option<AdmOptions>,
}

impl UNetArch {
    pub fn levels(&self) -> usize {
        self.block_out_channels.len()
    }

    /// Attention heads for a layer with `channels` channels (`decoder`: an attention
    /// layer of the up path, which the ADM family may give other heads).
    pub fn heads(&self, channels: usize, decoder: bool) -> usize {
        match (self.attention_head_dim, &self.adm) {
            // 0 heads for a width the head size exceeds; validation refuses it.
            (Some(d), _) => channels.checked_div(d).unwrap_or(0),
            (None, Some(a)) => {
                if decoder {
                    a.num_heads_upsample
                } else {
                    a.num_heads
                }
            }
            (None, None) => 1,
        }
    }

    /// Width of the sinusoidal timestep embedding.
    pub fn time_proj_dim(&self) -> usize {
        self.adm.as_ref().map_or(self.block_out_channels[0], |a| a.model_channels)
    }

    /// Channels of the noise prediction: the first `in_channels` of the output (a
    /// learned-variance model outputs `2 * in_channels`, eps then the variance).
    pub fn eps_channels(&self) -> usize {
        if self.adm.is_some() {
            self.in_channels
        } else {
            self.out_channels
        }
    }

    pub fn family_name(&self) -> &'static str {
        if self.adm.is_some() {
            "ADM"
        } else {
            "DDPM"
        }
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
            adm: None,
        }
    }

    /// The ADM `UNetModel` as guided-diffusion's `create_model` builds it from its
    /// flags (`script_util.py`): `channel_mult` from the image size when empty,
    /// attention at the image resolutions `attention_resolutions`,
    /// `num_head_channels = None` for -1, `num_heads_upsample = None` for -1 (= num_heads).
    #[allow(clippy::too_many_arguments)]
    pub fn adm(
        image_size: usize,
        num_channels: usize,
        num_res_blocks: usize,
        channel_mult: &[usize],
        learn_sigma: bool,
        attention_resolutions: &[usize],
        num_heads: usize,
        num_head_channels: Option<usize>,
        num_heads_upsample: Option<usize>,
        use_scale_shift_norm: bool,
        resblock_updown: bool,
        use_new_attention_order: bool,
    ) -> Self {
        let l = channel_mult.len();
        // Level i runs at downsampling rate 2^i; attention where image_size / res == 2^i.
        let at = |i: usize| attention_resolutions.iter().any(|&r| r > 0 && image_size / r == 1 << i);
        let down_attention: Vec<bool> = (0..l).map(at).collect();
        let up_attention: Vec<bool> = (0..l).map(|u| down_attention[l - 1 - u]).collect();
        Self {
            sample_size: image_size,
            in_channels: 3,
            out_channels: if learn_sigma { 6 } else { 3 },
            block_out_channels: channel_mult.iter().map(|m| m * num_channels).collect(),
            layers_per_block: num_res_blocks,
            down_attention,
            up_attention,
            mid_attention: true,
            attention_head_dim: num_head_channels,
            norm_num_groups: 32,
            mid_attn_norm_groups: 32,
            norm_eps: 1e-5,
            downsample_padding: 1,
            flip_sin_to_cos: true,
            freq_shift: 0.0,
            time_embed_dim: 4 * num_channels,
            adm: Some(AdmOptions {
                model_channels: num_channels,
                use_scale_shift_norm,
                resblock_updown,
                use_new_attention_order,
                num_heads,
                num_heads_upsample: num_heads_upsample.unwrap_or(num_heads),
            }),
        }
    }

    /// guided-diffusion's default `channel_mult` for an image size (`create_model`);
    /// `None` where it is not integral (512: 0.5, ...) or the size unknown.
    pub fn adm_default_channel_mult(image_size: usize) -> Option<Vec<usize>> {
        match image_size {
            256 => Some(vec![1, 1, 2, 2, 4, 4]),
            128 => Some(vec![1, 1, 2, 3, 4]),
            64 => Some(vec![1, 2, 3, 4]),
            _ => None,
        }
    }

    /// The 256x256 models of ILVR (AFHQ-dog) and P2 weighting (FFHQ, MetFaces): the
    /// authors' `AFHQ_DICT` / `METFACE_DICT` (128 channels, 1 res block, attention at
    /// 16, 64 channels per head, FiLM norm, res-block resampling, learned sigma).
    pub fn adm_p2_256() -> Self {
        Self::adm(256, 128, 1, &[1, 1, 2, 2, 4, 4], true, &[16], 4, Some(64), None, true, true, false)
    }

    /// The unconditional ImageNet 256x256 ADM (`256x256_diffusion_uncond.pt`): the
    /// authors' `IMAGENET_DICT` (256 channels, 2 res blocks, attention at 32, 16, 8,
    /// 64 channels per head, FiLM norm, res-block resampling, learned sigma).
    pub fn adm_imagenet_256() -> Self {
        Self::adm(256, 256, 2, &[1, 1, 2, 2, 4, 4], true, &[32, 16, 8], 4, Some(64), None, true, true, false)
    }
}
