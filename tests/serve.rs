//! `diffstyle serve` end to end: a server process on an ephemeral loopback port with
//! the tiny fixture model on the CPU, driven over raw HTTP. The contract (routes,
//! parts, knobs, errors), its images against `diffstyle transfer`'s, the inversion
//! cache, batching, the bounded queue, faults, and shutdown.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::{abandon_upload, get, multipart, post_form, request, Part, Server, BOUNDARY};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_diffstyle"))
}

fn model() -> PathBuf {
    common::fixtures().join("model")
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples").join(name)).expect("example image")
}

/// A server on the CPU with one thread (tests run side by side) and `args`.
fn server(args: &[&str]) -> Server {
    let m = model();
    let mut all = vec!["--model", m.to_str().unwrap()];
    all.extend_from_slice(args);
    Server::start(&bin(), &["--device", "cpu", "--threads", "1"], &all)
}

/// Cheap knobs that still mix, inject with noise and run every kind of step.
const KNOBS: [(&str, &str); 6] =
    [("preset", "fast"), ("inv_steps", "6"), ("gen_steps", "8"), ("gamma", "0.6"), ("t_boost", "300"), ("seed", "7")];

fn knob_parts() -> Vec<(&'static str, Part<'static>)> {
    KNOBS.iter().map(|(n, v)| (*n, Part::Text(v))).collect()
}

/// `diffstyle transfer` with the same knobs: the PNG bytes it writes.
fn cli_png(content: &[u8], style: &[u8], mask: Option<&[u8]>) -> Vec<u8> {
    cli_png_on("cpu", content, style, mask)
}

fn cli_png_on(device: &str, content: &[u8], style: &[u8], mask: Option<&[u8]>) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let (c, s, m, out) =
        (dir.path().join("c.png"), dir.path().join("s.png"), dir.path().join("m.png"), dir.path().join("o.png"));
    std::fs::write(&c, content).unwrap();
    std::fs::write(&s, style).unwrap();
    let mut cmd = Command::new(bin());
    cmd.args(["--device", device, "--threads", "1", "-q", "transfer", "--model"]).arg(model());
    cmd.arg("--content").arg(&c).arg("--style").arg(&s).arg("--out").arg(&out);
    if let Some(mb) = mask {
        std::fs::write(&m, mb).unwrap();
        cmd.arg("--mask").arg(&m);
    }
    for (n, v) in KNOBS {
        cmd.arg(format!("--{}", n.replace('_', "-"))).arg(v);
    }
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(out).unwrap()
}

