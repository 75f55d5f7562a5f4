// Fused scoring: impute + scale + nearest centroid + logistic propensity, one pass.
//
// Per row i (X column-major with leading dimension ld >= n, element (i, j) at
// X[j * ld + i], so one-thread-per-row reads of one column are coalesced; ld > n lets
// the caller score the first n rows of a bigger staging buffer without a repack):
//   missing: x is NaN, ±inf, or finite with |x| > MAX_INPUT_ABS (1e15, beyond which
//            float64 no longer holds every integer); all imputed like NaN, the last two
//            flagged (the host applies its bad-row policy; no separate pass on the host)
//   segmenter head:  zs[j] = (missing ? fill_s[j] : x) * a_s[j] + d_s[j]
//                    d2[c] = sum_j (zs[j] - C[c, j])^2            C is (k, F) row-major
//                    segment  = first c with the smallest d2 (a NaN d2 counts as the
//                               smallest, like numpy.argmin, so bad rows stay visible)
//                    distance = sqrt(d2 < 0 ? 0 : d2)             NaN stays NaN
//   propensity head: zp[j] = (missing ? fill_p[j] : x) * a_p[j] + d_p[j]
//                    logit = sum_j zp[j] * w[j] + b
//                    p = logit >= 0 ? 1 / (1 + e) : e / (1 + e),  e = exp(-|logit|)
//                    (e never overflows, so ±1000 gives exactly 1 / 0 with no inf/inf)
//   categoricals:    for each of n_cat columns q, l = levels[i * n_cat + q] (a global
//                    level index, row-major (n, n_cat)); logit += cat_logit[l] and
//                    d2[c] += cat_dist[c * n_levels + l] (for a one-hot block that term is
//                    1 - 2 c[l] + sum c^2), after the numeric features, in column order
//   flags:           inf_col[i] = first j with x = ±inf or |x| > MAX_INPUT_ABS, or -1
//                    nulls[j]  += number of rows whose x[j] is NaN (±inf not counted)
// Arithmetic is in T (float or double); outputs are float32 / int32; nulls is a
// uint64 vector of F counters the caller zeroes before the launch (it accumulates).
//
// Launch: 1-D grid-stride over rows, BLOCK threads (a multiple of 32), dynamic shared
// memory of
//   8 * F + (7 * F + k_pad * F) * sizeof(T) bytes, k_pad = k rounded up to K_TILE,
// holding per-block null counters (first, so every T array stays 8-byte aligned),
// the seven per-feature vectors and the centroids (zero-padded rows). Null counting
// is warp-aggregated: for each feature the warp takes one __ballot_sync of its NaN
// lanes and lane 0 adds __popc of it to the block's shared counter (one shared atomic
// per warp and feature instead of one per NaN, which serialised 32 lanes on one
// address on mostly-null columns); the block adds its counters to nulls once, so a
// column full of NaN costs one global atomic per block, not one per row. For the
// ballots every warp runs the row loop in step: the loop is over block-uniform row
// bases and lanes past n compute on a dummy value but store nothing.
// Every thread of a block reads the same parameter address at the same time,
// which shared memory serves as a broadcast.
//
// k and F are runtime values. Distances are accumulated in registers for K_TILE
// centroids at a time; k <= K_TILE (the usual k ~ 8) reads each row once, larger
// k re-reads the row once per extra tile (mostly from L1/L2). The host side checks
// the shared-memory footprint against the device's opt-in limit and raises the
// kernel's cudaFuncAttributeMaxDynamicSharedMemorySize above the default 48 KiB when
// a model needs it (k = 64, F = 100 in float64: 57.6 KB; up to 227 KB on H100/H200).
//
// Built with --fmad=false (kernels/_loader.py COMPILE_OPTIONS): no multiply-add is
// contracted into an FMA, so x * a + d and acc += diff * diff round twice exactly as
// in the NumPy twin and the numba CPU kernel, and float64 results equal the CPU's bit
// for bit up to the logit (the only fma instructions left in the PTX are inside
// libdevice's exp). exp itself is libdevice's here and glibc's on the CPU: they differ
// by 1 ulp on ~6 % of float64 inputs, so float64 propensities may differ in the last
// bit on a few % of rows, while the float32 propensity written out was measured equal
// on 45M of 45M rows (issue 23). Segments and distances do not involve exp: identical.
//
// Self-contained on purpose (no #include): it must compile under NVRTC, which has
// no system headers, as well as under nvcc.

