#!/usr/bin/env python3
"""PyTorch CPU reference timings for the U-Net forward (compare with `cargo bench --bench forward`).

Models (batch 1, f32, 3 x S x S input, timestep 500):
  * tiny    -- the committed tests/fixtures/method/model (3 levels, 32x32);
  * ddpm256 -- a diffusers UNet2DModel with exactly google/ddpm-celebahq-256's
               configuration (113,673,219 parameters) and random weights
               (torch.manual_seed(0), diffusers' default init). Created once, with
               save_pretrained(safe_serialization=True), under DIR/ddpm256.

For each model and mode: torch.set_num_threads(N) (N = the cores available to this
process unless --threads), torch.no_grad(), warm-up, then forwards until at least
MIN_RUNS runs and at least --min-seconds have been timed; prints one JSON line
{"model", "mode", "torch_ms_median", "runs", "threads", "torch_version"}. Modes:
  * f32  -- the model and input in f32, default memory format;
  * bf16 -- the model and input converted to bf16 and channels_last (PyTorch's fast
            CPU inference path on CPUs with AMX or AVX512-BF16; oneDNN picks the kernels).
Model `conv3x3`: one torch.nn.functional.conv2d, 256 -> 256 channels at 64x64, padding 1
(the same probe as `cargo bench --bench forward -- conv3x3`).
--ceilings also prints {"ceiling": "f32"|"bf16", "gflops"}: torch.mm of two 2048 x 2048
matrices, the machine's practical matrix-multiply ceiling as a vendor library reaches it.

Usage:
  python3 tools/bench_torch_cpu.py [--dir /tmp/diffstyle-bench] [--models tiny,ddpm256]
                                   [--modes f32,bf16] [--ceilings]
  python3 tools/bench_torch_cpu.py --create-only     # only build DIR/ddpm256
Needs torch, diffusers, safetensors.
"""

import argparse
import json
import os
import statistics
import sys
import time

import torch
from diffusers import DDPMScheduler, UNet2DModel

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "tests", "fixtures", "method", "model")

# google/ddpm-celebahq-256's unet config (the keys that differ from diffusers'
# defaults are spelled out; the rest are diffusers' defaults, as in that repository).
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
DDPM256_PARAMS = 113_673_219
SEED = 0
TIMESTEP = 500


def cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def ddpm256_dir(base):
    return os.path.join(base, "ddpm256")


def is_complete(folder):
    return os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(
        os.path.join(folder, "diffusion_pytorch_model.safetensors")
    )


def create_ddpm256(base):
    """Builds DIR/ddpm256 once (random weights, fixed seed); returns its path."""
    folder = ddpm256_dir(base)
    if is_complete(folder):
        return folder
    os.makedirs(base, exist_ok=True)
    print(f"creating {folder} (random weights, seed {SEED}) ...", file=sys.stderr)
    torch.manual_seed(SEED)
    model = UNet2DModel(**DDPM256_CONFIG)
    n = sum(p.numel() for p in model.parameters())
    if n != DDPM256_PARAMS:
        raise SystemExit(f"ddpm256: {n} parameters, expected {DDPM256_PARAMS} (google/ddpm-celebahq-256)")
    # Write into a temporary folder and rename, so an interrupted run leaves no
    # half-written model behind.
    tmp = folder + f".tmp{os.getpid()}"
    model.save_pretrained(tmp, safe_serialization=True)
    # The DDPM linear schedule of google/ddpm-celebahq-256 (also the loader's default).
    DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear").save_pretrained(
        tmp
    )
    os.replace(tmp, folder)
    print(f"created {folder}: {n} parameters", file=sys.stderr)
    return folder


def time_forward(model, size, in_ch, min_runs, min_seconds, warmup, mode="f32"):
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(1, in_ch, size, size, generator=g, dtype=torch.float32)
    if mode == "bf16":
        model = model.to(dtype=torch.bfloat16, memory_format=torch.channels_last)
        x = x.to(dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    t = torch.tensor([TIMESTEP], dtype=torch.long)
    with torch.no_grad():
        for _ in range(warmup):
            eps = model(x, t).sample
        times = []
        start = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            eps = model(x, t).sample
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), len(times), float(eps.float().abs().max())


