// CUDA kernels over bit-packed masks (declared in kernels.cuh).
#include <algorithm>
#include <stdexcept>
#include <string>

#include "check.cuh"
#include "kernels.cuh"

namespace neurcore::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;

int grid_for(int64_t work, int per_block = kThreads) {
  const int64_t blocks = (work + per_block - 1) / per_block;
  return static_cast<int>(blocks < 1 ? 1 : (blocks > (1 << 20) ? (1 << 20) : blocks));
}

__device__ __forceinline__ unsigned long long warp_sum(unsigned long long v) {
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;
}

__global__ void popcount_rows_kernel(const uint64_t* words, int64_t m, int64_t k, int64_t* out) {
  __shared__ unsigned long long partial[kWarps];
  for (int64_t r = blockIdx.x; r < m; r += gridDim.x) {
    unsigned long long s = 0;
    const uint64_t* p = words + r * k;
    for (int64_t w = threadIdx.x; w < k; w += blockDim.x) s += __popcll(p[w]);
    s = warp_sum(s);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = s;
    __syncthreads();
    if (threadIdx.x == 0) {
      unsigned long long t = 0;
      for (int i = 0; i < kWarps; ++i) t += partial[i];
      out[r] = static_cast<int64_t>(t);
    }
    __syncthreads();
  }
}

// Output tile 64 x 64 per block of 16 x 16 threads, 4 x 4 outputs per
// thread, words staged through shared memory 32 at a time (k-major).
constexpr int kTile = 64, kTileK = 32, kSub = 16;

// With gridDim.z > 1 each z slice takes `k_per_split` words (split-K, for outputs with too few tiles
// to fill the chip) and adds its partial counts into a zeroed output.
__global__ void intersect_dense_dense_kernel(const uint64_t* a, int64_t na, const uint64_t* b, int64_t nb,
                                             int64_t k, int64_t k_per_split, int64_t* out) {
  __shared__ uint64_t as[kTileK][kTile + 1];
  __shared__ uint64_t bs[kTileK][kTile + 1];
  const int tx = threadIdx.x, ty = threadIdx.y, tid = ty * kSub + tx;
  const int64_t i0 = int64_t(blockIdx.y) * kTile, j0 = int64_t(blockIdx.x) * kTile;
  unsigned long long acc[4][4] = {};
  const int64_t k_begin = int64_t(blockIdx.z) * k_per_split;
  const int64_t k_end = k_begin + k_per_split < k ? k_begin + k_per_split : k;
  for (int64_t w0 = k_begin; w0 < k_end; w0 += kTileK) {
    for (int t = tid; t < kTile * kTileK; t += kSub * kSub) {
      const int r = t / kTileK, kk = t % kTileK;
      const int64_t w = w0 + kk;
      as[kk][r] = (i0 + r < na && w < k_end) ? a[(i0 + r) * k + w] : 0;
      bs[kk][r] = (j0 + r < nb && w < k_end) ? b[(j0 + r) * k + w] : 0;
    }
    __syncthreads();
#pragma unroll 4
    for (int kk = 0; kk < kTileK; ++kk) {
      uint64_t av[4], bv[4];
#pragma unroll
      for (int r = 0; r < 4; ++r) av[r] = as[kk][ty + kSub * r];
#pragma unroll
      for (int c = 0; c < 4; ++c) bv[c] = bs[kk][tx + kSub * c];
#pragma unroll
      for (int r = 0; r < 4; ++r)
#pragma unroll
        for (int c = 0; c < 4; ++c) acc[r][c] += __popcll(av[r] & bv[c]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int r = 0; r < 4; ++r)
#pragma unroll
    for (int c = 0; c < 4; ++c) {
      const int64_t i = i0 + ty + kSub * r, j = j0 + tx + kSub * c;
      if (i < na && j < nb) {
        if (gridDim.z == 1)
          out[i * nb + j] = static_cast<int64_t>(acc[r][c]);
        else if (acc[r][c] != 0)
          atomicAdd(reinterpret_cast<unsigned long long*>(out) + i * nb + j, acc[r][c]);
      }
    }
}

// One warp per (A row, B row); its lanes walk the (block, word) pairs of A's row.
__global__ void intersect_sparse_dense_kernel(SparseRowsDev a, const uint64_t* b, int64_t nb,
                                              int64_t n_images, int64_t wpi, int64_t* out) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  for (int64_t task = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; task < a.n * nb; task += warps) {
    const int64_t i = task / nb, j = task % nb;
    const uint64_t* brow = b + j * n_images * wpi;
    const int64_t p0 = a.indptr[i], len = (a.indptr[i + 1] - p0) * wpi;
    unsigned long long s = 0;
    for (int64_t t = lane; t < len; t += 32) {
      const int64_t p = p0 + t / wpi, w = t % wpi;
      s += __popcll(a.words[p * wpi + w] & brow[a.images[p] * wpi + w]);
    }
    s = warp_sum(s);
    if (lane == 0) out[task] = static_cast<int64_t>(s);
  }
}

// One warp per A block; it visits the B blocks of the same image. With wide
// blocks the lanes share a block pair; with narrow ones each lane takes a B block.
__global__ void intersect_sparse_sparse_kernel(SparseRowsDev a, const int64_t* a_row, const uint64_t* b_words,
                                               int64_t nb, const int64_t* by_image, const int64_t* b_row,
                                               const int64_t* b_block, int64_t wpi, int64_t* out) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  auto* acc = reinterpret_cast<unsigned long long*>(out);
  for (int64_t p = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; p < a.nnz; p += warps) {
    const int64_t x = a.images[p];
    const uint64_t* pa = a.words + p * wpi;
    unsigned long long* orow = acc + a_row[p] * nb;
    if (wpi >= 16) {
      for (int64_t q = by_image[x]; q < by_image[x + 1]; ++q) {
        const uint64_t* pb = b_words + b_block[q] * wpi;
        unsigned long long s = 0;
        for (int64_t w = lane; w < wpi; w += 32) s += __popcll(pa[w] & pb[w]);
        s = warp_sum(s);
        if (lane == 0 && s != 0) atomicAdd(orow + b_row[q], s);
      }
    } else {
      for (int64_t q = by_image[x] + lane; q < by_image[x + 1]; q += 32) {
        const uint64_t* pb = b_words + b_block[q] * wpi;
        unsigned long long s = 0;
        for (int64_t w = 0; w < wpi; ++w) s += __popcll(pa[w] & pb[w]);
        if (s != 0) atomicAdd(orow + b_row[q], s);
      }
    }
  }
}

