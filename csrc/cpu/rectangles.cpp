// Largest axis-aligned rectangle of set pixels in each of many small binary masks (the
// "inscribed rectangle" of MMESH, La Rosa et al. 2023): per row, the histogram of consecutive
// set pixels above, and the largest rectangle under it with a stack, O(h w) per mask.
#include <cstdint>
#include <vector>

#include "kernels.h"
#include "threads.h"

namespace neurcore::cpu {

void largest_rectangles(const uint8_t* masks, int64_t m, int64_t h, int64_t w, int32_t* out, int nthreads) {
#pragma omp parallel num_threads(resolve_threads(nthreads)) if (m * h * w > (1 << 16))
  {
    std::vector<int32_t> height(w + 1), stack(w + 1);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < m; ++t) {
      const uint8_t* mask = masks + t * h * w;
      int64_t best = 0;
      int32_t y0 = 0, x0 = 0, y1 = -1, x1 = -1;  // empty: a rectangle of no pixels
      std::fill(height.begin(), height.end(), 0);
      for (int64_t y = 0; y < h; ++y) {
        for (int64_t x = 0; x < w; ++x) height[x] = mask[y * w + x] ? height[x] + 1 : 0;
        height[w] = 0;  // sentinel flushes the stack
        int64_t top = 0;
        for (int64_t x = 0; x <= w; ++x) {
          while (top > 0 && height[stack[top - 1]] >= height[x]) {
            const int32_t hgt = height[stack[--top]];
            const int64_t left = top > 0 ? stack[top - 1] + 1 : 0;
            const int64_t area = int64_t(hgt) * (x - left);
            if (area > best) {
              best = area;
              y0 = int32_t(y - hgt + 1), y1 = int32_t(y), x0 = int32_t(left), x1 = int32_t(x - 1);
            }
          }
          stack[top++] = int32_t(x);
        }
      }
      out[t * 4 + 0] = y0, out[t * 4 + 1] = x0, out[t * 4 + 2] = y1, out[t * 4 + 3] = x1;
    }
  }
}

}  // namespace neurcore::cpu
