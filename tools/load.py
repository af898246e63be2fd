#!/usr/bin/env python3
"""Load and fault test of `diffstyle serve` on loopback (standard library only).

Starts the server (the tiny fixture model on the CPU by default) on 127.0.0.1 with an
ephemeral port, or uses --url (which must be a loopback address), then runs two rounds of
N concurrent clients with a mix of requests:

  cached-id    fresh content image + a pre-inverted style by style_id
  cached-file  fresh content image + one of the pre-inverted styles uploaded again
               (found in the cache by its pixels)
  uncached     fresh content and fresh style (two inversions)
  bad          a bad request (knob out of range, undecodable image, unknown id,
               unknown part), which must get 400

while a fault thread tries clients that disconnect mid-upload and right after sending
(before the answer), oversized bodies, malformed multipart, a slow client, and a flood
of simultaneous requests past --max-queue; and a monitor polls /healthz every 100 ms.
Each round is bounded by --requests and --duration.

Reports throughput, p50/p95/p99 latency per request kind, answers by status, the batch
sizes the server ran (from /metrics), the inversion cache, /healthz availability, and the
server's resident memory after warm-up and after each round (and after an idle pause),
as JSON (--out) and as a Markdown section (stdout).

    python3 tools/load.py --bin target/release/diffstyle --out benches/load.json

With --mixed N it instead compares the schedulings (issue 25): for each of --servers
(`--schedule batch`, `--schedule step`, and step with `--long-every 1`), a fresh server,
then two phases of --duration s each:
"fast only" (8 clients, each sending a `fast` transfer of a fresh content with a cached
style id, then thinking an exponential --think s) and "mixed" (the same, plus one
`in-domain` transfer (1000 generation steps) every N s from its own thread). It reports
the fast requests' p50/p99 latency and throughput per phase and the ratio of their p50
mixed / fast only, as JSON (--out) and Markdown.

    python3 tools/load.py --mixed 60 --duration 120 --out benches/load_mixed.json
"""

import argparse
import http.client
import json
import os
import random
import re
import socket
import statistics
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections import Counter, defaultdict
from urllib.parse import urlparse

BOUNDARY = "----diffstyle-load-boundary"


def png(w, h, rng):
    """A random-noise RGB PNG (a fresh image the server has never seen)."""
    raw = b"".join(b"\x00" + bytes(rng.getrandbits(8) for _ in range(3 * w)) for _ in range(h))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def form(parts):
    """multipart/form-data body of [(name, str | (filename, bytes))]."""
    out = bytearray()
    for name, v in parts:
        out += f"--{BOUNDARY}\r\n".encode()
        if isinstance(v, tuple):
            out += f'Content-Disposition: form-data; name="{name}"; filename="{v[0]}"\r\n'.encode()
            out += b"Content-Type: application/octet-stream\r\n\r\n" + v[1] + b"\r\n"
        else:
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n{v}\r\n'.encode()
    out += f"--{BOUNDARY}--\r\n".encode()
    return bytes(out)


CT = f"multipart/form-data; boundary={BOUNDARY}"


class Client:
    def __init__(self, host, port):
        self.host, self.port = host, port

    def call(self, method, path, body=None, headers=None, timeout=600):
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            h = dict(headers or {})
            if body is not None:
                h.setdefault("Content-Type", CT)
            c.request(method, path, body=body, headers=h)
            r = c.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        finally:
            c.close()

    def metrics(self):
        _, _, body = self.call("GET", "/metrics")
        out = {}
        for line in body.decode().splitlines():
            if line and not line.startswith("#"):
                name, _, v = line.rpartition(" ")
                out[name] = float(v)
        return out


def rss_of(pid, client):
    if pid is not None:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
    return int(client.metrics().get("process_resident_memory_bytes", 0))


def pct(xs, p):
    if not xs:
        return None
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


