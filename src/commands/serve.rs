//! `diffstyle serve`: the model loaded once into a [`Pipeline`] with an inversion cache
//! and an engine per batch size, then the HTTP server (`crate::serve`).

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::{model, Common, ModelArgs};
use crate::pipeline::{Pipeline, PipelineOptions};
use crate::serve::ServeOptions;

/// The server's knobs as given on the command line.
pub struct ServeArgs {
    pub addr: String,
    pub max_batch: usize,
    pub batch_window_ms: u64,
    pub max_queue: usize,
    pub cache_mib: usize,
    pub max_body_mib: usize,
    pub read_timeout_s: u64,
    pub drain_timeout_s: u64,
}

pub fn serve(c: &Common, m: &ModelArgs, a: &ServeArgs) -> Result<()> {
    ensure!(a.max_batch >= 1, "--max-batch must be at least 1");
    ensure!(a.max_queue >= 1, "--max-queue must be at least 1");
    ensure!(a.max_body_mib >= 1, "--max-body-mib must be at least 1");
    ensure!(a.read_timeout_s >= 1, "--read-timeout-s must be at least 1");
    let model = model(m)?;
    let source = model.source.clone();
    let opts = PipelineOptions {
        device: c.device,
        precision: c.precision,
        threads: c.threads,
        max_batch: a.max_batch,
        small_batches: true,
        cache_mib: a.cache_mib,
        verbose: c.verbose,
    };
    let p = Pipeline::new(model, &opts).with_context(|| format!("model {source} with --max-batch {}", a.max_batch))?;
    if !c.quiet {
        let i = p.info();
        eprintln!(
            "model {} ({}x{}, {}), {}; batches of {:?}; inversion cache {} MiB",
            i.source,
            i.sample_size,
            i.sample_size,
            i.precision.name(),
            i.device,
            i.batches,
            a.cache_mib
        );
    }
    let o = ServeOptions {
        addr: a.addr.clone(),
        batch_window: Duration::from_millis(a.batch_window_ms),
        max_queue: a.max_queue,
        max_body: a.max_body_mib.saturating_mul(1 << 20),
        read_timeout: Duration::from_secs(a.read_timeout_s),
        drain_timeout: Duration::from_secs(a.drain_timeout_s),
        access_log: !c.quiet,
    };
    crate::serve::serve(p, &o)
}
