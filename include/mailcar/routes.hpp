// Routing of SMTP-submitted mail (issue 9, SPEC §9.2): `routes:` pick the service by the
// client's role or the envelope sender; the first route that matches wins, then smtp.service.
// The HTTP door keeps choosing by URL. The policy then judges the chosen service as any other:
// a role that may not use it is refused as for a disallowed service.
#pragma once

#include <string>
#include <string_view>

#include "mailcar/config.hpp"

namespace mailcar {

// The service for a message of `role` from `envelope_from` (empty: the null sender `<>`).
// Sender patterns as in SPEC §3 (SenderPatterns). O(routes); routes are few.
std::string route_service(const Config& config, std::string_view role,
                          std::string_view envelope_from);

}  // namespace mailcar