namespace engine_kernels {

constexpr int K_TILE = 8;
// Same constant as kernels/score_rows.py MAX_INPUT_ABS and the CPU kernel.
constexpr double MAX_INPUT_ABS = 1e15;

template <typename T>
__device__ __forceinline__ bool is_nan(T x) {
    // IEEE NaN test; valid because these sources are never built with fast-math.
    return x != x;
}

__device__ __forceinline__ float exp_t(float x) { return expf(x); }
__device__ __forceinline__ double exp_t(double x) { return exp(x); }
__device__ __forceinline__ float sqrt_t(float x) { return sqrtf(x); }
__device__ __forceinline__ double sqrt_t(double x) { return sqrt(x); }
__device__ __forceinline__ float abs_t(float x) { return fabsf(x); }
__device__ __forceinline__ double abs_t(double x) { return fabs(x); }

template <typename T>
__device__ __forceinline__ void score_rows_impl(
    const T* __restrict__ X,
    long long n,
    long long ld,
    int n_features,
    int k,
    const T* __restrict__ fill_s,
    const T* __restrict__ a_s,
    const T* __restrict__ d_s,
    const T* __restrict__ centroids,
    const T* __restrict__ fill_p,
    const T* __restrict__ a_p,
    const T* __restrict__ d_p,
    const T* __restrict__ coef,
    T intercept,
    int* __restrict__ segment,
    float* __restrict__ distance,
    float* __restrict__ propensity,
    int* __restrict__ inf_col,
    unsigned long long* __restrict__ nulls,
    const int* __restrict__ levels,
    int n_cat,
    const T* __restrict__ cat_logit,
    const T* __restrict__ cat_dist,
    int n_levels) {
    extern __shared__ __align__(16) unsigned char smem_raw[];
    const int F = n_features;
    unsigned long long* s_nulls = reinterpret_cast<unsigned long long*>(smem_raw);
    T* smem = reinterpret_cast<T*>(smem_raw + sizeof(unsigned long long) * F);
    const int k_pad = ((k + K_TILE - 1) / K_TILE) * K_TILE;
    T* s_fill_s = smem;
    T* s_a_s = s_fill_s + F;
    T* s_d_s = s_a_s + F;
    T* s_fill_p = s_d_s + F;
    T* s_a_p = s_fill_p + F;
    T* s_d_p = s_a_p + F;
    T* s_coef = s_d_p + F;
    T* s_cent = s_coef + F;  // k_pad x F, row-major, rows >= k are zero

    for (int j = threadIdx.x; j < F; j += blockDim.x) {
        s_nulls[j] = 0ULL;
        s_fill_s[j] = fill_s[j];
        s_a_s[j] = a_s[j];
        s_d_s[j] = d_s[j];
        s_fill_p[j] = fill_p[j];
        s_a_p[j] = a_p[j];
        s_d_p[j] = d_p[j];
        s_coef[j] = coef[j];
    }
    const int n_cent = k_pad * F;
    const int n_real = k * F;
    for (int t = threadIdx.x; t < n_cent; t += blockDim.x) {
        // Padding rows make the K_TILE inner loop branch-free; their sums are ignored.
        s_cent[t] = t < n_real ? centroids[t] : T(0);
    }
    __syncthreads();

    const long long stride = (long long)gridDim.x * blockDim.x;
    const bool lane0 = (threadIdx.x & 31u) == 0u;
    // Block-uniform loop bounds keep each warp converged for __ballot_sync (see header).
    for (long long base = (long long)blockIdx.x * blockDim.x; base < n; base += stride) {
        const long long i = base + threadIdx.x;
        const bool valid = i < n;
        T logit = T(0);
        T best = T(0);
        int best_c = 0;
        int first_inf = -1;
        for (int c0 = 0; c0 < k; c0 += K_TILE) {
            T acc[K_TILE];
#pragma unroll
            for (int q = 0; q < K_TILE; ++q) acc[q] = T(0);
            const T* cent_tile = s_cent + c0 * F;
            for (int j = 0; j < F; ++j) {
                const T x = valid ? X[(long long)j * ld + i] : T(0);
                // False for NaN, ±inf and values too large to score (no fast-math: NaN compares false).
                const bool miss = !(abs_t(x) <= T(MAX_INPUT_ABS));
                const T zs = (miss ? s_fill_s[j] : x) * s_a_s[j] + s_d_s[j];
#pragma unroll
                for (int q = 0; q < K_TILE; ++q) {
                    const T diff = zs - cent_tile[q * F + j];
                    acc[q] += diff * diff;
                }
                if (c0 == 0) {
                    // Propensity and the flags ride on the first pass, so the row is read
                    // once when k <= K_TILE.
                    const T zp = (miss ? s_fill_p[j] : x) * s_a_p[j] + s_d_p[j];
                    logit += zp * s_coef[j];
                    const unsigned nan_lanes = __ballot_sync(0xffffffffu, is_nan(x));
                    if (lane0 && nan_lanes != 0u) {
                        atomicAdd(&s_nulls[j], (unsigned long long)__popc(nan_lanes));
                    }
                    if (miss && !is_nan(x) && first_inf < 0) first_inf = j;
                }
            }
            // Categorical levels: looked-up terms, read through the read-only cache
            // (the tables are small and every row of a block hits the same few entries).
            for (int q = 0; q < n_cat; ++q) {
                // Lanes past n stay in the loop for the ballots but read no level (a partial
                // last block would read past the level buffer); level 0 is always a valid index.
                const int l = valid ? levels[i * n_cat + q] : 0;
#pragma unroll
                for (int t = 0; t < K_TILE; ++t) {
                    if (c0 + t < k) acc[t] += __ldg(&cat_dist[(long long)(c0 + t) * n_levels + l]);
                }
                if (c0 == 0) logit += __ldg(&cat_logit[l]);
            }
            // Sequential scan in centroid order: lowest index wins exact ties, and the
            // first NaN wins over any number (numpy.argmin semantics, mirrored by the twin).
#pragma unroll
            for (int q = 0; q < K_TILE; ++q) {
                const int c = c0 + q;
                if (c < k) {
                    const T d = acc[q];
                    if (c == 0 || d < best || (is_nan(d) && !is_nan(best))) {
                        best = d;
                        best_c = c;
                    }
                }
            }
        }
        if (valid) {
            logit += intercept;
            const T e = exp_t(-abs_t(logit));
            const T p = logit >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
            const T d2 = best < T(0) ? T(0) : best;
            segment[i] = best_c;
            distance[i] = static_cast<float>(sqrt_t(d2));
            propensity[i] = static_cast<float>(p);
            inf_col[i] = first_inf;
        }
    }
    __syncthreads();
    for (int j = threadIdx.x; j < F; j += blockDim.x) {
        if (s_nulls[j] != 0ULL) atomicAdd(&nulls[j], s_nulls[j]);
    }
}

}  // namespace engine_kernels

