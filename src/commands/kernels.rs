//! `diffstyle kernels`: the kernel families' micro-benchmarks.

use std::path::Path;

use anyhow::{bail, ensure, Context, Result};

use super::{check_parent, Common, DeviceChoice};
use crate::backend::gpu::cuda::CudaDevice;
use crate::backend::gpu::emu::EmuDevice;
use crate::backend::gpu::GpuBackend;
use crate::backend::Backend;
use crate::dtype::Precision;

/// `diffstyle kernels`: every kernel family's micro-benchmarks (`backend::gpu::micro`)
/// on the GPU (U-Net shapes) or the emulator (small shapes), per precision.
pub fn kernels(c: &Common, precisions: &[Precision], small: bool, out: Option<&Path>) -> Result<()> {
    use crate::backend::gpu::{micro::format, micro_benchmarks};
    ensure!(!precisions.is_empty(), "--precisions is empty");
    if let Some(o) = out {
        check_parent(o)?;
    }
    let mut rows = vec![];
    let mut device = String::new();
    for &precision in precisions {
        let rs = match c.device {
            DeviceChoice::Emu => {
                let be = GpuBackend::new(EmuDevice::from_env()?, precision);
                device = be.describe();
                micro_benchmarks(&be, true)?
            }
            DeviceChoice::Cuda | DeviceChoice::Auto => {
                let be = GpuBackend::new(CudaDevice::new(0).context("kernels")?, precision);
                device = be.describe();
                micro_benchmarks(&be, small)?
            }
            DeviceChoice::Cpu => bail!("kernels times the GPU kernels: use --device cuda (or emu)"),
        };
        rows.extend(rs);
    }
    println!("device: {}", crate::bench::device_only(&device));
    if small || c.device == DeviceChoice::Emu {
        println!("(small shapes: the cases' channels and sides divided by 4 to 8)");
    }
    print!("{}", format(&rows));
    if let Some(o) = out {
        let json = serde_json::json!({ "device": crate::bench::device_only(&device), "small": small || c.device == DeviceChoice::Emu, "kernels": rows });
        crate::io::atomic::write_atomic(o, serde_json::to_string_pretty(&json)?.as_bytes())?;
        println!("wrote {}", o.display());
    }
    Ok(())
}
