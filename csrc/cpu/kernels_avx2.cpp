// Kernels for the avx2 level (target "popcnt,avx2").
//
// The target is set with a pragma after the standard headers, not with
// per-file compiler flags: inline functions and templates of the standard
// library instantiated here then keep the baseline target, so the linker can
// never pick a avx2 copy of them for code that runs on an older CPU.
#include "kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "kernels_std.h"
#define NEURCORE_ISA_AVX2
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("popcnt,avx2"))), apply_to = function)
#else
#pragma GCC target("popcnt,avx2")
#endif
#include "kernels_impl.h"
namespace neurcore::cpu {
const KernelTable* kernel_table_avx2() { return make_kernel_table<IsaAvx2>(); }
}  // namespace neurcore::cpu
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
namespace neurcore::cpu {
const KernelTable* kernel_table_avx2() { return nullptr; }
}  // namespace neurcore::cpu
#endif