__device__ __forceinline__ uint64_t apply(int op, uint64_t a, uint64_t b) {
  return op == 0 ? (a & b) : op == 1 ? (a | b) : (a & ~b);
}

__global__ void binary_dense_kernel(int op, const uint64_t* a, int64_t na, const uint64_t* b, int64_t nb,
                                    int64_t k, uint64_t* out) {
  const int64_t n = (na > nb ? na : nb) * k;
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < n; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = t / k, w = t % k;
    out[t] = apply(op, a[(na == 1 ? 0 : r) * k + w], b[(nb == 1 ? 0 : r) * k + w]);
  }
}

__global__ void not_blocks_kernel(const uint64_t* a, int64_t m, int64_t wpi, uint64_t last_mask, uint64_t* out) {
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < m * wpi; t += int64_t(gridDim.x) * blockDim.x)
    out[t] = (t % wpi == wpi - 1) ? (~a[t] & last_mask) : ~a[t];
}

__global__ void combine_blocks_kernel(const uint8_t* ops, const uint64_t* a, const int64_t* ia, const uint64_t* b,
                                      const int64_t* ib, int64_t m, int64_t wpi, uint64_t* out) {
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < m * wpi; t += int64_t(gridDim.x) * blockDim.x) {
    const int64_t blk = t / wpi, w = t % wpi;
    const uint64_t va = ia[blk] >= 0 ? a[ia[blk] * wpi + w] : 0;
    const uint64_t vb = ib[blk] >= 0 ? b[ib[blk] * wpi + w] : 0;
    out[t] = apply(ops[blk], va, vb);
  }
}

__global__ void nonzero_blocks_kernel(const uint64_t* words, int64_t m, int64_t wpi, bool* out) {
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < m; t += int64_t(gridDim.x) * blockDim.x) {
    uint64_t any = 0;
    for (int64_t w = 0; w < wpi; ++w) any |= words[t * wpi + w];
    out[t] = any != 0;
  }
}

}  // namespace

void popcount_rows(const uint64_t* words, int64_t m, int64_t k, int64_t* out, cudaStream_t stream) {
  if (m == 0) return;
  popcount_rows_kernel<<<grid_for(m, 1), kThreads, 0, stream>>>(words, m, k, out);
  check_launch("popcount_rows");
}

