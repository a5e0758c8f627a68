// Kernels for any CPU: SWAR popcount, baseline target.
#include "kernels_std.h"
#include "kernels_impl.h"

namespace neurcore::cpu {
const KernelTable* kernel_table_generic() { return make_kernel_table<IsaGeneric>(); }
}  // namespace neurcore::cpu
