// Shared implementation of the popcount kernels, instantiated once per
// instruction-set policy (popcount.h) by kernels_<isa>.cpp.
#pragma once

#include "kernels.h"
#include "kernels_std.h"
#include "popcount.h"

namespace neurcore::cpu {
namespace {  // internal linkage: one copy per instruction-set target

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
constexpr int64_t kPanelRowsB = 32;  // also the column panel of the image-major kernels

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

// The blocks of an image-sparse row set ordered by (image, row): a counting
// sort by image of blocks visited in row order.
struct ImageMajor {
  std::vector<int64_t> start;             // [n_images + 1]: entries of image x are [start[x], start[x + 1])
  std::vector<int64_t> row;               // [nnz] row of each entry, increasing within an image
  std::vector<const uint64_t*> ptr;       // [nnz] words of each entry
};

inline ImageMajor image_major(const SparseRows& s, int64_t n_images, int64_t wpi) {
  const int64_t nnz = s.indptr[s.n];
  ImageMajor m{std::vector<int64_t>(n_images + 1, 0), std::vector<int64_t>(nnz),
               std::vector<const uint64_t*>(nnz)};
  for (int64_t q = 0; q < nnz; ++q) ++m.start[s.images[q] + 1];
  for (int64_t x = 0; x < n_images; ++x) m.start[x + 1] += m.start[x];
  std::vector<int64_t> cursor(m.start.begin(), m.start.end() - 1);
  for (int64_t r = 0; r < s.n; ++r)
    for (int64_t q = s.indptr[r]; q < s.indptr[r + 1]; ++q) {
      const int64_t dst = cursor[s.images[q]]++;
      m.row[dst] = r;
      m.ptr[dst] = s.words + q * wpi;
    }
  return m;
}

// B's entries at one image with rows in [j0, j1): word pointers and rows.
struct Entries {
  const uint64_t* const* ptr;
  const int64_t* row;
  int64_t n;
};

// B dense [nb][n_images][wpi]: every row has an entry at every image.
struct DenseSide {
  const uint64_t* b;
  int64_t row_stride, wpi;
  const int64_t* iota;  // 0, 1, ..., nb - 1
  Entries at(int64_t x, int64_t j0, int64_t j1, std::vector<const uint64_t*>& scratch) const {
    scratch.resize(j1 - j0);
    for (int64_t j = j0; j < j1; ++j) scratch[j - j0] = b + j * row_stride + x * wpi;
    return {scratch.data(), iota + j0, j1 - j0};
  }
};

// B image-sparse, through its image-major index.
struct SparseSide {
  const ImageMajor* m;
  Entries at(int64_t x, int64_t j0, int64_t j1, std::vector<const uint64_t*>&) const {
    const int64_t* lo = m->row.data() + m->start[x];
    const int64_t* hi = m->row.data() + m->start[x + 1];
    const int64_t* first = std::lower_bound(lo, hi, j0);
    const int64_t* last = std::lower_bound(first, hi, j1);
    const int64_t off = first - m->row.data();
    return {m->ptr.data() + off, first, last - first};
  }
};

// out[a_row][b_row] += |a & b| for the A entries and B entries of one image,
// an MR x NR register tile at a time: a small dense product per image.
template <class Isa>
inline void image_product(const uint64_t* const* a_ptr, const int64_t* a_row, int64_t na_x, const Entries& b,
                          int64_t wpi, int64_t* out, int64_t ldo) {
  int64_t res[Isa::MR * Isa::NR];
  for (int64_t r0 = 0; r0 < na_x; r0 += Isa::MR) {
    const int mr = int(std::min<int64_t>(Isa::MR, na_x - r0));
    for (int64_t c0 = 0; c0 < b.n; c0 += Isa::NR) {
      const int nr = int(std::min<int64_t>(Isa::NR, b.n - c0));
      tile<Isa>(mr, nr)(a_ptr + r0, b.ptr + c0, wpi, res);
      for (int r = 0; r < mr; ++r)
        for (int c = 0; c < nr; ++c) out[a_row[r0 + r] * ldo + b.row[c0 + c]] += res[r * nr + c];
    }
  }
}

// A image-sparse against any B side: for each image, only the A blocks and B
// entries present there meet, and each B block is read once per column panel.
// Work splits over panels of B rows when there are enough (disjoint output
// columns), else over ranges of images with private outputs summed at the end.
template <class Isa, class Side>
void image_major_intersect(const SparseRows& a, int64_t n_images, int64_t wpi, int64_t nb, const Side& side,
                           int64_t* out, int nthreads) {
  const int64_t na = a.n;
  std::fill(out, out + na * nb, int64_t{0});
  if (na == 0 || nb == 0 || a.indptr[na] == 0) return;
  const int nt = resolve_threads(nthreads);
  const ImageMajor am = image_major(a, n_images, wpi);
  auto run = [&](int64_t x0, int64_t x1, int64_t j0, int64_t j1, int64_t* dst,
                 std::vector<const uint64_t*>& scratch) {
    for (int64_t x = x0; x < x1; ++x) {
      const int64_t s = am.start[x], e = am.start[x + 1];
      if (s == e) continue;
      const Entries b = side.at(x, j0, j1, scratch);
      if (b.n) image_product<Isa>(am.ptr.data() + s, am.row.data() + s, e - s, b, wpi, dst, nb);
    }
  };
  const int64_t panel = kPanelRowsB;
  const int64_t n_panels = (nb + panel - 1) / panel;
  if (n_panels >= 2 * nt || nt == 1) {
#pragma omp parallel num_threads(nt)
    {
      std::vector<const uint64_t*> scratch;
#pragma omp for schedule(dynamic, 1)
      for (int64_t p = 0; p < n_panels; ++p) run(0, n_images, p * panel, std::min(nb, (p + 1) * panel), out, scratch);
    }
    return;
  }
  const int64_t chunk = std::max<int64_t>(1, n_images / (16 * nt));
#pragma omp parallel num_threads(nt)
  {
    std::vector<const uint64_t*> scratch;
    std::vector<int64_t> local(na * nb, 0);
#pragma omp for schedule(dynamic, 1) nowait
    for (int64_t x0 = 0; x0 < n_images; x0 += chunk) run(x0, std::min(n_images, x0 + chunk), 0, nb, local.data(), scratch);
#pragma omp critical
    for (int64_t t = 0; t < na * nb; ++t) out[t] += local[t];
  }
}

template <class Isa>
void intersect_sparse_dense(const SparseRows& a, const uint64_t* b, int64_t nb, int64_t n_images,
                            int64_t wpi, int64_t* out, int nthreads) {
  std::vector<int64_t> iota(nb);
  for (int64_t j = 0; j < nb; ++j) iota[j] = j;
  image_major_intersect<Isa>(a, n_images, wpi, nb, DenseSide{b, n_images * wpi, wpi, iota.data()}, out, nthreads);
}

template <class Isa>
void intersect_sparse_sparse(const SparseRows& a, const SparseRows& b, int64_t n_images, int64_t wpi,
                             int64_t* out, int nthreads) {
  const ImageMajor bm = image_major(b, n_images, wpi);
  image_major_intersect<Isa>(a, n_images, wpi, b.n, SparseSide{&bm}, out, nthreads);
}

template <class Isa>
const KernelTable* make_kernel_table() {
  static const KernelTable table{Isa::kName, &popcount_rows<Isa>, &intersect_dense_dense<Isa>,
                                 &intersect_sparse_dense<Isa>, &intersect_sparse_sparse<Isa>};
  return &table;
}

}  // namespace
}  // namespace neurcore::cpu
