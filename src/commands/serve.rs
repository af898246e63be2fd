//! `diffstyle serve`: the model loaded once into a [`Pipeline`] with an inversion cache
//! and an engine per batch size, then the HTTP server (`crate::serve`).

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use super::{check_recommended, model, recommended, Common, ModelArgs};
use crate::pipeline::{Pipeline, PipelineOptions, Scheduling};
use crate::serve::ServeOptions;

/// The server's knobs as given on the command line.
#[derive(clap::Args, Clone, Debug)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT (port 0 picks a free port; the address is
    /// printed as `listening on http://HOST:PORT` once the model is ready).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub addr: String,
    /// How requests share the engine. `step`: every request joins the running batch
    /// at the next denoising step, whatever its knobs and mask, and leaves it when done
    /// or when its client goes away, so a short request never waits for a long one to
    /// end. `batch`: the queue is drained in whole batches of requests with the same
    /// knobs and mask, each run to its end (kept for comparison).
    #[arg(long, value_enum, default_value_t = Scheduling::Step)]
    pub schedule: Scheduling,
    /// Most jobs (inversions or transfers) run side by side: in one step (`step`; a
    /// step runs only as many as are active) or in one batch (`batch`; the engine keeps
    /// one workspace per power of two up to it, about twice the activation memory of
    /// the largest, so a lone request costs a batch of one).
    #[arg(long, default_value_t = 4)]
    pub max_batch: usize,
    /// `--schedule step` only: while shorter requests run, a request with over 4x
    /// their steps left advances only on every K-th step, so that on a backend where a
    /// step costs about the sum of its jobs (the CPU) a long request does not double the
    /// time of every short one beside it; it still advances at least every K-th step.
    /// 1: every job advances every step. Default: 4 on the CPU, 1 on a GPU (where a
    /// step of several jobs is expected to cost little more than one). Results never
    /// change.
    #[arg(long, value_name = "K")]
    pub long_every: Option<usize>,
    /// `--schedule batch` only: how long the first request of a batch waits for
    /// compatible ones (same knobs and mask) to join it, milliseconds.
    #[arg(long, default_value_t = 20)]
    pub batch_window_ms: u64,
    /// Requests that may wait for the engine (with `step`, besides the --max-batch
    /// running); beyond it requests get 503 with Retry-After.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Memory for cached inversions (a style many requests share is inverted once),
    /// MiB; one-off inversions are evicted before reused ones (a segmented LRU);
    /// 0 = no cache (and no /v1/invert).
    #[arg(long, default_value_t = 1024)]
    pub cache_mib: usize,
    /// Largest request body, MiB (413 beyond).
    #[arg(long, default_value_t = 32)]
    pub max_body_mib: usize,
    /// Seconds a client has to send its request headers (else the connection is
    /// closed; idle keep-alive connections too) and its body (408 beyond).
    #[arg(long, default_value_t = 60)]
    pub read_timeout_s: u64,
    /// After SIGINT / SIGTERM, seconds that running requests may take before the
    /// server exits anyway.
    #[arg(long, default_value_t = 600)]
    pub drain_timeout_s: u64,
}

pub fn serve(c: &Common, m: &ModelArgs, a: &ServeArgs) -> Result<()> {
    ensure!(a.max_batch >= 1, "--max-batch must be at least 1");
    ensure!(a.max_queue >= 1, "--max-queue must be at least 1");
    ensure!(a.long_every != Some(0), "--long-every must be at least 1");
    ensure!(a.max_body_mib >= 1, "--max-body-mib must be at least 1");
    ensure!(a.read_timeout_s >= 1, "--read-timeout-s must be at least 1");
    let listener = crate::serve::bind(&a.addr)?;
    let model = model(m)?;
    let recommended = recommended(m)?;
    check_recommended(m, recommended.as_ref(), &model.schedule)?;
    let source = model.source.clone();
    let opts = PipelineOptions {
        device: c.device,
        precision: c.precision,
        threads: c.threads,
        scheduling: a.schedule,
        max_batch: a.max_batch,
        small_batches: true,
        long_every: a.long_every,
        cache_mib: a.cache_mib,
        verbose: c.verbose,
    };
    let p = Pipeline::new(model, &opts).with_context(|| format!("model {source} with --max-batch {}", a.max_batch))?;
    if !c.quiet {
        let i = p.info();
        eprintln!(
            "model {} ({}x{}, {}), {}; {} scheduling, batches of {:?}; inversion cache {} MiB",
            i.source,
            i.sample_size,
            i.sample_size,
            i.precision.name(),
            i.device,
            i.scheduling.name(),
            i.batches,
            a.cache_mib
        );
    }
    let o = ServeOptions {
        batch_window: Duration::from_millis(a.batch_window_ms),
        max_queue: a.max_queue,
        max_body: a.max_body_mib.saturating_mul(1 << 20),
        read_timeout: Duration::from_secs(a.read_timeout_s),
        drain_timeout: Duration::from_secs(a.drain_timeout_s),
        access_log: !c.quiet,
        recommended,
    };
    crate::serve::serve(p, listener, &o)
}
