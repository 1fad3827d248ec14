// How the outcome of a relay attempt becomes the SMTP reply to the client's final dot. Pure.
#pragma once

#include <string>

#include "mailcar/delivery.hpp"
#include "mailcar/policy.hpp"
#include "mailcar/submission.hpp"

namespace mailcar::smtp {

struct FinalReply {
  int code = 250;
  std::string enhanced;  // "2.0.0"
  std::string text;      // one line
};

// Sent -> 250; upstream 5xx -> 554 (5xx stays permanent); upstream 4xx and every connection,
// TLS, certificate or authentication problem -> 451 (the client retries); SMTPUTF8 missing
// upstream -> 553 5.6.7.
FinalReply reply_for_delivery(const DeliveryResult& result, const std::string& message_id);

// A refused end-of-data policy decision: 550 5.7.1, 452 4.5.3 or 450 4.7.1.
FinalReply reply_for_policy(const PolicyDecision& decision);

// The SMTP face of a submission's answer: reply_for_policy for refusals, reply_for_delivery
// for what the transport said, 451 4.3.2 when mailcar cannot take it now.
FinalReply reply_for_submission(const SubmissionResult& result);

}  // namespace mailcar::smtp
