// Fused integrated-gradients accumulation (declared in ig.h).
//
// Layout: for one target t, grads[t] is S rows of N = U * C * P contiguous values. Work is split
// into tiles of whole (u, c) rows of one target, about kTileElems values each, so a tile's float64
// accumulator stays in L1/L2 while the S slices of grads stream through it: for each step s the
// tile reads one contiguous run of grads (acc[i] += w[s] * g[s][i], which the compiler
// vectorises), then applies delta once. Threads take whole tiles, so no two write one output.
#include "ig.h"

#include <algorithm>
#include <vector>

#include "threads.h"

namespace neurcore::cpu {
namespace {

constexpr int64_t kTileElems = 4096;  // 32 KiB of float64 accumulators per thread
constexpr int kLanes = 8;             // independent partial sums in the spatial reduction

// acc[i] += w * g[i] for i < n, in double.
template <class T>
inline void axpy(double* __restrict__ acc, const T* __restrict__ g, double w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += w * static_cast<double>(g[i]);
}

// Four steps at once (g, g + stride, ...): a quarter of the accumulator loads and stores, and four
// read streams in flight.
template <class T>
inline void axpy4(double* __restrict__ acc, const T* __restrict__ g, int64_t stride, const double* w, int64_t n) {
  const T* __restrict__ g0 = g;
  const T* __restrict__ g1 = g + stride;
  const T* __restrict__ g2 = g + 2 * stride;
  const T* __restrict__ g3 = g + 3 * stride;
  const double w0 = w[0], w1 = w[1], w2 = w[2], w3 = w[3];
  for (int64_t i = 0; i < n; ++i)
    acc[i] += w0 * static_cast<double>(g0[i]) + w1 * static_cast<double>(g1[i]) +
              (w2 * static_cast<double>(g2[i]) + w3 * static_cast<double>(g3[i]));
}

// sum_i d[i] * acc[i] with kLanes independent partial sums (vectorisable without -ffast-math).
template <class T>
inline double dot(const T* __restrict__ d, const double* __restrict__ acc, int64_t n) {
  double part[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int k = 0; k < kLanes; ++k) part[k] += static_cast<double>(d[i + k]) * acc[i + k];
  double s = 0.0;
  for (; i < n; ++i) s += static_cast<double>(d[i]) * acc[i];
  for (int k = 0; k < kLanes; ++k) s += part[k];
  return s;
}

}  // namespace

template <class T>
void ig_accumulate(const T* grads, const T* weights, const T* delta, T* out, int64_t n_targets,
                   int64_t n_steps, int64_t n_examples, int64_t n_channels, int64_t n_positions,
                   bool reduce_spatial, int nthreads) {
  const int64_t P = n_positions, R = n_examples * n_channels, N = R * P, S = n_steps;
  if (n_targets == 0 || N == 0) return;
  const int64_t rows_per_tile = std::max<int64_t>(1, kTileElems / P);
  const int64_t tiles_per_target = (R + rows_per_tile - 1) / rows_per_tile;
  const int64_t tasks = n_targets * tiles_per_target;
  const int64_t tile_len = std::min(rows_per_tile, R) * P;
  const bool parallel = n_targets * (S + 1) * N > (int64_t{1} << 16) && tasks > 1;

#pragma omp parallel num_threads(resolve_threads(nthreads)) if (parallel)
  {
    std::vector<double> buffer(static_cast<size_t>(tile_len));
    double* acc = buffer.data();
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t t = task / tiles_per_target;
      const int64_t r0 = (task % tiles_per_target) * rows_per_tile;
      const int64_t r1 = std::min(R, r0 + rows_per_tile);
      const int64_t n0 = r0 * P, len = (r1 - r0) * P;
      std::fill(acc, acc + len, 0.0);
      const T* g = grads + t * S * N + n0;
      int64_t s = 0;
      for (; s + 4 <= S; s += 4) {
        const double w4[4] = {double(weights[s]), double(weights[s + 1]), double(weights[s + 2]),
                              double(weights[s + 3])};
        axpy4(acc, g + s * N, N, w4, len);
      }
      for (; s < S; ++s) axpy(acc, g + s * N, static_cast<double>(weights[s]), len);
      const T* d = delta + n0;
      if (reduce_spatial) {
        T* o = out + t * R + r0;
        for (int64_t r = 0; r < r1 - r0; ++r)
          o[r] = static_cast<T>(static_cast<double>(o[r]) + dot(d + r * P, acc + r * P, P));
      } else {
        T* __restrict__ o = out + t * N + n0;
        for (int64_t i = 0; i < len; ++i)
          o[i] = static_cast<T>(static_cast<double>(o[i]) + static_cast<double>(d[i]) * acc[i]);
      }
    }
  }
}

template void ig_accumulate<float>(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, bool, int);
template void ig_accumulate<double>(const double*, const double*, const double*, double*, int64_t, int64_t,
                                    int64_t, int64_t, int64_t, bool, int);

}  // namespace neurcore::cpu
