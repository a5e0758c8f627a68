// Fused integrated-gradients accumulation (declared in ig.cuh).
//
// For one target t, grads[t] is S slices of N = U * C * P contiguous values; R = U * C rows of P.
//
// Elementwise mode (out [T][U][C][P]): one thread per output element (t, n), looping over the
// steps; at each step a warp reads 32 consecutive n, so every load is coalesced.
//
// Reduce mode (out [T][U][C]): a group of G lanes per row (G = 1, 2, ..., 32, the power of two
// closest above P, at most a warp), so that a warp reads 32 consecutive values whether P is 1, 7
// or 3136. Each lane keeps sum_s w[s] * g[s][p] for its positions p, multiplies by delta[p], and
// the group adds its lanes with shuffles.
//
// Both modes split the steps (reduce mode first the positions of long rows) over gridDim.y /
// more blocks when the output alone would not give every SM enough warps; split parts atomicAdd
// into out, which is accumulated in place anyway, so nothing needs zeroing.
#include <algorithm>
#include <stdexcept>
#include <string>

#include "check.cuh"
#include "ig.cuh"

namespace neurcore::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxGrid = int64_t{1} << 20;
constexpr int64_t kMinStepsPerSplit = 4;      // steps per split part, so atomics stay rare
constexpr int64_t kMinPositionsPerChunk = 256;  // positions per part of a long row (8 per lane)

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Warps that keep the device busy: 2048 resident threads on each multiprocessor of sm_80 / sm_90.
int64_t target_warps() {
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  return int64_t(std::max(sms, 1)) * 64;
}

template <class T>
__global__ void __launch_bounds__(kThreads)
    ig_elementwise_kernel(const T* __restrict__ grads, const T* __restrict__ weights, const T* __restrict__ delta,
                          T* __restrict__ out, int64_t n_targets, int64_t S, int64_t N, int64_t steps_per_split) {
  const int64_t s0 = int64_t(blockIdx.y) * steps_per_split;
  const int64_t s1 = min(S, s0 + steps_per_split);
  const bool split = gridDim.y > 1;
  const int64_t total = n_targets * N;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / N, n = i - t * N;
    const T* g = grads + (t * S + s0) * N + n;
    T acc = 0;
#pragma unroll 8
    for (int64_t s = s0; s < s1; ++s, g += N) acc = fma(__ldg(weights + s), __ldg(g), acc);
    const T inc = __ldg(delta + n) * acc;
    if (split)
      atomicAdd(out + i, inc);
    else
      out[i] += inc;
  }
}

// G lanes per row, 32 / G rows per warp; each warp task is (group of rows, chunk of positions),
// gridDim.y splits the steps. Loop bounds are uniform across the warp so every lane reaches the
// shuffles; lanes past the last row or position add zeros.
template <class T, int G>
__global__ void __launch_bounds__(kThreads)
    ig_reduce_kernel(const T* __restrict__ grads, const T* __restrict__ weights, const T* __restrict__ delta,
                     T* __restrict__ out, int64_t n_targets, int64_t S, int64_t R, int64_t P,
                     int64_t positions_per_chunk, int64_t steps_per_split) {
  constexpr int kRowsPerWarp = 32 / G;
  const int lane = threadIdx.x % 32, sub = lane % G, slot = lane / G;
  const int64_t s0 = int64_t(blockIdx.y) * steps_per_split;
  const int64_t s1 = min(S, s0 + steps_per_split);
  const int64_t N = R * P, rows = n_targets * R;
  const int64_t chunks = (P + positions_per_chunk - 1) / positions_per_chunk;
  const bool split = gridDim.y > 1 || chunks > 1;
  const int64_t tasks = (rows + kRowsPerWarp - 1) / kRowsPerWarp * chunks;
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  for (int64_t task = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; task < tasks; task += warps) {
    const int64_t row = (task / chunks) * kRowsPerWarp + slot;
    const int64_t p0 = (task % chunks) * positions_per_chunk;
    const int64_t p1 = min(P, p0 + positions_per_chunk);
    T total = 0;
    if (row < rows) {
      const int64_t t = row / R, r = row - t * R;
      const T* g_row = grads + (t * S + s0) * N + r * P;
      const T* d_row = delta + r * P;
      for (int64_t p = p0 + sub; p < p1; p += G) {
        const T* g = g_row + p;
        T acc = 0;
#pragma unroll 8
        for (int64_t s = s0; s < s1; ++s, g += N) acc = fma(__ldg(weights + s), __ldg(g), acc);
        total = fma(__ldg(d_row + p), acc, total);
      }
    }
#pragma unroll
    for (int off = G / 2; off > 0; off >>= 1) total += __shfl_down_sync(0xffffffffu, total, off, G);
    if (sub == 0 && row < rows) {
      if (split)
        atomicAdd(out + row, total);
      else
        out[row] += total;
    }
  }
}

