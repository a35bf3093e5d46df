#include <cstdio>
#include <cstdlib>

#include "lib/greeter.h"

#define CHECK(cond)                                              \
  do {                                                           \
    if (!(cond)) {                                               \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, \
                   __LINE__, #cond);                             \
      std::exit(1);                                              \
    }                                                            \
  } while (0)

int main() {
  CHECK(greeter::Greet("rbe") == "Hello, rbe!");
  CHECK(greeter::Greet("") == "Hello, !");
  // Reference values of 64-bit FNV-1a.
  CHECK(greeter::Fnv1a("") == 0xcbf29ce484222325ULL);
  CHECK(greeter::Fnv1a("a") == 0xaf63dc4c8601ec8cULL);
  std::printf("greeter_test: all checks passed\n");
  return 0;
}
