#include "mailcar/delivery.hpp"

#include "mailcar/log.hpp"

namespace mailcar {

const char* delivery_status_name(DeliveryStatus s) {
  switch (s) {
    case DeliveryStatus::Sent:
      return "sent";
    case DeliveryStatus::ConnectionRefused:
      return "connection_refused";
    case DeliveryStatus::ConnectionTimedOut:
      return "connection_timed_out";
    case DeliveryStatus::CertificateError:
      return "certificate_error";
    case DeliveryStatus::AuthenticationFailed:
      return "authentication_failed";
    case DeliveryStatus::TlsUnavailable:
      return "tls_unavailable";
    case DeliveryStatus::Rejected:
      return "rejected";
    case DeliveryStatus::ProtocolError:
      return "protocol_error";
    case DeliveryStatus::ShuttingDown:
      return "shutting_down";
  }
  return "unknown";
}

void log_delivery(const DeliveryLogContext& c, const DeliveryResult& r) {
  // A number when the upstream answered, null (JSON) when it never did.
  log::Field code("upstream_code", r.smtp_code ? std::to_string(*r.smtp_code) : "null");
  code.quoted = false;
  log::info("message", {{"id", c.id},
                        {"ingress", ingress_name(c.ingress)},
                        {"role", c.role},
                        {"identity", c.identity},
                        {"remote", c.remote},
                        {"service", c.service},
                        {"recipients", c.recipients},
                        {"size", c.size},
                        {"outcome", c.outcome},
                        {"status", delivery_status_name(r.status)},
                        code,
                        {"upstream_reply", r.smtp_reply},
                        {"upstream_seconds", r.upstream_seconds}});
  for (const RecipientOutcome& rejected : r.rejected) {
    log::warn("recipient_rejected", {{"id", c.id},
                                     {"recipient", rejected.address},
                                     {"upstream_code", rejected.smtp_code},
                                     {"upstream_reply", rejected.smtp_reply}});
  }
}

DeliveryResult delivery_failure(DeliveryStatus status, std::string message, bool retryable) {
  DeliveryResult r;
  r.status = status;
  r.message = std::move(message);
  r.retryable = retryable;
  return r;
}

}  // namespace mailcar
