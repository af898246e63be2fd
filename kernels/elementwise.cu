// Small elementwise / vector ops: timestep embedding, linear (time-embedding MLP and
// projections), broadcast copy; plus the f32 helpers and the block reduction that
// hspace.cu and step.cu (included after this file in all.cu) share.

// Round-to-nearest f32 arithmetic that nvcc may not contract into FMA (nor relax under
// fast-math), so that elementwise formulas reproduce the CPU's f32 results bit for bit.
DS_DEV float ds_mul(float a, float b) { return __fmul_rn(a, b); }
DS_DEV float ds_add(float a, float b) { return __fadd_rn(a, b); }
DS_DEV float ds_sub(float a, float b) { return __fadd_rn(a, -b); }
DS_DEV float ds_sqrt(float a) { return __fsqrt_rn(a); }
#ifdef __CUDACC__
DS_DEV float ds_div(float a, float b) { return __fdiv_rn(a, b); }
#else
DS_DEV float ds_div(float a, float b) { return a / b; }
#endif

// Sums N doubles over the whole block; every thread gets the totals. Must be reached
// by all threads of the block (it synchronises); blockDim.x a multiple of 32, <= 1024.
static_assert(DS_HSPACE_THREADS % 32 == 0 && DS_HSPACE_THREADS <= 1024, "ds_block_sum_f64 block size");
static_assert(DS_CALIBRATE_THREADS % 32 == 0 && DS_CALIBRATE_THREADS <= 1024, "ds_block_sum_f64 block size");
static_assert(DS_ELEMENTWISE_THREADS % 32 == 0, "linear_f32: whole warps per block");
template <int N>
DS_DEV void ds_block_sum_f64(double (&v)[N]) {
    __shared__ double red[32][N];
    const unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    for (int k = 0; k < N; k++)
        for (int o = 16; o > 0; o >>= 1) v[k] += __shfl_xor_sync(0xffffffffu, v[k], o);
    if (lane == 0)
        for (int k = 0; k < N; k++) red[warp][k] = v[k];
    __syncthreads();
    if (warp == 0) {
        for (int k = 0; k < N; k++) {
            double s = lane < nwarps ? red[lane][k] : 0.0;
            for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
            v[k] = s;
        }
    }
    __syncthreads();  // everyone has read red[] before warp 0 overwrites row 0
    if (threadIdx.x == 0)
        for (int k = 0; k < N; k++) red[0][k] = v[k];
    __syncthreads();
    for (int k = 0; k < N; k++) v[k] = red[0][k];
    __syncthreads();  // red[] may be reused by the next call
}

// ---- timestep_embedding_f32: grid (n <= DS_MAX_T), block (DS_TEMB_THREADS; any multiple of 32) ----
// Frequencies in f32 in diffusers' order (exponent / (half - shift), then exp); exp,
// sin and cos are evaluated in f64 and rounded, which gives the correctly rounded f32
// value (as the CPU's libm) rather than CUDA's 2-ulp single-precision functions: at
// t ~ 1000 an ulp of the frequency moves the argument by ~6e-5.
DS_KERNEL void __launch_bounds__(DS_TEMB_THREADS) timestep_embedding_f32(const TembParams p) {
    const int b = blockIdx.x;
    const int half = p.dim / 2;
    const float tb = p.t[b];
    const float ln_period = (float)9.210340371976184;  // ln(10000) rounded to f32
    float* o = p.out + (size_t)b * p.dim;
    float* sin_out = p.flip ? o + half : o;
    float* cos_out = p.flip ? o : o + half;
    for (int k = threadIdx.x; k < half; k += blockDim.x) {
        float e = ds_div(ds_mul(-ln_period, (float)k), ds_sub((float)half, p.shift));
        float f = (float)exp((double)e);
        float arg = ds_mul(tb, f);
        sin_out[k] = (float)sin((double)arg);
        cos_out[k] = (float)cos((double)arg);
    }
    if ((p.dim & 1) && threadIdx.x == 0) o[p.dim - 1] = 0.0f;
}
DS_REGISTER(timestep_embedding_f32, TembParams)

// ---- linear_f32: grid (ceil(out_f / (DS_ELEMENTWISE_THREADS / 32)), n), block
// (DS_ELEMENTWISE_THREADS): one warp per output row ----
DS_DEV float ds_silu(float v) { return v / (1.0f + expf(-v)); }

DS_KERNEL void __launch_bounds__(DS_ELEMENTWISE_THREADS) linear_f32(const LinearParams p) {
    const int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    const int lane = threadIdx.x & 31;
    const int b = blockIdx.y;
    if (row >= p.out_f) return;  // whole warps leave together
    const float* x = p.x + (size_t)(b % p.xn) * p.in_f;
    const float* w = p.w + (size_t)row * p.in_f;
    float acc = 0.0f;
    for (int i = lane; i < p.in_f; i += 32) {
        float v = x[i];
        if (p.silu) v = ds_silu(v);
        acc = fmaf(w[i], v, acc);
    }
    for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffffu, acc, o);
    if (lane == 0) p.out[(size_t)b * p.out_f + row] = acc + p.bias[row];
}
DS_REGISTER(linear_f32, LinearParams)

// ---- copy_f32: grid (gx <= DS_GRID_STRIDE_MAX_BLOCKS, n), block (DS_ELEMENTWISE_THREADS);
// grid-stride over the sample ----
DS_KERNEL void __launch_bounds__(DS_ELEMENTWISE_THREADS) copy_f32(const CopyParams p) {
    const int b = blockIdx.y;
    const float* s = p.src + (size_t)(b % p.src_n) * p.len;
    float* d = p.dst + (size_t)b * p.len;
    for (size_t e = (size_t)blockIdx.x * blockDim.x + threadIdx.x; e < (size_t)p.len;
         e += (size_t)gridDim.x * blockDim.x)
        d[e] = s[e];
}
DS_REGISTER(copy_f32, CopyParams)
