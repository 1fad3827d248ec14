// Drives the project's SMTP client state machine (SmtpClientSession) over a blocking socket:
// one message to mailcar's own SMTP listener, for the sendmail command.
#pragma once

#include <string>

#include "mailcar/config.hpp"
#include "mailcar/delivery.hpp"
#include "mailcar/message.hpp"

namespace mailcar::cli {

struct SubmitSettings {
  ListenAddress target;
  std::string username;  // empty: no AUTH
  std::string password;
  std::string ehlo_name;
  int connect_timeout_ms = 10'000;
  int reply_timeout_ms = 60'000;  // every reply but the last; also every write
  // The reply to the end of data: in relay mode mailcar answers only once the upstream has.
  int final_reply_timeout_ms = 600'000;  // RFC 5321 §4.5.3.2.6
};

struct SubmitOutcome {
  DeliveryResult result;
  bool connected = false;  // the TCP connection was made
};

SubmitOutcome submit(const OutboundMessage& message, const SubmitSettings& settings);

}  // namespace mailcar::cli
