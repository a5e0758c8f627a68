// CPU kernels over bit-packed masks. Plain pointers and sizes only: no
// pybind11 or numpy here (bindings.cpp is the only file that knows them).
//
// Layouts (see neurcore/_bitmasks.py):
//   dense   words[n][n_images][wpi]             (row stride k = n_images * wpi)
//   sparse  indptr[n + 1], images[nnz], words[nnz][wpi]   (CSR over images)
// Every output is int64 and written whole (no accumulation into caller data).
#pragma once

#include <cstdint>

namespace neurcore::cpu {

struct SparseRows {
  const int64_t* indptr;   // [n + 1]
  const int64_t* images;   // [nnz], increasing within a row
  const uint64_t* words;   // [nnz][wpi]
  int64_t n;
};

// The popcount-heavy kernels, compiled once per instruction set.
struct KernelTable {
  const char* name;
  // out[m] = popcount of row r of words[m][k]
  void (*popcount_rows)(const uint64_t* words, int64_t m, int64_t k, int64_t* out, int nthreads);
  // out[na][nb] = |A_i & B_j|, both dense with k words per row
  void (*intersect_dense_dense)(const uint64_t* a, int64_t na, const uint64_t* b, int64_t nb,
                                int64_t k, int64_t* out, int nthreads);
  // out[na][nb], A sparse, B dense [nb][n_images][wpi]
  void (*intersect_sparse_dense)(const SparseRows& a, const uint64_t* b, int64_t nb,
                                 int64_t n_images, int64_t wpi, int64_t* out, int nthreads);
  // out[na][nb], both sparse
  void (*intersect_sparse_sparse)(const SparseRows& a, const SparseRows& b, int64_t n_images,
                                  int64_t wpi, int64_t* out, int nthreads);
};

const KernelTable* kernel_table_generic();
const KernelTable* kernel_table_popcnt();  // nullptr when not built for this target
const KernelTable* kernel_table_avx2();    // nullptr when not built for this target
const KernelTable* kernel_table_avx512();  // nullptr when not built for this target

// Run-time choice of instruction set (dispatch.cpp).
struct CpuLevel {
  const char* name;
  const KernelTable* table;  // nullptr when not compiled in
  bool cpu_supports;
};
// All levels, from the narrowest to the widest.
const CpuLevel* cpu_levels(int* count);
// The level in use; picked on first call from NEURCORE_CPU_LEVEL or the widest supported.
const KernelTable* active_kernels();
// Select a level by name; returns false (and changes nothing) if unknown or unsupported.
bool set_active_kernels(const char* name);

// Memory-bound elementwise kernels (elementwise.cpp), same on every CPU.
enum class BinaryOp : int { kAnd = 0, kOr = 1, kAndNot = 2 };
// out[max(na, nb)][k] = a op b; a row count of 1 broadcasts.
void binary_dense(BinaryOp op, const uint64_t* a, int64_t na, const uint64_t* b, int64_t nb,
                  int64_t k, uint64_t* out, int nthreads);
// out[m][wpi] = ~a with each block's padding bits (beyond pixels_per_image) cleared.
void not_blocks(const uint64_t* a, int64_t m, int64_t wpi, int64_t pixels_per_image, uint64_t* out,
                int nthreads);
// out[t] = A[ia[t]] ops[t] B[ib[t]] for m block pairs (ops[t] a BinaryOp); an index of -1
// stands for a zero block. A "block" is any run of wpi words: an image block, or a whole row.
void combine_blocks(const uint8_t* ops, const uint64_t* a, const int64_t* ia, const uint64_t* b,
                    const int64_t* ib, int64_t m, int64_t wpi, uint64_t* out, int nthreads);
// out[t] = 1 if block t has any bit set.
void nonzero_blocks(const uint64_t* words, int64_t m, int64_t wpi, uint8_t* out, int nthreads);

// Largest rectangle of set pixels of each mask [m][h][w] (uint8 0/1) -> out[m][4] = (y0, x0, y1, x1),
// inclusive; an empty mask gives (0, 0, -1, -1). Ties keep the first found, scanning rows down.
void largest_rectangles(const uint8_t* masks, int64_t m, int64_t h, int64_t w, int32_t* out, int nthreads);

}  // namespace neurcore::cpu
