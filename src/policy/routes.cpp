#include "mailcar/routes.hpp"

#include "mailcar/sender_pattern.hpp"

namespace mailcar {

std::string route_service(const Config& config, std::string_view role,
                          std::string_view envelope_from) {
  for (const RouteConfig& route : config.routes) {
    if (route.role) {
      if (*route.role == role) return route.service;
      continue;
    }
    if (!route.sender) continue;
    SenderPatterns pattern;
    if (pattern.add(*route.sender) && pattern.matches(envelope_from)) return route.service;
  }
  return config.smtp.service;
}

}  // namespace mailcar
