#include "smtp_server/delivery_reply.hpp"

#include <string_view>

namespace mailcar::smtp {
namespace {

constexpr size_t kMaxUpstreamText = 300;  // keeps our reply line far below 512 octets

std::string one_line(std::string_view s) {
  std::string out;
  for (char c : s) {
    if (out.size() >= kMaxUpstreamText) break;
    auto u = static_cast<unsigned char>(c);
    out.push_back(u < 0x20 || u == 0x7f ? ' ' : c);
  }
  return out;
}

// "5.7.1 text" -> "5.7.1" when the upstream reply starts with an enhanced code of `klass`.
std::string enhanced_of(std::string_view reply, char klass, std::string fallback) {
  size_t end = reply.find(' ');
  std::string_view code = reply.substr(0, end);
  if (code.size() < 5 || code[0] != klass || code[1] != '.') return fallback;
  int dots = 0;
  for (char c : code.substr(1)) {
    if (c == '.') {
      ++dots;
    } else if (c < '0' || c > '9') {
      return fallback;
    }
  }
  return dots == 2 ? std::string(code) : fallback;
}

std::string upstream_said(const DeliveryResult& r) {
  std::string text = r.smtp_code ? std::to_string(*r.smtp_code) + " " + r.smtp_reply : r.message;
  return one_line(text);
}

}  // namespace

FinalReply reply_for_delivery(const DeliveryResult& r, const std::string& message_id) {
  switch (r.status) {
    case DeliveryStatus::Sent:
      return {250, "2.0.0", "Ok: queued as " + message_id};
    case DeliveryStatus::Rejected: {
      if (!r.smtp_code && r.message.find("SMTPUTF8") != std::string::npos) {
        return {553, "5.6.7", one_line(r.message)};
      }
      bool temporary = r.smtp_code ? (*r.smtp_code >= 400 && *r.smtp_code < 500) : r.retryable;
      if (temporary) {
        return {451, enhanced_of(r.smtp_reply, '4', "4.3.0"),
                "Upstream deferred the message: " + upstream_said(r)};
      }
      return {554, enhanced_of(r.smtp_reply, '5', "5.0.0"),
              "Upstream rejected the message: " + upstream_said(r)};
    }
    case DeliveryStatus::ConnectionRefused:
      return {451, "4.4.1", "Upstream connection refused: " + one_line(r.message)};
    case DeliveryStatus::ConnectionTimedOut:
      return {451, "4.4.2", "Upstream connection timed out: " + one_line(r.message)};
    case DeliveryStatus::CertificateError:
      return {451, "4.4.0", "Upstream certificate error: " + one_line(r.message)};
    case DeliveryStatus::AuthenticationFailed:
      return {451, "4.4.0", "Upstream authentication failed: " + one_line(r.message)};
    case DeliveryStatus::TlsUnavailable:
      return {451, "4.4.0", "Upstream offers no STARTTLS: " + one_line(r.message)};
    case DeliveryStatus::ProtocolError:
      return {451, "4.4.0", "Upstream protocol error: " + one_line(r.message)};
    case DeliveryStatus::ShuttingDown:
      return {451, "4.3.2", "Service shutting down, try again later"};
  }
  return {451, "4.3.0", "Delivery failed"};
}

FinalReply reply_for_policy(const PolicyDecision& d) {
  switch (d.verdict) {
    case Verdict::Allow:
      return {250, "2.0.0", "Ok"};
    case Verdict::TooManyRecipients:
      return {
          452,
          "4.5.3",
          d.reason.empty() ? "Too many recipients" : one_line(d.reason),
      };
    case Verdict::RateLimited:
      return {450, "4.7.1",
              "Rate limit " + one_line(d.limit_text) + " exceeded, try again in " +
                  std::to_string((d.retry_after_ms + 999) / 1000) + " seconds"};
    default:
      return {550, "5.7.1", d.reason.empty() ? "Not allowed" : one_line(d.reason)};
  }
}

FinalReply reply_for_submission(const SubmissionResult& result) {
  switch (result.status) {
    case SubmissionStatus::Refused:
    case SubmissionStatus::RateLimited:
      return reply_for_policy(result.decision);
    case SubmissionStatus::Unavailable:
      return {451, "4.3.2",
              "Service not available, try again later: " + one_line(result.delivery.message)};
    case SubmissionStatus::Queued:
      return {250, "2.0.0", "Ok: queued as " + result.id};
    case SubmissionStatus::NoSpace:
      return {452, "4.3.1", "Insufficient system storage, try again later"};
    case SubmissionStatus::Sent:
    case SubmissionStatus::Failed:
    case SubmissionStatus::Rejected:
      break;
  }
  return reply_for_delivery(result.delivery, result.id);
}

}  // namespace mailcar::smtp
