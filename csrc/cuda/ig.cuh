// Fused integrated-gradients accumulation on a CUDA device (ig.cu). Device
// pointers, sizes and a stream; the launcher checks the launch and throws
// std::runtime_error on failure. neurcore.attribution._fused has checked shapes and dtypes.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace neurcore::cuda {

// grads [T][S][U][C][P], weights [S], delta [U][C][P], all C-contiguous, on one device. Adds, in place:
//   reduce_spatial:  out [T][U][C]    += sum_s weights[s] * sum_p delta[u][c][p] * grads[t][s][u][c][p]
//   otherwise:       out [T][U][C][P] += delta[u][c][p] * sum_s weights[s] * grads[t][s][u][c][p]
// One pass over grads. Sums are kept in the input precision (float for float, double for double),
// with fused multiply-adds. When the output is too small to fill the device, the steps (and, in
// reduce mode, the positions) are split over blocks that atomicAdd their partial sums into out,
// so the summation order, and the last bits of a float result, can vary from run to run.
// Any size may be 0 (then nothing is launched).
template <class T>
void ig_accumulate(const T* grads, const T* weights, const T* delta, T* out, int64_t n_targets, int64_t n_steps,
                   int64_t n_examples, int64_t n_channels, int64_t n_positions, bool reduce_spatial,
                   cudaStream_t stream);

extern template void ig_accumulate<float>(const float*, const float*, const float*, float*, int64_t, int64_t,
                                          int64_t, int64_t, int64_t, bool, cudaStream_t);
extern template void ig_accumulate<double>(const double*, const double*, const double*, double*, int64_t, int64_t,
                                           int64_t, int64_t, int64_t, bool, cudaStream_t);

}  // namespace neurcore::cuda
