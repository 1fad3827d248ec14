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

}  // namespace mailcar
