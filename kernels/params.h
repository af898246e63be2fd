// Parameter blocks: every kernel takes exactly one of these by value. Mirrored by
// #[repr(C)] structs in src/backend/gpu/params.rs; a test checks each one's size and
// every field's name and offset against the emulated build (kernels/emu/kernels.cpp
// lists the fields). Layout rule: pointers first, then 32-bit fields, so that the C
// and Rust layouts agree without padding games.
//
// Conventions: activations are NCHW f32; `n` is the output batch; an input with a
// smaller batch `xn` is broadcast (output sample b reads input sample b % xn).
// Launch shapes are chosen by the Rust launcher of each family
// (src/backend/gpu/<family>.rs), next to the kernel's reference test.
#pragma once

// ---- The launch contract: every value that a kernel and its Rust launcher both rely
// on, written once. build.rs turns each `#define DS_<NAME> <integer>` line of this
// file into a Rust `const` of the same name (src/backend/gpu/params.rs, `launch`), so
// only plain integer literals belong on such lines. Values one .cu file keeps to itself
// stay in that file.

#define DS_MAX_T 64  // timesteps per timestep_embedding launch (TembParams::t)

// conv.cu: block DS_CONV_THREADS, grid (ceil(N / DS_CONV_BN), ceil(cout / BM), 1).
#define DS_CONV_THREADS 256
#define DS_CONV_BM 64       // output channels per block, f32 (SIMT) path
#define DS_CONV_BM_MMA 128  // output channels per block, f16 / bf16 (tensor-core) path
#define DS_CONV_BN 64       // output pixels per block
#define DS_CONV_BK 32       // K slice; tap-major weights need cin % DS_CONV_BK == 0

// attention.cu: block DS_ATTN_THREADS, grid (ceil(p / DS_ATTN_BQ), heads, n); dynamic
// shared memory from ds_attention_smem_bytes (kernels/emu/kernels.cpp exports the
// kernel's own formula to the launcher).
#define DS_ATTN_THREADS 256
#define DS_ATTN_BQ 32       // queries per block
#define DS_ATTN_MAX_D 512   // largest head dim (the output tile lives in registers)
#define DS_ATTN_SMALL_D 128 // largest head dim of the _d128 variants

// norm.cu: block any multiple of 32 up to DS_NORM_MAX_THREADS (__launch_bounds__).
#define DS_NORM_MAX_THREADS 1024

// One block per sample, block-wide f64 sums (ds_block_sum_f64: <= 1024 threads).
#define DS_HSPACE_THREADS 256
#define DS_CALIBRATE_THREADS 1024

// Grid-stride and per-element kernels: block size, and the grid-x cap of the
// grid-stride ones (copy_f32, resample_f32).
#define DS_ELEMENTWISE_THREADS 256  // copy, linear (one warp per row), resample, ddim_step
#define DS_GRID_STRIDE_MAX_BLOCKS 1024
#define DS_TEMB_THREADS 128

// conv2d_{f32,f16,bf16}: out = conv(up2?(cat(xa, xb)), w) + bias + temb + residual.
struct ConvParams {
    const float* xa;        // [na][ca][h][w]
    const float* xb;        // [nb][cb][h][w] or null (cb = 0)
    const void* w;          // [cout][ca+cb][k][k] (tap = 0) or [cout][k][k][ca+cb] (tap = 1),
                            // storage type by kernel name
    const float* bias;      // [cout]
    const float* temb;      // [temb_n][cout] or null
    const float* residual;  // [res_n][cout][ho][wo] or null
    float* out;             // [n][cout][ho][wo]
    int n, na, nb, ca, cb;
    int h, w_;              // input spatial size, before up-sampling
    int cout, ho, wo;
    int k, stride, pad_t, pad_l, upsample;
    int temb_n, res_n;
    int tap;  // weights tap-major (16-bit kernels only; needs (ca + cb) % 32 == 0)
};

// group_norm_f32: GroupNorm over cat(xa, xb) (biased variance, affine), then FiLM
// y * (1 + scale) + shift when film is set, SiLU if silu.
struct GroupNormParams {
    const float* xa;
    const float* xb;  // or null (cb = 0)
    const float* gamma;
    const float* beta;
    const float* film;  // [nf][2 (ca+cb)]: scale then shift, or null
    float* out;         // [n][ca+cb][hw]
    // Split statistics (group_norm_stats_f32 / group_norm_apply_f32): each (sample,
    // group) is cut into `splits` chunks; chunk sums go to partial[((b * groups + g) *
    // splits + s) * 2 + {0, 1}]. Unused (null, 1) by group_norm_f32.
    double* partial;
    int n, na, nb, ca, cb, hw, groups, silu, nf;
    float eps;
    int splits;
};

// resample_f32: nearest 2x up-sampling (up) or 2x2 average pooling of x [xn][c][h][w]
// into out [n][c][ho][wo].
struct ResampleParams {
    const float* x;
    float* out;
    int n, xn, c, h, w, ho, wo, up;
};

// linear_f32: out[b][o] = sum_i w[o][i] * silu?(x[b % xn][i]) + bias[o].
struct LinearParams {
    const float* x;
    const float* w;  // [out_f][in_f], f32
    const float* bias;
    float* out;
    int n, xn, in_f, out_f, silu;
};

// timestep_embedding_f32: out[b] = [sin(t_b f), cos(t_b f)] (cos first when flip),
// f_k = exp(-ln(10000) k / (dim/2 - shift)); odd dim: last column 0.
struct TembParams {
    float* out;  // [n][dim]
    int n, dim, flip;
    float shift;
    float t[DS_MAX_T];
};

// attention_f32: qkv [n][3c][p]; head j uses channels [j d, (j+1) d) of q, k and v,
// d = c / heads; out[b][ch][i] = sum_s softmax_s(q_i . k_s * scale) v[ch][s].
struct AttentionParams {
    const float* qkv;
    float* out;  // [n][c][p]
    int n, c, heads, p;
    float scale;
};

// hspace_mix_f32: per sample over c*hw elements (method.md's mix); mask [hw] or null.
struct HspaceParams {
    const float* h;   // [hn][c][hw]
    const float* hc;  // [hcn][c][hw]
    const float* mask;
    float* out;  // [n][c][hw]
    int n, hn, hcn, c, hw;
    float gamma;
};

// ddim_step_f32: x0 = (x - eps_x0 sqrt(1-a_i)) / sqrt(a_i);
// out = sqrt(a_j) x0 + c_dir eps_dir + c_noise z, z = Philox noise(seed, stream, b, e).
struct StepParams {
    const float* x;
    const float* eps_x0;
    const float* eps_dir;
    float* out;
    unsigned long long seed;
    int n, len, xn, e0n, edn;  // len: elements per sample
    unsigned stream;
    float a_i, a_j, c_dir, c_noise;
};

// calibrate_f32: method.md step 5, per sample (see Backend::calibrate).
struct CalibrateParams {
    const float* x;
    const float* eps;
    const float* eps_mod;
    float* out;
    int n, len;
    float a, omega;
};

// copy_f32: dst[b][e] = src[b % src_n][e].
struct CopyParams {
    const float* src;
    float* dst;
    int n, len, src_n;
};
