// Upstream probes (issue 9): the health table, the schedule and the words of --check --probe.
#include <string>
#include <utility>
#include <vector>

#include "mailcar/clock.hpp"
#include "mailcar/log.hpp"
#include "mailcar/net.hpp"
#include "mailcar/probe.hpp"

namespace mailcar {
namespace {

std::string join(const std::vector<std::string>& items, std::string_view separator) {
  std::string out;
  for (const std::string& item : items) {
    if (!out.empty()) out += separator;
    out += item;
  }
  return out;
}

std::string seconds_text(uint64_t ms) {
  return ms % 1000 == 0 ? std::to_string(ms / 1000) + "s" : std::to_string(ms) + "ms";
}

std::string host_port(const ServiceConfig& s) {
  return s.host + ":" + std::to_string(s.port);
}

// The first bytes of a server's answer, quoted and made printable.
std::string printable(std::string_view bytes) {
  std::string out = "\"";
  for (char c : bytes) {
    if (c == '\r' || c == '\n') break;
    out += (c >= 0x20 && c < 0x7f) ? c : '?';
  }
  return out + "\"";
}

// An SMTP reply (three digits) where a TLS record was expected: a plaintext port.
bool looks_like_smtp(std::string_view bytes) {
  return bytes.size() >= 3 && bytes[0] >= '1' && bytes[0] <= '5' && bytes[1] >= '0' &&
         bytes[1] <= '9' && bytes[2] >= '0' && bytes[2] <= '9';
}

std::string certificate_problem(const ServiceConfig& s, const net::TlsPeerInfo* tls,
                                const DeliveryResult& failure) {
  if (tls == nullptr || !tls->have_certificate) {
    return "certificate of " + s.host + " did not verify: " + failure.message;
  }
  std::string names = tls->dns_names.empty() ? "no DNS names" : join(tls->dns_names, ", ");
  std::string subject = tls->subject.empty() ? std::string("(no subject)") : tls->subject;
  if (tls->name_mismatch) {
    return "certificate for " + subject + " does not match " + s.host + " (it names: " + names +
           "): set host to one of those names, or ask the provider which host name to use";
  }
  if (tls->not_trusted) {
    return "certificate of " + s.host + " (" + subject + ") is not trusted by " +
           (s.ca_file.empty() ? std::string("the system CA bundle") : "ca_file " + s.ca_file) +
           ": set ca_file to the CA that issued it (tls_verify: false only for a test server)";
  }
  return "certificate of " + s.host + " (" + subject + ") did not verify: " + tls->verify_text;
}

// Implicit TLS (encryption: ssl) failed before any SMTP.
std::string tls_problem(const ServiceConfig& s, const ProbeReport& r) {
  const net::TlsPeerInfo* tls = r.tls ? &*r.tls : nullptr;
  if (r.failure.status == DeliveryStatus::CertificateError)
    return certificate_problem(s, tls, r.failure);
  if (tls != nullptr && looks_like_smtp(tls->first_bytes)) {
    return "TLS handshake got an SMTP banner (" + printable(tls->first_bytes) + "): port " +
           std::to_string(s.port) +
           " speaks plain SMTP, not implicit TLS; use encryption: tls (STARTTLS) on this port, "
           "or the implicit-TLS port (usually 465) with encryption: ssl";
  }
  if (r.failure.status == DeliveryStatus::ConnectionTimedOut) {
    return "TLS handshake with " + host_port(s) + " timed out after " +
           seconds_text(s.connect_timeout_ms);
  }
  return "TLS handshake with " + host_port(s) + " failed: " + r.failure.message;
}

std::string reply_text(const DeliveryResult& f) {
  std::string text = f.smtp_reply;
  for (char& c : text) {
    if (c == '\n') c = ' ';
  }
  return std::to_string(f.smtp_code.value_or(0)) + " " + text;
}

// The first step that did not work, in words a user can act on.
std::string failure_text(const ServiceConfig& s, const ProbeReport& r) {
  const DeliveryResult& f = r.failure;
  if (f.status == DeliveryStatus::ShuttingDown) return f.message;
  switch (r.stage) {
    case ProbeStage::Connect:
      if (f.status == DeliveryStatus::ConnectionTimedOut) {
        return "connect to " + host_port(s) + " timed out after " +
               seconds_text(s.connect_timeout_ms) + " (a firewall may drop the packets)";
      }
      return "connection to " + host_port(s) +
             " refused (nothing listens there, the name does not resolve, or a firewall "
             "rejects it)";
    case ProbeStage::Tls:
      return tls_problem(s, r);
    case ProbeStage::Greeting:
      if (f.status == DeliveryStatus::ConnectionTimedOut) {
        return "no SMTP greeting from " + host_port(s) + " within " +
               seconds_text(s.connect_timeout_ms) +
               ": implicit TLS expected on this port? (port 465 wants encryption: ssl)";
      }
      if (f.smtp_code) return "the server refused us at its greeting: " + reply_text(f);
      return "no SMTP greeting from " + host_port(s) + ": " + f.message;
    case ProbeStage::StartTls:
      if (f.status == DeliveryStatus::TlsUnavailable) {
        return "server offers no STARTTLS (encryption: tls requires it): use the provider's "
               "STARTTLS port, or encryption: ssl on its implicit-TLS port";
      }
      if (f.status == DeliveryStatus::CertificateError) {
        return certificate_problem(s, r.tls ? &*r.tls : nullptr, f);
      }
      return "STARTTLS failed: " + (f.smtp_code ? reply_text(f) : f.message);
    case ProbeStage::Ehlo:
      return "EHLO failed: " + (f.smtp_code ? reply_text(f) : f.message);
    case ProbeStage::Auth:
      if (f.smtp_code) {
        return "AUTH " + r.auth_mechanism + " refused: " + reply_text(f) +
               " (check username and password)";
      }
      return f.message;
    case ProbeStage::Done:
      break;
  }
  return f.message;
}

}  // namespace

const char* probe_stage_name(ProbeStage stage) {
  switch (stage) {
    case ProbeStage::Connect:
      return "connect";
    case ProbeStage::Tls:
      return "tls";
    case ProbeStage::Greeting:
      return "greeting";
    case ProbeStage::Ehlo:
      return "ehlo";
    case ProbeStage::StartTls:
      return "starttls";
    case ProbeStage::Auth:
      return "auth";
    case ProbeStage::Done:
      return "done";
  }
  return "done";
}

// ---- health table ----

void UpstreamHealth::record(const std::string& service, UpstreamCheck check) {
  checks_[service] = std::move(check);
}

std::optional<UpstreamCheck> UpstreamHealth::last(std::string_view service) const {
  auto it = checks_.find(service);
  if (it == checks_.end()) return std::nullopt;
  return it->second;
}

void UpstreamHealth::clear() {
  checks_.clear();
}

UpstreamHealth& upstream_health() {
  static UpstreamHealth health;
  return health;
}

std::optional<UpstreamCheck> delivery_as_check(const DeliveryResult& r, uint64_t now_ms) {
  const uint64_t ms = static_cast<uint64_t>(r.upstream_seconds * 1000);
  switch (r.status) {
    case DeliveryStatus::Sent:
      if (r.accepted.empty()) return std::nullopt;
      return UpstreamCheck{true, now_ms, ms, {}};
    case DeliveryStatus::ConnectionRefused:
    case DeliveryStatus::ConnectionTimedOut:
    case DeliveryStatus::CertificateError:
    case DeliveryStatus::AuthenticationFailed:
    case DeliveryStatus::TlsUnavailable:
    case DeliveryStatus::ProtocolError:
      return UpstreamCheck{false, now_ms, ms, r.message};
    case DeliveryStatus::Rejected:
    case DeliveryStatus::ShuttingDown:
      break;
  }
  return std::nullopt;
}

std::string probe_error_text(const ServiceConfig& service, const ProbeReport& report) {
  return report.ok ? std::string() : failure_text(service, report);
}

std::vector<std::string> describe_probe(const ServiceConfig& s,
                                        const std::vector<std::string>& addresses,
                                        const ProbeReport& r) {
  std::vector<std::string> lines;
  if (!addresses.empty()) lines.push_back("ok   DNS: " + s.host + " -> " + join(addresses, ", "));
  if (!r.peer.empty()) lines.push_back("ok   connect: " + r.peer);
  if (r.tls && r.tls->handshake_done) {
    std::string line = std::string("ok   TLS (") +
                       (s.encryption == Encryption::Tls ? "implicit" : "STARTTLS") +
                       "): " + r.tls->version + ", " + r.tls->cipher;
    if (r.tls->have_certificate) {
      line += "; certificate " + r.tls->subject;
      if (!r.tls->dns_names.empty()) line += " (names: " + join(r.tls->dns_names, ", ") + ")";
    }
    line += s.tls_verify ? "; verified" : "; NOT verified (tls_verify: false)";
    lines.push_back(std::move(line));
  }
  if (!r.ehlo.empty()) lines.push_back("ok   EHLO: " + join(r.ehlo, ", "));
  if (r.ok) {
    if (!r.auth_mechanism.empty()) {
      lines.push_back("ok   AUTH " + r.auth_mechanism + " as " + s.username);
    } else {
      lines.push_back("ok   AUTH: none configured");
    }
    lines.push_back("ok   ready in " + std::to_string(r.latency_ms) + " ms");
  } else {
    lines.push_back("FAIL " + failure_text(s, r));
  }
  return lines;
}

// ---- schedule ----

struct ProbeScheduler::Impl : std::enable_shared_from_this<ProbeScheduler::Impl> {
  struct Entry {
    std::string service;
    uint64_t interval_ms = 0;
    std::unique_ptr<net::Timer> timer;
    bool running = false;
  };
  ProbeFn probe;
  std::vector<Entry> entries;

