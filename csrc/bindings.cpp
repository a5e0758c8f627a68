// The pybind11 boundary of the CPU module neurcore.engine._C: numpy buffers in,
// plain pointers to the kernels in csrc/cpu, numpy arrays out. Every argument
// is checked here (dtype, rank, shape, C-contiguity, index bounds) and an
// error names the argument; the kernels themselves trust their inputs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <vector>

#include "cpu/ig.h"
#include "cpu/kernels.h"

namespace py = pybind11;
using namespace neurcore::cpu;

namespace {

// std::to_string, not an ostringstream: on some toolchains (seen with g++ 13 on Ubuntu 24.04 and
// Python 3.12) streaming a long through the module's iostreams crashed in the locale facets.
std::string shape_of(const py::array& a) {
  std::string s = "(";
  for (py::ssize_t d = 0; d < a.ndim(); ++d) s += (d ? ", " : "") + std::to_string(a.shape(d));
  s += a.ndim() == 1 ? ",)" : ")";
  return s;
}

// Checks dtype T, rank and C-contiguity; returns the data pointer.
template <class T>
const T* check(const py::array& a, const char* name, py::ssize_t ndim) {
  if (!a.dtype().equal(py::dtype::of<T>()))
    throw py::type_error(std::string(name) + ": expected dtype " +
                         std::string(py::str(py::dtype::of<T>())) + ", got " +
                         std::string(py::str(a.dtype())));
  if (a.ndim() != ndim)
    throw py::value_error(std::string(name) + ": expected " + std::to_string(ndim) +
                          "-d array, got shape " + shape_of(a));
  if (!(a.flags() & py::array::c_style))
    throw py::value_error(std::string(name) + ": array must be C-contiguous (shape " + shape_of(a) +
                          "); pass numpy.ascontiguousarray(...)");
  return static_cast<const T*>(a.data());
}

void check_dim(const py::array& a, const char* name, int axis, py::ssize_t expected, const char* what) {
  if (a.shape(axis) != expected)
    throw py::value_error(std::string(name) + ": axis " + std::to_string(axis) + " must be " + what +
                          " = " + std::to_string(expected) + ", got shape " + shape_of(a));
}

// A CSR over images: indptr [n + 1] from 0 to nnz, non-decreasing; images in [0, n_images).
SparseRows check_sparse(const py::array& indptr, const py::array& images, const py::array& words,
                        const char* name, int64_t n_images, int64_t wpi) {
  const std::string p = name;
  const int64_t* ip = check<int64_t>(indptr, (p + ".indptr").c_str(), 1);
  const int64_t* im = check<int64_t>(images, (p + ".images").c_str(), 1);
  const uint64_t* w = check<uint64_t>(words, (p + ".words").c_str(), 2);
  if (indptr.shape(0) < 1) throw py::value_error(p + ".indptr: must have n + 1 >= 1 entries");
  const int64_t n = indptr.shape(0) - 1, nnz = images.shape(0);
  check_dim(words, (p + ".words").c_str(), 0, nnz, "len(images)");
  check_dim(words, (p + ".words").c_str(), 1, wpi, "words per image");
  if (ip[0] != 0 || ip[n] != nnz)
    throw py::value_error(p + ".indptr: must start at 0 and end at len(images) = " +
                          std::to_string(nnz));
  for (int64_t r = 0; r < n; ++r)
    if (ip[r + 1] < ip[r]) throw py::value_error(p + ".indptr: must be non-decreasing");
  for (int64_t q = 0; q < nnz; ++q)
    if (im[q] < 0 || im[q] >= n_images)
      throw py::value_error(p + ".images: image index " + std::to_string(im[q]) +
                            " outside [0, " + std::to_string(n_images) + ")");
  return SparseRows{ip, im, w, n};
}

py::array_t<int64_t> new_counts(int64_t na, int64_t nb) {
  return py::array_t<int64_t>(std::vector<py::ssize_t>{na, nb});
}

BinaryOp check_op(int op) {
  if (op < 0 || op > 2) throw py::value_error("op: expected 0 (and), 1 (or) or 2 (and_not), got " + std::to_string(op));
  return static_cast<BinaryOp>(op);
}

// ig_accumulate for one dtype: checks every argument against grads' [T, S, U, C, P], then runs.
template <class T>
void ig_accumulate_typed(const py::array& grads, const py::array& weights, const py::array& delta, py::array& out,
                         bool reduce_spatial, int nthreads) {
  const T* g = check<T>(grads, "grads", 5);
  const T* w = check<T>(weights, "weights", 1);
  const T* d = check<T>(delta, "delta", 3);
  check<T>(out, "out", reduce_spatial ? 3 : 4);
  const int64_t nt = grads.shape(0), ns = grads.shape(1), nu = grads.shape(2), nc = grads.shape(3),
                np_ = grads.shape(4);
  check_dim(weights, "weights", 0, ns, "grads.shape[1] (S)");
  check_dim(delta, "delta", 0, nu, "grads.shape[2] (U)");
  check_dim(delta, "delta", 1, nc, "grads.shape[3] (C)");
  check_dim(delta, "delta", 2, np_, "grads.shape[4] (P)");
  check_dim(out, "out", 0, nt, "grads.shape[0] (T)");
  check_dim(out, "out", 1, nu, "grads.shape[2] (U)");
  check_dim(out, "out", 2, nc, "grads.shape[3] (C)");
  if (!reduce_spatial) check_dim(out, "out", 3, np_, "grads.shape[4] (P)");
  if (!out.writeable()) throw py::value_error("out: array is read-only, got shape " + shape_of(out));
  T* o = static_cast<T*>(out.mutable_data());
  py::gil_scoped_release release;
  ig_accumulate<T>(g, w, d, o, nt, ns, nu, nc, np_, reduce_spatial, nthreads);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "neurcore CPU kernels over bit-packed masks (see neurcore.engine for the Python API)";

  m.def("cpu_levels", [] {
    int count = 0;
    const CpuLevel* levels = cpu_levels(&count);
    py::list out;
    for (int i = 0; i < count; ++i) {
      py::dict d;
      d["name"] = levels[i].name;
      d["compiled"] = levels[i].table != nullptr;
      d["cpu_supports"] = levels[i].cpu_supports;
      out.append(d);
    }
    return out;
  }, "Instruction-set levels, narrowest first: name, compiled, cpu_supports.");
  m.def("cpu_level", [] { return std::string(active_kernels()->name); },
        "The instruction-set level the popcount kernels use now.");
  m.def("set_cpu_level", [](const std::string& name) {
    if (!set_active_kernels(name.c_str()))
      throw py::value_error("cpu level '" + name + "' is unknown, not compiled in, or not supported by this CPU");
  }, py::arg("name"));

  m.def("popcount_rows", [](const py::array& words, int nthreads) {
    const uint64_t* w = check<uint64_t>(words, "words", 2);
    const int64_t rows = words.shape(0), k = words.shape(1);
    py::array_t<int64_t> out(rows);
    int64_t* o = out.mutable_data();
    const KernelTable* t = active_kernels();
    {
      py::gil_scoped_release release;
      t->popcount_rows(w, rows, k, o, nthreads);
    }
    return out;
  }, py::arg("words"), py::arg("nthreads") = 0, "Popcount of each row of words [m, k] -> int64 [m].");

  m.def("intersect_dense_dense", [](const py::array& a, const py::array& b, int nthreads) {
    const uint64_t* pa = check<uint64_t>(a, "A.words", 2);
    const uint64_t* pb = check<uint64_t>(b, "B.words", 2);
    check_dim(b, "B.words", 1, a.shape(1), "A's words per row");
    const int64_t na = a.shape(0), nb = b.shape(0), k = a.shape(1);
    auto out = new_counts(na, nb);
    int64_t* o = out.mutable_data();
    const KernelTable* t = active_kernels();
    {
      py::gil_scoped_release release;
      t->intersect_dense_dense(pa, na, pb, nb, k, o, nthreads);
    }
    return out;
  }, py::arg("a"), py::arg("b"), py::arg("nthreads") = 0,
     "|A_i & B_j| for dense rows A [na, k], B [nb, k] -> int64 [na, nb].");

  m.def("intersect_sparse_dense", [](const py::array& a_indptr, const py::array& a_images,
                                     const py::array& a_words, const py::array& b, int nthreads) {
    check<uint64_t>(b, "B.words", 3);
    const int64_t nb = b.shape(0), n_images = b.shape(1), wpi = b.shape(2);
    SparseRows a = check_sparse(a_indptr, a_images, a_words, "A", n_images, wpi);
    auto out = new_counts(a.n, nb);
    int64_t* o = out.mutable_data();
    const uint64_t* pb = static_cast<const uint64_t*>(b.data());
    const KernelTable* t = active_kernels();
    {
      py::gil_scoped_release release;
      t->intersect_sparse_dense(a, pb, nb, n_images, wpi, o, nthreads);
    }
    return out;
  }, py::arg("a_indptr"), py::arg("a_images"), py::arg("a_words"), py::arg("b"), py::arg("nthreads") = 0,
     "|A_i & B_j| for image-sparse A and dense B [nb, n_images, wpi] -> int64 [na, nb].");

  m.def("intersect_sparse_sparse", [](const py::array& a_indptr, const py::array& a_images,
                                      const py::array& a_words, const py::array& b_indptr,
                                      const py::array& b_images, const py::array& b_words,
                                      int64_t n_images, int nthreads) {
    if (n_images < 0) throw py::value_error("n_images: must be >= 0");
    const int64_t wpi = a_words.ndim() == 2 ? a_words.shape(1) : 0;
    SparseRows a = check_sparse(a_indptr, a_images, a_words, "A", n_images, wpi);
    SparseRows b = check_sparse(b_indptr, b_images, b_words, "B", n_images, wpi);
    auto out = new_counts(a.n, b.n);
    int64_t* o = out.mutable_data();
    const KernelTable* t = active_kernels();
    {
      py::gil_scoped_release release;
      t->intersect_sparse_sparse(a, b, n_images, wpi, o, nthreads);
    }
    return out;
  }, py::arg("a_indptr"), py::arg("a_images"), py::arg("a_words"), py::arg("b_indptr"),
     py::arg("b_images"), py::arg("b_words"), py::arg("n_images"), py::arg("nthreads") = 0,
     "|A_i & B_j| for two image-sparse row sets -> int64 [na, nb].");

  m.def("binary_dense", [](int op, const py::array& a, const py::array& b, int nthreads) {
    const BinaryOp bop = check_op(op);
    const uint64_t* pa = check<uint64_t>(a, "A.words", 2);
    const uint64_t* pb = check<uint64_t>(b, "B.words", 2);
    check_dim(b, "B.words", 1, a.shape(1), "A's words per row");
    const int64_t na = a.shape(0), nb = b.shape(0), k = a.shape(1);
    if (na != nb && na != 1 && nb != 1)
      throw py::value_error("A and B: row counts " + std::to_string(na) + " and " + std::to_string(nb) +
                            " must match, or one must be 1");
    const int64_t n = na == 1 ? nb : na;
    py::array_t<uint64_t> out(std::vector<py::ssize_t>{n, k});
    uint64_t* o = out.mutable_data();
    {
      py::gil_scoped_release release;
      binary_dense(bop, pa, na, pb, nb, k, o, nthreads);
    }
    return out;
  }, py::arg("op"), py::arg("a"), py::arg("b"), py::arg("nthreads") = 0,
     "Elementwise A op B on dense words (op 0 and, 1 or, 2 and_not); a single row broadcasts.");

  m.def("not_blocks", [](const py::array& a, int64_t pixels_per_image, int nthreads) {
    const uint64_t* pa = check<uint64_t>(a, "words", 2);
    const int64_t rows = a.shape(0), wpi = a.shape(1);
    if (pixels_per_image < 1 || (pixels_per_image + 63) / 64 != wpi)
      throw py::value_error("pixels_per_image: " + std::to_string(pixels_per_image) +
                            " does not fill " + std::to_string(wpi) + " words per image");
    py::array_t<uint64_t> out(std::vector<py::ssize_t>{rows, wpi});
    uint64_t* o = out.mutable_data();
    {
      py::gil_scoped_release release;
      not_blocks(pa, rows, wpi, pixels_per_image, o, nthreads);
    }
    return out;
  }, py::arg("words"), py::arg("pixels_per_image"), py::arg("nthreads") = 0,
     "~words [m, wpi] per image block, padding bits kept zero.");

  m.def("combine_blocks", [](const py::array& ops, const py::array& a, const py::array& ia, const py::array& b,
                             const py::array& ib, int nthreads) {
    const uint8_t* pops = check<uint8_t>(ops, "ops", 1);
    const uint64_t* pa = check<uint64_t>(a, "A.words", 2);
    const uint64_t* pb = check<uint64_t>(b, "B.words", 2);
    const int64_t* pia = check<int64_t>(ia, "ia", 1);
    const int64_t* pib = check<int64_t>(ib, "ib", 1);
    check_dim(b, "B.words", 1, a.shape(1), "A's words per block");
    check_dim(ia, "ia", 0, ops.shape(0), "len(ops)");
    check_dim(ib, "ib", 0, ops.shape(0), "len(ops)");
    const int64_t rows = ops.shape(0), wpi = a.shape(1);
    for (int64_t t = 0; t < rows; ++t) {
      check_op(pops[t]);
      if (pia[t] < -1 || pia[t] >= a.shape(0))
        throw py::value_error("ia: block index " + std::to_string(pia[t]) + " outside [-1, " +
                              std::to_string(a.shape(0)) + ")");
      if (pib[t] < -1 || pib[t] >= b.shape(0))
        throw py::value_error("ib: block index " + std::to_string(pib[t]) + " outside [-1, " +
                              std::to_string(b.shape(0)) + ")");
    }
    py::array_t<uint64_t> out(std::vector<py::ssize_t>{rows, wpi});
    uint64_t* o = out.mutable_data();
    {
      py::gil_scoped_release release;
      combine_blocks(pops, pa, pia, pb, pib, rows, wpi, o, nthreads);
    }
    return out;
  }, py::arg("ops"), py::arg("a"), py::arg("ia"), py::arg("b"), py::arg("ib"), py::arg("nthreads") = 0,
     "out[t] = A[ia[t]] ops[t] B[ib[t]] over blocks of wpi words (ops uint8: 0 and, 1 or, 2 and_not); "
     "index -1 is a zero block.");

  m.def("largest_rectangles", [](const py::array& masks, int nthreads) {
    const bool* pm = check<bool>(masks, "masks", 3);
    const int64_t rows = masks.shape(0), h = masks.shape(1), w = masks.shape(2);
    py::array_t<int32_t> out(std::vector<py::ssize_t>{rows, 4});
    int32_t* o = out.mutable_data();
    {
      py::gil_scoped_release release;
      largest_rectangles(reinterpret_cast<const uint8_t*>(pm), rows, h, w, o, nthreads);
    }
    return out;
  }, py::arg("masks"), py::arg("nthreads") = 0,
     "Largest rectangle of set pixels of each mask bool [m, h, w] -> int32 [m, 4] (y0, x0, y1, x1) inclusive; "
     "(0, 0, -1, -1) when empty.");

  m.def("nonzero_blocks", [](const py::array& words, int nthreads) {
    const uint64_t* w = check<uint64_t>(words, "words", 2);
    const int64_t rows = words.shape(0), wpi = words.shape(1);
    py::array_t<bool> out(rows);
    uint8_t* o = reinterpret_cast<uint8_t*>(out.mutable_data());
    {
      py::gil_scoped_release release;
      nonzero_blocks(w, rows, wpi, o, nthreads);
    }
    return out;
  }, py::arg("words"), py::arg("nthreads") = 0, "Whether each block of words [m, wpi] has a bit set -> bool [m].");

  m.def("ig_accumulate", [](const py::array& grads, const py::array& weights, const py::array& delta,
                            py::array& out, bool reduce_spatial, int nthreads) {
    if (grads.dtype().equal(py::dtype::of<double>()))
      ig_accumulate_typed<double>(grads, weights, delta, out, reduce_spatial, nthreads);
    else if (grads.dtype().equal(py::dtype::of<float>()))
      ig_accumulate_typed<float>(grads, weights, delta, out, reduce_spatial, nthreads);
    else
      throw py::type_error("grads: expected dtype float32 or float64, got " + std::string(py::str(grads.dtype())));
  }, py::arg("grads"), py::arg("weights"), py::arg("delta"), py::arg("out"), py::arg("reduce_spatial"),
     py::arg("nthreads") = 0,
     "Integrated-gradients accumulation, in place: grads [T, S, U, C, P], weights [S], delta [U, C, P] "
     "(float32 or float64, C-contiguous, one dtype). reduce_spatial: out [T, U, C] += "
     "sum_s w[s] sum_p delta * grads; else out [T, U, C, P] += delta * sum_s w[s] grads. "
     "Sums in float64; the GIL is released.");
}
