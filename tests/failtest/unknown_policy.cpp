// expect: unknown attention policy
// attention() accepts only policies that an engine runs.
#include <attnkit/attnkit.hpp>

struct not_a_policy {};

int main() {
  float* p = nullptr;
  auto x = attnkit::view_bhsd(p, 1, 1, 1, 1);
  attnkit::attention(not_a_policy{}, x, x, x, x);
}