  void tick(size_t index) {
    Entry& e = entries[index];
    if (e.running) return;
    if (auto last = upstream_health().last(e.service); last && last->ok) {
      // A delivery (or a probe) found it working recently enough: no extra connection.
      if (last->checked_at_ms + e.interval_ms > wall_clock_ms() + e.interval_ms / 10) return;
    }
    e.running = true;
    probe(e.service, [weak = weak_from_this(), index](ProbeReport) {
      if (auto self = weak.lock()) self->entries[index].running = false;
    });
  }
};

ProbeScheduler::ProbeScheduler(uv_loop_t* loop, const Config& config, ProbeFn probe)
    : impl_(std::make_shared<Impl>()) {
  impl_->probe = std::move(probe);
  for (const ServiceConfig& s : config.services) {
    if (s.driver != ServiceDriver::Smtp || s.probe_interval_ms == 0) continue;
    Impl::Entry e;
    e.service = s.name;
    e.interval_ms = s.probe_interval_ms;
    e.timer = std::make_unique<net::Timer>(loop);
    impl_->entries.push_back(std::move(e));
  }
  for (size_t i = 0; i < impl_->entries.size(); ++i) {
    Impl::Entry& e = impl_->entries[i];
    e.timer->start(
        0,
        [weak = std::weak_ptr<Impl>(impl_), i] {
          if (auto self = weak.lock()) self->tick(i);
        },
        e.interval_ms);
  }
}

ProbeScheduler::~ProbeScheduler() {
  for (auto& e : impl_->entries) e.timer->stop();
}

}  // namespace mailcar
