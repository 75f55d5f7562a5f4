// Fused top-N offers per customer: kernels/topn_offers.py is the loader and the NumPy twin.
//
// One thread per row. For each offer t (in catalogue order): logit = bias[t] + x . W[:, t]
// + sum over categorical columns of catW[level, t]; p = sigmoid(logit) (Platt calibration
// is folded into W, bias and catW); ev = p * value[t] - cost[t]; score = ev - lam[t]. The
// offer is a candidate where it is allowed on the row, ev >= min_ev and (lam[t] == 0 or
// score > 0). A running top-`keep` list of (score, t) lives in registers/local memory;
// a later offer displaces an earlier one only with a strictly larger score, so ties go
// to the earlier offer. No n x T matrix is ever written.
//
// Layouts (chosen so that a warp's 32 threads, 32 consecutive rows, read consecutive bytes):
// * X: element (row, f) at X[row * x_row + f * x_col] (strides in elements). The engine passes
//   a Fortran block (x_row = 1, x_col = its leading dimension): each feature is one coalesced
//   read per warp. A C-ordered (n, F) array (x_row = F, x_col = 1) works too, uncoalesced.
// * impute != 0: a value that is NaN or +-inf is read as fill[f] (the model's imputation, as
//   the CPU path does before its kernel), in the logit and in the reason alike.
// * allowed: bit-packed. mask_row[t] = -1: offer t is allowed on every row; else r, and offer t
//   is allowed on a row where bit (row & 7) of byte allowed[r * mask_ld + (row >> 3)] is set
//   (numpy.packbits(..., bitorder="little") of each restricted offer's row vector). Eight
//   consecutive rows share a byte: one warp reads 4 bytes per offer.
// * levels row-major (n, Q) int32 global level indices, each in [0, n_levels) (checked on the
//   host before a launch: catW has n_levels rows); W row-major (F, T), catW row-major
//   (n_levels, T): every thread of a warp reads the same W[f, t] at once (one broadcast load).
// Outputs row-major (n, keep): idx int32 (-1 = empty slot), p float32, ev double, reason int32
// (2f: feature f high, 2f+1: low, 2F+l: categorical level l (global index), -1: none; see
// kernels/topn_offers.py). catbase row-major (Q, T): each categorical column's reference term
// per offer (+inf: the column is no reason candidate).

#define TOPN_MAX_KEEP 26

// exp in the row's precision (the only library call: tests/kernels/test_compile.py stubs it
// to check that nothing else contracts into an FMA).
__device__ __forceinline__ float topn_exp(float x) { return expf(x); }
__device__ __forceinline__ double topn_exp(double x) { return exp(x); }

// Feature f of a row, imputed: v - v is 0 for every finite v and NaN for NaN and +-inf.
template <typename T>
__device__ __forceinline__ T topn_x(const T* __restrict__ x, long long x_col, int f,
                                    const T* __restrict__ fill, int impute)
{
    T v = x[(long long)f * x_col];
    if (impute && !(v - v == T(0))) v = fill[f];
    return v;
}

