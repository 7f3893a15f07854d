// expect: out must be a view of writable
// The output view must not be a view of const elements.
#include <attnkit/attnkit.hpp>

int main() {
  const float* p = nullptr;
  auto x = attnkit::view_bhsd(p, 1, 1, 1, 1);
  attnkit::attention(attnkit::softmax{}, x, x, x, x);
}
