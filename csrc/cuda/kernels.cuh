// CUDA kernels over bit-packed masks: the same primitives and layouts as
// csrc/cpu/kernels.h, on device pointers. Plain pointers, sizes and a stream;
// every launcher checks the launch and throws std::runtime_error on failure.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace neurcore::cuda {

struct SparseRowsDev {
  const int64_t* indptr;  // [n + 1]
  const int64_t* images;  // [nnz]
  const uint64_t* words;  // [nnz][wpi]
  int64_t n;
  int64_t nnz;
};

// out[m] = popcount of each row of words[m][k].
void popcount_rows(const uint64_t* words, int64_t m, int64_t k, int64_t* out, cudaStream_t stream);

// out[na][nb] = |A_i & B_j|, dense rows of k words.
void intersect_dense_dense(const uint64_t* a, int64_t na, const uint64_t* b, int64_t nb, int64_t k,
                           int64_t* out, cudaStream_t stream);

// out[na][nb], A sparse, B dense [nb][n_images][wpi].
void intersect_sparse_dense(const SparseRowsDev& a, const uint64_t* b, int64_t nb, int64_t n_images,
                            int64_t wpi, int64_t* out, cudaStream_t stream);

// out[na][nb], both sparse. a_row[p] is the row of A block p; B is given
// image-major: by_image[n_images + 1] offsets into b_row / b_block, the row and
// block index of each B block (built on the host from B's small index arrays).
void intersect_sparse_sparse(const SparseRowsDev& a, const int64_t* a_row, const uint64_t* b_words,
                             int64_t nb, const int64_t* by_image, const int64_t* b_row,
                             const int64_t* b_block, int64_t wpi, int64_t* out, cudaStream_t stream);

// Elementwise ops; op 0 and, 1 or, 2 and_not.
void binary_dense(int op, const uint64_t* a, int64_t na, const uint64_t* b, int64_t nb, int64_t k,
                  uint64_t* out, cudaStream_t stream);
void not_blocks(const uint64_t* a, int64_t m, int64_t wpi, int64_t pixels_per_image, uint64_t* out,
                cudaStream_t stream);
// out[t] = A[ia[t]] ops[t] B[ib[t]]; index -1 is a zero block.
void combine_blocks(const uint8_t* ops, const uint64_t* a, const int64_t* ia, const uint64_t* b, const int64_t* ib,
                    int64_t m, int64_t wpi, uint64_t* out, cudaStream_t stream);
void nonzero_blocks(const uint64_t* words, int64_t m, int64_t wpi, bool* out, cudaStream_t stream);

}  // namespace neurcore::cuda
