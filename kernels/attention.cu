// Spatial self-attention core on channel-major qkv (CPU oracle:
// src/backend/cpu/attention.rs): out[b][ch][i] = sum_s softmax_s(scale q_i . k_s) v[ch][s]
// per head, flash-attention style: one block per (query tile, head, sample) walks the
// keys in tiles with an online softmax, so no score matrix goes to global memory.
//
// attention_f32: grid (ceil(p / 32), heads, n), block 256, dynamic smem
// 4 * attn::smem_floats(d) bytes (d = c / heads <= 512; 82 KiB at d = 512, so the
// launch needs the max-dynamic-smem attribute above 48 KiB). attention_f32_d128: the
// same for d <= 128 with fewer registers (two blocks per SM).
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
constexpr int SP = BK + 1;  // padded row pitch of the K/V and score tiles

// Dynamic shared memory of attention_f32 for head dim d (the launcher mirrors this).
constexpr int smem_floats(int d) {
    const int dp = (d + DC - 1) / DC * DC;
    return dp * BQ + DC * SP + BQ * SP + 2 * BQ;
}

// MAXC: head-dim chunks the output registers cover (head dim <= MAXC * DC).
template <int MAXC>
DS_DEV void attention_simt(const AttentionParams& p) {
    DS_DYN_SMEM(float, sm);
    const int P = p.p, C = p.c, d = C / p.heads;
    const int nch = (d + DC - 1) / DC, dp = nch * DC;
    if (nch > MAXC) __trap();  // the launcher picked a variant too small for d
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
    float o[MAXC][4];
#pragma unroll
    for (int c = 0; c < MAXC; c++)
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
        for (int c = 0; c < MAXC; c++) {
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
        for (int c = 0; c < MAXC; c++) {
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

}  // namespace attn

// ---------------------------------------------------------------------------------
// attention_bf16 / attention_f16: the same algorithm on tensor cores, for runs whose
// weights are stored in 16 bits. q, k, v are rounded to T when staged into shared
// memory; S = Q^T K and O += P V^T are mma.m16n8k16 with f32 accumulation; the softmax
// stays f32 (probabilities rounded to T only as the A operand of P V^T).
//
// grid (ceil(p / 32), heads, n), block 256, dynamic smem attn::tc_smem_bytes(d)
// (57 KiB at d = 512); the _d128 variants for d <= 128 hold fewer registers.
//
// Tiles: 32 queries x 64 keys, head dim in chunks of 64. Shared memory holds T pairs
// as 32-bit words, rows padded by 16 bytes (ldmatrix rows stay 16-byte aligned and
// the 8 rows of one 8x8 matrix fall in distinct banks):
//   Q  [32 queries][d]     A operand of S (row = query, k = channel)
//   K  [64 keys][64 ch]    B operand of S (ldmatrix rows = keys, k = channel)
//   V  [64 ch][64 keys]    B operand of O (rows = channels, k = key): V's own layout
//   P  [32 queries][64 keys] A operand of O
// Warp w owns m-tile (w & 1) (16 queries) and 16 columns at (w >> 1) * 16: keys of
// the score tile, channels of every output chunk (2 n-tiles of 8).

namespace attn {

constexpr int TQ = 32;           // queries per block
constexpr int TK = 64;           // keys per tile
constexpr int TC = 64;           // channels per chunk
constexpr int TW = TC / 2 + 4;   // words per K / V / P row (64 halves + 16 bytes pad)
constexpr int TSP = TK + 8;      // floats per score row (conflict-free float2 stores)
static_assert(TK == TC, "K, V and P tiles share the row pitch TW");

constexpr int tc_smem_bytes(int d) {
    const int qw = (d + TC - 1) / TC * TC / 2 + 4;  // words per Q row
    return 4 * (TQ * qw + TK * TW + TQ * TW + TQ * TSP + 2 * TQ);
}

// MAXC: head-dim chunks the output registers cover (head dim <= MAXC * TC).
template <class T, int MAXC>
DS_DEV void attention_tc(const AttentionParams& p) {
    DS_DYN_SMEM(uint32_t, sm);
    const int P = p.p, C = p.c, d = C / p.heads;
    const int nch = (d + TC - 1) / TC, qw = nch * TC / 2 + 4;
    if (nch > MAXC) __trap();  // the launcher picked a variant too small for d
    uint32_t* q_w = sm;                           // [TQ][qw]
    uint32_t* kv_w = q_w + TQ * qw;               // [64][TW]: K chunk [key][ch] or V chunk [ch][key]
    uint32_t* p_w = kv_w + TK * TW;               // [TQ][TW]
    float* s_s = reinterpret_cast<float*>(p_w + TQ * TW);  // [TQ][TSP]
    float* alpha_s = s_s + TQ * TSP;
    float* l_s = alpha_s + TQ;

    const int q0 = blockIdx.x * TQ, hd = blockIdx.y, b = blockIdx.z;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
    const long long PL = P;
    const float* qg = p.qkv + ((long long)b * 3 * C + (long long)hd * d) * PL;
    const float* kg = qg + (long long)C * PL;
    const float* vg = kg + (long long)C * PL;

    // Q^T, channel pairs packed; zero beyond d and beyond the last token.
    for (int e = tid; e < nch * TC / 2 * TQ; e += NT) {
        const int w2 = e / TQ, i = e % TQ, dd = 2 * w2;
        const bool ok = q0 + i < P;
        const float lo = ok && dd < d ? qg[dd * PL + q0 + i] : 0.f;
        const float hi = ok && dd + 1 < d ? qg[(dd + 1) * PL + q0 + i] : 0.f;
        q_w[i * qw + w2] = ds_pack2<T>(lo, hi);
    }

    const int g = lane >> 2, t = lane & 3;
    const int mt = warp & 1, nb = (warp >> 1) * 16;
    // ldmatrix x4 row addresses: A operand (rows m, k halves) and B operand (two
    // n-tiles of 8 rows, k halves), as offsets of (row, column-in-halves).
    const int a_row = mt * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, a_col = (lane >> 4) * 8;
    const int b_row = nb + (lane >> 4) * 8 + (lane & 7), b_col = ((lane >> 3) & 1) * 8;

    const float sl2 = p.scale * 1.4426950408889634f;
    float m_run[4], l_run[4];
#pragma unroll
    for (int r = 0; r < 4; r++) {
        m_run[r] = -INFINITY;
        l_run[r] = 0.f;
    }
    float o[MAXC][2][4];
#pragma unroll
    for (int c = 0; c < MAXC; c++)
#pragma unroll
        for (int j = 0; j < 2; j++)
#pragma unroll
            for (int r = 0; r < 4; r++) o[c][j][r] = 0.f;

    for (int s0 = 0; s0 < P; s0 += TK) {
        // ---- S = Q^T K for this key tile ----
        float acc[2][4] = {};
        for (int c = 0; c < nch; c++) {
            __syncthreads();  // previous readers of kv_w are done (and q_w is written)
            for (int e = tid; e < TK * TC / 2; e += NT) {
                const int s = e % TK, w2 = e / TK, dd = c * TC + 2 * w2, key = s0 + s;
                const bool ok = key < P;
                const float lo = ok && dd < d ? kg[dd * PL + key] : 0.f;
                const float hi = ok && dd + 1 < d ? kg[(dd + 1) * PL + key] : 0.f;
                kv_w[s * TW + w2] = ds_pack2<T>(lo, hi);
            }
            __syncthreads();
#pragma unroll
            for (int ks = 0; ks < TC / 16; ks++) {
                uint32_t a[4], bf[4];
                ldmatrix<4, false>(a, q_w + a_row * qw + (c * TC + ks * 16 + a_col) / 2);
                ldmatrix<4, false>(bf, kv_w + b_row * TW + (ks * 16 + b_col) / 2);
                mma_16816<T>(acc[0], a, bf);
                mma_16816<T>(acc[1], a, bf + 2);
            }
        }
#pragma unroll
        for (int j = 0; j < 2; j++) {
            const int col = nb + 8 * j + 2 * t;
            const bool v0 = s0 + col < P, v1 = s0 + col + 1 < P;
            float* r0 = s_s + (mt * 16 + g) * TSP + col;
            float* r1 = r0 + 8 * TSP;
            r0[0] = v0 ? acc[j][0] : -INFINITY;
            r0[1] = v1 ? acc[j][1] : -INFINITY;
            r1[0] = v0 ? acc[j][2] : -INFINITY;
            r1[1] = v1 ? acc[j][3] : -INFINITY;
        }
        __syncthreads();

        // ---- online softmax, warp w owns rows 4w..4w+3; lane owns keys 2 lane, +1 ----
#pragma unroll
        for (int r = 0; r < 4; r++) {
            const int row = warp * 4 + r;
            const float v0 = s_s[row * TSP + 2 * lane], v1 = s_s[row * TSP + 2 * lane + 1];
            float mx = fmaxf(v0, v1);
#pragma unroll
            for (int o2 = 16; o2 > 0; o2 >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o2));
            const float m_new = fmaxf(m_run[r], mx);
            const float p0 = exp2f((v0 - m_new) * sl2), p1 = exp2f((v1 - m_new) * sl2);
            p_w[row * TW + lane] = ds_pack2<T>(p0, p1);
            float sum = p0 + p1;
#pragma unroll
            for (int o2 = 16; o2 > 0; o2 >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o2);
            const float alpha = exp2f((m_run[r] - m_new) * sl2);
            l_run[r] = l_run[r] * alpha + sum;
            m_run[r] = m_new;
            if (lane == 0) alpha_s[row] = alpha;
        }
        __syncthreads();

        // ---- O = alpha O + P V^T, chunk by chunk of 64 channels ----
        const float al0 = alpha_s[mt * 16 + g], al1 = alpha_s[mt * 16 + g + 8];
#pragma unroll
        for (int c = 0; c < MAXC; c++) {
            if (c < nch) {
#pragma unroll
                for (int j = 0; j < 2; j++) {
                    o[c][j][0] *= al0;
                    o[c][j][1] *= al0;
                    o[c][j][2] *= al1;
                    o[c][j][3] *= al1;
                }
                if (c > 0) __syncthreads();  // readers of the previous V chunk are done
                for (int e = tid; e < TC * TK / 2; e += NT) {
                    const int w2 = e % (TK / 2), r = e / (TK / 2), dd = c * TC + r, s = s0 + 2 * w2;
                    const bool ok = dd < d;
                    const float lo = ok && s < P ? vg[dd * PL + s] : 0.f;
                    const float hi = ok && s + 1 < P ? vg[dd * PL + s + 1] : 0.f;
                    kv_w[r * TW + w2] = ds_pack2<T>(lo, hi);
                }
                __syncthreads();
#pragma unroll
                for (int ks = 0; ks < TK / 16; ks++) {
                    uint32_t a[4], bf[4];
                    ldmatrix<4, false>(a, p_w + a_row * TW + (ks * 16 + a_col) / 2);
                    ldmatrix<4, false>(bf, kv_w + b_row * TW + (ks * 16 + b_col) / 2);
                    mma_16816<T>(o[c][0], a, bf);
                    mma_16816<T>(o[c][1], a, bf + 2);
                }
            }
        }
    }

    if (lane == 0) {
#pragma unroll
        for (int r = 0; r < 4; r++) l_s[warp * 4 + r] = l_run[r];
    }
    __syncthreads();
    const int i0 = mt * 16 + g, i1 = i0 + 8;
    const float inv0 = 1.f / l_s[i0], inv1 = 1.f / l_s[i1];
    float* og = p.out + ((long long)b * C + (long long)hd * d) * PL + q0;
#pragma unroll
    for (int c = 0; c < MAXC; c++) {
        if (c < nch) {
#pragma unroll
            for (int j = 0; j < 2; j++) {
#pragma unroll
                for (int h = 0; h < 2; h++) {
                    const int dd = c * TC + nb + 8 * j + 2 * t + h;
                    if (dd >= d) continue;
                    if (q0 + i0 < P) og[dd * PL + i0] = o[c][j][h] * inv0;
                    if (q0 + i1 < P) og[dd * PL + i1] = o[c][j][2 + h] * inv1;
                }
            }
        }
    }
}

}  // namespace attn

// Entry points: the general kernels (head dim <= 512) and, for head dim <= 128, variants
// with a quarter of the output registers, so that several blocks fit on an SM.
#define DS_ATTN_KERNEL(name, min_blocks, ...)                                                      \
    extern "C" __global__ void __launch_bounds__(attn::NT, min_blocks) name(const AttentionParams p) { \
        __VA_ARGS__(p);                                                                            \
    }                                                                                              \
    DS_REGISTER(name, AttentionParams)

DS_ATTN_KERNEL(attention_f32, 1, attn::attention_simt<attn::MAXD / attn::DC>)
DS_ATTN_KERNEL(attention_f32_d128, 2, attn::attention_simt<128 / attn::DC>)
DS_ATTN_KERNEL(attention_bf16, 1, attn::attention_tc<__nv_bfloat16, attn::MAXD / attn::TC>)
DS_ATTN_KERNEL(attention_bf16_d128, 2, attn::attention_tc<__nv_bfloat16, 128 / attn::TC>)
DS_ATTN_KERNEL(attention_f16, 1, attn::attention_tc<__half, attn::MAXD / attn::TC>)
DS_ATTN_KERNEL(attention_f16_d128, 2, attn::attention_tc<__half, 128 / attn::TC>)
