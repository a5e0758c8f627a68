// Fused integrated-gradients accumulation on the CPU (ig.cpp). Plain pointers
// and sizes; the caller (csrc/bindings.cpp) has checked shapes and dtypes.
#pragma once

#include <cstdint>

namespace neurcore::cpu {

// grads [T][S][U][C][P], weights [S], delta [U][C][P], all C-contiguous. Adds, in place:
//   reduce_spatial:  out [T][U][C]    += sum_s weights[s] * sum_p delta[u][c][p] * grads[t][s][u][c][p]
//   otherwise:       out [T][U][C][P] += delta[u][c][p] * sum_s weights[s] * grads[t][s][u][c][p]
// One pass over grads; sums are accumulated in double for both float and double inputs, and
// each output element is rounded once, when out + increment is stored. Both modes first form
// sum_s weights[s] * grads[t][s][u][c][p] (in double) and then multiply by delta.
// Any size may be 0 (then nothing is written). nthreads 0 means OpenMP's default.
template <class T>
void ig_accumulate(const T* grads, const T* weights, const T* delta, T* out, int64_t n_targets,
                   int64_t n_steps, int64_t n_examples, int64_t n_channels, int64_t n_positions,
                   bool reduce_spatial, int nthreads);

extern template void ig_accumulate<float>(const float*, const float*, const float*, float*, int64_t, int64_t,
                                          int64_t, int64_t, int64_t, bool, int);
extern template void ig_accumulate<double>(const double*, const double*, const double*, double*, int64_t,
                                           int64_t, int64_t, int64_t, int64_t, bool, int);

}  // namespace neurcore::cpu
