// Error checks shared by the CUDA translation units.
#pragma once

#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

namespace neurcore::cuda {

// Throws when the last kernel launch failed, naming the operation.
inline void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": CUDA launch failed: " + cudaGetErrorString(err));
}

}  // namespace neurcore::cuda
