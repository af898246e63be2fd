//! `diffstyle serve`: a long-lived HTTP server around one [`Pipeline`]: the model and
//! engines made once, an inversion cache, batching of compatible requests, a bounded
//! queue (503 when full), Prometheus metrics, a small web page, and a graceful
//! shutdown on SIGINT / SIGTERM. The routes and errors: `api.rs`; the queue and the
//! batcher thread: `queue.rs`; the counters: `metrics.rs`.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::pipeline::Pipeline;

mod api;
mod metrics;
mod queue;

/// How the server listens, batches and protects itself.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// HOST:PORT; port 0 picks a free one.
    pub addr: String,
    /// How long the batcher waits for compatible jobs to fill a batch.
    pub batch_window: Duration,
    /// Jobs that may wait for the engine; more are refused with 503.
    pub max_queue: usize,
    /// Largest request body, bytes (413 beyond).
    pub max_body: usize,
    /// Time a client has to send its whole request body (408 beyond).
    pub read_timeout: Duration,
    /// After a shutdown signal, how long open requests may take before the server exits
    /// anyway.
    pub drain_timeout: Duration,
}

/// Serves until SIGINT or SIGTERM, then stops accepting, finishes what is running and
/// returns. Prints `listening on http://HOST:PORT` on stderr once it accepts.
pub fn serve(p: Pipeline, o: &ServeOptions) -> Result<()> {
    anyhow::ensure!(o.max_queue >= 1, "--max-queue must be at least 1");
    let p = Arc::new(p);
    let queue = Arc::new(queue::Queue::new(o.max_queue));
    let metrics = Arc::new(metrics::Metrics::default());
    let batcher = queue::spawn(queue.clone(), p.clone(), o.batch_window, metrics.clone())
        .context("cannot start the batcher thread")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("diffstyle-http")
        .build()
        .context("cannot start the async runtime")?;
    let inner = Arc::new(api::Inner {
        p: p.clone(),
        queue: queue.clone(),
        metrics,
        draining: AtomicBool::new(false),
        max_body: o.max_body,
        read_timeout: o.read_timeout,
    });
    let served = rt.block_on(listen(inner, o));
    // Whatever is still queued runs (its clients may have gone); then the engine stops.
    queue.close();
    batcher.join().map_err(|_| anyhow!("the batcher thread panicked"))?;
    rt.shutdown_timeout(Duration::from_secs(1));
    served
}

async fn listen(inner: Arc<api::Inner>, o: &ServeOptions) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(&o.addr)
        .await
        .with_context(|| format!("--addr {}: cannot listen there", o.addr))?;
    let addr = listener.local_addr().context("the listening socket has no address")?;
    eprintln!("listening on http://{addr}");
    let signalled = Arc::new(tokio::sync::Notify::new());
    let (st, sig) = (inner.clone(), signalled.clone());
    let shutdown = async move {
        let which = stop_signal().await;
        st.draining.store(true, Relaxed);
        eprintln!("{which}: shutting down (no new work; finishing what runs)");
        sig.notify_one();
    };
    let server = axum::serve(listener, api::router(inner)).with_graceful_shutdown(shutdown);
    let drain = o.drain_timeout;
    tokio::select! {
        r = server => r.context("the HTTP server failed")?,
        _ = async { signalled.notified().await; tokio::time::sleep(drain).await } => {
            eprintln!("requests still open after {} s: exiting anyway (--drain-timeout-s)", drain.as_secs_f64());
        }
    }
    eprintln!("stopped");
    Ok(())
}

/// Waits for SIGINT or SIGTERM; returns its name.
async fn stop_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = term.recv() => "SIGTERM",
            },
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
                "SIGINT"
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
        "Ctrl-C"
    }
}
