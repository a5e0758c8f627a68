// Shared implementation of the popcount kernels, instantiated once per
// instruction-set policy (popcount.h) by kernels_<isa>.cpp.
#pragma once

#include "kernels.h"
#include "kernels_std.h"
#include "popcount.h"

namespace neurcore::cpu {
namespace {  // internal linkage: one copy per instruction-set target

inline int resolve_threads(int nthreads) {
#ifdef _OPENMP
  return nthreads > 0 ? nthreads : omp_get_max_threads();
#else
  (void)nthreads;
  return 1;
#endif
}

// res[r * NR + c] = popcount(a[r][0:k] & b[c][0:k]) for an MR x NR register tile.
template <class Isa, int MR, int NR>
void and_popcount_tile(const uint64_t* const* a, const uint64_t* const* b, int64_t k, int64_t* res) {
  typename Isa::Acc acc[MR][NR];
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) acc[r][c] = Isa::zero();
  int64_t w = 0;
  for (; w + Isa::kWords <= k; w += Isa::kWords) {
    typename Isa::Vec va[MR], vb[NR];
    for (int r = 0; r < MR; ++r) va[r] = Isa::load(a[r] + w);
    for (int c = 0; c < NR; ++c) vb[c] = Isa::load(b[c] + w);
    for (int r = 0; r < MR; ++r)
      for (int c = 0; c < NR; ++c) Isa::accumulate(acc[r][c], va[r], vb[c]);
  }
  for (int r = 0; r < MR; ++r)
    for (int c = 0; c < NR; ++c) {
      int64_t s = Isa::reduce(acc[r][c]);
      for (int64_t t = w; t < k; ++t) s += Isa::popcount64(a[r][t] & b[c][t]);
      res[r * NR + c] = s;
    }
}

using TileFn = void (*)(const uint64_t* const*, const uint64_t* const*, int64_t, int64_t*);

template <class Isa, std::size_t... I>
constexpr std::array<TileFn, sizeof...(I)> make_tiles(std::index_sequence<I...>) {
  return {&and_popcount_tile<Isa, int(I / Isa::NR) + 1, int(I % Isa::NR) + 1>...};
}

// The tile kernel for 1 <= mr <= MR, 1 <= nr <= NR; res is [mr][nr].
template <class Isa>
inline TileFn tile(int mr, int nr) {
  static constexpr auto tiles = make_tiles<Isa>(std::make_index_sequence<Isa::MR * Isa::NR>{});
  return tiles[(mr - 1) * Isa::NR + (nr - 1)];
}

// Words of one row chunk kept hot while all rows of the other side stream by:
// 512 words = 4 KiB per row; an A panel of 32 rows is 128 KiB, within L2.
constexpr int64_t kChunkWords = 512;
constexpr int64_t kPanelRowsA = 32;
constexpr int64_t kPanelRowsB = 32;

template <class Isa>
void popcount_rows(const uint64_t* words, int64_t m, int64_t k, int64_t* out, int nthreads) {
  const int nt = resolve_threads(nthreads);
#pragma omp parallel for schedule(static) num_threads(nt) if (m * k > (1 << 16))
  for (int64_t r = 0; r < m; ++r) {
    const uint64_t* p = words + r * k;
    int64_t res;
    tile<Isa>(1, 1)(&p, &p, k, &res);  // popcount(x & x) = popcount(x)
    out[r] = res;
  }
}

template <class Isa>
void intersect_dense_dense(const uint64_t* a, int64_t na, const uint64_t* b, int64_t nb, int64_t k,
                           int64_t* out, int nthreads) {
  std::fill(out, out + na * nb, int64_t{0});
  const int nt = resolve_threads(nthreads);
  const int64_t n_ipanels = (na + kPanelRowsA - 1) / kPanelRowsA;
  const int64_t n_jpanels = (nb + kPanelRowsB - 1) / kPanelRowsB;
  // Each task owns an (A panel, B panel) block of the output; within it the
  // word chunks stream so both panels stay in cache across the register tiles.
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(nt)
  for (int64_t ip = 0; ip < n_ipanels; ++ip)
    for (int64_t jp = 0; jp < n_jpanels; ++jp) {
      const int64_t i_end = std::min(na, (ip + 1) * kPanelRowsA);
      const int64_t j_end = std::min(nb, (jp + 1) * kPanelRowsB);
      const uint64_t* pa[Isa::MR];
      const uint64_t* pb[Isa::NR];
      int64_t res[Isa::MR * Isa::NR];
      for (int64_t w0 = 0; w0 < k; w0 += kChunkWords) {
        const int64_t kw = std::min(kChunkWords, k - w0);
        for (int64_t i0 = ip * kPanelRowsA; i0 < i_end; i0 += Isa::MR) {
          const int mr = int(std::min<int64_t>(Isa::MR, i_end - i0));
          for (int r = 0; r < mr; ++r) pa[r] = a + (i0 + r) * k + w0;
          for (int64_t j0 = jp * kPanelRowsB; j0 < j_end; j0 += Isa::NR) {
            const int nr = int(std::min<int64_t>(Isa::NR, j_end - j0));
            for (int c = 0; c < nr; ++c) pb[c] = b + (j0 + c) * k + w0;
            tile<Isa>(mr, nr)(pa, pb, kw, res);
            for (int r = 0; r < mr; ++r)
              for (int c = 0; c < nr; ++c) out[(i0 + r) * nb + j0 + c] += res[r * nr + c];
          }
        }
      }
    }
}

template <class Isa>
void intersect_sparse_dense(const SparseRows& a, const uint64_t* b, int64_t nb, int64_t n_images,
                            int64_t wpi, int64_t* out, int nthreads) {
  const int64_t na = a.n;
  std::fill(out, out + na * nb, int64_t{0});
  const int nt = resolve_threads(nthreads);
  const int64_t row_stride = n_images * wpi;
  const int64_t n_jpanels = (nb + kPanelRowsB - 1) / kPanelRowsB;
  // Only the images of A's row are visited; B is read at those images.
#pragma omp parallel for collapse(2) schedule(dynamic, 1) num_threads(nt)
  for (int64_t i = 0; i < na; ++i)
    for (int64_t jp = 0; jp < n_jpanels; ++jp) {
      const int64_t j_end = std::min(nb, (jp + 1) * kPanelRowsB);
      const uint64_t* pb[Isa::NR];
      int64_t res[Isa::NR];
      int64_t* orow = out + i * nb;
      for (int64_t p = a.indptr[i]; p < a.indptr[i + 1]; ++p) {
        const uint64_t* pa = a.words + p * wpi;
        const int64_t off = a.images[p] * wpi;
        for (int64_t j0 = jp * kPanelRowsB; j0 < j_end; j0 += Isa::NR) {
          const int nr = int(std::min<int64_t>(Isa::NR, j_end - j0));
          for (int c = 0; c < nr; ++c) pb[c] = b + (j0 + c) * row_stride + off;
          tile<Isa>(1, nr)(&pa, pb, wpi, res);
          for (int c = 0; c < nr; ++c) orow[j0 + c] += res[c];
        }
      }
    }
}

// For each A block, visit only the B blocks at the same image, found through
// an image-major index of B (a counting sort of B's blocks by image).
template <class Isa>
void intersect_sparse_sparse(const SparseRows& a, const SparseRows& b, int64_t n_images, int64_t wpi,
                             int64_t* out, int nthreads) {
  const int64_t na = a.n, nb = b.n;
  std::fill(out, out + na * nb, int64_t{0});
  const int nt = resolve_threads(nthreads);
  const int64_t nnz_b = b.indptr[nb];
  std::vector<int64_t> by_image(n_images + 1, 0), b_row(nnz_b), b_block(nnz_b);
  for (int64_t q = 0; q < nnz_b; ++q) ++by_image[b.images[q] + 1];
  for (int64_t x = 0; x < n_images; ++x) by_image[x + 1] += by_image[x];
  {
    std::vector<int64_t> cursor(by_image.begin(), by_image.end() - 1);
    for (int64_t j = 0; j < nb; ++j)
      for (int64_t q = b.indptr[j]; q < b.indptr[j + 1]; ++q) {
        const int64_t dst = cursor[b.images[q]]++;
        b_row[dst] = j;
        b_block[dst] = q;
      }
  }
  // Accumulate the blocks of row i in [p0, p1) into orow[nb].
  auto run_blocks = [&](int64_t p0, int64_t p1, int64_t* orow) {
    const uint64_t* pb[Isa::NR];
    int64_t res[Isa::NR];
    for (int64_t p = p0; p < p1; ++p) {
      const uint64_t* pa = a.words + p * wpi;
      const int64_t x = a.images[p];
      for (int64_t q0 = by_image[x]; q0 < by_image[x + 1]; q0 += Isa::NR) {
        const int nr = int(std::min<int64_t>(Isa::NR, by_image[x + 1] - q0));
        for (int c = 0; c < nr; ++c) pb[c] = b.words + b_block[q0 + c] * wpi;
        tile<Isa>(1, nr)(&pa, pb, wpi, res);
        for (int c = 0; c < nr; ++c) orow[b_row[q0 + c]] += res[c];
      }
    }
  };
  if (na >= 4 * nt) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t i = 0; i < na; ++i) run_blocks(a.indptr[i], a.indptr[i + 1], out + i * nb);
  } else {
    // Few rows: split each row's blocks over threads, each with a private row.
    for (int64_t i = 0; i < na; ++i) {
      const int64_t p0 = a.indptr[i], p1 = a.indptr[i + 1];
#pragma omp parallel num_threads(nt) if (p1 - p0 > 8)
      {
        std::vector<int64_t> local(nb, 0);
#pragma omp for schedule(dynamic, 4) nowait
        for (int64_t p = p0; p < p1; ++p) run_blocks(p, p + 1, local.data());
#pragma omp critical
        for (int64_t j = 0; j < nb; ++j) out[i * nb + j] += local[j];
      }
    }
  }
}

template <class Isa>
const KernelTable* make_kernel_table() {
  static const KernelTable table{Isa::kName, &popcount_rows<Isa>, &intersect_dense_dense<Isa>,
                                 &intersect_sparse_dense<Isa>, &intersect_sparse_sparse<Isa>};
  return &table;
}

}  // namespace
}  // namespace neurcore::cpu
