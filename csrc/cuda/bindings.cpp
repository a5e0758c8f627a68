// The pybind11 boundary of the optional CUDA module neurcore.engine._cuda. It takes
// raw device pointers (torch's tensor.data_ptr()), sizes and a stream handle,
// never Python tensors: no libtorch link, no torch ABI. neurcore.engine._dispatch checks
// devices, dtypes, shapes and contiguity before calling here, and allocates
// the outputs.
#include <pybind11/pybind11.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "ig.cuh"
#include "kernels.cuh"

namespace py = pybind11;
namespace nc = neurcore::cuda;

namespace {

template <class T>
T* ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}
cudaStream_t stream_of(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

nc::SparseRowsDev sparse(std::uintptr_t indptr, std::uintptr_t images, std::uintptr_t words, int64_t n,
                         int64_t nnz) {
  return nc::SparseRowsDev{ptr<const int64_t>(indptr), ptr<const int64_t>(images), ptr<const uint64_t>(words),
                           n, nnz};
}

}  // namespace

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "neurcore CUDA kernels over bit-packed masks (device pointers; see neurcore.engine._dispatch)";

  m.def("runtime_version", [] {
    int v = 0;
    cudaRuntimeGetVersion(&v);
    return v;
  });
  m.def("device_count", []() -> py::tuple {
    int n = 0;
    const cudaError_t err = cudaGetDeviceCount(&n);
    if (err != cudaSuccess) {
      cudaGetLastError();  // clear the sticky error so later calls report their own
      return py::make_tuple(0, std::string(cudaGetErrorString(err)));
    }
    return py::make_tuple(n, std::string());
  }, "(number of usable devices, error message or '').");

  m.def("popcount_rows", [](std::uintptr_t words, int64_t rows, int64_t k, std::uintptr_t out, std::uintptr_t s) {
    py::gil_scoped_release release;
    nc::popcount_rows(ptr<const uint64_t>(words), rows, k, ptr<int64_t>(out), stream_of(s));
  });
  m.def("intersect_dense_dense", [](std::uintptr_t a, int64_t na, std::uintptr_t b, int64_t nb, int64_t k,
                                    std::uintptr_t out, std::uintptr_t s) {
    py::gil_scoped_release release;
    nc::intersect_dense_dense(ptr<const uint64_t>(a), na, ptr<const uint64_t>(b), nb, k, ptr<int64_t>(out),
                              stream_of(s));
  });
  m.def("intersect_sparse_dense", [](std::uintptr_t a_indptr, std::uintptr_t a_images, std::uintptr_t a_words,
                                     int64_t na, int64_t nnz, std::uintptr_t b, int64_t nb, int64_t n_images,
                                     int64_t wpi, std::uintptr_t out, std::uintptr_t s) {
    py::gil_scoped_release release;
    nc::intersect_sparse_dense(sparse(a_indptr, a_images, a_words, na, nnz), ptr<const uint64_t>(b), nb,
                               n_images, wpi, ptr<int64_t>(out), stream_of(s));
  });
  m.def("intersect_sparse_sparse", [](std::uintptr_t a_indptr, std::uintptr_t a_images, std::uintptr_t a_words,
                                      int64_t na, int64_t nnz, std::uintptr_t a_row, std::uintptr_t b_words,
                                      int64_t nb, std::uintptr_t by_image, std::uintptr_t b_row,
                                      std::uintptr_t b_block, int64_t wpi, std::uintptr_t out, std::uintptr_t s) {
    py::gil_scoped_release release;
    nc::intersect_sparse_sparse(sparse(a_indptr, a_images, a_words, na, nnz), ptr<const int64_t>(a_row),
                                ptr<const uint64_t>(b_words), nb, ptr<const int64_t>(by_image),
                                ptr<const int64_t>(b_row), ptr<const int64_t>(b_block), wpi, ptr<int64_t>(out),
                                stream_of(s));
  });
  m.def("binary_dense", [](int op, std::uintptr_t a, int64_t na, std::uintptr_t b, int64_t nb, int64_t k,
                           std::uintptr_t out, std::uintptr_t s) {
    if (op < 0 || op > 2) throw py::value_error("op: expected 0 (and), 1 (or) or 2 (and_not)");
    py::gil_scoped_release release;
    nc::binary_dense(op, ptr<const uint64_t>(a), na, ptr<const uint64_t>(b), nb, k, ptr<uint64_t>(out),
                     stream_of(s));
  });
  m.def("not_blocks", [](std::uintptr_t a, int64_t rows, int64_t wpi, int64_t pixels_per_image, std::uintptr_t out,
                         std::uintptr_t s) {
    py::gil_scoped_release release;
    nc::not_blocks(ptr<const uint64_t>(a), rows, wpi, pixels_per_image, ptr<uint64_t>(out), stream_of(s));
  });
  m.def("combine_blocks", [](std::uintptr_t ops, std::uintptr_t a, std::uintptr_t ia, std::uintptr_t b,
                             std::uintptr_t ib, int64_t rows, int64_t wpi, std::uintptr_t out, std::uintptr_t s) {
    py::gil_scoped_release release;
    nc::combine_blocks(ptr<const uint8_t>(ops), ptr<const uint64_t>(a), ptr<const int64_t>(ia),
                       ptr<const uint64_t>(b), ptr<const int64_t>(ib), rows, wpi, ptr<uint64_t>(out), stream_of(s));
  });
  m.def("nonzero_blocks", [](std::uintptr_t words, int64_t rows, int64_t wpi, std::uintptr_t out, std::uintptr_t s) {
    py::gil_scoped_release release;
    nc::nonzero_blocks(ptr<const uint64_t>(words), rows, wpi, ptr<bool>(out), stream_of(s));
  });
  m.def("ig_accumulate", [](bool f64, std::uintptr_t grads, std::uintptr_t weights, std::uintptr_t delta,
                            std::uintptr_t out, int64_t n_targets, int64_t n_steps, int64_t n_examples,
                            int64_t n_channels, int64_t n_positions, bool reduce_spatial, std::uintptr_t s) {
    if (n_targets < 0 || n_steps < 0 || n_examples < 0 || n_channels < 0 || n_positions < 0)
      throw py::value_error("ig_accumulate: sizes must be >= 0");
    py::gil_scoped_release release;
    if (f64)
      nc::ig_accumulate(ptr<const double>(grads), ptr<const double>(weights), ptr<const double>(delta),
                        ptr<double>(out), n_targets, n_steps, n_examples, n_channels, n_positions, reduce_spatial,
                        stream_of(s));
    else
      nc::ig_accumulate(ptr<const float>(grads), ptr<const float>(weights), ptr<const float>(delta),
                        ptr<float>(out), n_targets, n_steps, n_examples, n_channels, n_positions, reduce_spatial,
                        stream_of(s));
  }, py::arg("f64"), py::arg("grads"), py::arg("weights"), py::arg("delta"), py::arg("out"), py::arg("n_targets"),
     py::arg("n_steps"), py::arg("n_examples"), py::arg("n_channels"), py::arg("n_positions"),
     py::arg("reduce_spatial"), py::arg("stream"),
     "Integrated-gradients accumulation into out, in place, on device pointers (float64 if f64 else float32): "
     "grads [T, S, U, C, P], weights [S], delta [U, C, P]; out [T, U, C] when reduce_spatial, else "
     "[T, U, C, P]. See csrc/cuda/ig.cuh.");
}
