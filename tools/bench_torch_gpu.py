#!/usr/bin/env python3
"""PyTorch baselines for `diffstyle bench` (GPU; also runs on the CPU for testing).

Same safetensors weights, same method settings, same inputs as our bench (read from
OURS_DIR/ours.json, written by `diffstyle --device cuda bench --out-dir OURS_DIR`).

Baselines (`impl`):
  eager_f32    the authors' style: float32 eager PyTorch with PyTorch's default TF32
               settings (torch.backends.cudnn.allow_tf32 left at its default True, the
               matmul setting left at its default); cudnn.benchmark left at its default.
  eager_f16    float16 weights and activations, channels-last, eager.
  compile_f16  eager_f16's model under torch.compile(mode="max-autotune", dynamic=False)
               (one compilation per batch size; compile_s says how long it took).
In the f16 baselines only the U-Net runs in float16: its input is cast to f16, eps is
cast back to f32, and the latents, the DDIM arithmetic and the h-space mix stay f32 (the
h mix in f32, then cast to f16 for the decoder), as in our engine.

Measured:
  forward     ms per U-Net forward (UNet2DModel.forward: encoder + decoder) at each
              --batches size, timestep = our bench's t: --warmup calls, then CUDA-event
              timing of each call, calls rotating among 4 input sets, until >= --min-runs
              calls and >= --min-secs; "ms" = median, "ms_min" = minimum. peak_mem_bytes
              = torch.cuda.max_memory_allocated over the timed calls (weights included;
              one baseline is on the device at a time).
  pair        seconds per content/style pair for eager_f32 and eager_f16, per preset
              (in-domain: gamma 0.3, t_edit 400, inv 50, gen 1000, replace 50,
              t_boost 200, dt_lambda 1, dt_end 950, omega 0, seed 1234; fast: gen 50):
              both inversions + generation, synchronised before and after, wall clock,
              median of --pair-repeats runs after one short untimed warm-up pair. The
              method is tools/dsref's (invert, mix, Coeffs, ddim_step, seq, alpha_bar
              table) over a device-side SplitUNet; the eta = 1 noise (dsref.rng, bit-equal
              to ours) is drawn on the host and moved to the device before the clock starts.
              The pair starts from OUR preprocessed inputs (content_x0.f32, style_x0.f32).
  throughput  pairs per second for eager_f16 with --throughput pairs packed in one
              batch (the same pair repeated; the same noise for every sample, as ours), fast preset.
  ceilings    bf16_matmul_tflops: torch.matmul of two random 8192 x 8192 bf16 matrices,
              2 * 8192^3 FLOP over the median of >= 10 timed calls after 3 warm-ups;
              copy_tb_s: dst.copy_(src) of a 1 GiB device buffer, (bytes read + bytes
              written) = 2 GiB over the median of >= 10 timed calls.

PSNR (every psnr_vs_ours value), in dB: 10 log10(peak^2 / mse) where mse is the mean
squared difference of the two tensors and peak = max - min of the REFERENCE tensor, i.e.
of ours (our eps of that precision for the forward; for the uint8 pair images the
reference peak is fixed at 255). inf when the tensors are equal.
  forward: eps of the baseline on our x (x_b1.f32) at our t against our eps of each of
           our precisions (eps_<precision>_b1.f32). For batch B > 1 the batch holds our
           x as sample 0 (the others are random) and sample 0 of the output is compared.
  pair:    the baseline's uint8 image (((x + 1) * 0.5) * 255 + 0.5, clamped to
           [0, 255], truncated; NaN -> 0; computed in f32 as ours) against our PNG of the
           same preset, per precision. Throughput rows compare their sample 0.

Output (--out): {"torch_version", "gpu", "forward": [{"impl", "batch", "ms", "ms_min",
"runs", "peak_mem_bytes", "psnr_vs_ours": {"f32", "bf16", "f16"}}], "pair": [{"impl",
"preset", "s", "psnr_vs_ours"}], "throughput": [{"impl", "batch", "preset",
"pairs_per_s"}], "ceilings": {"bf16_matmul_tflops", "copy_tb_s"}} plus details
(settings, model, compile_s, the pair runs, per-row peak memory, resident_bytes_before = what
was allocated on the device once the baseline's model was there, i.e. its weights). A baseline that fails is
recorded as {"impl", ..., "error": "..."} and the others go on; the file is rewritten
after every measurement, so a run cut short keeps what it measured.

--device cpu (for testing on a machine without a GPU): perf_counter timing instead of
CUDA events, small ceilings (512^3 matmul, 64 MiB copy), and by default only eager_f32
(f16 and compile are skipped with a printed reason unless named in --impls), batches 1,2,
the fast preset and throughput 2.

Models (--model): a diffusers UNet2DModel folder (config.json +
diffusion_pytorch_model.safetensors; a pipeline folder with unet/ works too; the schedule
from scheduler_config.json when there is one, else DDPM linear 1e-4..0.02), or a single
.safetensors with diffusers' key names (as `diffstyle random-model --arch ddpm-256`
writes) together with --arch ddpm-256 (google/ddpm-celebahq-256's configuration, see
tools/bench_torch_cpu.py DDPM256_CONFIG) or --config CONFIG.json (a UNet2DModel
config.json); the state dict is loaded strictly.

Usage:
  python3 tools/bench_torch_gpu.py --model M [--arch ddpm-256] --ours OURS_DIR --out torch.json
      [--batches 1,4,16] [--pairs in-domain,fast] [--throughput 8,32] [--min-secs 2]
      [--impls eager_f32,eager_f16,compile_f16] [--device cuda]
  python3 tools/bench_torch_gpu.py --model M --make-fake-ours DIR [--pairs fast]
      # a stand-in OURS_DIR computed by this script on the CPU (f32 and bf16-rounded
      # weights, f32 arithmetic), for testing this script and bench_report.py
On the GPU machine, diffusers comes from target/wheels (tools/fetch_wheels.sh --install);
when it is not installed, target/wheels/site (the unzipped wheels) is put on sys.path.
"""

