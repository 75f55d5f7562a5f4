// Column-wise affine rescaling with NaN imputation:
//   Z[i, j] = (isnan(X[i, j]) ? fill[j] : X[i, j]) - mean[j]) * inv_scale[j]
//
// Layout: X and Z are column-major (Fortran order), element (i, j) at [j * n + i],
// so that consecutive threads (consecutive rows of one column) touch consecutive
// addresses and every load and store is coalesced.
//
// Launch: 2-D grid. blockIdx.y (grid-stride) walks columns, so each thread reads
// the three column parameters once per column instead of once per element and
// needs no integer division; blockIdx.x / threadIdx.x (grid-stride) walk rows.
// n is a 64-bit count (tens of millions of rows times F columns overflow int).
//
// Min-max scaling is the same kernel with mean = lo and inv_scale = 1 / (hi - lo);
// kernels/standardize.py reuses it for that instead of shipping a second kernel.
//
// Only ±inf-agnostic arithmetic is used: ±inf is not "missing" and flows through.
// Self-contained on purpose (no #include): it must compile under NVRTC, which has
// no system headers, as well as under nvcc.

namespace engine_kernels {

// x != x is the IEEE test for NaN; it holds because these sources are never
// compiled with fast-math (the loader passes only -std=c++17).
template <typename T>
__device__ __forceinline__ bool is_missing(T x) {
    return x != x;
}

template <typename T>
__device__ __forceinline__ void standardize_impl(
    const T* __restrict__ X,
    const T* __restrict__ fill,
    const T* __restrict__ mean,
    const T* __restrict__ inv_scale,
    T* __restrict__ Z,
    long long n,
    int n_features) {
    const long long row_start = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    const long long row_stride = (long long)gridDim.x * blockDim.x;
    for (int j = blockIdx.y; j < n_features; j += gridDim.y) {
        const T f = fill[j];
        const T m = mean[j];
        const T s = inv_scale[j];
        const T* __restrict__ xcol = X + (long long)j * n;
        T* __restrict__ zcol = Z + (long long)j * n;
        for (long long i = row_start; i < n; i += row_stride) {
            const T x = xcol[i];
            zcol[i] = ((is_missing(x) ? f : x) - m) * s;
        }
    }
}

}  // namespace engine_kernels

extern "C" __global__ void engine_standardize_f32(
    const float* __restrict__ X,
    const float* __restrict__ fill,
    const float* __restrict__ mean,
    const float* __restrict__ inv_scale,
    float* __restrict__ Z,
    long long n,
    int n_features) {
    engine_kernels::standardize_impl<float>(X, fill, mean, inv_scale, Z, n, n_features);
}

extern "C" __global__ void engine_standardize_f64(
    const double* __restrict__ X,
    const double* __restrict__ fill,
    const double* __restrict__ mean,
    const double* __restrict__ inv_scale,
    double* __restrict__ Z,
    long long n,
    int n_features) {
    engine_kernels::standardize_impl<double>(X, fill, mean, inv_scale, Z, n, n_features);
}