/// A PNG of `w x h` pixels of seeded noise (a fresh, uncached image).
fn noise_png(seed: u32, w: u32, h: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2654435761).wrapping_add(1);
    let img = image::RgbImage::from_fn(w, h, |_, _| {
        let mut px = [0u8; 3];
        for p in &mut px {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *p = x as u8;
        }
        image::Rgb(px)
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

/// A form: (part name, part) in order.
type Form = Vec<(&'static str, Part<'static>)>;

fn transfer_form<'a>(content: &'a [u8], style: &'a [u8]) -> Vec<(&'static str, Part<'a>)> {
    let mut parts = vec![("content", Part::File("content.png", content)), ("style", Part::File("style.png", style))];
    parts.extend(knob_parts());
    parts
}

#[test]
fn transfers_match_the_cli_and_inversions_are_cached() {
    let s = server(&["--max-batch", "2", "--batch-window-ms", "0"]);
    let (content, style) = (example("content.png"), example("style.png"));
    assert_eq!(get(&s.addr, "/healthz").status, 200);
    let page = get(&s.addr, "/");
    assert_eq!(page.status, 200);
    assert!(page.header("content-type").unwrap().starts_with("text/html"));
    assert!(page.text().contains("/v1/transfer") && page.text().contains("type=\"file\""));

    let want = cli_png(&content, &style, None);
    let r = post_form(&s.addr, "/v1/transfer", &transfer_form(&content, &style));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("image/png"));
    assert!(r.body == want, "the server's PNG differs from `diffstyle transfer`'s");
    assert_eq!(s.metric("diffstyle_inversion_cache_misses_total"), 2.0);

    // The style by id: same pixels; the content image found in the cache.
    let inv =
        post_form(&s.addr, "/v1/invert", &[("image", Part::File("s.png", &style)), ("inv_steps", Part::Text("6"))]);
    assert_eq!(inv.status, 200, "{}", inv.text());
    let id = inv.json()["id"].as_str().unwrap().to_string();
    let again = post_form(
        &s.addr,
        "/v1/invert",
        &[("image", Part::File("other-name.png", &style)), ("inv_steps", Part::Text("6"))],
    );
    assert_eq!(again.json()["id"].as_str(), Some(id.as_str()), "the same image gets the same id");
    let mut parts = vec![("content", Part::File("c.png", &content[..])), ("style_id", Part::Text(&id))];
    parts.extend(knob_parts());
    let r2 = post_form(&s.addr, "/v1/transfer", &parts);
    assert_eq!(r2.status, 200, "{}", r2.text());
    assert!(r2.body == want, "transfer by style_id differs");
    assert_eq!(s.metric("diffstyle_inversion_cache_misses_total"), 2.0, "nothing inverted twice");
    assert!(s.metric("diffstyle_inversion_cache_hits_total") >= 3.0);
    assert_eq!(s.metric("diffstyle_inversion_cache_entries"), 2.0);

    // A mask, as `--mask`.
    let mask = noise_png(3, 40, 24);
    let want_m = cli_png(&content, &style, Some(&mask));
    let mut parts = transfer_form(&content, &style);
    parts.push(("mask", Part::File("m.png", &mask)));
    let r3 = post_form(&s.addr, "/v1/transfer", &parts);
    assert_eq!(r3.status, 200, "{}", r3.text());
    assert!(r3.body == want_m && r3.body != want, "masked transfer differs from the CLI's");

    let metrics = get(&s.addr, "/metrics");
    assert!(metrics.header("content-type").unwrap().starts_with("text/plain"));
    let t = metrics.text();
    for needle in [
        "diffstyle_requests_total{route=\"/v1/transfer\",status=\"200\"} 3",
        "diffstyle_request_duration_seconds_bucket{route=\"/v1/transfer\",le=\"+Inf\"} 3",
        "diffstyle_queue_depth 0",
        "diffstyle_batches_total{kind=\"transfer\",size=\"1\"} 3",
        "process_resident_memory_bytes ",
    ] {
        assert!(t.contains(needle), "/metrics lacks `{needle}`:\n{t}");
    }
}

