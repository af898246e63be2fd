#!/usr/bin/env python3
"""Trains the emoji DDPM: an unconditional diffusers UNet2DModel on train.npz from
tools/emoji/build_dataset.py, in time-boxed chunks that each fit one device call.

    # on a lent GPU (one chunk; resume from the previous chunk's output):
    python3 tools/emoji/train.py --data target/emoji/train.npz --minutes 9 --out $OUT \
        [--resume ckpt/emoji]
    # here, a smoke test on the CPU with a tiny network:
    python3 tools/emoji/train.py --data target/emoji/train.npz --device cpu --tiny \
        --steps 50 --out /tmp/emoji-tiny

Model: 64x64x3, eps prediction, DDPM linear betas 1e-4..0.02 over 1000 steps, no class
input. AdamW, EMA of the weights, bf16 autocast on CUDA, random horizontal flips.

What --out receives (6 files, 7 with --save-adam; for the default network each is
under 16 MiB and all together under 64 MiB, the limits on what comes back from a device
call):

  config.json, scheduler_config.json, diffusion_pytorch_model.safetensors
        a diffusers model folder holding the EMA weights in float16: what diffstyle loads
        (`diffstyle --device cpu info --model OUT`) and what ships.
  train_weights.safetensors   the online (non-EMA) weights in float16 and the RNG states
  train_adam_m.safetensors    (--save-adam) AdamW first moments, bfloat16
  train_adam_v.safetensors    (--save-adam) AdamW second moments, bfloat16
  train_state.json            step, options, loss history, data file size/hash
  samples.png                 (CUDA, or --samples N) a 4x4 DDIM-50 grid from the EMA model

Resume (--resume DIR, DIR = a previous --out or part of it). Required there:
config.json, train_state.json, train_weights.safetensors (online weights + RNG states).
Optional: diffusion_pytorch_model.safetensors (the EMA; without it the EMA restarts from
the online weights) and train_adam_{m,v}.safetensors (without them AdamW restarts with
zero moments and the learning rate is warmed up again over --rewarm steps). With all
files a run in chunks follows nearly the path of one long run: the only loss is rounding
the online weights to float16 and the moments to bfloat16 once per chunk (relative 5e-4
and 4e-3, below the change of one optimiser step).

The transport budget decides what a chunk can resume from. Back from a device call:
at most 8 files, 16 MiB each, 64 MiB in all; the files above fit for the default
network (7.5 M parameters: 14.4 MiB a copy of the weights), even with --save-adam. To a
device call: the whole working tree that travels (the session's checkout, ~16 MiB
tracked, + the carried paths) is at most 64 MiB, and the carried paths must hold the
training data (train.npz, 20 MiB), the diffusers wheel (6 MiB; the GPU image has torch
but not diffusers) and the resume folder. Only the online weights (14.4 MiB) fit there,
so a chunk resumes from config.json + train_state.json + train_weights.safetensors:
AdamW restarts (lr re-warmed over 300 steps) and the EMA restarts from the online
weights. The EMA decay is therefore 0.999 (horizon ~1000 steps, small against a chunk
of several thousand steps: after 5000 steps the restart point keeps weight
0.999^5000 < 1%) rather than DDPM's 0.9999.

Why 7.5 M parameters rather than 10-20 M: the loadable EMA file must come back as one
file under 16 MiB (float16: at most 8.3 M parameters; the Rust loader does not read
sharded checkpoints), and the online weights must travel with the data. A larger
network (--channels, --layers) trains, but its files do not fit a device call; the
script warns.
"""
import argparse
import hashlib
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

T0 = time.time()

D, AD, U, AU = "DownBlock2D", "AttnDownBlock2D", "UpBlock2D", "AttnUpBlock2D"
NUM_T, BETA_START, BETA_END = 1000, 1e-4, 0.02
MIB = 1 << 20
# Options a resumed run takes from train_state.json unless given on its command line.
# Not the machine-dependent speed options --bf16 and --channels-last: a chunk on another
# CPU decides them afresh ("auto"; bf16 only where the CPU has AMX-BF16 or AVX512-BF16).
INHERIT = ("batch", "lr", "weight_decay", "warmup", "rewarm", "ema", "no_flip", "seed",
           "log_every", "size", "min_snr", "total_steps", "lr_floor", "save_adam", "compile")


