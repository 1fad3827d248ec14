// Reads only the `listen` section of a configuration file, for the command-line tools: they
// must work when the rest of the file (secrets, certificates, variables of the daemon's
// environment) is not available to them.
#pragma once

#include <optional>
#include <string>

#include "mailcar/config.hpp"
#include "mailcar/result.hpp"

namespace mailcar::cli {

struct ListenSection {
  std::optional<ListenAddress> http;  // listen.http; 127.0.0.1:2580 when `listen` is absent
  std::optional<ListenAddress> smtp;  // listen.smtp
};

// Errors: the file cannot be read, is not YAML, or a listen address is invalid.
Result<ListenSection> peek_listen(const std::string& file, EnvLookup env);

// How a client reaches a listen address: a wildcard (0.0.0.0, ::) through loopback.
ListenAddress reachable(ListenAddress address);

}  // namespace mailcar::cli
