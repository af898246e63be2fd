//! The HTTP contract (README, "Server"): routes, form parts, and errors as JSON
//! `{"error": ..., "field": ...}` naming the culprit. Handlers only parse, check and
//! queue (batch scheduling) or submit (step scheduling); decoding runs on blocking
//! threads and the model on the engine thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Multipart, Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::sync::oneshot;

use super::metrics::{resident_bytes, Gauges, Metrics};
use super::queue::{inverted, Answer, Job, Queue, Refused, Work};
use crate::diffusion::method::{Inversion, Settings};
use crate::pipeline::cache::is_id;
use crate::pipeline::knobs::KNOB_NAMES;
use crate::pipeline::{self, Canceller, Image, Knobs, Pair, Pipeline, Scheduling, Source};

/// Seconds a client is asked to wait after a 503.
const RETRY_AFTER_S: u64 = 1;

pub struct Inner {
    pub p: Arc<Pipeline>,
    pub queue: Arc<Queue>,
    /// Step scheduling: places for requests waiting or running (`--max-queue` +
    /// `--max-batch`); none left is a 503.
    pub places: Arc<tokio::sync::Semaphore>,
    pub metrics: Arc<Metrics>,
    pub draining: AtomicBool,
    pub max_body: usize,
    pub read_timeout: Duration,
    /// Request bodies being received at once: each may hold up to `max_body` bytes.
    pub uploads: tokio::sync::Semaphore,
    /// Images being decoded at once: a small file may decode to hundreds of MiB.
    pub decodes: tokio::sync::Semaphore,
    /// A line on stderr per answered /v1 request.
    pub access_log: bool,
    /// The model's recommended knobs (a request without a preset starts from them).
    pub recommended: Option<Knobs>,
}

impl Inner {
    /// Concurrent uploads allowed for a queue of `max_queue` jobs: enough to keep it
    /// full while the bodies of bad requests arrive too.
    pub fn max_uploads(max_queue: usize) -> usize {
        (2 * max_queue).max(16)
    }
}

type St = State<Arc<Inner>>;

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    error: String,
    field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, field: Option<&str>, error: impl Into<String>) -> Self {
        Self { status, error: error.into(), field: field.map(str::to_string) }
    }
    fn bad(field: &str, error: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Some(field), error)
    }
    fn unavailable(error: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, None, error)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": self.error, "field": self.field });
        let mut r = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_S));
        }
        r
    }
}

pub fn router(st: Arc<Inner>) -> Router {
    let max_body = st.max_body;
    Router::new()
        .route("/", get(page))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/transfer", post(transfer))
        .route("/v1/invert", post(invert))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(st.clone(), refuse_oversized))
        .layer(middleware::from_fn_with_state(st.clone(), track))
        .with_state(st)
}

/// Counts a request when its answer is made, or as 499 when the client left first.
struct Tracked {
    st: Arc<Inner>,
    /// The matched route, "other" for none (so paths do not become labels).
    route: String,
    t0: Instant,
    status: Option<u16>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.st.metrics.in_flight.fetch_sub(1, Relaxed);
        let status = self.status.unwrap_or(499);
        let took = self.t0.elapsed();
        self.st.metrics.request(&self.route, status, took);
        if self.st.access_log && self.route.starts_with("/v1/") {
            let left = if self.status.is_none() { " (client left)" } else { "" };
            eprintln!("{} {status} {:.0} ms{left}", self.route, took.as_secs_f64() * 1e3);
        }
    }
}

async fn track(State(st): St, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map_or("other", |m| m.as_str()).to_string();
    st.metrics.in_flight.fetch_add(1, Relaxed);
    let mut t = Tracked { st: st.clone(), route, t0: Instant::now(), status: None };
    let r = next.run(req).await;
    t.status = Some(r.status().as_u16());
    r
}

async fn page() -> Html<&'static str> {
    Html(include_str!("page.html"))
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, None, format!("no route {} {}", req.method(), req.uri().path()))
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        None,
        format!("{} is not allowed on {}", req.method(), req.uri().path()),
    )
}

impl Inner {
    fn ready(&self) -> bool {
        self.p.is_alive() && !self.draining.load(Relaxed)
    }

