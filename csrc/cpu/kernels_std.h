// Every header the kernels use from outside the project, included before an
// instruction-set pragma (see kernels_avx512.cpp) so that it keeps the baseline target.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "threads.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif
