#include "lib/greeter.h"

namespace greeter {

std::string Greet(const std::string& name) { return "Hello, " + name + "!"; }

uint64_t Fnv1a(const std::string& data) {
  uint64_t h = 14695981039346656037ULL;
  for (unsigned char c : data) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  return h;
}

}  // namespace greeter