    fn open(&self) -> Result<(), ApiError> {
        match self.ready() {
            true => Ok(()),
            false if !self.p.is_alive() => Err(ApiError::unavailable("the engine has stopped")),
            false => Err(ApiError::unavailable("the server is shutting down")),
        }
    }
}

async fn healthz(State(st): St) -> Response {
    match st.open() {
        Ok(()) => (StatusCode::OK, "ok\n").into_response(),
        Err(e) => e.into_response(),
    }
}

async fn metrics(State(st): St) -> Response {
    let step = st.p.info().scheduling == Scheduling::Step;
    let g = Gauges {
        queue_depth: if step { st.p.waiting() } else { st.queue.depth() },
        queue_capacity: st.queue.capacity(),
        cancelled: st.queue.abandoned() + st.p.cancelled(),
        step_batches: st.p.step_batches(),
        cache: st.p.cache_stats(),
        device_peak_bytes: st.p.peak_device_bytes(),
        resident_bytes: resident_bytes(),
        ready: st.ready(),
    };
    let text = st.metrics.render(&g);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

/// The parts of a form by name; every name must be one of `allowed`, given once.
async fn read_parts(
    st: &Inner,
    mp: Result<Multipart, MultipartRejection>,
    allowed: &[&str],
) -> Result<HashMap<String, Bytes>, ApiError> {
    // A declared length over the limit never gets here (`refuse_oversized`); a streamed
    // body is stopped by the multipart reader's limit.
    let too_large = || too_large(st.max_body);
    let mut mp =
        mp.map_err(|e| ApiError::bad("body", format!("expected a multipart/form-data body: {}", e.body_text())))?;
    let _slot = st
        .uploads
        .try_acquire()
        .map_err(|_| ApiError::unavailable("too many request bodies arriving at once; retry later"))?;
    let read = async {
        let mut parts = HashMap::new();
        while let Some(f) = mp.next_field().await.map_err(|e| multipart_error(&e, &too_large))? {
            let name = f.name().unwrap_or_default().to_string();
            if name.is_empty() {
                return Err(ApiError::bad("body", "a form part without a name"));
            }
            if !allowed.contains(&name.as_str()) {
                return Err(ApiError::bad(
                    &name,
                    format!("unknown form part '{name}' (expected: {})", allowed.join(", ")),
                ));
            }
            let bytes = f.bytes().await.map_err(|e| multipart_error(&e, &too_large))?;
            if parts.insert(name.clone(), bytes).is_some() {
                return Err(ApiError::bad(&name, format!("form part '{name}' given more than once")));
            }
        }
        Ok(parts)
    };
    match tokio::time::timeout(st.read_timeout, read).await {
        Ok(r) => r,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            Some("body"),
            format!("the request body did not arrive within {} s", st.read_timeout.as_secs_f64()),
        )),
    }
}

fn too_large(max_body: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        Some("body"),
        format!("the request body is larger than the server's limit of {max_body} bytes (--max-body-mib)"),
    )
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok())
}

/// Most bytes of an oversized body read (and dropped) before its 413 is sent.
const DRAIN_LIMIT: u64 = 256 << 20;

/// Answers 413 to a body whose declared length is over the limit, before any handler.
/// Unless the client waits for `100 Continue` (and so has sent nothing yet), what it
/// sends is read and dropped first (up to `DRAIN_LIMIT` bytes and the read timeout):
/// a client still writing its body when the connection closes would see a broken pipe
/// instead of the answer.
async fn refuse_oversized(State(st): St, req: Request, next: Next) -> Response {
    let Some(n) = declared_length(req.headers()).filter(|&n| n > st.max_body as u64) else {
        return next.run(req).await;
    };
    let waits = req.headers().get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
    if !waits && n <= DRAIN_LIMIT {
        use http_body_util::BodyExt;
        let mut body = req.into_body();
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout(st.read_timeout, drain).await;
    }
    let mut r = too_large(st.max_body).into_response();
    r.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    r
}

fn multipart_error(e: &axum::extract::multipart::MultipartError, too_large: &dyn Fn() -> ApiError) -> ApiError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        too_large()
    } else {
        ApiError::bad("body", format!("malformed multipart/form-data body: {e}"))
    }
}