void intersect_dense_dense(const uint64_t* a, int64_t na, const uint64_t* b, int64_t nb, int64_t k,
                           int64_t* out, cudaStream_t stream) {
  if (na == 0 || nb == 0) return;
  if (k == 0) {  // no images, no words: every count is zero (and the split below would divide by zero)
    const cudaError_t err = cudaMemsetAsync(out, 0, sizeof(int64_t) * na * nb, stream);
    if (err != cudaSuccess)
      throw std::runtime_error(std::string("intersect_dense_dense: cudaMemsetAsync failed: ") + cudaGetErrorString(err));
    return;
  }
  const int64_t gy = (na + kTile - 1) / kTile, gx = (nb + kTile - 1) / kTile;
  if (gy > 65535) throw std::runtime_error("intersect_dense_dense: A has more than 4,194,240 rows; split it");
  // Split the words when the output has fewer tiles than ~4 blocks per multiprocessor, keeping at
  // least 8 word stages per split so the atomics stay rare next to the popcounts.
  int device = 0, sms = 1;
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  const int64_t stages = (k + kTileK - 1) / kTileK;
  int64_t splits = (4 * int64_t(sms) + gx * gy - 1) / (gx * gy);
  splits = std::max<int64_t>(1, std::min<int64_t>({splits, stages / 8, 65535}));
  const int64_t k_per_split = ((stages + splits - 1) / splits) * kTileK;
  splits = (k + k_per_split - 1) / k_per_split;
  if (splits > 1) {
    const cudaError_t err = cudaMemsetAsync(out, 0, sizeof(int64_t) * na * nb, stream);
    if (err != cudaSuccess)
      throw std::runtime_error(std::string("intersect_dense_dense: cudaMemsetAsync failed: ") + cudaGetErrorString(err));
  }
  intersect_dense_dense_kernel<<<dim3(unsigned(gx), unsigned(gy), unsigned(splits)), dim3(kSub, kSub), 0, stream>>>(
      a, na, b, nb, k, k_per_split, out);
  check_launch("intersect_dense_dense");
}

void intersect_sparse_dense(const SparseRowsDev& a, const uint64_t* b, int64_t nb, int64_t n_images,
                            int64_t wpi, int64_t* out, cudaStream_t stream) {
  if (a.n == 0 || nb == 0) return;
  intersect_sparse_dense_kernel<<<grid_for(a.n * nb, kWarps), kThreads, 0, stream>>>(a, b, nb, n_images, wpi, out);
  check_launch("intersect_sparse_dense");
}

void intersect_sparse_sparse(const SparseRowsDev& a, const int64_t* a_row, const uint64_t* b_words,
                             int64_t nb, const int64_t* by_image, const int64_t* b_row,
                             const int64_t* b_block, int64_t wpi, int64_t* out, cudaStream_t stream) {
  if (a.n == 0 || nb == 0) return;
  cudaMemsetAsync(out, 0, sizeof(int64_t) * a.n * nb, stream);
  check_launch("intersect_sparse_sparse (zero output)");
  if (a.nnz == 0) return;
  intersect_sparse_sparse_kernel<<<grid_for(a.nnz, kWarps), kThreads, 0, stream>>>(
      a, a_row, b_words, nb, by_image, b_row, b_block, wpi, out);
  check_launch("intersect_sparse_sparse");
}

void binary_dense(int op, const uint64_t* a, int64_t na, const uint64_t* b, int64_t nb, int64_t k,
                  uint64_t* out, cudaStream_t stream) {
  const int64_t n = (na > nb ? na : nb) * k;
  if (n == 0) return;
  binary_dense_kernel<<<grid_for(n), kThreads, 0, stream>>>(op, a, na, b, nb, k, out);
  check_launch("binary_dense");
}

void not_blocks(const uint64_t* a, int64_t m, int64_t wpi, int64_t pixels_per_image, uint64_t* out,
                cudaStream_t stream) {
  if (m * wpi == 0) return;
  const int64_t tail = pixels_per_image % 64;
  const uint64_t last_mask = tail == 0 ? ~uint64_t{0} : (uint64_t{1} << tail) - 1;
  not_blocks_kernel<<<grid_for(m * wpi), kThreads, 0, stream>>>(a, m, wpi, last_mask, out);
  check_launch("not_blocks");
}

void combine_blocks(const uint8_t* ops, const uint64_t* a, const int64_t* ia, const uint64_t* b, const int64_t* ib,
                    int64_t m, int64_t wpi, uint64_t* out, cudaStream_t stream) {
  if (m * wpi == 0) return;
  combine_blocks_kernel<<<grid_for(m * wpi), kThreads, 0, stream>>>(ops, a, ia, b, ib, m, wpi, out);
  check_launch("combine_blocks");
}

void nonzero_blocks(const uint64_t* words, int64_t m, int64_t wpi, bool* out, cudaStream_t stream) {
  if (m == 0) return;
  nonzero_blocks_kernel<<<grid_for(m), kThreads, 0, stream>>>(words, m, wpi, out);
  check_launch("nonzero_blocks");
}

}  // namespace neurcore::cuda