template <class T, int G>
void launch_reduce(const T* grads, const T* weights, const T* delta, T* out, int64_t n_targets, int64_t S,
                   int64_t R, int64_t P, cudaStream_t stream) {
  constexpr int kRowsPerWarp = 32 / G;
  const int64_t want = target_warps();
  const int64_t row_warps = cdiv(n_targets * R, kRowsPerWarp);
  // Long rows (a whole warp per row) are cut into chunks of positions first, then the steps are split.
  int64_t chunks = 1;
  if (G == 32 && row_warps < want) chunks = std::max<int64_t>(1, std::min(cdiv(want, row_warps),
                                                                          P / kMinPositionsPerChunk));
  const int64_t positions_per_chunk = cdiv(P, chunks);
  chunks = cdiv(P, positions_per_chunk);
  int64_t splits = 1;
  if (row_warps * chunks < want)
    splits = std::max<int64_t>(1, std::min({cdiv(want, row_warps * chunks), S / kMinStepsPerSplit, int64_t{65535}}));
  const int64_t steps_per_split = std::max<int64_t>(1, cdiv(S, splits));
  splits = std::max<int64_t>(1, cdiv(S, steps_per_split));
  const int64_t blocks = std::min(kMaxGrid, cdiv(row_warps * chunks, kWarps));
  ig_reduce_kernel<T, G><<<dim3(unsigned(blocks), unsigned(splits)), kThreads, 0, stream>>>(
      grads, weights, delta, out, n_targets, S, R, P, positions_per_chunk, steps_per_split);
  check_launch("ig_accumulate (reduce_spatial=True)");
}

}  // namespace

template <class T>
void ig_accumulate(const T* grads, const T* weights, const T* delta, T* out, int64_t n_targets, int64_t n_steps,
                   int64_t n_examples, int64_t n_channels, int64_t n_positions, bool reduce_spatial,
                   cudaStream_t stream) {
  const int64_t S = n_steps, R = n_examples * n_channels, P = n_positions, N = R * P;
  if (n_targets == 0 || N == 0) return;
  if (!reduce_spatial) {
    const int64_t total = n_targets * N;
    const int64_t want = target_warps();
    const int64_t warps = cdiv(total, 32);
    int64_t splits = 1;
    if (warps < want)
      splits = std::max<int64_t>(1, std::min({cdiv(want, warps), S / kMinStepsPerSplit, int64_t{65535}}));
    const int64_t steps_per_split = std::max<int64_t>(1, cdiv(S, splits));
    splits = std::max<int64_t>(1, cdiv(S, steps_per_split));
    const int64_t blocks = std::min(kMaxGrid, cdiv(total, kThreads));
    ig_elementwise_kernel<T><<<dim3(unsigned(blocks), unsigned(splits)), kThreads, 0, stream>>>(
        grads, weights, delta, out, n_targets, S, N, steps_per_split);
    check_launch("ig_accumulate (reduce_spatial=False)");
    return;
  }
  if (P <= 1)
    launch_reduce<T, 1>(grads, weights, delta, out, n_targets, S, R, P, stream);
  else if (P <= 2)
    launch_reduce<T, 2>(grads, weights, delta, out, n_targets, S, R, P, stream);
  else if (P <= 4)
    launch_reduce<T, 4>(grads, weights, delta, out, n_targets, S, R, P, stream);
  else if (P <= 8)
    launch_reduce<T, 8>(grads, weights, delta, out, n_targets, S, R, P, stream);
  else if (P <= 16)
    launch_reduce<T, 16>(grads, weights, delta, out, n_targets, S, R, P, stream);
  else
    launch_reduce<T, 32>(grads, weights, delta, out, n_targets, S, R, P, stream);
}

template void ig_accumulate<float>(const float*, const float*, const float*, float*, int64_t, int64_t, int64_t,
                                   int64_t, int64_t, bool, cudaStream_t);
template void ig_accumulate<double>(const double*, const double*, const double*, double*, int64_t, int64_t,
                                    int64_t, int64_t, int64_t, bool, cudaStream_t);

}  // namespace neurcore::cuda