fn text<'a>(parts: &'a HashMap<String, Bytes>, name: &str) -> Result<Option<&'a str>, ApiError> {
    parts
        .get(name)
        .map(|b| {
            std::str::from_utf8(b).map_err(|_| ApiError::bad(name, format!("form part '{name}' must be UTF-8 text")))
        })
        .transpose()
}

/// Decodes an uploaded image (or mask) on a blocking thread.
async fn decode<T: Send + 'static>(
    st: &Arc<Inner>,
    bytes: Bytes,
    field: &'static str,
    f: fn(&Pipeline, &[u8], &str) -> anyhow::Result<T>,
) -> Result<T, ApiError> {
    let _slot = st.decodes.acquire().await.map_err(|_| ApiError::unavailable("the server is shutting down"))?;
    let p = st.p.clone();
    tokio::task::spawn_blocking(move || f(&p, &bytes, field))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, Some(field), format!("decoding failed: {e}")))?
        .map_err(|e| ApiError::bad(field, format!("{e:#}")))
}

/// A knob's error, naming the knob as the form field.
fn knob_error(e: crate::diffusion::method::BadKnob) -> ApiError {
    ApiError::bad(e.knob, format!("{} {}", e.knob, e.problem))
}

/// The knobs of a transfer form: the preset first, then every knob given.
fn settings(parts: &HashMap<String, Bytes>, steps: usize, rec: Option<&Knobs>) -> Result<Settings, ApiError> {
    let mut k = Knobs::default();
    for name in KNOB_NAMES {
        if let Some(v) = text(parts, name)? {
            k.set(name, v).map_err(knob_error)?;
        }
    }
    let s = k.over(rec).settings();
    s.check_knobs(steps).map_err(knob_error)?;
    Ok(s)
}

/// One side of a pair: an uploaded image (`file`) or a cached inversion's id (`id`).
async fn source(
    st: &Arc<Inner>,
    parts: &mut HashMap<String, Bytes>,
    file: &'static str,
    id: &'static str,
    inv_steps: usize,
) -> Result<Source, ApiError> {
    match (parts.remove(file), text(parts, id)?) {
        (Some(_), Some(_)) => Err(ApiError::bad(id, format!("give either '{file}' or '{id}', not both"))),
        (None, None) => Err(ApiError::bad(
            file,
            format!("missing form part '{file}' (an image file) or '{id}' (an id from /v1/invert)"),
        )),
        (Some(bytes), None) => Ok(Source::Image(decode(st, bytes, file, Pipeline::image_from_bytes).await?)),
        (None, Some(v)) => Ok(Source::Inversion(cached(st, v.trim(), id, inv_steps)?)),
    }
}

fn cached(st: &Inner, v: &str, field: &str, inv_steps: usize) -> Result<Arc<Inversion>, ApiError> {
    if !is_id(v) {
        return Err(ApiError::bad(field, format!("'{}' is not an inversion id (32 hex digits)", v.escape_default())));
    }
    let inv = st.p.cached(v).ok_or_else(|| {
        ApiError::bad(
            field,
            format!("unknown inversion id {v}: never made by /v1/invert here, or evicted from the cache"),
        )
    })?;
    let made = inv.keys.len() + 1;
    if inv.keys != Inversion::keys_for(inv_steps) {
        return Err(ApiError::bad(
            field,
            format!("inversion {v} was made with inv_steps {made}, this request asks for inv_steps {inv_steps}"),
        ));
    }
    Ok(inv)
}

/// Runs `work` on the engine and waits for its answer.
async fn run(st: &Inner, work: Work) -> Result<Answer, ApiError> {
    match st.p.info().scheduling {
        Scheduling::Batch => queued(st, work).await,
        Scheduling::Step => stepped(st, work).await,
    }
}

fn internal(e: String) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, None, e)
}

/// Queues `work` for the batcher and waits for its answer.
async fn queued(st: &Inner, work: Work) -> Result<Answer, ApiError> {
    let (reply, answer) = oneshot::channel();
    st.queue.push(Job { work, reply }).map_err(|r| match r {
        Refused::Full => {
            ApiError::unavailable(format!("the queue is full ({} jobs waiting); retry later", st.queue.capacity()))
        }
        Refused::Closed => ApiError::unavailable("the server is shutting down"),
    })?;
    answer.await.map_err(|_| internal("the engine stopped before answering".into()))?.map_err(internal)
}