template <typename T>
__device__ void topn_offers_row(
    const T* __restrict__ X, long long x_row, long long x_col, const T* __restrict__ fill, int impute,
    const int* __restrict__ levels, const T* __restrict__ W,
    const T* __restrict__ bias, const T* __restrict__ catW, const T* __restrict__ value,
    const T* __restrict__ cost, const T* __restrict__ lam, const unsigned char* __restrict__ allowed,
    long long mask_ld, const int* __restrict__ mask_row,
    long long row, int n_features, int n_cat, int n_offers, T min_ev, int keep, const T* __restrict__ mean,
    const T* __restrict__ catbase, int* __restrict__ out_idx, float* __restrict__ out_p, double* __restrict__ out_ev, int* __restrict__ out_reason)
{
    T best_s[TOPN_MAX_KEEP];
    T best_ev[TOPN_MAX_KEEP];
    float best_p[TOPN_MAX_KEEP];
    int best_t[TOPN_MAX_KEEP];
    int filled = 0;
    const T* x = X + row * x_row;
    const int* lv = levels + row * n_cat;
    const long long byte = row >> 3;
    const unsigned char bit = (unsigned char)(1u << (row & 7));
    for (int t = 0; t < n_offers; ++t) {
        const int r = mask_row[t];
        if (r >= 0 && !(allowed[(long long)r * mask_ld + byte] & bit)) continue;
        T logit = bias[t];
        for (int f = 0; f < n_features; ++f)
            logit += topn_x(x, x_col, f, fill, impute) * W[(long long)f * n_offers + t];
        for (int q = 0; q < n_cat; ++q) logit += catW[(long long)lv[q] * n_offers + t];
        T e = topn_exp(-fabs(logit));
        T p = logit >= 0 ? T(1) / (T(1) + e) : e / (T(1) + e);
        T ev = p * value[t] - cost[t];
        T s = ev - lam[t];
        if (!(ev >= min_ev) || (lam[t] != T(0) && !(s > T(0)))) continue;
        int pos = filled;
        while (pos > 0 && best_s[pos - 1] < s) --pos;   // strictly larger moves up: ties keep order
        if (pos >= keep) continue;
        int last = filled < keep ? filled : keep - 1;
        for (int j = last; j > pos; --j) {
            best_s[j] = best_s[j - 1]; best_ev[j] = best_ev[j - 1];
            best_p[j] = best_p[j - 1]; best_t[j] = best_t[j - 1];
        }
        best_s[pos] = s; best_ev[pos] = ev; best_p[pos] = (float)p; best_t[pos] = t;
        if (filled < keep) ++filled;
    }
    for (int j = 0; j < keep; ++j) {
        long long o = row * keep + j;
        if (j < filled) {
            int t = best_t[j];
            out_idx[o] = t; out_p[o] = best_p[j]; out_ev[o] = (double)best_ev[j];
            // The reason: the term that raises this offer's logit most against the average
            // customer (numeric features, then categorical columns; the lower one on ties).
            int code = -1;
            T top = T(0);
            for (int f = 0; f < n_features; ++f) {
                T d = topn_x(x, x_col, f, fill, impute) - mean[f];
                T c = d * W[(long long)f * n_offers + t];
                if (c > top) { top = c; code = 2 * f + (d <= T(0) ? 1 : 0); }
            }
            for (int q = 0; q < n_cat; ++q) {
                int l = lv[q];
                T c = catW[(long long)l * n_offers + t] - catbase[(long long)q * n_offers + t];
                if (c > top) { top = c; code = 2 * n_features + l; }
            }
            out_reason[o] = code;
        }
        else { out_idx[o] = -1; out_p[o] = 0.0f; out_ev[o] = 0.0; out_reason[o] = -1; }
    }
}

#define TOPN_ENTRY(NAME, T)                                                                           \
extern "C" __global__ void NAME(                                                                      \
    const T* X, long long x_row, long long x_col, const T* fill, int impute, const int* levels,       \
    const T* W, const T* bias, const T* catW, const T* value, const T* cost, const T* lam,             \
    const unsigned char* allowed, long long mask_ld, const int* mask_row,                             \
    long long n, int n_features, int n_cat, int n_offers, T min_ev, int keep, const T* mean,          \
    const T* catbase, int* out_idx, float* out_p, double* out_ev, int* out_reason)                    \
{                                                                                                     \
    for (long long row = blockIdx.x * (long long)blockDim.x + threadIdx.x; row < n;                   \
         row += (long long)gridDim.x * blockDim.x)                                                    \
        topn_offers_row<T>(X, x_row, x_col, fill, impute, levels, W, bias, catW, value, cost, lam,    \
                           allowed, mask_ld, mask_row, row, n_features, n_cat, n_offers, min_ev, keep,\
                           mean, catbase, out_idx, out_p, out_ev, out_reason);                        \
}

TOPN_ENTRY(engine_topn_offers_f64, double)
TOPN_ENTRY(engine_topn_offers_f32, float)
