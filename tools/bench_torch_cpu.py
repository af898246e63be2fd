#!/usr/bin/env python3
"""PyTorch CPU reference timings for the U-Net forward (compare with `cargo bench --bench forward`).

Models (batch 1, f32, 3 x S x S input, timestep 500):
  * tiny    -- the committed tests/fixtures/method/model (3 levels, 32x32);
  * ddpm256 -- a diffusers UNet2DModel with exactly google/ddpm-celebahq-256's
               configuration (113,673,219 parameters) and random weights
               (torch.manual_seed(0), diffusers' default init). Created once, with
               save_pretrained(safe_serialization=True), under DIR/ddpm256.

For each model: torch.set_num_threads(N) (N = the cores available to this process
unless --threads), torch.no_grad(), warm-up, then forwards until at least MIN_RUNS
runs and at least --min-seconds have been timed; prints one JSON line
{"model", "torch_ms_median", "runs", "threads", "torch_version"}.

Usage:
  python3 tools/bench_torch_cpu.py [--dir /tmp/diffstyle-bench] [--models tiny,ddpm256]
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


def time_forward(model, size, in_ch, min_runs, min_seconds, warmup):
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(1, in_ch, size, size, generator=g, dtype=torch.float32)
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
    return statistics.median(times), len(times), float(eps.abs().max())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.environ.get("DIFFSTYLE_BENCH_DIR", "/tmp/diffstyle-bench"))
    ap.add_argument("--models", default="tiny,ddpm256")
    ap.add_argument("--threads", type=int, default=0, help="0: the cores available (default)")
    ap.add_argument("--min-seconds", type=float, default=3.0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--create-only", action="store_true", help="only create DIR/ddpm256 and exit")
    args = ap.parse_args()

    if args.create_only:
        create_ddpm256(args.dir)
        return

    threads = args.threads or cores()
    torch.set_num_threads(threads)
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name == "tiny":
            folder, min_runs = TINY, 5
        elif name == "ddpm256":
            folder, min_runs = create_ddpm256(args.dir), 3
        else:
            raise SystemExit(f"unknown model {name!r} (tiny, ddpm256)")
        model = UNet2DModel.from_pretrained(folder, torch_dtype=torch.float32, low_cpu_mem_usage=False).eval()
        cfg = model.config
        ms, runs, eps_max = time_forward(
            model, cfg.sample_size, cfg.in_channels, min_runs, args.min_seconds, args.warmup
        )
        print(
            json.dumps(
                {
                    "model": name,
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