def log(*a):
    print(f"[{time.time() - T0:7.1f}s]", *a, flush=True)


def model_config(channels, layers, attn_levels, head_dim, groups, size=64):
    n = len(channels)
    down = tuple(AD if i in attn_levels else D for i in range(n))
    up = tuple({D: U, AD: AU}[b] for b in reversed(down))
    return dict(sample_size=size, in_channels=3, out_channels=3, block_out_channels=tuple(channels),
                layers_per_block=layers, down_block_types=down, up_block_types=up,
                attention_head_dim=head_dim, norm_num_groups=groups, norm_eps=1e-5,
                downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, act_fn="silu",
                time_embedding_type="positional", add_attention=True)


def alpha_bar(device):
    # The convention of tools/dsref/schedule.py: float64 linspace -> float32, float32 cumprod.
    betas = np.linspace(BETA_START, BETA_END, NUM_T, dtype=np.float64).astype(np.float32)
    ab = np.cumprod((np.float32(1) - betas).astype(np.float32), dtype=np.float32)
    return torch.from_numpy(ab).to(device)


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cpu_has_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return " amx_bf16" in flags or " avx512_bf16" in flags


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def rng_tensors(device):
    out = {"rng_cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["rng_cuda"] = torch.cuda.get_rng_state(device)
    return out


@torch.no_grad()
def ddim_samples(model, ab, n, steps, seed, device, size):
    """Plain DDIM (eta 0) over seq(steps) of docs/method.md, from seeded noise."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.randn(n, 3, size, size, generator=g).to(device)
    seq = [int(v + 1e-6) for v in list(np.linspace(0, 1, steps) * (NUM_T - 1))]  # dsref seq
    for i, j in zip(reversed(seq), list(reversed(seq))[1:] + [-1]):
        a_i = ab[i]
        a_j = ab[j] if j >= 0 else torch.tensor(1.0, device=device)
        t = torch.full((n,), i, device=device, dtype=torch.long)
        eps = model(x, t).sample.float()
        x0 = (x - (1 - a_i).sqrt() * eps) / a_i.sqrt()
        x = a_j.sqrt() * x0 + (1 - a_j).sqrt() * eps
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def save_grid(path, imgs):
    from PIL import Image
    n = len(imgs)
    cols = int(math.ceil(math.sqrt(n)))
    rows = (n + cols - 1) // cols
    c = imgs[0].shape[0] + 2
    sheet = Image.new("RGB", (cols * c + 2, rows * c + 2), (128, 128, 128))
    for k, im in enumerate(imgs):
        sheet.paste(Image.fromarray(im), (2 + (k % cols) * c, 2 + (k // cols) * c))
    sheet.save(path)


def main():
    ap = argparse.ArgumentParser(description="Train the emoji DDPM in time-boxed chunks.")
    ap.add_argument("--data", default="target/emoji/train.npz")
    ap.add_argument("--out", required=True, help="output folder (a diffusers model folder + state)")
    ap.add_argument("--resume", default=None, help="a previous --out to continue from")
    ap.add_argument("--minutes", type=float, default=None,
                    help="stop (and save) before this much wall time since start")
    ap.add_argument("--steps", type=int, default=None, help="stop at this total step count")
    ap.add_argument("--device", default="auto", help="auto | cuda | cpu")
    ap.add_argument("--tiny", action="store_true", help="tiny network for a CPU smoke test")
    ap.add_argument("--channels", default="64,128,128,160")
    ap.add_argument("--layers", type=int, default=1, help="resnets per level (layers_per_block)")
    ap.add_argument("--attn-levels", default="2,3", help="levels with attention (0 = 64x64)")
    ap.add_argument("--head-dim", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=1000, help="linear lr warmup from step 0")
    ap.add_argument("--rewarm", type=int, default=300,
                    help="lr warmup after a resume without Adam moments")
    ap.add_argument("--fresh-optimizer", action="store_true",
                    help="on resume, ignore saved Adam moments")
    ap.add_argument("--ema", type=float, default=0.999,
                    help="EMA decay (horizon 1/(1-decay) steps; see the module doc)")
    ap.add_argument("--fresh-ema", action="store_true",
                    help="on resume, restart the EMA from the online weights")
    ap.add_argument("--no-flip", action="store_true", help="no random horizontal flips")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=200)
    ap.add_argument("--samples", type=int, default=None,
                    help="DDIM-50 samples from the EMA written to samples.png (default 16 on "
                         "CUDA, 0 on the CPU)")
    ap.add_argument("--save-adam", action="store_true",
                    help="also write the AdamW moments (2 x 2 bytes a parameter; they do not "
                         "fit the carry budget of a device call, see above)")
    ap.add_argument("--compile", action="store_true", help="torch.compile the model")
    ap.add_argument("--size", type=int, default=64,
                    help="training resolution: 64 (the data's), or 32 (each 2x2 block of the "
                         "64 px data averaged, in float)")
    ap.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                    help="bf16 autocast; auto = on CUDA, and on a CPU with AMX-BF16 or "
                         "AVX512-BF16")
    ap.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                    help="NHWC activations (auto = on)")
    ap.add_argument("--min-snr", type=float, default=0.0,
                    help="min-SNR-gamma loss weighting, min(SNR, gamma)/SNR for eps "
                         "prediction (Hang et al. 2023); 0 = plain MSE")
    ap.add_argument("--total-steps", type=int, default=None,
                    help="cosine decay of the learning rate from the end of the warm-up to "
                         "--lr-floor x lr at this step (kept across resumes); none = constant")
    ap.add_argument("--lr-floor", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--save-margin", type=float, default=45.0,
                    help="seconds kept for saving and sampling before --minutes")
    args = ap.parse_args()
    argv = sys.argv[1:]
    explicit = {a.dest for a in ap._actions
                if any(x == o or x.startswith(o + "=") for o in a.option_strings for x in argv)}

    from diffusers import DDPMScheduler, UNet2DModel
    from diffusers.utils import logging as dlogging
    dlogging.set_verbosity_error()

    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.threads:
        torch.set_num_threads(args.threads)
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    if args.samples is None:
        args.samples = 16 if cuda else 0
    deadline = T0 + args.minutes * 60 - args.save_margin if args.minutes else None

    # ---- model and state
    state = None
    if args.resume:
        with open(os.path.join(args.resume, "config.json")) as f:
            cfg = {k: v for k, v in json.load(f).items() if not k.startswith("_")}
        with open(os.path.join(args.resume, "train_state.json")) as f:
            state = json.load(f)
        log(f"resume from {args.resume} at step {state['step']}")
        inherited = []
        for k in INHERIT:     # training options default to the previous chunk's
            if k not in explicit and k in state.get("options", {}):
                setattr(args, k, state["options"][k])
                inherited.append(f"{k}={state['options'][k]}")
        log("options of the previous chunk: " + ", ".join(inherited))
    elif args.tiny:
        cfg = model_config([16, 32, 32, 32], 1, {3}, 8, 8, args.size)
    else:
        cfg = model_config([int(c) for c in args.channels.split(",")], args.layers,
                           {int(i) for i in args.attn_levels.split(",") if i}, args.head_dim, 32,
                           args.size)
    if cfg["sample_size"] != args.size:
        sys.exit(f"--size {args.size} but the resumed model is {cfg['sample_size']} px")
    use_bf16 = {"on": True, "off": False}.get(args.bf16, cuda or cpu_has_bf16())
    use_cl = args.channels_last != "off"
    log(f"device {device}, {torch.get_num_threads()} threads, bf16 autocast {use_bf16}, "
        f"channels_last {use_cl}, {args.size} px")
    torch.manual_seed(args.seed)
    model = UNet2DModel(**cfg)
    n_params = sum(p.numel() for p in model.parameters())
    names = [n for n, _ in model.named_parameters()]
    ema = None
    if args.resume:
        w = load_file(os.path.join(args.resume, "train_weights.safetensors"))
        model.load_state_dict({k: w[k].float() for k in model.state_dict()}, strict=True)
        ef = os.path.join(args.resume, "diffusion_pytorch_model.safetensors")
        if os.path.exists(ef) and not args.fresh_ema:
            e = load_file(ef)
            ema = {k: e[k].float().to(device) for k in names}
            log("EMA restored")
        else:
            log("no EMA in the resume folder: the EMA restarts from the online weights")
    model.to(device)
    if use_cl:
        model.to(memory_format=torch.channels_last)
    if ema is None:
        ema = {k: p.detach().float().clone() for k, p in model.named_parameters()}
    params = dict(model.named_parameters())
    state_mib = 4 * 2 * n_params / MIB
    log(f"UNet2DModel: {n_params:,} parameters ({n_params / 1e6:.2f} M); channels "
        f"{list(cfg['block_out_channels'])}, layers_per_block {cfg['layers_per_block']}, "
        f"blocks {list(cfg['down_block_types'])}; EMA f16 {2 * n_params / MIB:.1f} MiB, "
        f"full state {state_mib:.1f} MiB")
    if 2 * n_params > 16 * MIB - (1 << 18) or state_mib > 62:
        log("WARNING: this network's files exceed what one device call returns "
            "(16 MiB a file, 64 MiB in all)")

    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.999),
                            weight_decay=args.weight_decay, eps=1e-8)
    step = 0
    rewarm_from = None
    history = []
    if state is not None:
        step = state["step"]
        history = state.get("history", [])
        mf = os.path.join(args.resume, "train_adam_m.safetensors")
        vf = os.path.join(args.resume, "train_adam_v.safetensors")
        if os.path.exists(mf) and os.path.exists(vf) and not args.fresh_optimizer:
            m, v = load_file(mf), load_file(vf)
            for k, p in params.items():
                opt.state[p] = {"step": torch.tensor(float(state["adam_step"])),
                                "exp_avg": torch.empty_like(p).copy_(m[k].view(p.shape)),
                                "exp_avg_sq": torch.empty_like(p).copy_(v[k].view(p.shape))}
            log("AdamW moments restored")
        else:
            rewarm_from = step
            log(f"AdamW restarts with zero moments; lr warmed up again over {args.rewarm} steps")
        rng = load_file(os.path.join(args.resume, "train_weights.safetensors"))
        torch.set_rng_state(rng["rng_cpu"])
        if cuda and "rng_cuda" in rng and state.get("device") == "cuda":
            torch.cuda.set_rng_state(rng["rng_cuda"], device)

    # ---- data
    with np.load(args.data) as z:
        images = z["images"]
    data = torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
    if args.size != data.shape[-1]:                                # N, 3, H, W in [-1, 1]
        data = F.avg_pool2d(data, data.shape[-1] // args.size)
    n_data = data.shape[0]
    log(f"data {args.data}: {n_data} images, {os.path.getsize(args.data) / MIB:.1f} MiB")
    ab = alpha_bar(device)

    fwd = torch.compile(model) if args.compile else model

    def lr_at(s):
        f = min(1.0, (s + 1) / args.warmup) if args.warmup else 1.0
        if args.total_steps:
            p = min(1.0, max(0.0, (s - args.warmup) / max(1, args.total_steps - args.warmup)))
            f *= args.lr_floor + (1 - args.lr_floor) * 0.5 * (1 + math.cos(math.pi * p))
        if rewarm_from is not None:
            f = min(f, (s - rewarm_from + 1) / args.rewarm)
        return args.lr * f

    # ---- train
    model.train()
    ema_p = [ema[k] for k in names]
    mod_p = [params[k] for k in names]
    loss_acc, loss_n, t_log, first_step = 0.0, 0, time.time(), step
    stop_reason = "steps"
    while True:
        if args.steps is not None and step >= args.steps:
            break
        if deadline is not None and time.time() >= deadline:
            stop_reason = "time"
            break
        idx = torch.randint(0, n_data, (args.batch,), device=device)
        x0 = data[idx]
        if not args.no_flip:
            flip = torch.rand(args.batch, device=device) < 0.5
            x0 = torch.where(flip[:, None, None, None], x0.flip(3), x0)
        t = torch.randint(0, NUM_T, (args.batch,), device=device)
        noise = torch.randn_like(x0)
        a = ab[t][:, None, None, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
        if use_cl:
            xt = xt.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            pred = fwd(xt, t).sample
        per = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
        mse = per.mean()
        if args.min_snr > 0:
            snr = ab[t] / (1 - ab[t])
            loss = (per * torch.clamp(snr, max=args.min_snr) / snr).mean()
        else:
            loss = mse
        for gr in opt.param_groups:
            gr["lr"] = lr_at(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_p, [p.detach().float() for p in mod_p], 1.0 - decay)
        loss_acc += mse.detach()
        loss_n += 1
        if step % args.log_every == 0:
            l = float(loss_acc) / loss_n
            dt = time.time() - t_log
            log(f"step {step}  loss {l:.5f}  lr {lr_at(step - 1):.2e}  "
                f"{loss_n * args.batch / dt:.0f} img/s")
            history.append([step, round(l, 6)])
            loss_acc, loss_n, t_log = 0.0, 0, time.time()
    if loss_n:
        history.append([step, round(float(loss_acc) / loss_n, 6)])
    log(f"stopped ({stop_reason}) at step {step}: {step - first_step} steps this run")
    chunk = {"from_step": first_step, "to_step": step, "seconds": round(time.time() - T0, 1),
             "threads": torch.get_num_threads(), "cpu": cpu_model(), "torch": torch.__version__,
             "finished": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}

    # ---- save
    os.makedirs(args.out, exist_ok=True)
    tmp = lambda f: os.path.join(args.out, f)  # noqa: E731
    model.save_config(args.out)
    DDPMScheduler(num_train_timesteps=NUM_T, beta_start=BETA_START, beta_end=BETA_END,
                  beta_schedule="linear", prediction_type="epsilon", clip_sample=True,
                  variance_type="fixed_small").save_config(args.out)
    meta = {"format": "pt"}
    save_file({k: ema[k].detach().to(torch.float16).contiguous().cpu() for k in names},
              tmp("diffusion_pytorch_model.safetensors"), metadata=meta)
    w = {k: params[k].detach().to(torch.float16).contiguous().cpu() for k in names}
    w.update(rng_tensors(device))
    save_file(w, tmp("train_weights.safetensors"), metadata=meta)
    m, v, adam_step = {}, {}, 0
    for k in names:
        s = opt.state.get(params[k])
        if not s:
            continue
        m[k] = s["exp_avg"].detach().to(torch.bfloat16).contiguous().cpu()
        v[k] = s["exp_avg_sq"].detach().to(torch.bfloat16).contiguous().cpu()
        adam_step = int(float(s["step"]))
    if m and args.save_adam:
        save_file(m, tmp("train_adam_m.safetensors"), metadata=meta)
        save_file(v, tmp("train_adam_v.safetensors"), metadata=meta)
    opts = {k: v for k, v in vars(args).items()}
    st = {"step": step, "adam_step": adam_step, "device": device.type,
          "parameters": n_params, "data": os.path.basename(args.data),
          "data_bytes": os.path.getsize(args.data), "data_sha256": file_sha256(args.data),
          "data_images": n_data, "images_seen": step * args.batch,
          "epochs": round(step * args.batch / n_data, 2),
          "chunks": (state or {}).get("chunks", 0) + 1, "options": opts,
          "chunk_log": (state or {}).get("chunk_log", []) + [chunk],
          "history": history}
    with open(tmp("train_state.json"), "w") as f:
        json.dump(st, f, indent=1)
        f.write("\n")
    log("saved " + ", ".join(f"{f} {os.path.getsize(tmp(f)) / MIB:.1f} MiB"
                             for f in sorted(os.listdir(args.out))))
    if args.samples:
        net = UNet2DModel(**cfg)
        net.load_state_dict({k: ema[k].to(torch.float16).float() for k in names}, strict=False)
        net.to(device).eval()
        grid = ddim_samples(net, ab, args.samples, 50, 1, device, args.size)
        save_grid(tmp("samples.png"), grid)
        log(f"samples.png: {args.samples} DDIM-50 samples of the EMA model")
    log("done")


if __name__ == "__main__":
    sys.exit(main())