#define ENGINE_SCORE_ROWS_ENTRY(NAME, T)                                                   \
    extern "C" __global__ void NAME(                                                       \
        const T* __restrict__ X, long long n, long long ld, int n_features, int k,         \
        const T* __restrict__ fill_s, const T* __restrict__ a_s, const T* __restrict__ d_s, \
        const T* __restrict__ centroids,                                                   \
        const T* __restrict__ fill_p, const T* __restrict__ a_p, const T* __restrict__ d_p, \
        const T* __restrict__ coef, T intercept,                                           \
        int* __restrict__ segment, float* __restrict__ distance,                           \
        float* __restrict__ propensity, int* __restrict__ inf_col,                         \
        unsigned long long* __restrict__ nulls,                                            \
        const int* __restrict__ levels, int n_cat,                                         \
        const T* __restrict__ cat_logit, const T* __restrict__ cat_dist, int n_levels) {   \
        engine_kernels::score_rows_impl<T>(X, n, ld, n_features, k, fill_s, a_s, d_s,      \
                                           centroids, fill_p, a_p, d_p, coef, intercept,   \
                                           segment, distance, propensity, inf_col, nulls,  \
                                           levels, n_cat, cat_logit, cat_dist, n_levels);  \
    }

ENGINE_SCORE_ROWS_ENTRY(engine_score_rows_f32, float)
ENGINE_SCORE_ROWS_ENTRY(engine_score_rows_f64, double)