#[test]
fn bad_requests_get_clear_errors_and_hurt_nothing() {
    let s = server(&["--max-body-mib", "1"]);
    let (content, style) = (example("content.png"), example("style.png"));
    let leak = |v: Vec<u8>| -> &'static [u8] { Box::leak(v.into_boxed_slice()) };
    let (c, st, truncated) = (leak(content.clone()), leak(style.clone()), leak(style[..200].to_vec()));
    // The good form with `extra` parts put in (replacing their namesakes) and `drop` left out.
    let form = |extra: &[(&'static str, Part<'static>)], drop: &[&str]| {
        let mut p: Form = transfer_form(c, st).into_iter().filter(|(n, _)| !drop.contains(n)).collect();
        for &(n, v) in extra {
            p.retain(|(m, _)| *m != n);
            p.push((n, v));
        }
        p
    };
    // (what, the form, the field named, a word of the message)
    let cases: Vec<(&str, Form, &str, &str)> = vec![
        ("gamma out of range", form(&[("gamma", Part::Text("1.5"))], &[]), "gamma", "[0, 1]"),
        ("t_edit not an integer", form(&[("t_edit", Part::Text("4.5"))], &[]), "t_edit", "integer"),
        ("negative steps", form(&[("gen_steps", Part::Text("-3"))], &[]), "gen_steps", "non-negative"),
        ("too many steps", form(&[("inv_steps", Part::Text("1001"))], &[]), "inv_steps", "1000"),
        ("t_boost out of range", form(&[("t_boost", Part::Text("1000"))], &[]), "t_boost", "[0, 999]"),
        ("dt_lambda zero", form(&[("dt_lambda", Part::Text("0"))], &[]), "dt_lambda", "positive"),
        ("omega not finite", form(&[("omega", Part::Text("inf"))], &[]), "omega", "finite"),
        ("unknown preset", form(&[("preset", Part::Text("slow"))], &[]), "preset", "in-domain"),
        ("unknown part", form(&[("colour", Part::Text("red"))], &[]), "colour", "unknown form part"),
        ("missing style", form(&[], &["style"]), "style", "missing"),
        (
            "undecodable content",
            form(&[("content", Part::File("c.png", b"not an image"))], &[]),
            "content",
            "cannot decode",
        ),
        ("truncated style", form(&[("style", Part::File("s.png", truncated))], &[]), "style", "truncated"),
        ("bad mask", form(&[("mask", Part::File("m.png", b"\x89PNG"))], &[]), "mask", "mask"),
        (
            "both content and id",
            form(&[("content_id", Part::Text("00000000000000000000000000000000"))], &[]),
            "content_id",
            "either",
        ),
        ("malformed id", form(&[("style_id", Part::Text("zz"))], &["style"]), "style_id", "not an inversion id"),
        (
            "unknown id",
            form(&[("style_id", Part::Text("0123456789abcdef0123456789abcdef"))], &["style"]),
            "style_id",
            "unknown",
        ),
    ];
    for (what, parts, field, needle) in cases {
        let r = post_form(&s.addr, "/v1/transfer", &parts);
        assert_eq!(r.status, 400, "{what}: {}", r.text());
        assert_eq!(r.field(), field, "{what}: {}", r.text());
        let err = r.json()["error"].as_str().unwrap().to_string();
        assert!(err.contains(needle), "{what}: `{err}` lacks `{needle}`");
    }
    // Not multipart; a broken multipart body; a part without a name.
    let ct = |v: &str| vec![("Content-Type", v.to_string())];
    let r = request(&s.addr, "POST", "/v1/transfer", &ct("application/json"), b"{}").unwrap();
    assert_eq!((r.status, r.field().as_str()), (400, "body"), "{}", r.text());
    let broken = format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\nabc");
    let r = request(
        &s.addr,
        "POST",
        "/v1/transfer",
        &ct(&format!("multipart/form-data; boundary={BOUNDARY}")),
        broken.as_bytes(),
    )
    .unwrap();
    assert_eq!((r.status, r.field().as_str()), (400, "body"), "{}", r.text());
    // Over --max-body-mib: declared up front, and streamed without a length.
    let big = vec![7u8; 3 << 20];
    let r = post_form(&s.addr, "/v1/transfer", &[("content", Part::File("big.png", &big))]);
    assert_eq!(r.status, 413, "{}", r.text());
    // A client that writes its whole (20 MiB) body before reading still gets the 413:
    // the server reads and drops the body first instead of cutting the upload short.
    {
        use std::io::{Read, Write};
        let huge = vec![0u8; 20 << 20];
        let mut c = std::net::TcpStream::connect(&s.addr).unwrap();
        let head = format!(
            "POST /v1/transfer HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
            huge.len()
        );
        c.write_all(head.as_bytes()).unwrap();
        c.write_all(&huge).expect("the whole body is accepted before the answer");
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got);
        assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 413"), "{}", String::from_utf8_lossy(&got));
    }
    let body = multipart(&[("content", Part::File("big.png", &big))]);
    let mut chunked = Vec::new();
    for c in body.chunks(64 << 10) {
        chunked.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        chunked.extend_from_slice(c);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let mut h = ct(&format!("multipart/form-data; boundary={BOUNDARY}"));
    h.push(("Transfer-Encoding", "chunked".into()));
    let r = request_chunked(&s.addr, &h, &chunked);
    assert_eq!(r.status, 413, "{}", r.text());
    // Routes and methods.
    assert_eq!(get(&s.addr, "/v2/transfer").status, 404);
    // Unknown paths share one label (a client cannot grow the metrics without bound).
    assert_eq!(s.metric("diffstyle_requests_total{route=\"other\",status=\"404\"}"), 1.0);
    assert_eq!(get(&s.addr, "/v1/transfer").status, 405);
    // /v1/invert's own errors.
    let r = post_form(&s.addr, "/v1/invert", &[("inv_steps", Part::Text("6"))]);
    assert_eq!((r.status, r.field().as_str()), (400, "image"), "{}", r.text());
    let r = post_form(&s.addr, "/v1/invert", &[("image", Part::File("s.png", &style)), ("inv_steps", Part::Text("1"))]);
    assert_eq!((r.status, r.field().as_str()), (400, "inv_steps"), "{}", r.text());
    // Uploads cut short, and a client that leaves before its answer.
    let good = multipart(&transfer_form(&content, &style));
    for cut in [0, 10, good.len() / 2, good.len() - 1] {
        abandon_upload(&s.addr, &good, cut);
    }
    // Still serving, and correctly.
    assert_eq!(get(&s.addr, "/healthz").status, 200);
    let r = post_form(&s.addr, "/v1/transfer", &transfer_form(&content, &style));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.body == cli_png(&content, &style, None));
}

