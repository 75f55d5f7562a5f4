// Fused top-N offers per customer: kernels/topn_offers.py is the loader and the NumPy twin.
//
// One thread per row. For each offer t (in catalogue order): logit = bias[t] + x . W[:, t]
// + sum over categorical columns of catW[level, t]; p = sigmoid(logit) (Platt calibration
// is folded into W, bias and catW); ev = p * value[t] - cost[t]; score = ev - lam[t]. The
// offer is a candidate where allowed[row, t] != 0, ev >= min_ev and (lam[t] == 0 or
// score > 0). A running top-`keep` list of (score, t) lives in registers/local memory;
// a later offer displaces an earlier one only with a strictly larger score, so ties go
// to the earlier offer. No n x T matrix is ever written.
//
// X is row-major (n, F) imputed features, levels row-major (n, Q) int32, W row-major
// (F, T), catW row-major (L, T), allowed row-major (n, T) uint8. Outputs row-major
// (n, keep): idx int32 (-1 = empty slot), p float32, ev double, reason int32 (2f: feature f high,
// 2f+1: low, 2F+l: categorical level l (global index), -1: none; see kernels/topn_offers.py).
// catbase row-major (Q, T): each categorical column's reference term per offer (+inf: the column
// is no reason candidate).

#define TOPN_MAX_KEEP 26

// exp in the row's precision (the only library call: tests/kernels/test_compile.py stubs it
// to check that nothing else contracts into an FMA).
__device__ __forceinline__ float topn_exp(float x) { return expf(x); }
__device__ __forceinline__ double topn_exp(double x) { return exp(x); }

template <typename T>
__device__ void topn_offers_row(
    const T* __restrict__ X, const int* __restrict__ levels, const T* __restrict__ W,
    const T* __restrict__ bias, const T* __restrict__ catW, const T* __restrict__ value,
    const T* __restrict__ cost, const T* __restrict__ lam, const unsigned char* __restrict__ allowed,
    long long row, int n_features, int n_cat, int n_offers, T min_ev, int keep, const T* __restrict__ mean,
    const T* __restrict__ catbase, int* __restrict__ out_idx, float* __restrict__ out_p, double* __restrict__ out_ev, int* __restrict__ out_reason)
{
    T best_s[TOPN_MAX_KEEP];
    T best_ev[TOPN_MAX_KEEP];
    float best_p[TOPN_MAX_KEEP];
    int best_t[TOPN_MAX_KEEP];
    int filled = 0;
    const T* x = X + row * n_features;
    const unsigned char* ok = allowed + row * n_offers;
    for (int t = 0; t < n_offers; ++t) {
        if (!ok[t]) continue;
        T logit = bias[t];
        for (int f = 0; f < n_features; ++f) logit += x[f] * W[(long long)f * n_offers + t];
        for (int q = 0; q < n_cat; ++q) logit += catW[(long long)levels[row * n_cat + q] * n_offers + t];
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
                T d = x[f] - mean[f];
                T c = d * W[(long long)f * n_offers + t];
                if (c > top) { top = c; code = 2 * f + (d <= T(0) ? 1 : 0); }
            }
            for (int q = 0; q < n_cat; ++q) {
                int l = levels[row * n_cat + q];
                T c = catW[(long long)l * n_offers + t] - catbase[(long long)q * n_offers + t];
                if (c > top) { top = c; code = 2 * n_features + l; }
            }
            out_reason[o] = code;
        }
        else { out_idx[o] = -1; out_p[o] = 0.0f; out_ev[o] = 0.0; out_reason[o] = -1; }
    }
}

extern "C" __global__ void engine_topn_offers_f64(
    const double* X, const int* levels, const double* W, const double* bias, const double* catW,
    const double* value, const double* cost, const double* lam, const unsigned char* allowed,
    long long n, int n_features, int n_cat, int n_offers, double min_ev, int keep, const double* mean,
    const double* catbase, int* out_idx, float* out_p, double* out_ev, int* out_reason)
{
    for (long long row = blockIdx.x * (long long)blockDim.x + threadIdx.x; row < n;
         row += (long long)gridDim.x * blockDim.x)
        topn_offers_row<double>(X, levels, W, bias, catW, value, cost, lam, allowed, row, n_features,
                                n_cat, n_offers, min_ev, keep, mean, catbase, out_idx, out_p, out_ev, out_reason);
}

extern "C" __global__ void engine_topn_offers_f32(
    const float* X, const int* levels, const float* W, const float* bias, const float* catW,
    const float* value, const float* cost, const float* lam, const unsigned char* allowed,
    long long n, int n_features, int n_cat, int n_offers, float min_ev, int keep, const float* mean,
    const float* catbase, int* out_idx, float* out_p, double* out_ev, int* out_reason)
{
    for (long long row = blockIdx.x * (long long)blockDim.x + threadIdx.x; row < n;
         row += (long long)gridDim.x * blockDim.x)
        topn_offers_row<float>(X, levels, W, bias, catW, value, cost, lam, allowed, row, n_features,
                               n_cat, n_offers, min_ev, keep, mean, catbase, out_idx, out_p, out_ev, out_reason);
}