class Round:
    def __init__(self):
        self.lock = threading.Lock()
        self.lat = defaultdict(list)  # kind -> seconds of 200 answers
        self.status = Counter()  # (kind, status)
        self.batch = Counter()  # x-diffstyle-batch-size seen
        self.count = 0

    def add(self, kind, status, secs, batch=None):
        with self.lock:
            self.status[(kind, status)] += 1
            if status == 200 or (kind == "bad" and status == 400):
                self.lat[kind].append(secs)
            if batch:
                self.batch[batch] += 1


def run_round(cl, args, styles, style_ids, rng_seed, rnd):
    deadline = time.time() + args.duration
    next_id = [0]
    id_lock = threading.Lock()
    knobs = [(k, v) for k, v in args.knobs]

    def take():
        with id_lock:
            if next_id[0] >= args.requests or time.time() > deadline:
                return None
            next_id[0] += 1
            return next_id[0]

    def client(k):
        rng = random.Random(rng_seed * 1000 + k)
        while True:
            n = take()
            if n is None:
                return
            r = rng.random()
            size = args.image_size
            if r < 0.5:
                kind = "cached-id"
                parts = [("content", ("c.png", png(size, size, rng))), ("style_id", rng.choice(style_ids))] + knobs
            elif r < 0.7:
                kind = "cached-file"
                parts = [("content", ("c.png", png(size, size, rng))), ("style", ("s.png", rng.choice(styles)))] + knobs
            elif r < 0.85:
                kind = "uncached"
                parts = [("content", ("c.png", png(size, size, rng))), ("style", ("s.png", png(size, size, rng)))] + knobs
            else:
                kind = "bad"
                c = ("c.png", png(size, size, rng))
                parts = rng.choice([
                    [("content", c), ("style_id", style_ids[0]), ("gamma", "1.5")],
                    [("content", ("c.png", b"not an image")), ("style_id", style_ids[0])],
                    [("content", c), ("style_id", "0123456789abcdef0123456789abcdef")],
                    [("content", c), ("style_id", style_ids[0]), ("colour", "red")],
                ]) + knobs
            t0 = time.time()
            try:
                st, h, _ = cl.call("POST", "/v1/transfer", form(parts))
            except Exception:
                st, h = "conn-error", {}
            b = h.get("x-diffstyle-batch-size")
            rnd.add(kind, st, time.time() - t0, int(b) if b else None)

    t0 = time.time()
    ths = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    return time.time() - t0


