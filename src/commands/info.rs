//! `diffstyle info`: the architecture, its size and work, the activation plan and, on
//! a device, the measured peak memory.

use anyhow::{Context, Result};

use super::{described_arch, engine, model, on_backend, recommended, Common, DeviceChoice, ModelArgs};
use crate::backend::gpu::cuda::CudaDevice;
use crate::backend::Backend;
use crate::dtype::Precision;
use crate::model::graph::Graph;
use crate::model::plan::Plan;
use crate::model::schedule::Schedule;
use crate::model::unet::UNet;
use crate::model::weights::LoadedModel;

pub fn info(c: &Common, m: &ModelArgs, show_plan: bool) -> Result<()> {
    let loaded = m.model.is_some().then(|| model(m)).transpose()?;
    let (arch, hash, described) = match &loaded {
        Some(model) => (model.arch.clone(), Some(model.hash.clone()), None),
        None => {
            let cfg = described_arch(m).context("info needs --model, or exactly one of --config / --arch")?;
            (cfg.arch.clone(), None, Some(cfg))
        }
    };
    let g = Graph::build(&arch);
    // Every stored tensor (a learned variance's unused outputs included): what a
    // loaded checkpoint holds, exactly.
    let params: usize = g.tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
    let (enc, dec) = g.flops();
    match &arch.adm {
        None => println!("architecture: DDPM U-Net (diffusers UNet2DModel layout)"),
        Some(a) => {
            println!("architecture: ADM U-Net (guided-diffusion UNetModel layout)");
            println!(
                "  model_channels {}, FiLM norm {}, res-block resampling {}, {} QKV order; eps = first {} of {} outputs",
                a.model_channels,
                a.use_scale_shift_norm,
                a.resblock_updown,
                if a.use_new_attention_order { "new" } else { "legacy" },
                arch.eps_channels(),
                arch.out_channels
            );
        }
    }
    println!(
        "  sample size {}x{}, {} -> {} channels",
        arch.sample_size, arch.sample_size, arch.in_channels, arch.out_channels
    );
    println!("  block_out_channels {:?}, {} res blocks per level", arch.block_out_channels, arch.layers_per_block);
    println!("  attention: down {:?}, mid {}, up {:?}", arch.down_attention, arch.mid_attention, arch.up_attention);
    let heads = match (arch.attention_head_dim, &arch.adm) {
        (Some(d), _) => format!("{d} channels per head"),
        (None, Some(a)) => format!("{} heads (decoder {})", a.num_heads, a.num_heads_upsample),
        (None, None) => "1 head per layer".to_string(),
    };
    println!(
        "  {heads}; GroupNorm({}, eps {:e}); downsample padding {}",
        arch.norm_num_groups, arch.norm_eps, arch.downsample_padding
    );
    println!(
        "  time embedding: {} sinusoids (flip_sin_to_cos {}, freq_shift {}) -> {}",
        arch.time_proj_dim(),
        arch.flip_sin_to_cos,
        arch.freq_shift,
        arch.time_embed_dim
    );
    println!("  h-space: {} x {} x {}", arch.h_channels(), arch.h_size(), arch.h_size());
    if let Some(h) = hash {
        println!("  weights hash {h}");
    }
    if let Some(k) = recommended(m)? {
        // What `transfer` and `serve` use when the user names no preset.
        let s = k.settings();
        println!(
            "recommended knobs ({}, used without --preset): gamma {}, t_edit {}, inv_steps {}, gen_steps {}, replace_steps {}, t_boost {}, dt_lambda {}, dt_end {}, omega {}, seed {}",
            crate::pipeline::knobs::RECOMMENDED_FILE,
            s.gamma,
            s.t_edit,
            s.inv_steps,
            s.gen_steps,
            s.replace_steps,
            s.t_boost,
            s.dt_lambda,
            s.dt_end,
            s.omega,
            s.seed
        );
    }
    println!("parameters: {params} ({:.1} M)", params as f64 / 1e6);
    println!(
        "GFLOP per forward (batch 1): {:.1} total = {:.1} encoder (incl. middle block) + {:.1} decoder",
        (enc + dec) / 1e9,
        enc / 1e9,
        dec / 1e9
    );
    println!(
        "activation traffic per forward (batch 1, f32, each op reading its inputs and writing its output once): {:.1} MiB",
        g.activation_traffic() * 4.0 / 1048576.0
    );
    let plan = Plan::new(&g, 1, 2)?;
    if show_plan {
        print!("{}", plan.describe(&g));
    } else {
        let total: usize = plan.lens.iter().sum();
        println!(
            "activation arena (1 encoder + 2 decoders): {:.1} MiB planned, {:.1} MiB without reuse ({} buffers; --plan lists them)",
            plan.arena_len as f64 * 4.0 / 1048576.0,
            total as f64 * 4.0 / 1048576.0,
            g.values.len()
        );
    }
    // A GPU keeps f16/bf16 weights at 2 bytes; so does the CPU for bf16 on bf16 tiles.
    let bytes = c.precision.bytes() as f64;
    println!("weights: {:.1} MiB as {:?}", params as f64 * bytes / 1048576.0, c.precision);
    let on_gpu = match c.device {
        DeviceChoice::Cpu => false,
        DeviceChoice::Emu | DeviceChoice::Cuda => true,
        DeviceChoice::Auto => CudaDevice::new(0).is_ok(),
    };
    if !on_gpu {
        // The instruction set the products would run on, and why better ones were not.
        let be = crate::backend::cpu::CpuBackend::from_env(c.threads, c.precision)?;
        println!("device: {}", crate::backend::Backend::describe(&be));
    }
    if on_gpu {
        // Measured, not estimated: upload the weights (random ones for a bare
        // architecture) and allocate the engine on the device.
        let model = match loaded {
            Some(model) => model,
            None => {
                let schedule = described.map_or_else(Schedule::ddpm_linear, |cfg| cfg.schedule_or_default());
                LoadedModel::random(&arch, schedule, 0)
            }
        };
        on_backend!(c, |be| device_memory(be, &model, c.precision))?;
    }
    Ok(())
}

/// Peak device memory of the weights plus an engine (arena for one encoder and two
/// decoders, latent slots), as `transfer` allocates them before its first step.
fn device_memory<B: Backend>(be: &B, model: &LoadedModel, precision: Precision) -> Result<()> {
    let unet = UNet::new(be, model, precision)?;
    let _eng = engine(be, &unet, model)?;
    if let Some(bytes) = be.peak_device_bytes() {
        println!(
            "device memory on {}: {:.1} MiB peak (weights + activation arena + latents; the content trajectory adds {:.1} MiB per 50 inversion steps)",
            be.describe(),
            bytes as f64 / 1048576.0,
            (49 * model.arch.h_channels() * model.arch.h_size() * model.arch.h_size() * 4) as f64 / 1048576.0
        );
    }
    Ok(())
}
