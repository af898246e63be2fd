//! `#[repr(C)]` mirrors of `kernels/params.h`: one parameter block per kernel, passed
//! by value. Pointers are device addresses (`u64`); `_pad` fields make C's tail padding
//! explicit so the structs are `Pod`. `tests::sizes_match_the_kernels` checks every
//! size against the emulated build's registry.

use bytemuck::{Pod, Zeroable};

/// Timesteps per `timestep_embedding_f32` launch (`DS_MAX_T`).
pub const MAX_T: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ConvParams {
    pub xa: u64,
    pub xb: u64,
    pub w: u64,
    pub bias: u64,
    pub temb: u64,
    pub residual: u64,
    pub out: u64,
    pub n: i32,
    pub na: i32,
    pub nb: i32,
    pub ca: i32,
    pub cb: i32,
    pub h: i32,
    pub w_: i32,
    pub cout: i32,
    pub ho: i32,
    pub wo: i32,
    pub k: i32,
    pub stride: i32,
    pub pad_t: i32,
    pub pad_l: i32,
    pub upsample: i32,
    pub temb_n: i32,
    pub res_n: i32,
    pub tap: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct GroupNormParams {
    pub xa: u64,
    pub xb: u64,
    pub gamma: u64,
    pub beta: u64,
    pub film: u64,
    pub out: u64,
    pub partial: u64,
    pub n: i32,
    pub na: i32,
    pub nb: i32,
    pub ca: i32,
    pub cb: i32,
    pub hw: i32,
    pub groups: i32,
    pub silu: i32,
    pub nf: i32,
    pub eps: f32,
    pub splits: i32,
    pub _pad: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct ResampleParams {
    pub x: u64,
    pub out: u64,
    pub n: i32,
    pub xn: i32,
    pub c: i32,
    pub h: i32,
    pub w: i32,
    pub ho: i32,
    pub wo: i32,
    pub up: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct LinearParams {
    pub x: u64,
    pub w: u64,
    pub bias: u64,
    pub out: u64,
    pub n: i32,
    pub xn: i32,
    pub in_f: i32,
    pub out_f: i32,
    pub silu: i32,
    pub _pad: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct TembParams {
    pub out: u64,
    pub n: i32,
    pub dim: i32,
    pub flip: i32,
    pub shift: f32,
    pub t: [f32; MAX_T],
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct AttentionParams {
    pub qkv: u64,
    pub out: u64,
    pub n: i32,
    pub c: i32,
    pub heads: i32,
    pub p: i32,
    pub scale: f32,
    pub _pad: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct HspaceParams {
    pub h: u64,
    pub hc: u64,
    pub mask: u64,
    pub out: u64,
    pub n: i32,
    pub hn: i32,
    pub hcn: i32,
    pub c: i32,
    pub hw: i32,
    pub gamma: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct StepParams {
    pub x: u64,
    pub eps_x0: u64,
    pub eps_dir: u64,
    pub out: u64,
    pub seed: u64,
    pub n: i32,
    pub len: i32,
    pub xn: i32,
    pub e0n: i32,
    pub edn: i32,
    pub stream: u32,
    pub a_i: f32,
    pub a_j: f32,
    pub c_dir: f32,
    pub c_noise: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct CalibrateParams {
    pub x: u64,
    pub eps: u64,
    pub eps_mod: u64,
    pub out: u64,
    pub n: i32,
    pub len: i32,
    pub a: f32,
    pub omega: f32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub struct CopyParams {
    pub src: u64,
    pub dst: u64,
    pub n: i32,
    pub len: i32,
    pub src_n: i32,
    pub _pad: i32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::gpu::emu::kernel_param_size;

    #[test]
    fn sizes_match_the_kernels() {
        let cases: &[(&str, usize)] = &[
            ("conv2d_f32", std::mem::size_of::<ConvParams>()),
            ("conv2d_f16", std::mem::size_of::<ConvParams>()),
            ("conv2d_bf16", std::mem::size_of::<ConvParams>()),
            ("group_norm_f32", std::mem::size_of::<GroupNormParams>()),
            ("group_norm_stats_f32", std::mem::size_of::<GroupNormParams>()),
            ("group_norm_apply_f32", std::mem::size_of::<GroupNormParams>()),
            ("linear_f32", std::mem::size_of::<LinearParams>()),
            ("timestep_embedding_f32", std::mem::size_of::<TembParams>()),
            ("attention_f32", std::mem::size_of::<AttentionParams>()),
            ("hspace_mix_f32", std::mem::size_of::<HspaceParams>()),
            ("ddim_step_f32", std::mem::size_of::<StepParams>()),
            ("calibrate_f32", std::mem::size_of::<CalibrateParams>()),
            ("copy_f32", std::mem::size_of::<CopyParams>()),
            ("resample_f32", std::mem::size_of::<ResampleParams>()),
        ];
        for &(name, size) in cases {
            assert_eq!(kernel_param_size(name), Some(size), "{name}: parameter block size (None: kernel missing)");
        }
    }
}
