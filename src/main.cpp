// Thin entry point: everything lives in the daemon layer, but the sendmail command (also
// reached as `sendmail` through a link), which never starts the daemon.
#include <string>
#include <vector>

#include "mailcar/daemon.hpp"
#include "mailcar/sendmail.hpp"

int main(int argc, char** argv) {
  std::vector<std::string> args;
  std::string config_file;
  if (mailcar::sendmail::is_sendmail_invocation(argc, argv, args, config_file)) {
    return mailcar::sendmail::sendmail_main(args, config_file);
  }
  return mailcar::daemon_main(argc, argv);
}