/// Cancels a submitted request when the handler's future is dropped (its client left).
struct CancelOnDrop(Canceller);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        // A no-op once the request has been answered.
        self.0.cancel();
    }
}

/// Submits `work` to the step scheduler and waits for its answer on a blocking thread;
/// if the client goes away meanwhile, the request leaves the running batch at the next
/// step.
async fn stepped(st: &Inner, work: Work) -> Result<Answer, ApiError> {
    let _place = st.places.clone().try_acquire_owned().map_err(|_| {
        ApiError::unavailable(format!(
            "the server is full ({} requests waiting besides those running); retry later",
            st.queue.capacity()
        ))
    })?;
    let req = match work {
        Work::Transfer { pair, settings, mask } => pipeline::Request::Transfer { pair, settings, mask },
        Work::Invert { image, inv_steps } => pipeline::Request::Invert { image, inv_steps },
    };
    let ticket = st.p.submit(req).map_err(|e| internal(format!("{e:#}")))?;
    let _cancel = CancelOnDrop(ticket.canceller());
    let (p, metrics) = (st.p.clone(), st.metrics.clone());
    let answered = tokio::task::spawn_blocking(move || -> anyhow::Result<Answer> {
        // Counted as the batch it ran in: the most jobs that shared its steps.
        Ok(match ticket.wait(&mut |_, _| {})? {
            pipeline::Answer::Output { output, batch } => {
                metrics.batch("transfer", batch);
                Answer::Png { png: output.png()?, batch }
            }
            pipeline::Answer::Inversion { inversion, id, batch } => {
                metrics.batch("invert", batch);
                inverted(&p, id, &inversion)?
            }
        })
    })
    .await
    .map_err(|e| internal(format!("the request's waiter failed: {e}")))?;
    answered.map_err(|e| internal(format!("{e:#}")))
}

async fn transfer(State(st): St, mp: Result<Multipart, MultipartRejection>) -> Result<Response, ApiError> {
    st.open()?;
    let allowed: Vec<&str> =
        ["content", "style", "mask", "content_id", "style_id"].into_iter().chain(KNOB_NAMES).collect();
    let mut parts = read_parts(&st, mp, &allowed).await?;
    let s = settings(&parts, st.p.schedule().len(), st.recommended.as_ref())?;
    let content = source(&st, &mut parts, "content", "content_id", s.inv_steps).await?;
    let style = source(&st, &mut parts, "style", "style_id", s.inv_steps).await?;
    let mask = match parts.remove("mask") {
        Some(b) => Some(decode(&st, b, "mask", Pipeline::mask_from_bytes).await?),
        None => None,
    };
    let work = Work::Transfer { pair: Pair { content, style }, settings: s, mask };
    match run(&st, work).await? {
        Answer::Png { png, batch } => Ok((
            [
                (header::CONTENT_TYPE, "image/png".to_string()),
                (HeaderName::from_static("x-diffstyle-batch-size"), batch.to_string()),
            ],
            png,
        )
            .into_response()),
        Answer::Inverted { .. } => unreachable!("a transfer answers with an image"),
    }
}

async fn invert(State(st): St, mp: Result<Multipart, MultipartRejection>) -> Result<Response, ApiError> {
    st.open()?;
    let mut parts = read_parts(&st, mp, &["image", "inv_steps"]).await?;
    // The only knob allowed here is inv_steps.
    let inv_steps = settings(&parts, st.p.schedule().len(), st.recommended.as_ref())?.inv_steps;
    if st.p.cache_stats().capacity == 0 {
        return Err(ApiError::bad(
            "image",
            "this server keeps no inversions (--cache-mib 0), so an id would be useless",
        ));
    }
    let bytes =
        parts.remove("image").ok_or_else(|| ApiError::bad("image", "missing form part 'image' (an image file)"))?;
    let image: Image = decode(&st, bytes, "image", Pipeline::image_from_bytes).await?;
    let id = st.p.inversion_id(&image, inv_steps);
    let id = if st.p.cached(&id).is_some() {
        id
    } else {
        match run(&st, Work::Invert { image, inv_steps }).await? {
            Answer::Inverted { id } => id,
            Answer::Png { .. } => unreachable!("an inversion answers with an id"),
        }
    };
    Ok(Json(serde_json::json!({ "id": id, "inv_steps": inv_steps })).into_response())
}
