// expect: CUDA views need a translation unit compiled by nvcc
// A view of device memory cannot run in a host-only build: attention() says so at compile time.
#include <attnkit/attnkit.hpp>

int main() {
  float* p = nullptr;
  auto x = attnkit::view_bhsd_cuda(p, 1, 1, 1, 1);
  attnkit::attention(attnkit::softmax{}, x, x, x, x);
}
