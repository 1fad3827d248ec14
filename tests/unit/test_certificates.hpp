// Self-signed certificates for localhost, made with openssl when a test suite starts (shared
// by the net and relay TLS tests).
#pragma once

#include <stdlib.h>

#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <string>

namespace mailcar::test_support {

// Creates <dir>/<name>.crt and <dir>/<name>.key for each name in a new temporary folder.
// Returns the folder, or "" when openssl failed.
inline std::string make_test_certificates(std::initializer_list<const char*> names) {
  char tmpl[] = "/tmp/mailcar-certs-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return "";
  std::string dir = tmpl;
  for (const char* name : names) {
    std::string base = dir + "/" + name;
    std::string command =
        "openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost "
        "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
        base + ".key -out " + base + ".crt >/dev/null 2>&1";
    if (std::system(command.c_str()) != 0) return "";
  }
  return dir;
}

inline void remove_test_certificates(const std::string& dir) {
  std::error_code ignored;
  if (!dir.empty()) std::filesystem::remove_all(dir, ignored);
}

}  // namespace mailcar::test_support
