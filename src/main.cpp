// Thin entry point: everything lives in the daemon layer.
#include "mailcar/daemon.hpp"

int main(int argc, char** argv) {
  return mailcar::daemon_main(argc, argv);
}
