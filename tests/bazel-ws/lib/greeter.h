#ifndef RBE_TEST_WS_LIB_GREETER_H_
#define RBE_TEST_WS_LIB_GREETER_H_

#include <cstdint>
#include <string>

namespace greeter {

// Returns "Hello, <name>!".
std::string Greet(const std::string& name);

// FNV-1a 64-bit hash of `data`, printed by //app:hello so that outputs
// depend on real computation.
uint64_t Fnv1a(const std::string& data);

}  // namespace greeter

#endif  // RBE_TEST_WS_LIB_GREETER_H_