/// A request whose body is already chunk-encoded.
fn request_chunked(addr: &str, headers: &[(&str, String)], body: &[u8]) -> common::http::Resp {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let mut head = format!("POST /v1/transfer HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().as_bytes().to_vec();
    common::http::Resp { status, headers: vec![], body }
}

/// Transfers of every content with `style`, sent at once, each from its own thread:
/// (the batch size the server reports, the PNG) per content.
fn side_by_side(addr: &str, contents: &[Vec<u8>], style: &[u8]) -> Vec<(Option<String>, Vec<u8>)> {
    std::thread::scope(|sc| {
        let hs: Vec<_> = contents
            .iter()
            .map(|c| {
                sc.spawn(move || {
                    let r = post_form(addr, "/v1/transfer", &transfer_form(c, style));
                    assert_eq!(r.status, 200, "{}", r.text());
                    (r.header("x-diffstyle-batch-size").map(str::to_string), r.body)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn concurrent_requests_run_as_one_batch_with_the_same_pixels() {
    let s = server(&["--schedule", "batch", "--max-batch", "4", "--batch-window-ms", "1500"]);
    let style = example("style.png");
    let contents: Vec<Vec<u8>> = (0..3).map(|k| noise_png(k, 48, 40)).collect();
    // Alone first (each a batch of one after the window) ...
    let alone: Vec<Vec<u8>> = contents
        .iter()
        .map(|c| {
            let r = post_form(&s.addr, "/v1/transfer", &transfer_form(c, &style));
            assert_eq!(r.status, 200, "{}", r.text());
            r.body
        })
        .collect();
    // ... then side by side: one batch, identical images.
    let together = side_by_side(&s.addr, &contents, &style);
    for (k, (batch, png)) in together.iter().enumerate() {
        assert_eq!(batch.as_deref(), Some("3"), "request {k} ran in a batch of {batch:?}");
        assert!(*png == alone[k], "request {k}: batched pixels differ from the lone run");
    }
    assert_eq!(s.metric("diffstyle_batches_total{kind=\"transfer\",size=\"3\"}"), 1.0);
}

#[test]
fn a_full_queue_answers_503_and_shutdown_finishes_running_work() {
    full_queue_and_shutdown("step");
}

#[test]
fn a_full_batch_queue_answers_503_and_shutdown_finishes_running_work() {
    full_queue_and_shutdown("batch");
}

fn full_queue_and_shutdown(schedule: &str) {
    let mut s = server(&["--schedule", schedule, "--max-batch", "1", "--max-queue", "1", "--batch-window-ms", "0"]);
    let (content, style) = (example("content.png"), example("style.png"));
    // Long enough to still run while the others arrive.
    let slow = |c: &'static [u8], st: &'static [u8]| {
        let mut p = transfer_form(c, st);
        p.retain(|(n, _)| *n != "gen_steps");
        p.push(("gen_steps", Part::Text("400")));
        p
    };
    let c: &'static [u8] = Box::leak(content.into_boxed_slice());
    let st: &'static [u8] = Box::leak(style.into_boxed_slice());
    let statuses: Vec<(u16, Option<String>)> = std::thread::scope(|sc| {
        let hs: Vec<_> = (0..4)
            .map(|k| {
                let addr = &s.addr;
                let parts = slow(c, st);
                sc.spawn(move || {
                    std::thread::sleep(Duration::from_millis(150 * k));
                    let r = post_form(addr, "/v1/transfer", &parts);
                    (r.status, r.header("retry-after").map(str::to_string))
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ok = statuses.iter().filter(|(st, _)| *st == 200).count();
    let full: Vec<_> = statuses.iter().filter(|(st, _)| *st == 503).collect();
    // One runs, one waits in the queue's one place, the rest are refused (the exact
    // split depends on timing; every answer is one of the two).
    assert!(ok >= 1 && !full.is_empty() && ok + full.len() == 4, "{statuses:?}");
    assert!(full.iter().all(|(_, ra)| ra.as_deref() == Some("1")), "503 without Retry-After: {statuses:?}");

    // Shutdown: the running request completes; new connections are refused; exit 0.
    let t0 = Instant::now();
    let finished = std::thread::scope(|sc| {
        let addr = s.addr.clone();
        let h = sc.spawn(move || post_form(&addr, "/v1/transfer", &slow(c, st)).status);
        while s.metric("diffstyle_requests_in_flight") < 2.0 && t0.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(100));
        s.terminate();
        h.join().unwrap()
    });
    assert_eq!(finished, 200, "the request running at SIGTERM was not finished");
    let status = s.wait(Duration::from_secs(60)).expect("the server exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(std::net::TcpStream::connect(&s.addr).is_err(), "still accepting after shutdown");
    let log: Vec<String> = s.log.try_iter().collect();
    assert!(log.iter().any(|l| l.contains("SIGTERM")), "{log:?}");
    assert!(log.iter().any(|l| l.starts_with("/v1/transfer 200 ")), "no access log line: {log:?}");
}

#[test]
fn slow_clients_are_cut_off_after_the_read_timeout() {
    use std::io::{Read, Write};
    let s = server(&["--read-timeout-s", "1"]);
    // Headers that never end: the connection is closed.
    let mut a = std::net::TcpStream::connect(&s.addr).unwrap();
    a.write_all(b"POST /v1/transfer HTTP/1.1\r\nHost: x\r\n").unwrap();
    // A connection that sends nothing at all: closed too.
    let mut idle = std::net::TcpStream::connect(&s.addr).unwrap();
    // A body that stops half-way: 408, naming the body.
    let body = multipart(&transfer_form(&example("content.png"), &example("style.png")));
    let mut b = std::net::TcpStream::connect(&s.addr).unwrap();
    let head = format!(
        "POST /v1/transfer HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    b.write_all(head.as_bytes()).unwrap();
    b.write_all(&body[..body.len() / 2]).unwrap();
    let t0 = Instant::now();
    for c in [&a, &b, &idle] {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    }
    let mut got = Vec::new();
    assert_eq!(idle.read_to_end(&mut got).expect("the silent connection is closed"), 0);
    let n = a.read_to_end(&mut got).expect("the stalled-header connection is closed, not left hanging");
    assert!(t0.elapsed() < Duration::from_secs(5), "closed only after {:?}", t0.elapsed());
    assert!(n == 0 || String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"), "{}", String::from_utf8_lossy(&got));
    let mut got = Vec::new();
    let _ = b.read_to_end(&mut got);
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"field\":\"body\""), "{text}");
    assert_eq!(get(&s.addr, "/healthz").status, 200);
}

#[test]
fn the_emulated_gpu_serves_what_its_cli_writes_batched_or_not() {
    let m = model();
    let s = Server::start(
        &bin(),
        &["--device", "emu"],
        &["--model", m.to_str().unwrap(), "--schedule", "batch", "--max-batch", "2", "--batch-window-ms", "3000"],
    );
    let style = example("style.png");
    let contents = [example("content.png"), noise_png(9, 40, 40)];
    let together = side_by_side(&s.addr, &contents, &style);
    let want: Vec<Vec<u8>> = contents.iter().map(|c| cli_png_on("emu", c, &style, None)).collect();
    for (k, (batch, png)) in together.iter().enumerate() {
        assert_eq!(batch.as_deref(), Some("2"));
        assert!(*png == want[k], "request {k} differs from the emulated CLI");
    }
    assert!(s.metric("diffstyle_device_memory_peak_bytes") > 0.0, "the emulated device reports its memory");
    drop(s);
    // The step scheduler on the emulated device (its steps of varying shapes recorded
    // as graphs): the same images.
    let s = Server::start(&bin(), &["--device", "emu"], &["--model", m.to_str().unwrap(), "--max-batch", "2"]);
    for (k, (_, png)) in side_by_side(&s.addr, &contents, &style).iter().enumerate() {
        assert!(*png == want[k], "request {k} differs from the emulated CLI under step scheduling");
    }
    assert!(s.metric("diffstyle_batches_total{kind=\"step\",size=\"2\"}") > 0.0, "no step ran two jobs");
}

#[test]
fn a_client_that_leaves_before_its_turn_costs_no_work() {
    use std::io::Read;
    let s = server(&["--schedule", "batch", "--max-batch", "1", "--batch-window-ms", "0"]);
    let (content, style) = (example("content.png"), example("style.png"));
    let send = |gen: &'static str| send_transfer(&s.addr, &content, &style, gen);
    // The first runs for a while; the second waits in the queue, and its client leaves.
    let mut first = send("300");
    std::thread::sleep(Duration::from_millis(300));
    let second = send("299");
    let t0 = Instant::now();
    while s.metric("diffstyle_queue_depth") < 1.0 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(second);
    let mut got = Vec::new();
    first.read_to_end(&mut got).unwrap();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"));
    // Give the batcher the chance to (wrongly) start the abandoned job.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(s.metric("diffstyle_requests_total{route=\"/v1/transfer\",status=\"499\"}"), 1.0);
    assert_eq!(s.metric("diffstyle_batches_total{kind=\"transfer\",size=\"1\"}"), 1.0, "the abandoned job ran");
    assert_eq!(s.metric("diffstyle_queue_depth"), 0.0);
    assert_eq!(s.metric("diffstyle_cancelled_total"), 1.0);
}

/// Sends a transfer of `gen` generation steps on a raw connection and returns it
/// unread (dropping it is a client leaving).
fn send_transfer(addr: &str, content: &[u8], style: &[u8], gen: &'static str) -> std::net::TcpStream {
    use std::io::Write;
    let mut p = transfer_form(content, style);
    p.retain(|(n, _)| *n != "gen_steps");
    p.push(("gen_steps", Part::Text(gen)));
    let body = multipart(&p);
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v1/transfer HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    c.write_all(head.as_bytes()).unwrap();
    c.write_all(&body).unwrap();
    c
}

/// Waits (at most 20 s) until `metric` reaches `at_least`.
fn wait_metric(s: &Server, metric: &str, at_least: f64) -> f64 {
    let t0 = Instant::now();
    loop {
        let v = s.metric(metric);
        if v >= at_least || t0.elapsed() > Duration::from_secs(20) {
            return v;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Steps the step scheduler has run so far, over every batch size.
fn steps_run(s: &Server) -> f64 {
    (1..=8).map(|n| s.metric(&format!("diffstyle_batches_total{{kind=\"step\",size=\"{n}\"}}"))).sum()
}

#[test]
fn a_short_request_joins_a_long_one_at_the_next_step() {
    use std::io::Read;
    let s = server(&["--max-batch", "2"]);
    let (content, style) = (example("content.png"), example("style.png"));
    // A long transfer starts; a short one with other knobs arrives while it runs.
    let mut long = send_transfer(&s.addr, &content, &style, "400");
    wait_metric(&s, "diffstyle_batches_total{kind=\"step\",size=\"1\"}", 3.0);
    let short_content = noise_png(5, 40, 48);
    let r = post_form(&s.addr, "/v1/transfer", &transfer_form(&short_content, &style));
    assert_eq!(r.status, 200, "{}", r.text());
    // It was answered while the long one still ran (both in one step batch) ...
    // (the scrape counts itself)
    assert!(s.metric("diffstyle_requests_in_flight") >= 2.0, "the long request ended before the short one");
    assert!(s.metric("diffstyle_batches_total{kind=\"step\",size=\"2\"}") >= 1.0, "they never shared a step");
    assert_eq!(r.header("x-diffstyle-batch-size"), Some("2"));
    // ... with the pixels of the lone CLI run.
    assert!(r.body == cli_png(&short_content, &style, None), "the joined request differs from the CLI");
    let mut got = Vec::new();
    long.read_to_end(&mut got).unwrap();
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"), "the long request failed");
}

#[test]
fn a_client_that_leaves_mid_run_is_dropped_at_the_next_step() {
    let s = server(&["--max-batch", "1"]);
    let (content, style) = (example("content.png"), example("style.png"));
    let long = send_transfer(&s.addr, &content, &style, "1000");
    wait_metric(&s, "diffstyle_batches_total{kind=\"step\",size=\"1\"}", 20.0);
    drop(long);
    assert_eq!(wait_metric(&s, "diffstyle_cancelled_total", 1.0), 1.0, "the abandoned request was not cancelled");
    // Its lane is free: a request now runs at once and alone (one lane), and the
    // abandoned one ran far fewer than its 1000 + inversion steps.
    let r = post_form(&s.addr, "/v1/transfer", &transfer_form(&noise_png(6, 40, 40), &style));
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(steps_run(&s) < 200.0, "{} steps ran", steps_run(&s));
    assert_eq!(wait_metric(&s, "diffstyle_requests_total{route=\"/v1/transfer\",status=\"499\"}", 1.0), 1.0);
    assert_eq!(s.metric("diffstyle_queue_depth"), 0.0);
}
