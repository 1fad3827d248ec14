// How the outcome of a relay attempt becomes the SMTP reply to the client's final dot. Pure.
#pragma once

#include <string>

#include "mailcar/delivery.hpp"
#include "mailcar/policy.hpp"

namespace mailcar::smtp {

struct FinalReply {
  int code = 250;
  std::string enhanced;          // "2.0.0"
  std::string text;              // one line
  const char* outcome = "sent";  // metrics outcome: sent | rejected | failed | rate_limited
};

// Sent -> 250; upstream 5xx -> 554 (5xx stays permanent); upstream 4xx and every connection,
// TLS, certificate or authentication problem -> 451 (the client retries); SMTPUTF8 missing
// upstream -> 553 5.6.7.
FinalReply reply_for_delivery(const DeliveryResult& result, const std::string& message_id);

// A refused end-of-data policy decision: 550 5.7.1, 452 4.5.3 or 450 4.7.1.
FinalReply reply_for_policy(const PolicyDecision& decision);

}  // namespace mailcar::smtp
