// Arbitrary client bytes into an SMTP server session. The first input byte picks the setup
// (AUTH in clear or not, anonymous role or not, STARTTLS or implicit TLS, small limits, DSN
// offered) and how the rest is split into reads; deliveries complete at once with varying
// replies. The junk command limit is small so that the fuzzer reaches it. BDAT (CHUNKING) and
// bracket-less addresses are in the dictionary and the seeds.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "smtp_server/smtp_session.hpp"

namespace {

using namespace mailcar;

class AnyCredentials : public smtp::CredentialStore {
 public:
  std::optional<std::string> authenticate(std::string_view user,
                                          std::string_view password) const override {
    if (user == "user" && password == "pass") return std::string("role");
    return std::nullopt;
  }
};

class AllowPolicy : public Policy {
 public:
  PolicyDecision admit(const PolicyRequest&, uint64_t) override { return {}; }
  PolicyDecision check(const PolicyRequest& r, uint64_t) const override {
    PolicyDecision d;
    if (r.recipients > 5) d.verdict = Verdict::TooManyRecipients;
    if (r.envelope_from == "deny@x.y") d.verdict = Verdict::SenderNotAllowed;
    return d;
  }
  QuotaVerdict take_quota(std::string_view, uint64_t, uint64_t) override { return {}; }
};

void check_output(const smtp::SessionOutput& out) {
  // Every reply line is CRLF-terminated and short.
  size_t start = 0;
  while (start < out.reply.size()) {
    size_t end = out.reply.find("\r\n", start);
    if (end == std::string::npos || end - start > 510) __builtin_trap();
    start = end + 2;
  }
  if ((out.event == smtp::SessionEvent::Deliver) != out.submission.has_value()) __builtin_trap();
  // DSN requests are parallel to the recipients, or absent.
  if (out.submission && !out.submission->dsn.recipients.empty() &&
      out.submission->dsn.recipients.size() != out.submission->recipients.size()) {
    __builtin_trap();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  uint8_t setup = data[0];
  std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);

  smtp::SessionOptions options;
  options.hostname = "fuzz.test";
  options.max_message_bytes = (setup & 0x01) ? 64 : 4096;
  options.auth_in_clear = setup & 0x02;
  if (setup & 0x04) options.anonymous_role = "anon";
  options.tls_available = setup & 0x08;
  options.implicit_tls = (setup & 0x48) == 0x40;  // listen.smtps (shares a bit with the reads)
  options.dsn = setup & 0x10;  // also one bit of the read size below
  options.max_data_line = 200;
  options.max_pending_input = 256;
  options.max_junk_commands = 8;
  options.now_ms = [] { return uint64_t{0}; };
  // The in-flight budget: with bit 4 of the chunk selector, room for 2,000 bytes only.
  uint64_t room = (setup & 0x10) ? 2000 : UINT64_MAX;
  options.reserve_data = [room, limit = options.max_message_bytes](uint64_t total) {
    // Never far beyond the message limit: a declared buffer plus blocks of growing size.
    if (total > 3 * limit + 4096 + 65536) __builtin_trap();
    return total <= room;
  };
  size_t chunk = (setup >> 4) + 1;

  AnyCredentials credentials;
  AllowPolicy policy;
  smtp::SmtpServerSession session(options, (setup & 0x02) ? &credentials : nullptr, &policy);
  session.start();
  session.greeting_sent();
  int replies = 0;
  for (size_t pos = 0; pos < input.size(); pos += chunk) {
    smtp::SessionOutput out = session.feed(input.substr(pos, chunk));
    check_output(out);
    while (out.event == smtp::SessionEvent::Deliver || out.event == smtp::SessionEvent::StartTls) {
      if (out.event == smtp::SessionEvent::StartTls) {
        session.tls_started();
        break;
      }
      if (out.submission->data.size() > options.max_message_bytes) __builtin_trap();
      ++replies;
      out = replies % 3 == 0 ? session.delivery_finished(451, "4.4.1", "later\r\nx")
                             : session.delivery_finished(250, "2.0.0", "Ok");
      check_output(out);
    }
    // A partial command line and message data never coexist (the glue's deadlines rely on it).
    if (session.line_pending() && session.busy()) __builtin_trap();
    if (session.state() == smtp::SessionState::Closed) break;
  }
  check_output(session.timeout(static_cast<smtp::Timeout>(setup % 3)));
  return 0;
}