def faults(cl, args, style_ids, stop, log):
    """Each fault a few times, spread over the round; what the server answered."""
    rng = random.Random(99)
    host, port = cl.host, cl.port
    size = args.image_size

    def good_body():
        return form([("content", ("c.png", png(size, size, rng))), ("style_id", style_ids[0])] + list(args.knobs))

    def raw(head_extra, body, send=None, read=True):
        s = socket.create_connection((host, port), timeout=30)
        try:
            head = (f"POST /v1/transfer HTTP/1.1\r\nHost: {host}\r\nContent-Type: {CT}\r\n"
                    f"{head_extra}Connection: close\r\n\r\n").encode()
            s.sendall(head)
            (send or (lambda sock, b: sock.sendall(b)))(s, body)
            if not read:
                return None
            data = b""
            while True:
                try:
                    d = s.recv(65536)
                except OSError:
                    break
                if not d:
                    break
                data += d
            m = re.match(rb"HTTP/1\.1 (\d+)", data)
            return int(m.group(1)) if m else "closed"
        except OSError as e:
            return f"oserror:{e.errno}"
        finally:
            s.close()

    def mid_upload():
        b = good_body()
        raw(f"Content-Length: {len(b)}\r\n", b[: len(b) // 2], read=False)
        return "sent half, closed"

    def mid_response():
        b = good_body()
        raw(f"Content-Length: {len(b)}\r\n", b, read=False)
        return "sent all, closed before the answer"

    def oversized():
        n = (args.max_body_mib + 1) << 20
        return raw(f"Content-Length: {n}\r\n", b"x" * 65536)

    def malformed():
        b = f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\nabc".encode()
        return raw(f"Content-Length: {len(b)}\r\n", b)

    def slow():
        b = good_body()

        def trickle(sock, body):
            step = max(1, len(body) // 20)
            for i in range(0, len(body), step):
                sock.sendall(body[i:i + step])
                time.sleep(0.1)

        return raw(f"Content-Length: {len(b)}\r\n", b, send=trickle)

    def flood():
        n = args.max_queue * 2 + args.clients
        res = Counter()
        lock = threading.Lock()
        body = good_body()

        def one():
            try:
                st, h, _ = cl.call("POST", "/v1/transfer", body)
                if st == 503 and "retry-after" not in {k.lower() for k in h}:
                    st = "503-without-retry-after"
            except Exception:
                st = "conn-error"
            with lock:
                res[st] += 1

        ths = [threading.Thread(target=one) for _ in range(n)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        return dict(sorted((str(k), v) for k, v in res.items()))

    plan = [("disconnect mid-upload", mid_upload), ("disconnect before the answer", mid_response),
            ("oversized body", oversized), ("malformed multipart", malformed), ("slow client (2 s)", slow)] * 2
    plan.append(("flood past the queue", flood))
    for name, f in plan:
        if stop.is_set():
            break
        log.append((name, f()))
        time.sleep(0.3)


def monitor(cl, stop, out):
    while not stop.is_set():
        t0 = time.time()
        try:
            st, _, _ = cl.call("GET", "/healthz", timeout=10)
        except Exception:
            st = "conn-error"
        out.append((st, time.time() - t0))
        time.sleep(0.1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/diffstyle", help="the diffstyle binary (when starting a server)")
    ap.add_argument("--model", default="tests/fixtures/method/model")
    ap.add_argument("--url", help="use this running server instead (loopback only)")
    ap.add_argument("--arch", help="the model's architecture (a single .safetensors file), passed to serve")
    ap.add_argument("--precision", default="f32", help="the server's --precision")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=200, help="requests per round (at most)")
    ap.add_argument("--duration", type=float, default=120, help="seconds per round (at most)")
    ap.add_argument("--schedule", default="step", choices=["step", "batch"], help="the server's --schedule")
    ap.add_argument("--mixed", type=float, metavar="N",
                    help="compare --schedule batch and step under fast load with an in-domain request every N s")
    ap.add_argument("--think", type=float, default=8.0, help="--mixed: mean think time of a fast client, s")
    ap.add_argument("--servers", default="batch,step,step:1",
                    help="--mixed: the servers compared, SCHEDULE[:LONG_EVERY] each (step:1 = no yielding)")
    ap.add_argument("--long-every", type=int, help="the server's --long-every (step scheduling)")
    ap.add_argument("--max-batch", type=int, default=4)
    ap.add_argument("--batch-window-ms", type=int, default=20)
    ap.add_argument("--max-queue", type=int, default=16)
    ap.add_argument("--cache-mib", type=int, default=16, help="small, so that eviction happens")
    ap.add_argument("--max-body-mib", type=int, default=4)
    ap.add_argument("--image-size", type=int, default=48, help="side of the random images sent")
    ap.add_argument("--knob", action="append", default=[], metavar="NAME=VALUE",
                    help="knobs of every transfer (default: preset=fast)")
    ap.add_argument("--solo", type=int, default=5, help="requests sent one at a time first (latency alone)")
    ap.add_argument("--cli-baseline", type=int, default=0, metavar="N",
                    help="also time N `diffstyle transfer` processes, one after another (what serving without "
                         "a server means: a fresh content and a style file per request, model loaded each time)")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    args.knobs = [tuple(k.split("=", 1)) for k in (args.knob or [])] or [("preset", "fast")]

    if args.mixed:
        return mixed_main(args)
    proc, host, port = connect(args, args.schedule)
    cl = Client(host, port)
    pid = proc.pid if proc else None
    try:
        rng = random.Random(7)
        styles = [png(args.image_size, args.image_size, rng) for _ in range(3)]
        style_ids = []
        for s in styles:
            st, _, body = cl.call("POST", "/v1/invert", form([("image", ("s.png", s))]))
            assert st == 200, body
            style_ids.append(json.loads(body)["id"])
        # Warm-up: a few transfers of every kind.
        warm = Round()
        a = argparse.Namespace(**{**vars(args), "requests": 2 * args.clients, "duration": 60})
        run_round(cl, a, styles, style_ids, 1, warm)
        # One client alone: the latency of a cached-style request with nothing queued.
        solo = []
        srng = random.Random(3)
        for _ in range(args.solo):
            parts = [("content", ("c.png", png(args.image_size, args.image_size, srng))),
                     ("style_id", style_ids[0])] + list(args.knobs)
            t0 = time.time()
            st, _, body = cl.call("POST", "/v1/transfer", form(parts))
            assert st == 200, body
            solo.append(time.time() - t0)
        rss = {"after warm-up": rss_of(pid, cl)}
        m0 = cl.metrics()
        health, stop = [], threading.Event()
        mon = threading.Thread(target=monitor, args=(cl, stop, health))
        mon.start()
        rounds, fault_log = [], []
        for k in range(2):
            rnd = Round()
            fstop = threading.Event()
            ft = threading.Thread(target=faults, args=(cl, args, style_ids, fstop, fault_log)) if k == 0 else None
            if ft:
                ft.start()
            secs = run_round(cl, args, styles, style_ids, 10 + k, rnd)
            if ft:
                ft.join()
            rounds.append((rnd, secs))
            rss[f"after round {k + 1}"] = rss_of(pid, cl)
        time.sleep(3)
        rss["after 3 s idle"] = rss_of(pid, cl)
        stop.set()
        mon.join()
        m1 = cl.metrics()
    finally:
        code = stop_server(proc)
    base = cli_baseline(args) if args.cli_baseline else None
    res = report(args, rounds, fault_log, health, rss, m0, m1, code if proc else None, base, solo)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


def connect(args, schedule, long_every=None):
    """(server process or None, host, port): --url, or a fresh server on an ephemeral port."""
    if args.url:
        u = urlparse(args.url)
        if u.hostname not in ("127.0.0.1", "localhost", "::1"):
            sys.exit("--url must be a loopback address")
        return None, u.hostname, u.port
    cmd = [args.bin, "--device", args.device, "--precision", args.precision, "--threads", str(args.threads), "serve",
           "--model", args.model] + (["--arch", args.arch] if args.arch else []) + [
           "--addr", "127.0.0.1:0", "--schedule", schedule, "--max-batch", str(args.max_batch), "--batch-window-ms",
           str(args.batch_window_ms), "--max-queue", str(args.max_queue), "--cache-mib", str(args.cache_mib),
           "--max-body-mib", str(args.max_body_mib), "--read-timeout-s", "10"]
    long_every = long_every or args.long_every
    if schedule == "step" and long_every:
        cmd += ["--long-every", str(long_every)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    for line in proc.stderr:
        m = re.match(r"listening on http://([\d.]+):(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()
            return proc, m.group(1), int(m.group(2))
    sys.exit("the server did not start")


def stop_server(proc):
    if proc:
        proc.terminate()
        try:
            return proc.wait(timeout=600)
        except subprocess.TimeoutExpired:
            proc.kill()
            return "killed"
    return None


def mixed_phase(cl, args, style_id, seed, in_domain_every):
    """One phase: 8 fast clients with think times, and (if in_domain_every) an in-domain
    request every so many seconds. Returns {kind: [seconds of 200 answers]}, errors, s."""
    lat, errors, lock = defaultdict(list), Counter(), threading.Lock()
    end = time.time() + args.duration
    size = args.image_size

    def one(kind, preset, rng):
        parts = [("content", ("c.png", png(size, size, rng))), ("style_id", style_id), ("preset", preset)]
        t0 = time.time()
        try:
            st, _, body = cl.call("POST", "/v1/transfer", form(parts))
        except Exception as e:
            st, body = "conn-error", str(e).encode()
        with lock:
            if st == 200:
                lat[kind].append(time.time() - t0)
            else:
                errors[f"{kind} {st}"] += 1

    def fast_client(k):
        rng = random.Random(seed * 100 + k)
        # Staggered starts, then request / think.
        time.sleep(rng.uniform(0, args.think))
        while time.time() < end:
            one("fast", "fast", rng)
            time.sleep(rng.expovariate(1 / args.think))

    def in_domain():
        rng = random.Random(seed * 100 + 99)
        k = 0
        while True:
            at = t_start + in_domain_every * (k + 0.5)
            if at >= end:
                return
            time.sleep(max(0, at - time.time()))
            threading.Thread(target=one, args=("in-domain", "in-domain", rng)).start()
            k += 1

    t_start = time.time()
    ths = [threading.Thread(target=fast_client, args=(k,)) for k in range(args.clients)]
    if in_domain_every:
        ths.append(threading.Thread(target=in_domain))
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    # In-domain requests still running finish before the next phase (their threads are
    # not joined above): wait until the server is idle.
    while cl.metrics().get("diffstyle_requests_in_flight", 0) > 1:
        time.sleep(0.2)
    return lat, errors, time.time() - t_start


def mixed_main(args):
    if args.url:
        sys.exit("--mixed starts its own servers (one per schedule); it takes no --url")
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": f"{os.cpu_count()} CPUs, " + open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t"),
           "settings": {k: getattr(args, k) for k in ("clients", "duration", "think", "mixed", "max_batch",
                                                        "batch_window_ms", "max_queue", "image_size", "device", "threads")},
           "schedules": {}}
    for server in args.servers.split(","):
        schedule, _, every = server.partition(":")
        proc, host, port = connect(args, schedule, int(every) if every else None)
        cl = Client(host, port)
        try:
            st, _, body = cl.call("POST", "/v1/invert", form([("image", ("s.png", png(args.image_size, args.image_size, random.Random(7))))]))
            assert st == 200, body
            sid = json.loads(body)["id"]
            # Warm-up: one of each.
            for preset in ("fast", "in-domain"):
                st, _, body = cl.call("POST", "/v1/transfer", form([("content", ("c.png", png(args.image_size, args.image_size, random.Random(1)))), ("style_id", sid), ("preset", preset)]))
                assert st == 200, body
            phases = {}
            for name, every in (("fast only", 0), ("mixed", args.mixed)):
                lat, errors, secs = mixed_phase(cl, args, sid, 5, every)
                f = lat["fast"]
                phases[name] = {
                    "seconds": round(secs, 1),
                    "fast_n": len(f), "fast_per_s": round(len(f) / secs, 3),
                    "fast_p50_ms": round(1e3 * (pct(f, 50) or 0)), "fast_p99_ms": round(1e3 * (pct(f, 99) or 0)),
                    "fast_max_ms": round(1e3 * max(f, default=0)),
                    "in_domain_n": len(lat["in-domain"]),
                    "in_domain_p50_ms": round(1e3 * (pct(lat["in-domain"], 50) or 0)),
                    "errors": dict(errors),
                }
            m = cl.metrics()
            phases["cancelled_total"] = m.get("diffstyle_cancelled_total", 0)
            phases["ratio_fast_p50_mixed_over_fast_only"] = round(
                phases["mixed"]["fast_p50_ms"] / max(1, phases["fast only"]["fast_p50_ms"]), 2)
            res["schedules"][server] = phases
        finally:
            stop_server(proc)
    print(mixed_markdown(res))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


def mixed_markdown(r):
    s = r["settings"]
    out = [f"Measured {r['date']} on {r['machine']}; `diffstyle --device {s['device']} --threads {s['threads']} serve "
           f"--max-batch {s['max_batch']}` with the tiny fixture model (32x32); {s['clients']} clients sending `fast` "
           f"transfers (fresh {s['image_size']}x{s['image_size']} content, cached style id) with exponential think "
           f"times of mean {s['think']} s; mixed: plus one `in-domain` transfer (1000 generation steps) every "
           f"{s['mixed']} s; {s['duration']} s per phase. Servers: `batch` = `--schedule batch`; `step` = `--schedule "
           f"step` with its default `--long-every` (4 on the CPU); `step:1` = `--schedule step --long-every 1` (every job "
           f"advances every step).", "",
           "| schedule | phase | fast n | fast/s | fast p50 ms | fast p99 ms | fast max ms | in-domain n | in-domain p50 ms | fast p50 mixed / fast only |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for sch, ph in r["schedules"].items():
        for name in ("fast only", "mixed"):
            p = ph[name]
            ratio = ph["ratio_fast_p50_mixed_over_fast_only"] if name == "mixed" else ""
            idn = (p["in_domain_n"], p["in_domain_p50_ms"]) if name == "mixed" else ("", "")
            out.append(f"| {sch} | {name} | {p['fast_n']} | {p['fast_per_s']} | {p['fast_p50_ms']} | {p['fast_p99_ms']} "
                       f"| {p['fast_max_ms']} | {idn[0]} | {idn[1]} | {ratio} |")
        errs = {k: v for name in ("fast only", "mixed") for k, v in ph[name]["errors"].items()}
        if errs:
            out.append(f"\n{sch}: errors {errs}")
    return "\n".join(out)


def cli_baseline(args):
    """N sequential CLI transfers with the load's knobs; seconds each."""
    import tempfile
    rng = random.Random(5)
    style = png(args.image_size, args.image_size, random.Random(7))
    times = []
    with tempfile.TemporaryDirectory() as d:
        sp = os.path.join(d, "s.png")
        with open(sp, "wb") as f:
            f.write(style)
        for k in range(args.cli_baseline):
            cp = os.path.join(d, "c.png")
            with open(cp, "wb") as f:
                f.write(png(args.image_size, args.image_size, rng))
            cmd = [args.bin, "--device", args.device, "--threads", str(args.threads), "-q", "transfer", "--model",
                   args.model, "--content", cp, "--style", sp, "--out", os.path.join(d, "o.png")]
            for n, v in args.knobs:
                cmd += [f"--{n.replace('_', '-')}", v]
            t0 = time.time()
            subprocess.run(cmd, check=True)
            times.append(time.time() - t0)
    return {"n": len(times), "transfers_per_s": round(len(times) / sum(times), 2),
            "p50_ms": round(1e3 * pct(times, 50)), "p95_ms": round(1e3 * pct(times, 95))}


def report(args, rounds, fault_log, health, rss, m0, m1, exit_code, base=None, solo=()):
    def delta(prefix):
        out = {}
        for k, v in m1.items():
            if k.startswith(prefix):
                d = v - m0.get(k, 0)
                if d:
                    out[k] = d
        return out

    batches = {re.search(r'size="(\d+)"', k).group(1): int(v)
               for k, v in delta('diffstyle_batches_total{kind="transfer"').items()}
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs, " + open("/proc/cpuinfo").read().split("model name")[1].split("\n")[0].strip(": \t"),
        "settings": {k: getattr(args, k) for k in ("clients", "requests", "duration", "schedule", "max_batch", "batch_window_ms",
                                                     "max_queue", "cache_mib", "image_size", "device", "threads")},
        "knobs": dict(args.knobs),
        "rounds": [],
        "faults": [[n, r] for n, r in fault_log],
        "server_batches_transfer": dict(sorted(batches.items(), key=lambda kv: int(kv[0]))),
        "cache": {k.replace("diffstyle_inversion_cache_", ""): v for k, v in m1.items() if "inversion_cache" in k},
        "healthz": {"polls": len(health), "ok": sum(1 for s, _ in health if s == 200),
                    "max_ms": round(1e3 * max((t for _, t in health), default=0), 1),
                    "p99_ms": round(1e3 * (pct([t for _, t in health], 99) or 0), 1)},
        "rss_mib": {k: round(v / 1048576, 1) for k, v in rss.items()},
        "exit_code_after_sigterm": exit_code,
        "cli_baseline": base,
        "solo": {"n": len(solo), "p50_ms": round(1e3 * (pct(solo, 50) or 0)), "max_ms": round(1e3 * max(solo, default=0))},
    }
    for rnd, secs in rounds:
        ok = sum(v for (kind, st), v in rnd.status.items() if st == 200)
        res["rounds"].append({
            "seconds": round(secs, 1),
            "transfers_ok": ok,
            "transfers_per_s": round(ok / secs, 2),
            "by_status": {f"{kind} {st}": v for (kind, st), v in sorted(rnd.status.items(), key=str)},
            "latency_ms": {kind: {"n": len(xs), "p50": round(1e3 * pct(xs, 50)), "p95": round(1e3 * pct(xs, 95)),
                                  "p99": round(1e3 * pct(xs, 99))} for kind, xs in sorted(rnd.lat.items())},
            "batch_sizes_seen": dict(sorted(rnd.batch.items())),
        })
    print(markdown(res))
    return res


def markdown(r):
    s = r["settings"]
    out = [f"Measured {r['date']} on {r['machine']}; `diffstyle --device {s['device']} serve` with the tiny fixture "
           f"model (32x32), `--schedule {s['schedule']} --max-batch {s['max_batch']} --batch-window-ms {s['batch_window_ms']} --max-queue "
           f"{s['max_queue']} --cache-mib {s['cache_mib']}`; {s['clients']} clients, knobs {r['knobs']}, "
           f"{s['image_size']}x{s['image_size']} random images.", ""]
    out += ["| round | s | transfers ok | transfers/s | kind | n | p50 ms | p95 ms | p99 ms |", "|---|---|---|---|---|---|---|---|---|"]
    for i, rd in enumerate(r["rounds"], 1):
        for j, (kind, l) in enumerate(rd["latency_ms"].items()):
            head = f"| {i} | {rd['seconds']} | {rd['transfers_ok']} | {rd['transfers_per_s']} |" if j == 0 else "| | | | |"
            out.append(f"{head} {kind} | {l['n']} | {l['p50']} | {l['p95']} | {l['p99']} |")
    out += ["", "Answers by kind and status: " + "; ".join(
        f"round {i}: " + ", ".join(f"{k}: {v}" for k, v in rd["by_status"].items()) for i, rd in enumerate(r["rounds"], 1))]
    out += ["", "Batches the server ran (transfers, size: count): " + ", ".join(
        f"{k}: {v}" for k, v in r["server_batches_transfer"].items())]
    c = r["cache"]
    out += ["", f"Inversion cache at the end: {int(c.get('hits_total', 0))} hits, {int(c.get('misses_total', 0))} misses, "
                f"{int(c.get('evictions_total', 0))} evictions, {int(c.get('entries', 0))} entries, "
                f"{c.get('bytes', 0) / 1048576:.1f} of {c.get('capacity_bytes', 0) / 1048576:.0f} MiB."]
    h = r["healthz"]
    out += ["", f"/healthz during the load: {h['ok']}/{h['polls']} answered 200, p99 {h['p99_ms']} ms, max {h['max_ms']} ms."]
    out += ["", "Faults (what came back): " + "; ".join(f"{n}: {res}" for n, res in r["faults"])]
    out += ["", "Server resident memory (MiB): " + ", ".join(f"{k} {v}" for k, v in r["rss_mib"].items())
            + f"; exit code after SIGTERM: {r['exit_code_after_sigterm']}."]
    so = r["solo"]
    if so["n"]:
        out += ["", f"One client alone ({so['n']} requests in a row, fresh content, cached style by id): "
                    f"p50 {so['p50_ms']} ms, max {so['max_ms']} ms."]
    if r.get("cli_baseline"):
        b = r["cli_baseline"]
        out += ["", f"Baseline, one `diffstyle transfer` process per request ({b['n']} in a row, same knobs, a fresh "
                    f"content and the style as a file each time): {b['transfers_per_s']} transfers/s, "
                    f"p50 {b['p50_ms']} ms, p95 {b['p95_ms']} ms."]
    return "\n".join(out)


if __name__ == "__main__":
    main()
