#include "mailcar/daemon.hpp"

#include <cstdio>

namespace mailcar {
int daemon_main(int, char**) {
  std::puts("mailcar (skeleton)");
  return 0;
}
}  // namespace mailcar
