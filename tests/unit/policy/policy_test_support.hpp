// Builds Configs in code so policy tests do not depend on the YAML loader.
#pragma once

#include <string>
#include <vector>

#include "mailcar/config.hpp"

namespace mailcar::testing {

inline Rate rate(uint64_t count, std::string_view unit) {
  uint64_t period = unit == "second"   ? 1000
                    : unit == "minute" ? 60'000
                    : unit == "hour"   ? 3'600'000
                                       : 86'400'000;
  return Rate{count, period, std::to_string(count) + "/" + std::string(unit)};
}

inline ServiceConfig service(std::string name, std::string from_email,
                             std::optional<Rate> quota = std::nullopt) {
  ServiceConfig s;
  s.name = std::move(name);
  s.host = "smtp.example.net";
  s.from_email = std::move(from_email);
  s.rate_limit = std::move(quota);
  return s;
}

inline RoleConfig role(std::string name, std::optional<std::vector<std::string>> services,
                       std::optional<std::vector<std::string>> senders,
                       std::vector<Rate> windows = {},
                       std::optional<unsigned> max_recipients = std::nullopt) {
  RoleConfig r;
  r.name = std::move(name);
  r.services = std::move(services);
  r.senders = std::move(senders);
  r.rate_limits = std::move(windows);
  r.max_recipients = max_recipients;
  return r;
}

}  // namespace mailcar::testing
