// Resampling of the ADM res block (the CPU oracle is resample in
// src/backend/cpu/elementwise.rs): nearest-neighbour 2x up-sampling, or 2x2 average
// pooling with stride 2 (avg_pool2d: the four taps summed in pairs, then * 0.25).
//
// resample_f32: grid (gx <= DS_GRID_STRIDE_MAX_BLOCKS, n), block (DS_ELEMENTWISE_THREADS);
// grid-stride over the output sample, one output element per step (memory-bound; each
// input is read once per output that needs it).
DS_KERNEL void __launch_bounds__(DS_ELEMENTWISE_THREADS) resample_f32(const ResampleParams p) {
    const int b = blockIdx.y;
    const long long plane_in = (long long)p.h * p.w, plane_out = (long long)p.ho * p.wo;
    const long long len = (long long)p.c * plane_out;
    const float* x = p.x + (long long)(b % p.xn) * p.c * plane_in;
    float* out = p.out + (long long)b * len;
    for (long long e = (long long)blockIdx.x * blockDim.x + threadIdx.x; e < len;
         e += (long long)gridDim.x * blockDim.x) {
        const long long ci = e / plane_out, r = e % plane_out;
        const int i = (int)(r / p.wo), j = (int)(r % p.wo);
        const float* s = x + ci * plane_in;
        if (p.up) {
            out[e] = s[(long long)(i >> 1) * p.w + (j >> 1)];
        } else {
            const float* r0 = s + (long long)(2 * i) * p.w + 2 * j;
            const float* r1 = r0 + p.w;
            out[e] = __fmul_rn(__fadd_rn(__fadd_rn(r0[0], r0[1]), __fadd_rn(r1[0], r1[1])), 0.25f);
        }
    }
}
DS_REGISTER(resample_f32, ResampleParams)
