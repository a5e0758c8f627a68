// Memory-bound elementwise kernels on packed words; the compiler's
// vectorisation at the baseline target is enough to reach memory bandwidth.
#include <cstdint>
#include <cstring>

#include "kernels.h"
#include "threads.h"

namespace neurcore::cpu {
namespace {

template <BinaryOp Op>
inline uint64_t apply(uint64_t a, uint64_t b) {
  if constexpr (Op == BinaryOp::kAnd) return a & b;
  if constexpr (Op == BinaryOp::kOr) return a | b;
  return a & ~b;
}

template <BinaryOp Op>
void binary_dense_op(const uint64_t* a, int64_t na, const uint64_t* b, int64_t nb, int64_t k,
                     uint64_t* out, int nthreads) {
  const int64_t n = na > nb ? na : nb;
  const int64_t sa = na == 1 ? 0 : k, sb = nb == 1 ? 0 : k;
#pragma omp parallel for schedule(static) num_threads(resolve_threads(nthreads)) if (n * k > (1 << 16))
  for (int64_t r = 0; r < n; ++r) {
    const uint64_t* pa = a + r * sa;
    const uint64_t* pb = b + r * sb;
    uint64_t* po = out + r * k;
    for (int64_t w = 0; w < k; ++w) po[w] = apply<Op>(pa[w], pb[w]);
  }
}

template <BinaryOp Op>
inline void combine_one(const uint64_t* pa, const uint64_t* pb, int64_t wpi, uint64_t* po) {
  for (int64_t w = 0; w < wpi; ++w) po[w] = apply<Op>(pa ? pa[w] : 0, pb ? pb[w] : 0);
}

}  // namespace

void binary_dense(BinaryOp op, const uint64_t* a, int64_t na, const uint64_t* b, int64_t nb,
                  int64_t k, uint64_t* out, int nthreads) {
  switch (op) {
    case BinaryOp::kAnd: return binary_dense_op<BinaryOp::kAnd>(a, na, b, nb, k, out, nthreads);
    case BinaryOp::kOr: return binary_dense_op<BinaryOp::kOr>(a, na, b, nb, k, out, nthreads);
    case BinaryOp::kAndNot: return binary_dense_op<BinaryOp::kAndNot>(a, na, b, nb, k, out, nthreads);
  }
}

void combine_blocks(const uint8_t* ops, const uint64_t* a, const int64_t* ia, const uint64_t* b,
                    const int64_t* ib, int64_t m, int64_t wpi, uint64_t* out, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(resolve_threads(nthreads)) if (m * wpi > (1 << 16))
  for (int64_t t = 0; t < m; ++t) {
    const uint64_t* pa = ia[t] >= 0 ? a + ia[t] * wpi : nullptr;
    const uint64_t* pb = ib[t] >= 0 ? b + ib[t] * wpi : nullptr;
    uint64_t* po = out + t * wpi;
    switch (static_cast<BinaryOp>(ops[t])) {
      case BinaryOp::kAnd: combine_one<BinaryOp::kAnd>(pa, pb, wpi, po); break;
      case BinaryOp::kOr: combine_one<BinaryOp::kOr>(pa, pb, wpi, po); break;
      case BinaryOp::kAndNot: combine_one<BinaryOp::kAndNot>(pa, pb, wpi, po); break;
    }
  }
}

void not_blocks(const uint64_t* a, int64_t m, int64_t wpi, int64_t pixels_per_image, uint64_t* out,
                int nthreads) {
  const int64_t tail_bits = pixels_per_image % 64;
  const uint64_t last_mask = tail_bits == 0 ? ~uint64_t{0} : (uint64_t{1} << tail_bits) - 1;
#pragma omp parallel for schedule(static) num_threads(resolve_threads(nthreads)) if (m * wpi > (1 << 16))
  for (int64_t t = 0; t < m; ++t) {
    const uint64_t* pa = a + t * wpi;
    uint64_t* po = out + t * wpi;
    for (int64_t w = 0; w < wpi; ++w) po[w] = ~pa[w];
    po[wpi - 1] &= last_mask;
  }
}

void nonzero_blocks(const uint64_t* words, int64_t m, int64_t wpi, uint8_t* out, int nthreads) {
#pragma omp parallel for schedule(static) num_threads(resolve_threads(nthreads)) if (m * wpi > (1 << 16))
  for (int64_t t = 0; t < m; ++t) {
    const uint64_t* p = words + t * wpi;
    uint64_t any = 0;
    for (int64_t w = 0; w < wpi; ++w) any |= p[w];
    out[t] = any != 0;
  }
}

}  // namespace neurcore::cpu
