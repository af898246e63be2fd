// Spatial self-attention core on channel-major qkv (CPU oracle:
// src/backend/cpu/attention.rs): out[b][ch][i] = sum_s softmax_s(scale q_i . k_s) v[ch][s]
// per head, flash-attention style: one block per (query tile, head, sample) walks the
// keys in tiles with an online softmax, so no score matrix goes to global memory.
//
// attention_f32: grid (ceil(p / 32), heads, n), block 256, dynamic smem
// attn::smem_bytes(d) (d = c / heads <= 512; 82 KiB at d = 512, so the launch needs the
// max-dynamic-smem attribute above 48 KiB).
//
// Tiling (BQ = 32 queries, BK = 64 keys, head dim in chunks of DC = 32 channels):
// - the block's queries stay in shared memory for the whole kernel, [d][BQ];
// - scores: K is staged chunk by chunk, [DC][BK]; thread (tq, tk) accumulates the 2 x 4
//   scores of queries {tq, tq+16} and keys {tk + 16j};
// - softmax: warp w owns rows 4w..4w+3 (running max and sum in registers of every lane),
//   turns the score tile into probabilities in place and publishes the rescale factor;
// - P V: V is staged chunk by chunk, [DC][BK]; lane = query, so the final store is
//   coalesced along tokens; warp w accumulates channels {w + 8r} of every chunk. The
//   output tile (BQ x d) lives in registers: 4 per thread per chunk, 64 at d = 512.
// Row pitch BK + 1 keeps the column-wise reads of the score and V tiles conflict-free.

namespace attn {

constexpr int NT = 256;  // threads per block
constexpr int BQ = 32;   // queries per block (= lanes: one query per lane in P V)
constexpr int BK = 64;   // keys per tile
constexpr int DC = 32;   // head-dim channels per staged chunk
constexpr int MAXD = 512;
constexpr int MAXCH = MAXD / DC;
constexpr int SP = BK + 1;  // padded row pitch of the K/V and score tiles

// Dynamic shared memory of attention_f32 for head dim d (the launcher mirrors this).
constexpr int smem_floats(int d) {
    const int dp = (d + DC - 1) / DC * DC;
    return dp * BQ + DC * SP + BQ * SP + 2 * BQ;
}

}  // namespace attn

extern "C" __global__ void __launch_bounds__(256) attention_f32(const AttentionParams p) {
    using namespace attn;
    DS_DYN_SMEM(float, sm);
    const int P = p.p, C = p.c, d = C / p.heads;
    const int nch = (d + DC - 1) / DC, dp = nch * DC;
    float* q_s = sm;                 // [dp][BQ], zero beyond d and beyond the last token
    float* kv_s = q_s + dp * BQ;     // [DC][SP]: a K or V chunk
    float* s_s = kv_s + DC * SP;     // [BQ][SP]: scores, then probabilities
    float* alpha_s = s_s + BQ * SP;  // [BQ]: per-row rescale of this tile
    float* l_s = alpha_s + BQ;       // [BQ]: final row sums

    const int q0 = blockIdx.x * BQ, hd = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long PL = P;
    const float* qg = p.qkv + ((long long)b * 3 * C + (long long)hd * d) * PL;
    const float* kg = qg + (long long)C * PL;
    const float* vg = kg + (long long)C * PL;

    for (int e = tid; e < dp * BQ; e += NT) {
        const int r = e / BQ, i = e % BQ;
        q_s[e] = (r < d && q0 + i < P) ? qg[r * PL + q0 + i] : 0.f;
    }

    // exp(scale (x - m)) = exp2(sl2 (x - m)); the max is taken over unscaled scores.
    const float sl2 = p.scale * 1.4426950408889634f;
    float m_run[4], l_run[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        m_run[r] = -INFINITY;
        l_run[r] = 0.f;
    }
    float o[MAXCH][4];
#pragma unroll
    for (int c = 0; c < MAXCH; c++)
#pragma unroll
        for (int r = 0; r < 4; r++) o[c][r] = 0.f;

    const int tk = tid & 15, tq = tid >> 4;
    for (int s0 = 0; s0 < P; s0 += BK) {
        // ---- scores of this key tile ----
        float acc[2][4] = {};
        for (int c = 0; c < nch; c++) {
            __syncthreads();  // the previous readers of kv_s are done (and q_s is written)
            for (int e = tid; e < DC * BK; e += NT) {
                const int r = e / BK, col = e % BK, dd = c * DC + r, s = s0 + col;
                kv_s[r * SP + col] = (dd < d && s < P) ? kg[dd * PL + s] : 0.f;
            }
            __syncthreads();
#pragma unroll 8
            for (int r = 0; r < DC; r++) {
                const float qa = q_s[(c * DC + r) * BQ + tq], qb = q_s[(c * DC + r) * BQ + tq + 16];
                const float* kr = kv_s + r * SP + tk;
#pragma unroll
                for (int j = 0; j < 4; j++) {
                    const float kv = kr[16 * j];
                    acc[0][j] = fmaf(qa, kv, acc[0][j]);
                    acc[1][j] = fmaf(qb, kv, acc[1][j]);
                }
            }
        }
#pragma unroll
        for (int a = 0; a < 2; a++)
#pragma unroll
            for (int j = 0; j < 4; j++) {
                const int col = tk + 16 * j;
                s_s[(tq + 16 * a) * SP + col] = s0 + col < P ? acc[a][j] : -INFINITY;
            }
        __syncthreads();

        // ---- online softmax, warp w owns rows 4w..4w+3 ----
#pragma unroll
        for (int r = 0; r < 4; r++) {
            float* row = s_s + (warp * 4 + r) * SP;
            const float v0 = row[lane], v1 = row[lane + 32];
            float mx = fmaxf(v0, v1);
#pragma unroll
            for (int o2 = 16; o2 > 0; o2 >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o2));
            const float m_new = fmaxf(m_run[r], mx);  // finite: every tile has a real key
            const float p0 = exp2f((v0 - m_new) * sl2), p1 = exp2f((v1 - m_new) * sl2);
            row[lane] = p0;
            row[lane + 32] = p1;
            float sum = p0 + p1;
#pragma unroll
            for (int o2 = 16; o2 > 0; o2 >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o2);
            const float alpha = exp2f((m_run[r] - m_new) * sl2);  // 0 on the first tile
            l_run[r] = l_run[r] * alpha + sum;
            m_run[r] = m_new;
            if (lane == 0) alpha_s[warp * 4 + r] = alpha;
        }
        __syncthreads();

        // ---- O = alpha O + P V, lane = query ----
        const float al = alpha_s[lane];
        const float* prow = s_s + lane * SP;
#pragma unroll
        for (int c = 0; c < MAXCH; c++) {
            if (c < nch) {
#pragma unroll
                for (int r = 0; r < 4; r++) o[c][r] *= al;
                if (c > 0) __syncthreads();  // readers of the previous V chunk are done
                for (int e = tid; e < DC * BK; e += NT) {
                    const int r = e / BK, col = e % BK, dd = c * DC + r, s = s0 + col;
                    kv_s[r * SP + col] = (dd < d && s < P) ? vg[dd * PL + s] : 0.f;
                }
                __syncthreads();
#pragma unroll 4
                for (int s = 0; s < BK; s++) {
                    const float pv = prow[s];
#pragma unroll
                    for (int r = 0; r < 4; r++) o[c][r] = fmaf(pv, kv_s[(warp + 8 * r) * SP + s], o[c][r]);
                }
            }
        }
    }

    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < 4; r++) l_s[warp * 4 + r] = l_run[r];
    }
    __syncthreads();
    if (q0 + lane < P) {
        const float inv = 1.f / l_s[lane];
        float* og = p.out + ((long long)b * C + (long long)hd * d) * PL + q0 + lane;
#pragma unroll
        for (int c = 0; c < MAXCH; c++) {
            if (c < nch) {
#pragma unroll
                for (int r = 0; r < 4; r++) {
                    const int dd = c * DC + warp + 8 * r;
                    if (dd < d) og[dd * PL] = o[c][r] * inv;
                }
            }
        }
    }
}
DS_REGISTER(attention_f32, AttentionParams)