def time_conv(min_seconds, mode):
    """Median ms of one 3x3 conv, 256 -> 256 channels at 64x64, padding 1."""
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(1, 256, 64, 64, generator=g)
    w = torch.randn(256, 256, 3, 3, generator=g) * 0.05
    b = torch.randn(256, generator=g)
    if mode == "bf16":
        x = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        w = w.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        b = b.to(torch.bfloat16)
    with torch.no_grad():
        torch.nn.functional.conv2d(x, w, b, padding=1)
        times = []
        start = time.perf_counter()
        while len(times) < 5 or time.perf_counter() - start < min(min_seconds, 3.0):
            t0 = time.perf_counter()
            torch.nn.functional.conv2d(x, w, b, padding=1)
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), len(times)


def ceiling(dtype, min_seconds):
    """GFLOP/s of torch.mm on 2048 x 2048 matrices (median of runs over min_seconds)."""
    n = 2048
    g = torch.Generator().manual_seed(SEED)
    a = torch.randn(n, n, generator=g).to(dtype)
    b = torch.randn(n, n, generator=g).to(dtype)
    with torch.no_grad():
        torch.mm(a, b)
        times = []
        start = time.perf_counter()
        while len(times) < 3 or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            torch.mm(a, b)
            times.append(time.perf_counter() - t0)
    return 2 * n**3 / statistics.median(times) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.environ.get("DIFFSTYLE_BENCH_DIR", "/tmp/diffstyle-bench"))
    ap.add_argument("--models", default="tiny,ddpm256")
    ap.add_argument("--threads", type=int, default=0, help="0: the cores available (default)")
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--modes", default="f32", help="comma-separated: f32, bf16 (bf16 + channels_last)")
    ap.add_argument("--ceilings", action="store_true", help="also time torch.mm 2048^3 in f32 and bf16")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--create-only", action="store_true", help="only create DIR/ddpm256 and exit")
    args = ap.parse_args()

    if args.create_only:
        create_ddpm256(args.dir)
        return

    threads = args.threads or cores()
    torch.set_num_threads(threads)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ("f32", "bf16"):
            raise SystemExit(f"unknown mode {m!r} (f32, bf16)")
    if args.ceilings:
        for label, dtype in (("f32", torch.float32), ("bf16", torch.bfloat16)):
            gf = ceiling(dtype, min(args.min_seconds, 3.0))
            print(json.dumps({"ceiling": label, "gflops": round(gf, 1), "threads": threads}), flush=True)
    for name, mode in [(m.strip(), md) for m in args.models.split(",") if m.strip() for md in modes]:
        if name == "conv3x3":
            ms, runs = time_conv(args.min_seconds, mode)
            gflop = 2 * 256 * 256 * 9 * 64 * 64 / 1e9
            print(json.dumps({"model": name, "mode": mode, "torch_ms_median": round(ms, 3), "runs": runs,
                              "threads": torch.get_num_threads(), "torch_version": torch.__version__,
                              "gflops": round(gflop / (ms / 1e3), 1)}), flush=True)
            continue
        if name == "tiny":
            folder, min_runs = TINY, 5
        elif name == "ddpm256":
            folder, min_runs = create_ddpm256(args.dir), 3
        else:
            raise SystemExit(f"unknown model {name!r} (tiny, ddpm256, conv3x3)")
        model = UNet2DModel.from_pretrained(folder, torch_dtype=torch.float32, low_cpu_mem_usage=False).eval()
        cfg = model.config
        ms, runs, eps_max = time_forward(
            model, cfg.sample_size, cfg.in_channels, min_runs, args.min_seconds, args.warmup, mode
        )
        print(
            json.dumps(
                {
                    "model": name,
                    "mode": mode,
                    "torch_ms_median": round(ms, 3),
                    "runs": runs,
                    "threads": torch.get_num_threads(),
                    "torch_version": torch.__version__,
                    "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
                    "max_abs_eps": eps_max,
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
