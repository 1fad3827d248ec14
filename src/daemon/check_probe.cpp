#include "daemon/check_probe.hpp"

#include <memory>
#include <string>
#include <vector>

#include <uv.h>

#include "mailcar/probe.hpp"
#include "mailcar/relay.hpp"

namespace mailcar {
namespace {

std::string address_text(const sockaddr* addr) {
  char buffer[INET6_ADDRSTRLEN] = {};
  if (addr->sa_family == AF_INET) {
    uv_ip4_name(reinterpret_cast<const sockaddr_in*>(addr), buffer, sizeof buffer);
  } else if (addr->sa_family == AF_INET6) {
    uv_ip6_name(reinterpret_cast<const sockaddr_in6*>(addr), buffer, sizeof buffer);
  }
  return buffer;
}

// One service: name lookup (to list the addresses), then the relay's probe.
struct ServiceProbe {
  const ServiceConfig* service = nullptr;
  std::string hostname;  // our EHLO name
  uv_loop_t* loop = nullptr;
  uv_getaddrinfo_t resolve{};
  std::vector<std::string> addresses;
  std::string resolve_error;
  std::unique_ptr<SmtpRelay> relay;
  std::optional<ProbeReport> report;

  void start() {
    resolve.data = this;
    addrinfo hints{};
    hints.ai_socktype = SOCK_STREAM;
    int rc = uv_getaddrinfo(loop, &resolve, &ServiceProbe::resolved, service->host.c_str(), nullptr,
                            &hints);
    if (rc != 0) {
      resolve_error = uv_strerror(rc);
      report.emplace();
    }
  }

  static void resolved(uv_getaddrinfo_t* req, int status, addrinfo* res) noexcept {
    auto* self = static_cast<ServiceProbe*>(req->data);
    if (status != 0) {
      self->resolve_error = uv_strerror(status);
      self->report.emplace();
    } else {
      for (addrinfo* a = res; a != nullptr; a = a->ai_next) {
        std::string text = address_text(a->ai_addr);
        bool seen = false;
        for (const std::string& known : self->addresses) seen = seen || known == text;
        if (!seen && !text.empty()) self->addresses.push_back(std::move(text));
      }
      self->relay = std::make_unique<SmtpRelay>(self->loop, *self->service, self->hostname);
      self->relay->probe([self](ProbeReport r) { self->report = std::move(r); });
    }
    uv_freeaddrinfo(res);
  }

  bool passed() const { return resolve_error.empty() && report && report->ok; }

  void print(std::FILE* out) const {
    const ServiceConfig& s = *service;
    const char* mode = s.encryption == Encryption::Tls        ? "ssl (implicit TLS)"
                       : s.encryption == Encryption::StartTls ? "tls (STARTTLS)"
                                                              : "none";
    std::fprintf(out, "service %s: %s:%u, encryption %s\n", s.name.c_str(), s.host.c_str(),
                 static_cast<unsigned>(s.port), mode);
    std::vector<std::string> lines;
    if (!resolve_error.empty()) {
      lines.push_back("FAIL DNS: " + s.host + " does not resolve (" + resolve_error + ")");
    } else if (report) {
      lines = describe_probe(s, addresses, *report);
    }
    for (const std::string& line : lines) std::fprintf(out, "  %s\n", line.c_str());
  }
};

}  // namespace

int check_probe(const Config& config, std::FILE* out) {
  uv_loop_t loop;
  uv_loop_init(&loop);
  std::vector<std::unique_ptr<ServiceProbe>> probes;
  for (const ServiceConfig& s : config.services) {
    if (s.driver != ServiceDriver::Smtp) continue;
    auto p = std::make_unique<ServiceProbe>();
    p->service = &s;
    p->hostname = config.smtp.hostname;
    p->loop = &loop;
    p->start();
    probes.push_back(std::move(p));
  }
  uv_run(&loop, UV_RUN_DEFAULT);  // ends when every lookup, connection and timer is done
  bool all = true;
  for (const ServiceConfig& s : config.services) {
    if (s.driver == ServiceDriver::File) {
      std::fprintf(out, "service %s: driver file, writes to %s (nothing to probe)\n",
                   s.name.c_str(), s.path.c_str());
    }
  }
  for (const auto& p : probes) {
    p->print(out);
    all = all && p->passed();
  }
  std::fprintf(out, "%s\n", all ? "all services passed" : "some services failed");
  for (auto& p : probes) p->relay.reset();
  uv_run(&loop, UV_RUN_DEFAULT);
  uv_loop_close(&loop);
  return all ? 0 : 1;
}

}  // namespace mailcar
