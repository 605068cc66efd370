// Check counting shared by the simulator drivers: every CHECK is one check. Each driver ends with
// finish(), whose "checks: P passed, F failed" line run.sh adds up.
#pragma once
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace simcheck {
inline long passed = 0, failed = 0;
inline bool quick = false;  // --quick: the drivers' reduced case lists
inline void parse_args(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--quick") == 0) quick = true;
    else { std::fprintf(stderr, "usage: %s [--quick]\n", argv[0]); std::exit(2); }
  }
}
inline int finish(const char* driver) {
  std::printf("%s checks: %ld passed, %ld failed\n", driver, passed, failed);
  return failed != 0;
}
}  // namespace simcheck

// CHECK(condition, printf-style message): counts the check; prints the first 30 failures.
#define CHECK(c, ...)                                                 \
  do {                                                                \
    if (c) {                                                          \
      ++simcheck::passed;                                             \
    } else if (simcheck::failed++ < 30) {                             \
      std::printf("FAIL %s:%d: ", __FILE__, __LINE__);                \
      std::printf(__VA_ARGS__);                                       \
      std::printf("\n");                                              \
    }                                                                 \
  } while (0)
