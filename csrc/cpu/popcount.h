// Popcount primitives, one policy per instruction set.
//
// Each translation unit kernels_<isa>.cpp defines NEURCORE_ISA_<ISA> and sets
// that instruction set as its target; only the policies its target allows are
// visible to it. Everything here has internal linkage (anonymous namespace), so
// copies compiled for different targets never merge at link time. A policy is a vector of kWords 64-bit words and
// an accumulator of popcounts of ANDed vectors:
//   Vec load(const uint64_t*)          unaligned load of kWords words
//   void accumulate(Acc&, Vec, Vec)    acc += popcount(a & b), lane-wise
//   int64_t reduce(Acc)                sum of the accumulator's lanes
//   int64_t popcount64(uint64_t)       scalar popcount, for tails
// plus the register tile MR x NR its dense micro-kernel uses.
#pragma once

#include "kernels_std.h"

namespace neurcore::cpu {
namespace {

// Portable SWAR popcount (Hacker's Delight 5-2); no instruction-set needs.
inline int64_t popcount64_swar(uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return static_cast<int64_t>((x * 0x0101010101010101ULL) >> 56);
}

// One word at a time, SWAR popcount: the fallback on any CPU.
struct IsaGeneric {
  static constexpr const char* kName = "generic";
  static constexpr int kWords = 1;
  static constexpr int MR = 2, NR = 4;
  using Vec = uint64_t;
  using Acc = int64_t;
  static inline Acc zero() { return 0; }
  static inline Vec load(const uint64_t* p) { return *p; }
  static inline void accumulate(Acc& acc, Vec a, Vec b) { acc += popcount64_swar(a & b); }
  static inline int64_t reduce(Acc acc) { return acc; }
  static inline int64_t popcount64(uint64_t x) { return popcount64_swar(x); }
};

#if defined(NEURCORE_ISA_POPCNT) || defined(NEURCORE_ISA_AVX2) || defined(NEURCORE_ISA_AVX512)
// One word at a time with the POPCNT instruction (target "popcnt").
struct IsaPopcnt : IsaGeneric {
  static constexpr const char* kName = "popcnt";
  static inline void accumulate(Acc& acc, Vec a, Vec b) { acc += __builtin_popcountll(a & b); }
  static inline int64_t popcount64(uint64_t x) { return __builtin_popcountll(x); }
};
#endif

#if defined(NEURCORE_ISA_AVX2)
// 256-bit vectors; AVX2 has no vector popcount, so bytes are counted with
// the nibble lookup of Mula, Kurz & Lemire (2018) and summed by vpsadbw.
struct IsaAvx2 {
  static constexpr const char* kName = "avx2";
  static constexpr int kWords = 4;
  static constexpr int MR = 2, NR = 3;  // 6 accumulators + 5 operands + 2 constants of 16 ymm
  using Vec = __m256i;
  using Acc = __m256i;
  static inline Acc zero() { return _mm256_setzero_si256(); }
  static inline Vec load(const uint64_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static inline void accumulate(Acc& acc, Vec a, Vec b) {
    const __m256i lut = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,
                                         0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low = _mm256_set1_epi8(0x0F);
    const __m256i x = _mm256_and_si256(a, b);
    const __m256i lo = _mm256_and_si256(x, low);
    const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(x, 4), low);
    const __m256i bytes = _mm256_add_epi8(_mm256_shuffle_epi8(lut, lo), _mm256_shuffle_epi8(lut, hi));
    acc = _mm256_add_epi64(acc, _mm256_sad_epu8(bytes, _mm256_setzero_si256()));
  }
  static inline int64_t reduce(Acc acc) {
    alignas(32) int64_t lanes[4];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc);
    return lanes[0] + lanes[1] + lanes[2] + lanes[3];
  }
  static inline int64_t popcount64(uint64_t x) { return __builtin_popcountll(x); }
};
#endif

#if defined(NEURCORE_ISA_AVX512)
// 512-bit vectors with the VPOPCNTQ instruction (AVX512-VPOPCNTDQ).
struct IsaAvx512 {
  static constexpr const char* kName = "avx512";
  static constexpr int kWords = 8;
  static constexpr int MR = 4, NR = 4;  // 16 accumulators + 8 operands of 32 zmm
  using Vec = __m512i;
  using Acc = __m512i;
  static inline Acc zero() { return _mm512_setzero_si512(); }
  static inline Vec load(const uint64_t* p) { return _mm512_loadu_si512(p); }
  static inline void accumulate(Acc& acc, Vec a, Vec b) {
    acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(_mm512_and_si512(a, b)));
  }
  static inline int64_t reduce(Acc acc) { return _mm512_reduce_add_epi64(acc); }
  static inline int64_t popcount64(uint64_t x) { return __builtin_popcountll(x); }
};
#endif

}  // namespace
}  // namespace neurcore::cpu
