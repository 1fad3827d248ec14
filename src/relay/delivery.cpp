#include "mailcar/delivery.hpp"

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

DeliveryResult delivery_failure(DeliveryStatus status, std::string message, bool retryable) {
  DeliveryResult r;
  r.status = status;
  r.message = std::move(message);
  r.retryable = retryable;
  return r;
}

}  // namespace mailcar