import argparse
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))

try:
    import diffusers  # noqa: F401
except ImportError:
    site = os.path.join(ROOT, "target", "wheels", "site")
    if os.path.isdir(site):
        sys.path.insert(0, site)
from diffusers import UNet2DModel  # noqa: E402
from diffusers.utils import logging as _dlog  # noqa: E402

_dlog.set_verbosity_error()  # not its "modules that should be kept in float32: []" note on .half()

from dsref import method as dm  # noqa: E402
from dsref import rng as drng  # noqa: E402
from dsref.schedule import alpha_bar_table, seq  # noqa: E402
from dsref.unet import SplitUNet  # noqa: E402

# google/ddpm-celebahq-256's UNet2DModel configuration (kept equal to
# tools/bench_torch_cpu.py's DDPM256_CONFIG; not imported from there because that file
# also needs DDPMScheduler at import time).
DDPM256_CONFIG = dict(
    sample_size=256,
    in_channels=3,
    out_channels=3,
    block_out_channels=(128, 128, 256, 256, 512, 512),
    layers_per_block=2,
    down_block_types=("DownBlock2D",) * 4 + ("AttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "AttnUpBlock2D") + ("UpBlock2D",) * 4,
    attention_head_dim=None,
    norm_eps=1e-6,
    norm_num_groups=32,
    downsample_padding=0,
    flip_sin_to_cos=False,
    freq_shift=1,
    act_fn="silu",
    center_input_sample=False,
    time_embedding_type="positional",
    mid_block_scale_factor=1,
)
ARCHS = {"ddpm-256": DDPM256_CONFIG}
DDPM_BETAS = (1e-4, 0.02, 1000)

# src/diffusion/method.rs Preset::settings
IN_DOMAIN = dict(gamma=0.3, t_edit=400, inv_steps=50, gen_steps=1000, replace_steps=50,
                 t_boost=200, dt_lambda=1.0, dt_end=950, omega=0.0, seed=1234)
PRESETS = {"in-domain": IN_DOMAIN, "fast": dict(IN_DOMAIN, gen_steps=50)}
# The untimed warm-up pair before timed pairs: every code path (inversion, injection with
# and without mixing, noisy steps) in a few steps.
WARMUP_PAIR = dict(IN_DOMAIN, inv_steps=3, gen_steps=6, replace_steps=6)

IMPLS = ("eager_f32", "eager_f16", "compile_f16")
PAIR_IMPLS = ("eager_f32", "eager_f16")
THROUGHPUT_IMPL = "eager_f16"
N_INPUT_SETS = 4


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- model


def _linear_schedule_from(path):
    """(beta_start, beta_end, n) from a diffusers scheduler_config.json, or None."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        c = json.load(f)
    if c.get("trained_betas") is not None or c.get("beta_schedule", "linear") != "linear":
        raise SystemExit(f"{path}: only the linear beta schedule is supported")
    return (float(c.get("beta_start", 1e-4)), float(c.get("beta_end", 0.02)),
            int(c.get("num_train_timesteps", 1000)))


def _config_kwargs(path):
    with open(path) as f:
        c = json.load(f)
    return {k: v for k, v in c.items() if not k.startswith("_")}


def load_model(path, arch=None, config=None):
    """(UNet2DModel in f32 on the CPU, eval mode; betas (start, end, n); description)."""
    if os.path.isdir(path):
        folder = path
        if os.path.isfile(os.path.join(path, "model_index.json")) and os.path.isdir(os.path.join(path, "unet")):
            folder = os.path.join(path, "unet")
        model = UNet2DModel.from_pretrained(folder, torch_dtype=torch.float32, low_cpu_mem_usage=False)
        betas = (_linear_schedule_from(os.path.join(folder, "scheduler_config.json"))
                 or _linear_schedule_from(os.path.join(os.path.dirname(folder.rstrip("/")), "scheduler",
                                                       "scheduler_config.json"))
                 or DDPM_BETAS)
        return model.eval(), betas, f"diffusers folder {folder}"
    if not path.endswith(".safetensors"):
        raise SystemExit(f"--model {path}: neither a folder nor a .safetensors file")
    if (arch is None) == (config is None):
        raise SystemExit("a single .safetensors file needs exactly one of --arch / --config")
    from safetensors.torch import load_file

    if arch is not None:
        cfg, betas, what = ARCHS[arch], DDPM_BETAS, f"--arch {arch}"
    else:
        cfg = _config_kwargs(config)
        betas = _linear_schedule_from(os.path.join(os.path.dirname(os.path.abspath(config)),
                                                   "scheduler_config.json")) or DDPM_BETAS
        what = f"--config {config}"
    sd = {k: v.float() for k, v in load_file(path).items()}
    with torch.device("meta"):
        model = UNet2DModel(**cfg)
    model.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if left:
        raise SystemExit(f"{path}: not loaded: {left[:5]}")
    return model.eval(), betas, f"{path} ({what})"


class DeviceSplitUNet(SplitUNet):
    """dsref's SplitUNet with the timestep on the model's device, the input cast to the
    model's dtype (channels-last if asked) and eps returned in float32. h and the skips
    stay in the model's dtype."""

    def __init__(self, model, channels_last=False):
        super().__init__(model)
        self.device = next(model.parameters()).device
        self.channels_last = channels_last

    def temb(self, t, batch):
        m = self.m
        ts = torch.full((batch,), float(t), dtype=torch.float32, device=self.device)
        return m.time_embedding(m.time_proj(ts).to(self.dtype))

    def encode(self, x, t):
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return super().encode(x, t)

    def decode(self, h, skips, emb):
        return super().decode(h, skips, emb).float()


def build_impl(impl, cpu_model, device):
    """(module for the forward, DeviceSplitUNet for the method, input dtype, channels_last)."""
    if impl == "eager_f32":
        m = copy.deepcopy(cpu_model).to(device)
        return m, DeviceSplitUNet(m), torch.float32, False
    if impl in ("eager_f16", "compile_f16"):
        m = copy.deepcopy(cpu_model).to(device=device, dtype=torch.float16).to(memory_format=torch.channels_last)
        fwd = m
        if impl == "compile_f16":
            fwd = torch.compile(m, mode="max-autotune", dynamic=False)
        return fwd, DeviceSplitUNet(m, channels_last=True), torch.float16, True
    raise ValueError(impl)


def count_gflop(model):
    """(encoder, decoder) GFLOP of one batch-1 forward by torch.utils.flop_counter
    (convolutions, matmuls, attention; multiply-add = 2), on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).to("meta")
    s = m.config.sample_size
    net = DeviceSplitUNet(m)
    x = torch.empty(1, m.config.in_channels, s, s, device="meta")
    with torch.no_grad():
        with FlopCounterMode(display=False) as fc:
            h, skips, emb = net.encode(x, 500)
        enc = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            net.decode(h, skips, emb)
        dec = fc.get_total_flops()
    return enc / 1e9, dec / 1e9


# ----------------------------------------------------------------------------- helpers


def psnr(x, ref, peak=None):
    """10 log10(peak^2 / mse); peak = max - min of the reference unless given."""
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if x.shape != ref.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {ref.shape}")
    if peak is None:
        peak = float(ref.max() - ref.min())
    mse = float(np.mean((x - ref) ** 2))
    if not math.isfinite(mse):
        return None
    if mse == 0:
        return math.inf
    return 10 * math.log10(peak * peak / mse)


def jnum(v, nd=4):
    """A JSON-safe rounded number (inf -> "inf", None stays None)."""
    if v is None:
        return None
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return round(float(v), nd)


def read_f32(path, size):
    a = np.fromfile(path, dtype="<f4")
    c = a.size // (size * size)
    if c * size * size != a.size:
        raise ValueError(f"{path}: {a.size} values is not N x {size} x {size}")
    return a.reshape(1, c, size, size)


def read_png(path):
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"), dtype=np.uint8)


def to_u8(x):
    """[B, 3, S, S] model space -> [B, S, S, 3] uint8 like ours (src/io/image.rs
    model_to_u8): trunc(clamp(((x + 1) * 0.5) * 255 + 0.5, 0, 255)), NaN -> 0, in f32."""
    u = ((x.float() + 1.0) * 0.5) * 255.0 + 0.5
    u = torch.nan_to_num(u, nan=0.0).clamp(0.0, 255.0)
    return u.to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def device_name(device):
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{p.name} (sm_{p.major}{p.minor})"
    return f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mem(device):
    return int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None


def free(device):
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def time_calls(fn, args_list, device, warmup, min_runs, min_secs):
    """Per-call times in ms: CUDA events around each call (rotating through args_list),
    host clock on the CPU. Returns (times, peak memory over the timed calls)."""
    with torch.no_grad():
        for k in range(warmup):
            fn(*args_list[k % len(args_list)])
        sync(device)
        reset_peak(device)
        times = []
        t_start = time.perf_counter()
        k = 0
        if device.type == "cuda":
            while True:
                evs = []
                for _ in range(10):
                    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    a.record()
                    fn(*args_list[k % len(args_list)])
                    b.record()
                    evs.append((a, b))
                    k += 1
                torch.cuda.synchronize(device)
                times += [a.elapsed_time(b) for a, b in evs]
                if len(times) >= min_runs and time.perf_counter() - t_start >= min_secs:
                    break
        else:
            while len(times) < min_runs or time.perf_counter() - t_start < min_secs:
                t0 = time.perf_counter()
                fn(*args_list[k % len(args_list)])
                times.append((time.perf_counter() - t0) * 1e3)
                k += 1
        return times, peak_mem(device)


# ----------------------------------------------------------------------------- method


def make_settings(d):
    return dm.Settings(**d)


def eta_noise(st, batch, shape, device):
    """{i: z} for every step that draws noise (injection-capable with eta = 1), drawn by
    dsref.rng (= ours) on the host, moved to the device."""
    s = seq(st.gen_steps)
    replace = set(seq(st.replace_steps)) if st.replace_steps not in (0, -1) else set(s)
    per = tuple(shape[1:])
    out = {}
    for i in s:
        if i in replace and i <= st.t_boost:
            # Every sample draws counter 0: ours does not make the noise depend on a
            # pair's place in the batch.
            z = np.stack([_sample_noise(st.seed, i, 0, per)] * batch)
            out[i] = torch.from_numpy(z).to(device)
    return out


_NOISE = {}


def _sample_noise(seed, stream, sample, per):
    """Sample `sample`'s noise of one step (= dsref.rng.noise_like's row), cached: the
    throughput batches share their first samples and the host time is device time."""
    key = (seed, stream, sample, per)
    if key not in _NOISE:
        _NOISE[key] = drng.gaussian(seed, stream, sample, int(np.prod(per))).reshape(per)
    return _NOISE[key]


@torch.no_grad()
def generate(net, table, style_xT, content_h, st, noise):
    """dsref.method.generate (omega = 0, no mask) with the latents in f32 on the device,
    the h mix in f32 and the eta = 1 noise taken from `noise`."""
    if st.omega != 0 or st.mask is not None:
        raise NotImplementedError("the baselines cover omega = 0 without a mask (the presets)")
    s = seq(st.gen_steps)
    nxt = [-1] + s[:-1]
    replace = set(seq(st.replace_steps)) if st.replace_steps not in (0, -1) else set(s)
    keys = sorted(content_h.keys())
    x = style_xT.clone()
    for i, j in zip(reversed(s), reversed(nxt)):
        co = dm.Coeffs(table, i, j, torch.float32)
        if i not in replace:
            eps, _ = net.eps(x, i)
            x = co.sqrt_an * co.x0(x, eps) + co.sqrt_1man * eps
            continue
        h, skips, emb = net.encode(x, i)
        eps = net.decode(h, skips, emb)
        if i >= st.t_edit:
            hc = content_h[dm.closest_key(keys, i)]
            hm = dm.mix(h.float(), hc.float(), st.gamma, None).to(h.dtype)
            eps_m = net.decode(hm, skips, emb)
        else:
            eps_m = eps
        eta = 0 if i > st.t_boost else 1
        x0_pred = co.x0(x, eps_m)
        x_new = dm.ddim_step(co, x0_pred, eps, eta, lambda: noise[i])
        if st.dt_lambda != 1 and i >= st.dt_end:
            x_new = co.sqrt_an * x0_pred + co.sqrt_1man * eps * st.dt_lambda
        x = x_new
    return x


@torch.no_grad()
def run_pair(net, table, content, style, st, noise):
    """Both inversions + generation; returns the final latent (f32)."""
    _, content_h = dm.invert(net, table, content, st.inv_steps)
    style_xT, _ = dm.invert(net, table, style, st.inv_steps)
    return generate(net, table, style_xT, content_h, st, noise)


def timed_pair(net, table, content, style, st_dict, batch, device, repeats):
    """(median seconds, all seconds, last uint8 images, peak memory)."""
    c = content.expand(batch, -1, -1, -1).contiguous()
    s = style.expand(batch, -1, -1, -1).contiguous()
    wst = make_settings(WARMUP_PAIR)
    run_pair(net, table, c, s, wst, eta_noise(wst, batch, c.shape, device))
    st = make_settings(st_dict)
    noise = eta_noise(st, batch, c.shape, device)
    sync(device)
    reset_peak(device)
    secs = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        x = run_pair(net, table, c, s, st, noise)
        sync(device)
        secs.append(time.perf_counter() - t0)
    return statistics.median(secs), secs, to_u8(x), peak_mem(device)


# ----------------------------------------------------------------------------- ceilings


def measure_ceilings(device, n, copy_bytes, reps=10):
    out = {}
    g = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=g, device=device, dtype=torch.float32).to(torch.bfloat16)
    b = torch.randn(n, n, generator=g, device=device, dtype=torch.float32).to(torch.bfloat16)
    times, _ = time_calls(lambda: torch.matmul(a, b), [()], device, 3, reps, 0.0)
    ms = statistics.median(times)
    out["bf16_matmul_tflops"] = round(2.0 * n ** 3 / (ms * 1e-3) / 1e12, 3)
    out["matmul_n"] = n
    out["matmul_ms"] = round(ms, 4)
    out["matmul_runs"] = len(times)
    del a, b
    src = torch.empty(copy_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    times, _ = time_calls(lambda: dst.copy_(src), [()], device, 3, reps, 0.0)
    ms = statistics.median(times)
    moved = 2 * src.numel() * src.element_size()
    out["copy_tb_s"] = round(moved / (ms * 1e-3) / 1e12, 4)
    out["copy_bytes_read_plus_written"] = moved
    out["copy_ms"] = round(ms, 4)
    out["copy_runs"] = len(times)
    del src, dst
    free(device)
    return out


# ----------------------------------------------------------------------------- ours


class Ours:
    """OURS_DIR/ours.json and the files it names."""

    def __init__(self, folder):
        self.dir = folder
        with open(os.path.join(folder, "ours.json")) as f:
            self.j = json.load(f)
        inp = self.j.get("inputs", {})
        self.size = int(inp.get("size") or self.j.get("model", {}).get("sample_size"))
        self.t = int(inp.get("t", 500))
        self.x = read_f32(self._p(inp["x"]), self.size) if inp.get("x") else None
        self.eps = {p: read_f32(self._p(f), self.size) for p, f in (inp.get("eps") or {}).items()}
        self.content = read_f32(self._p(inp["content"]), self.size) if inp.get("content") else None
        self.style = read_f32(self._p(inp["style"]), self.size) if inp.get("style") else None

    def _p(self, name):
        return os.path.join(self.dir, name)

    def pair_images(self, preset):
        """{precision: uint8 [S, S, 3]} of our pair PNGs for `preset`."""
        out = {}
        for r in self.j.get("pair") or []:
            if r.get("preset") == preset and r.get("image"):
                p = self._p(r["image"])
                if os.path.isfile(p):
                    out[r["precision"]] = read_png(p)
        return out


# ----------------------------------------------------------------------------- bench


class Bench:
    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.res = {
            "torch_version": torch.__version__,
            "gpu": device_name(self.device),
            "device": args.device,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
            "settings": self._settings(),
            "forward": [],
            "pair": [],
            "throughput": [],
            "ceilings": {},
            "skipped": [],
        }

    def _settings(self):
        # Read only (never set): PyTorch's defaults are the baselines' settings.
        probes = {
            "cudnn_allow_tf32": lambda: torch.backends.cudnn.allow_tf32,
            "cudnn_benchmark": lambda: torch.backends.cudnn.benchmark,
            "matmul_allow_tf32": lambda: torch.backends.cuda.matmul.allow_tf32,
            "float32_matmul_precision": torch.get_float32_matmul_precision,
            "cudnn_conv_fp32_precision": lambda: torch.backends.cudnn.conv.fp32_precision,
            "matmul_fp32_precision": lambda: torch.backends.cuda.matmul.fp32_precision,
            "threads": torch.get_num_threads,
        }
        s = {}
        for k, f in probes.items():
            try:
                s[k] = f()
            except Exception:  # noqa: BLE001  (an API this torch lacks)
                pass
        if self.cuda:
            s["cuda"] = torch.version.cuda
            s["cudnn"] = torch.backends.cudnn.version()
        return s

    def save(self):
        tmp = self.args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.res, f, indent=1)
        os.replace(tmp, self.args.out)

    def skip(self, what, why):
        log(f"skipped {what}: {why}")
        self.res["skipped"].append({"what": what, "why": why})

    # forward -------------------------------------------------------------------------

    def forward_rows(self, impl, fwd, in_dtype, channels_last, ours):
        a = self.args
        size = ours.size if ours is not None else self.sample_size
        in_ch = self.in_channels
        t = ours.t if ours is not None else 500
        for batch in a.compile_batches if impl == "compile_f16" else a.batches:
            row = {"impl": impl, "batch": batch}
            try:
                g = torch.Generator().manual_seed(1000 + batch)
                sets = []
                for _ in range(N_INPUT_SETS):
                    x = torch.randn(batch, in_ch, size, size, generator=g).to(self.device, in_dtype)
                    if channels_last:
                        x = x.contiguous(memory_format=torch.channels_last)
                    ts = torch.full((batch,), float(t), dtype=torch.float32, device=self.device)
                    sets.append((x, ts))

                def call(x, ts):
                    return fwd(x, ts).sample

                t0 = time.perf_counter()
                with torch.no_grad():
                    call(*sets[0])
                sync(self.device)
                first_s = time.perf_counter() - t0
                times, peak = time_calls(call, sets, self.device, a.warmup, a.min_runs, a.min_secs)
                row.update(ms=round(statistics.median(times), 4), ms_min=round(min(times), 4),
                           runs=len(times), peak_mem_bytes=peak, resident_bytes_before=self.resident)
                if impl == "compile_f16":
                    row["compile_s"] = round(first_s, 2)
                row["psnr_vs_ours"] = self.forward_psnr(call, sets[0], in_dtype, channels_last, ours)
                del sets
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"
                log(f"forward {impl} b{batch} failed:\n{traceback.format_exc()}")
            self.res["forward"].append(row)
            self.save()
            log(f"forward {impl} b{batch}: {row.get('ms', row.get('error'))} ms, "
                f"psnr {row.get('psnr_vs_ours')}, peak {row.get('peak_mem_bytes')}")

    def forward_psnr(self, call, xs, in_dtype, channels_last, ours):
        if ours is None or ours.x is None or not ours.eps:
            return {}
        x, ts = xs
        x = x.clone()
        x[0:1] = torch.from_numpy(ours.x).to(self.device, in_dtype)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.no_grad():
            eps = call(x, ts)[0:1].float().cpu().numpy()
        return {p: jnum(psnr(eps[:, : e.shape[1]], e), 3) for p, e in ours.eps.items()}

    # pair ----------------------------------------------------------------------------

    def pair_rows(self, impl, net, ours):
        a = self.args
        if ours is None or ours.content is None or ours.style is None:
            self.skip(f"pair {impl}", "ours.json names no content/style inputs")
            return
        content = torch.from_numpy(ours.content).to(self.device)
        style = torch.from_numpy(ours.style).to(self.device)
        for preset in a.pairs:
            row = {"impl": impl, "preset": preset}
            try:
                s, secs, img, peak = timed_pair(net, self.table, content, style, PRESETS[preset], 1,
                                                self.device, a.pair_repeats)
                row.update(s=round(s, 4), runs=[round(v, 4) for v in secs], peak_mem_bytes=peak)
                row["psnr_vs_ours"] = {p: jnum(psnr(img[0], ref, 255.0), 3)
                                       for p, ref in ours.pair_images(preset).items()}
                if a.save_images:
                    from PIL import Image

                    Image.fromarray(img[0]).save(os.path.join(a.save_images, f"torch_{impl}_{preset}.png"))
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"
                log(f"pair {impl} {preset} failed:\n{traceback.format_exc()}")
            self.res["pair"].append(row)
            self.save()
            log(f"pair {impl} {preset}: {row.get('s', row.get('error'))} s, psnr {row.get('psnr_vs_ours')}")

    def throughput_rows(self, impl, net, ours):
        a = self.args
        if ours is None or ours.content is None or ours.style is None:
            self.skip(f"throughput {impl}", "ours.json names no content/style inputs")
            return
        content = torch.from_numpy(ours.content).to(self.device)
        style = torch.from_numpy(ours.style).to(self.device)
        preset = a.throughput_preset
        for batch in a.throughput:
            row = {"impl": impl, "batch": batch, "preset": preset}
            try:
                s, secs, img, peak = timed_pair(net, self.table, content, style, PRESETS[preset], batch,
                                                self.device, a.pair_repeats)
                row.update(pairs_per_s=round(batch / s, 4), s=round(s, 4), peak_mem_bytes=peak)
                row["psnr_vs_ours"] = {p: jnum(psnr(img[0], ref, 255.0), 3)
                                       for p, ref in ours.pair_images(preset).items()}
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"
                log(f"throughput {impl} b{batch} failed:\n{traceback.format_exc()}")
            self.res["throughput"].append(row)
            self.save()
            log(f"throughput {impl} b{batch} ({preset}): {row.get('pairs_per_s', row.get('error'))} pairs/s")

    # all -----------------------------------------------------------------------------

    def run(self):
        a = self.args
        ours = Ours(a.ours) if a.ours else None
        model, betas, what = load_model(a.model, a.arch, a.config)
        self.table = alpha_bar_table(*betas)
        self.sample_size = model.config.sample_size
        self.in_channels = model.config.in_channels
        params = sum(p.numel() for p in model.parameters())
        self.res["model"] = {"source": what, "params": params, "sample_size": self.sample_size,
                             "betas": list(betas)}
        try:
            enc, dec = count_gflop(model)
            self.res["model"].update(gflop_forward_counted=round(enc + dec, 3), gflop_encoder_counted=round(enc, 3),
                                     gflop_decoder_counted=round(dec, 3),
                                     gflop_counter="torch.utils.flop_counter, multiply-add = 2, batch 1")
        except Exception as e:  # noqa: BLE001
            log(f"flop count failed: {e}")
        if ours is not None and ours.size != self.sample_size:
            raise SystemExit(f"ours.json size {ours.size} != the model's sample_size {self.sample_size}")
        log(f"model {what}: {params} parameters; device {self.res['gpu']}; torch {torch.__version__}")
        self.save()

        if a.ceilings:
            try:
                n, cb = (a.matmul_n, 1 << 30) if self.cuda else (min(a.matmul_n, 512), 64 << 20)
                self.res["ceilings"] = measure_ceilings(self.device, n, cb)
            except Exception as e:  # noqa: BLE001
                self.res["ceilings"] = {"error": f"{type(e).__name__}: {e}"}
            self.save()
            log(f"ceilings: {self.res['ceilings']}")

        for impl in a.impls:
            if not self.cuda and impl not in a.explicit_impls and impl != "eager_f32":
                self.skip(impl, "--device cpu: f16 and torch.compile are GPU baselines (name it in --impls to force)")
                continue
            try:
                fwd, net, in_dtype, cl = build_impl(impl, model, self.device)
            except Exception as e:  # noqa: BLE001
                self.res["forward"].append({"impl": impl, "error": f"{type(e).__name__}: {e}"})
                log(f"{impl}: build failed:\n{traceback.format_exc()}")
                continue
            self.resident = int(torch.cuda.memory_allocated(self.device)) if self.cuda else None
            self.forward_rows(impl, fwd, in_dtype, cl, ours)
            if impl in PAIR_IMPLS and a.pairs:
                self.pair_rows(impl, net, ours)
            if impl == THROUGHPUT_IMPL and a.throughput:
                self.throughput_rows(impl, net, ours)
            del fwd, net
            free(self.device)
        self.res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.save()
        self.table_print()

    def table_print(self):
        r = self.res
        print(f"\n{r['gpu']}, torch {r['torch_version']}")
        print(f"{'impl':<12} {'batch':>5} {'ms':>10} {'ms_min':>10} {'runs':>5} {'peak MiB':>9}  psnr vs ours (dB)")
        for x in r["forward"]:
            if "error" in x:
                print(f"{x['impl']:<12} {x.get('batch', ''):>5}  error: {x['error'][:80]}")
                continue
            pm = f"{x['peak_mem_bytes'] / 2**20:.0f}" if x.get("peak_mem_bytes") else "-"
            print(f"{x['impl']:<12} {x['batch']:>5} {x['ms']:>10.3f} {x['ms_min']:>10.3f} {x['runs']:>5} {pm:>9}  "
                  f"{x.get('psnr_vs_ours')}")
        for x in r["pair"]:
            print(f"pair {x['impl']:<12} {x['preset']:<10} " +
                  (f"{x['s']:.3f} s  psnr {x.get('psnr_vs_ours')}" if "s" in x else f"error: {x['error'][:80]}"))
        for x in r["throughput"]:
            print(f"throughput {x['impl']:<12} b{x['batch']:<3} {x['preset']:<10} " +
                  (f"{x['pairs_per_s']:.3f} pairs/s  psnr {x.get('psnr_vs_ours')}" if "pairs_per_s" in x
                   else f"error: {x['error'][:80]}"))
        if r["ceilings"]:
            c = r["ceilings"]
            print(f"ceilings: bf16 matmul {c.get('bf16_matmul_tflops')} TFLOP/s (n {c.get('matmul_n')}), "
                  f"copy {c.get('copy_tb_s')} TB/s")
        for s in r["skipped"]:
            print(f"skipped {s['what']}: {s['why']}")


# ----------------------------------------------------------------------------- fake ours


def make_fake_ours(args):
    """A stand-in OURS_DIR (CPU, f32 arithmetic; 'bf16' = weights rounded to bf16)."""
    out = args.make_fake_ours
    os.makedirs(out, exist_ok=True)
    model, betas, what = load_model(args.model, args.arch, args.config)
    table = alpha_bar_table(*betas)
    size, in_ch = model.config.sample_size, model.config.in_channels
    genc, gdec = count_gflop(model)
    precs = {"f32": model}
    m16 = copy.deepcopy(model)
    with torch.no_grad():
        for p in m16.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    precs["bf16"] = m16
    g = torch.Generator().manual_seed(7)
    x = torch.randn(1, in_ch, size, size, generator=g)
    x.numpy().astype("<f4").tofile(os.path.join(out, "x_b1.f32"))
    t = 500
    inputs = {"t": t, "x": "x_b1.f32", "eps": {}, "content": "content_x0.f32", "style": "style_x0.f32",
              "size": size}
    fwd_rows, pair_rows, thr_rows, peak = [], [], [], {}
    for p, m in precs.items():
        ts = torch.full((1,), float(t))
        with torch.no_grad():
            eps = m(x, ts).sample
        eps.numpy().astype("<f4").tofile(os.path.join(out, f"eps_{p}_b1.f32"))
        inputs["eps"][p] = f"eps_{p}_b1.f32"
        times, _ = time_calls(lambda: m(x, ts), [()], torch.device("cpu"), 1, 3, 0.0)
        ms = statistics.median(times)
        fwd_rows.append({"precision": p, "batch": 1, "ms": round(ms, 3), "ms_min": round(min(times), 3),
                         "ms_max": round(max(times), 3), "runs": len(times),
                         "tflops": round((genc + gdec) / ms, 6)})
        peak[p] = (4 if p == "f32" else 2) * sum(q.numel() for q in m.parameters()) + (64 << 20)
    # content / style: the method fixtures' images when the size fits, else smooth noise.
    fx = os.path.join(ROOT, "tests", "fixtures", "method", "defaults")
    from dsref.imageio import load_image

    imgs = {}
    for name in ("content", "style"):
        png = os.path.join(fx, f"{name}.png")
        try:
            imgs[name] = load_image(png, size)
        except AssertionError:
            small = torch.rand(1, 3, 4, 4, generator=g) * 2 - 1
            imgs[name] = torch.nn.functional.interpolate(small, size=(size, size), mode="bilinear")
        imgs[name].numpy().astype("<f4").tofile(os.path.join(out, f"{name}_x0.f32"))
    from PIL import Image

    for preset in args.pairs:
        for p, m in precs.items():
            net = DeviceSplitUNet(m)
            st = make_settings(PRESETS[preset])
            t0 = time.perf_counter()
            x0 = run_pair(net, table, imgs["content"], imgs["style"], st,
                          eta_noise(st, 1, imgs["content"].shape, torch.device("cpu")))
            s = time.perf_counter() - t0
            name = f"pair_{preset}_{p}.png"
            Image.fromarray(to_u8(x0)[0]).save(os.path.join(out, name))
            pair_rows.append({"precision": p, "preset": preset, "s": round(s, 4), "image": name})
            if preset == "fast":
                thr_rows.append({"precision": p, "preset": preset, "batch": 1, "pairs_per_s": round(1 / s, 4)})
            log(f"fake ours: pair {preset} {p}: {s:.2f} s")
    params = sum(q.numel() for q in model.parameters())
    j = {
        "device": f"fake: {device_name(torch.device('cpu'))}",
        "backend": "fake (tools/bench_torch_gpu.py --make-fake-ours; torch on the CPU)",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {"params": params, "gflop_forward": round(genc + gdec, 4), "gflop_encoder": round(genc, 4),
                  "gflop_decoder": round(gdec, 4),
                  "sample_size": size, "weights_bytes": {"f32": 4 * params, "bf16": 2 * params}},
        "forward": fwd_rows,
        "encoder": [dict(r, ms=round(r["ms"] * genc / (genc + gdec), 3)) for r in fwd_rows],
        "decoder": [dict(r, ms=round(r["ms"] * gdec / (genc + gdec), 3)) for r in fwd_rows],
        "pair": pair_rows,
        "throughput": thr_rows,
        "peak_mem_bytes": peak,
        "inputs": inputs,
        "fake_source": what,
    }
    with open(os.path.join(out, "ours.json"), "w") as f:
        json.dump(j, f, indent=1)
    log(f"wrote {out}/ours.json")


# ----------------------------------------------------------------------------- main


def csv_list(s, conv=str):
    return [conv(v.strip()) for v in s.split(",") if v.strip()] if s else []


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="diffusers folder, or a .safetensors with --arch/--config")
    ap.add_argument("--arch", choices=sorted(ARCHS), help="architecture of a single .safetensors file")
    ap.add_argument("--config", help="a UNet2DModel config.json for a single .safetensors file")
    ap.add_argument("--ours", help="our bench's output folder (ours.json and the files it names)")
    ap.add_argument("--out", default="torch.json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--impls", help=f"comma list of {','.join(IMPLS)} (default: all)")
    ap.add_argument("--batches", help="forward batch sizes (default 1,4,16; cpu 1,2)")
    ap.add_argument("--compile-batches", help="forward batch sizes for compile_f16, each one compilation of "
                                              "minutes (default: --batches)")
    ap.add_argument("--pairs", help="presets for the pair timing: in-domain,fast (default both; cpu fast); "
                                    "'none' for no pairs")
    ap.add_argument("--throughput", help="pairs per batch for eager_f16 throughput (default 8,32; cpu 2); "
                                         "'none' for none")
    ap.add_argument("--throughput-preset", default="fast", choices=sorted(PRESETS))
    ap.add_argument("--min-secs", type=float, help="minimum timed seconds per forward row (default 2; cpu 0.5)")
    ap.add_argument("--min-runs", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5, help="untimed forwards before timing (after the first)")
    ap.add_argument("--pair-repeats", type=int, default=1, help="timed runs per pair row (median)")
    ap.add_argument("--matmul-n", type=int, default=8192)
    ap.add_argument("--no-ceilings", dest="ceilings", action="store_false")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="set torch.backends.cudnn.benchmark (default: PyTorch's default, off)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--save-images", help="folder to write the baselines' pair images into")
    ap.add_argument("--make-fake-ours", metavar="DIR", help="write a stand-in OURS_DIR and exit")
    a = ap.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    cpu = torch.device(a.device).type == "cpu"
    none = lambda s: s is not None and s.strip().lower() == "none"  # noqa: E731
    a.pairs = [] if none(a.pairs) else csv_list(a.pairs or ("fast" if cpu else "in-domain,fast"))
    for p in a.pairs:
        if p not in PRESETS:
            raise SystemExit(f"unknown preset {p!r} ({', '.join(PRESETS)})")
    if a.make_fake_ours:
        make_fake_ours(a)
        return
    if not a.ours:
        log("no --ours: no PSNR, no pairs")
    if torch.device(a.device).type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch (use --device cpu to test)")
    a.explicit_impls = csv_list(a.impls) if a.impls else []
    a.impls = a.explicit_impls or list(IMPLS)
    for i in a.impls:
        if i not in IMPLS:
            raise SystemExit(f"unknown impl {i!r} ({', '.join(IMPLS)})")
    a.batches = csv_list(a.batches or ("1,2" if cpu else "1,4,16"), int)
    a.compile_batches = csv_list(a.compile_batches, int) if a.compile_batches else a.batches
    a.throughput = [] if none(a.throughput) else csv_list(a.throughput or ("2" if cpu else "8,32"), int)
    a.min_secs = a.min_secs if a.min_secs is not None else (0.5 if cpu else 2.0)
    if a.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if a.save_images:
        os.makedirs(a.save_images, exist_ok=True)
    Bench(a).run()


if __name__ == "__main__":
    main()
