// Prints a greeting and a hash of it; `hello NAME...` greets each NAME.
#include <cinttypes>
#include <cstdio>
#include <string>

#include "lib/greeter.h"

int main(int argc, char** argv) {
  if (argc < 2) {
    const std::string g = greeter::Greet("world");
    std::printf("%s fnv1a=%016" PRIx64 "\n", g.c_str(), greeter::Fnv1a(g));
    return 0;
  }
  for (int i = 1; i < argc; ++i) {
    const std::string g = greeter::Greet(argv[i]);
    std::printf("%s fnv1a=%016" PRIx64 "\n", g.c_str(), greeter::Fnv1a(g));
  }
  return 0;
}
