//! A bare HTTP/1.1 client over `TcpStream` for the server tests: one request per
//! connection (`Connection: close`), so that the tests control every byte (malformed
//! bodies, uploads cut short) and read exactly what the server sent. And a
//! `diffstyle serve` child process on an ephemeral loopback port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub struct Resp {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }
    /// The `field` of a JSON error answer ("" when null).
    pub fn field(&self) -> String {
        self.json()["field"].as_str().unwrap_or_default().to_string()
    }
}

#[derive(Clone, Copy)]
pub enum Part<'a> {
    Text(&'a str),
    File(&'a str, &'a [u8]),
}

pub const BOUNDARY: &str = "----diffstyle-test-boundary-7f3a";

/// A multipart/form-data body of `parts`.
pub fn multipart(parts: &[(&str, Part)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (name, p) in parts {
        write!(b, "--{BOUNDARY}\r\n").unwrap();
        match p {
            Part::Text(v) => write!(b, "Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{v}\r\n").unwrap(),
            Part::File(file, bytes) => {
                write!(b, "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\n").unwrap();
                b.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
                b.extend_from_slice(bytes);
                b.extend_from_slice(b"\r\n");
            }
        }
    }
    write!(b, "--{BOUNDARY}--\r\n").unwrap();
    b
}

/// Sends one request and reads the whole answer. A server that answers before the body
/// is sent (413) may close the connection under the write: the answer is still read.
pub fn request(addr: &str, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if !headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("content-length")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    let sent = s.write_all(head.as_bytes()).and_then(|_| s.write_all(body));
    let mut raw = Vec::new();
    let read = s.read_to_end(&mut raw);
    if raw.is_empty() {
        sent?;
        read?;
    }
    parse(&raw)
}

fn parse(raw: &[u8]) -> std::io::Result<Resp> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| bad(status_line))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    if headers.iter().any(|(n, v)| n == "transfer-encoding" && v.contains("chunked")) {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    }
    Ok(Resp { status, headers, body })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = b.windows(2).position(|w| w == b"\r\n")?;
        let size = usize::from_str_radix(std::str::from_utf8(&b[..eol]).ok()?.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

/// POSTs a multipart form.
pub fn post_form(addr: &str, path: &str, parts: &[(&str, Part)]) -> Resp {
    let body = multipart(parts);
    let ct = format!("multipart/form-data; boundary={BOUNDARY}");
    request(addr, "POST", path, &[("Content-Type", ct)], &body).expect("the server answers")
}

pub fn get(addr: &str, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"").expect("the server answers")
}

/// Sends the request line, headers and only `part` of `body`, then drops the connection.
pub fn abandon_upload(addr: &str, body: &[u8], part: usize) {
    let mut s = TcpStream::connect(addr).expect("connect");
    let head = format!(
        "POST /v1/transfer HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let _ = s.write_all(head.as_bytes());
    let _ = s.write_all(&body[..part.min(body.len())]);
    let _ = s.shutdown(Shutdown::Both);
}

/// A `diffstyle serve` child on 127.0.0.1 with an ephemeral port; killed when dropped.
pub struct Server {
    pub child: Child,
    pub addr: String,
    /// stderr lines after the `listening on` one.
    pub log: mpsc::Receiver<String>,
}

impl Server {
    /// Starts the binary with `global` options before `serve`, and `args` after it
    /// (plus `--addr 127.0.0.1:0`); waits for `listening on`.
    pub fn start(bin: &Path, global: &[&str], args: &[&str]) -> Server {
        let mut child = Command::new(bin)
            .args(global)
            .arg("serve")
            .args(args)
            .args(["--addr", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start diffstyle serve");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let t0 = Instant::now();
        let mut seen = vec![];
        loop {
            match rx.recv_timeout(Duration::from_secs(60).saturating_sub(t0.elapsed())) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("listening on http://") {
                        return Server { child, addr: url.trim().to_string(), log: rx };
                    }
                    seen.push(line);
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("the server did not print `listening on` within 60 s; it printed:\n{}", seen.join("\n"));
                }
            }
        }
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let ok = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill").success();
        assert!(ok, "kill -TERM failed");
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let t0 = Instant::now();
        while t0.elapsed() < limit {
            if let Some(s) = self.child.try_wait().expect("try_wait") {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// A metric's value from /metrics (the first line starting with `name`).
    pub fn metric(&self, name: &str) -> f64 {
        let m = get(&self.addr, "/metrics").text();
        m.lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
