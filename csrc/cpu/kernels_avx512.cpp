// Kernels for the avx512 level (target "popcnt,avx2,avx512f,avx512vpopcntdq").
//
// The target is set with a pragma after the standard headers, not with
// per-file compiler flags: inline functions and templates of the standard
// library instantiated here then keep the baseline target, so the linker can
// never pick a avx512 copy of them for code that runs on an older CPU.
#include "kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "kernels_std.h"
#define NEURCORE_ISA_AVX512
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("popcnt,avx2,avx512f,avx512vpopcntdq"))), apply_to = function)
#else
#pragma GCC target("popcnt,avx2,avx512f,avx512vpopcntdq")
#endif
#include "kernels_impl.h"
namespace neurcore::cpu {
const KernelTable* kernel_table_avx512() { return make_kernel_table<IsaAvx512>(); }
}  // namespace neurcore::cpu
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
namespace neurcore::cpu {
const KernelTable* kernel_table_avx512() { return nullptr; }
}  // namespace neurcore::cpu
#endif
