// Run-time choice of the popcount instruction set: the widest the CPU
// supports, unless NEURCORE_CPU_LEVEL names another (generic, popcnt, avx2,
// avx512). The Python package logs the choice.
#include <atomic>
#include <cstdlib>
#include <cstring>

#include "kernels.h"

namespace neurcore::cpu {
namespace {

bool supports(const char* level) {
  if (std::strcmp(level, "generic") == 0) return true;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  __builtin_cpu_init();
  if (std::strcmp(level, "popcnt") == 0) return __builtin_cpu_supports("popcnt");
  if (std::strcmp(level, "avx2") == 0)
    return __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("avx2");
  if (std::strcmp(level, "avx512") == 0)
    return __builtin_cpu_supports("popcnt") && __builtin_cpu_supports("avx2") &&
           __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
#endif
  return false;
}

CpuLevel* levels() {
  static CpuLevel all[] = {
      {"generic", kernel_table_generic(), supports("generic")},
      {"popcnt", kernel_table_popcnt(), supports("popcnt")},
      {"avx2", kernel_table_avx2(), supports("avx2")},
      {"avx512", kernel_table_avx512(), supports("avx512")},
  };
  return all;
}
constexpr int kLevelCount = 4;

const KernelTable* pick_default() {
  CpuLevel* all = levels();
  if (const char* env = std::getenv("NEURCORE_CPU_LEVEL"); env != nullptr && *env != '\0') {
    for (int i = 0; i < kLevelCount; ++i)
      if (std::strcmp(all[i].name, env) == 0 && all[i].table != nullptr && all[i].cpu_supports)
        return all[i].table;
    // An unusable override is reported by the Python package, which checks it first.
  }
  for (int i = kLevelCount - 1; i >= 0; --i)
    if (all[i].table != nullptr && all[i].cpu_supports) return all[i].table;
  return kernel_table_generic();
}

std::atomic<const KernelTable*> g_active{nullptr};

}  // namespace

const CpuLevel* cpu_levels(int* count) {
  *count = kLevelCount;
  return levels();
}

const KernelTable* active_kernels() {
  const KernelTable* t = g_active.load(std::memory_order_acquire);
  if (t == nullptr) {
    t = pick_default();
    g_active.store(t, std::memory_order_release);
  }
  return t;
}

bool set_active_kernels(const char* name) {
  CpuLevel* all = levels();
  for (int i = 0; i < kLevelCount; ++i)
    if (std::strcmp(all[i].name, name) == 0 && all[i].table != nullptr && all[i].cpu_supports) {
      g_active.store(all[i].table, std::memory_order_release);
      return true;
    }
  return false;
}

}  // namespace neurcore::cpu
