//! `diffstyle serve`: a long-lived HTTP server around one [`Pipeline`]: the model and
//! engines made once, an inversion cache, step scheduling (requests join and leave the
//! running batch between denoising steps) or batching of compatible requests, bounded
//! admission (503 when full), Prometheus metrics, a small web page, and a graceful
//! shutdown on SIGINT / SIGTERM. The routes and errors: `api.rs`; the batch queue and
//! the batcher thread: `queue.rs`; the counters: `metrics.rs`.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};

use crate::pipeline::{Pipeline, Scheduling};

mod api;
mod metrics;
mod queue;

/// Binds HOST:PORT (port 0 picks a free one). Done before the model is loaded, so that
/// an address in use is an error at once; connections wait in the backlog until the
/// server is ready.
pub fn bind(addr: &str) -> Result<std::net::TcpListener> {
    let l = std::net::TcpListener::bind(addr).with_context(|| format!("--addr {addr}: cannot listen there"))?;
    l.set_nonblocking(true).context("cannot make the listening socket non-blocking")?;
    Ok(l)
}

/// How the server batches and protects itself.
#[derive(Clone, Debug)]
pub struct ServeOptions {
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
    /// A line on stderr per answered /v1 request (route, status, milliseconds).
    pub access_log: bool,
    /// The model's recommended knobs: the base of a request that names no preset.
    pub recommended: Option<crate::pipeline::Knobs>,
}

/// Serves on `listener` (from [`bind`]) until SIGINT or SIGTERM, then stops accepting,
/// finishes what is running and returns. Prints `listening on http://HOST:PORT` on
/// stderr once it accepts.
pub fn serve(p: Pipeline, listener: std::net::TcpListener, o: &ServeOptions) -> Result<()> {
    anyhow::ensure!(o.max_queue >= 1, "--max-queue must be at least 1");
    let p = Arc::new(p);
    let queue = Arc::new(queue::Queue::new(o.max_queue));
    let metrics = Arc::new(metrics::Metrics::default());
    // Step scheduling needs no batcher: requests go to the pipeline's scheduler.
    let batcher = match p.info().scheduling {
        Scheduling::Batch => Some(
            queue::spawn(queue.clone(), p.clone(), o.batch_window, metrics.clone())
                .context("cannot start the batcher thread")?,
        ),
        Scheduling::Step => None,
    };
    let places = Arc::new(tokio::sync::Semaphore::new(o.max_queue.saturating_add(p.info().max_batch)));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("diffstyle-http")
        .build()
        .context("cannot start the async runtime")?;
    let inner = Arc::new(api::Inner {
        p: p.clone(),
        queue: queue.clone(),
        places,
        metrics,
        draining: AtomicBool::new(false),
        max_body: o.max_body,
        read_timeout: o.read_timeout,
        uploads: tokio::sync::Semaphore::new(api::Inner::max_uploads(o.max_queue)),
        decodes: tokio::sync::Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())),
        access_log: o.access_log,
        recommended: o.recommended.clone(),
    });
    let served = rt.block_on(listen(inner, listener, o));
    // Whatever is still queued runs (its clients may have gone); then the engine stops.
    queue.close();
    if let Some(b) = batcher {
        b.join().map_err(|_| anyhow!("the batcher thread panicked"))?;
    }
    rt.shutdown_timeout(Duration::from_secs(1));
    served
}

async fn listen(inner: Arc<api::Inner>, listener: std::net::TcpListener, o: &ServeOptions) -> Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::server::graceful::GracefulShutdown;
    use hyper_util::service::TowerToHyperService;

    let listener = tokio::net::TcpListener::from_std(listener).context("cannot listen")?;
    let addr = listener.local_addr().context("the listening socket has no address")?;
    let app = api::router(inner.clone());
    // hyper's HTTP/1 connections with a timer, so that a client that never finishes its
    // headers is dropped (axum::serve sets no timer); each connection is watched so
    // that shutdown can wait for them.
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(o.read_timeout);
    let graceful = GracefulShutdown::new();
    eprintln!("listening on http://{addr}");
    let mut stop = std::pin::pin!(stop_signal());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    let conn = http.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app.clone()));
                    let watched = graceful.watch(conn);
                    tokio::spawn(async move {
                        // A client that goes away mid-request is its own problem.
                        let _ = watched.await;
                    });
                }
                // Out of file descriptors, say: wait instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            },
            which = &mut stop => {
                inner.draining.store(true, Relaxed);
                eprintln!("{which}: shutting down (no new connections; finishing what runs)");
                break;
            }
        }
    }
    drop(listener);
    let drain = o.drain_timeout;
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => {
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
