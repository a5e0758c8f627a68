// OpenMP thread count shared by every kernel file. Included before any
// instruction-set pragma, so its one definition keeps the baseline target.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace neurcore::cpu {

// nthreads > 0 is used as given; 0 means OpenMP's default (OMP_NUM_THREADS or all cores).
inline int resolve_threads(int nthreads) {
#ifdef _OPENMP
  return nthreads > 0 ? nthreads : omp_get_max_threads();
#else
  (void)nthreads;
  return 1;
#endif
}

}  // namespace neurcore::cpu
