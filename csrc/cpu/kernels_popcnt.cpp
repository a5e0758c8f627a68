// Kernels for the popcnt level (target "popcnt").
//
// The target is set with a pragma after the standard headers, not with
// per-file compiler flags: inline functions and templates of the standard
// library instantiated here then keep the baseline target, so the linker can
// never pick a popcnt copy of them for code that runs on an older CPU.
#include "kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "kernels_std.h"
#define NEURCORE_ISA_POPCNT
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("popcnt"))), apply_to = function)
#else
#pragma GCC target("popcnt")
#endif
#include "kernels_impl.h"
namespace neurcore::cpu {
const KernelTable* kernel_table_popcnt() { return make_kernel_table<IsaPopcnt>(); }
}  // namespace neurcore::cpu
#if defined(__clang__)
#pragma clang attribute pop
#endif
#else
namespace neurcore::cpu {
const KernelTable* kernel_table_popcnt() { return nullptr; }
}  // namespace neurcore::cpu
#endif
