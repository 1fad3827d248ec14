// The transports' face towards the submission module: hand over an OutboundMessage, get one
// DeliveryResult back on the loop thread. Implemented by the SMTP relay (connection pool +
// SmtpClientSession) and by the file driver.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/message.hpp"

namespace mailcar {

enum class DeliveryStatus {
  Sent,                  // upstream accepted the message for >= 1 recipient (see rejected)
  ConnectionRefused,     // "Connection refused" (also: DNS failure, network unreachable)
  ConnectionTimedOut,    // "Connection timed out" (connect, TLS handshake or any reply)
  CertificateError,      // "Certificate error": chain or host name did not verify
  AuthenticationFailed,  // "Authentication failed": AUTH refused, or AUTH needed but not offered
  TlsUnavailable,        // encryption: tls but the server offered no STARTTLS (never downgraded)
  Rejected,              // the upstream refused with an SMTP reply (MAIL, all RCPTs, DATA, ...)
  ProtocolError,         // the upstream spoke something that is not SMTP, or closed mid-reply
  ShuttingDown,          // mailcar is stopping and did not start this delivery
};

struct RecipientOutcome {
  std::string address;
  int smtp_code = 0;
  std::string smtp_reply;  // the reply text as received, lines joined with "\n"
};

struct DeliveryResult {
  DeliveryStatus status = DeliveryStatus::Sent;
  std::string message;           // human text; for failures the SPEC §4 500 messages
  std::optional<int> smtp_code;  // the deciding upstream reply, if the upstream answered
  std::string smtp_reply;
  bool retryable = false;             // refused/timed out/4xx: true; cert/auth/5xx: false
  std::vector<std::string> accepted;  // recipients the upstream took
  std::vector<RecipientOutcome> rejected;
  double upstream_seconds = 0;  // wall time spent on this message upstream
  // OAuth2 (issue 9): the token endpoint's `error` (e.g. "invalid_grant") when getting a
  // token failed; empty otherwise. Shown as context.oauth2_error.
  std::string oauth2_error;
  // Failover (issue 9): the service whose answer this is; set by deliver_with_failover,
  // empty from a bare transport.
  std::string delivered_via;
};

using DeliveryCallback = std::function<void(DeliveryResult)>;

class Transport {
 public:
  virtual ~Transport() = default;
  // Deliver one message. `done` is called exactly once, on the loop thread, never from
  // inside deliver() itself. A relaying transport calls it within limits.delivery_timeout of
  // the call (waiting for a free connection included): past that the result is
  // ConnectionTimedOut ("Connection timed out", retryable) and the upstream connection that
  // carried the message is dropped, never reused. The file transport has no such deadline.
  virtual void deliver(OutboundMessage message, DeliveryCallback done) = 0;
  // Stop: finish in-flight deliveries, QUIT idle connections, then call `done` once.
  virtual void shutdown(std::function<void()> done) = 0;
};

const char* delivery_status_name(DeliveryStatus s);
// A failed result with no upstream reply attached.
DeliveryResult delivery_failure(DeliveryStatus status, std::string message, bool retryable);

}  // namespace mailcar
