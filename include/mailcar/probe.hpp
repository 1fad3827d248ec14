// Upstream probes (issue 9, SPEC §9.3): connect, TLS, EHLO, AUTH and QUIT through the same
// code as deliveries (SmtpRelay::probe), the last result per service (UpstreamHealth, read by
// GET /ready/upstream), the background schedule (ProbeScheduler), and the words
// `mailcar --check --probe` prints.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <uv.h>

#include "mailcar/config.hpp"
#include "mailcar/delivery.hpp"
#include "mailcar/net.hpp"

namespace mailcar {

// Where a probe stopped, in the order the steps happen.
enum class ProbeStage { Connect, Tls, Greeting, Ehlo, StartTls, Auth, Done };
const char* probe_stage_name(ProbeStage stage);

// What one probe saw. Steps that worked fill their part; `failure` says what did not.
struct ProbeReport {
  std::string service;
  bool ok = false;
  uint64_t latency_ms = 0;  // from the start to the session being ready (or the failure)
  ProbeStage stage = ProbeStage::Connect;  // where it stopped (Done when ok)
  DeliveryResult failure;                  // when !ok: as a delivery would have seen it
  std::string peer;                        // "ip:port" once connected
  std::optional<net::TlsPeerInfo> tls;     // once a TLS handshake was started
  std::vector<std::string> ehlo;           // the EHLO keywords (the last EHLO)
  std::string auth_mechanism;              // empty: no AUTH configured
};

using ProbeCallback = std::function<void(ProbeReport)>;

// The last check of one service: a probe, or a delivery that counted as one.
struct UpstreamCheck {
  bool ok = false;
  uint64_t checked_at_ms = 0;  // wall clock
  uint64_t latency_ms = 0;
  std::string error;  // empty when ok
};

// The last check per service name, for the whole process (it outlives reloads). Loop thread
// only.
class UpstreamHealth {
 public:
  void record(const std::string& service, UpstreamCheck check);
  std::optional<UpstreamCheck> last(std::string_view service) const;
  void clear();

 private:
  std::map<std::string, UpstreamCheck, std::less<>> checks_;
};
UpstreamHealth& upstream_health();

// A delivery as a probe: Sent with a recipient accepted succeeded; connection, TLS,
// certificate, AUTH and protocol trouble failed; an SMTP refusal says nothing either way.
std::optional<UpstreamCheck> delivery_as_check(const DeliveryResult& result, uint64_t now_ms);

// The short error of a failed probe for GET /ready/upstream ("Connection refused", ...).
std::string probe_error_text(const ServiceConfig& service, const ProbeReport& report);

// `mailcar --check --probe` lines for one service: one per step that worked, then the first
// that did not, in words a user can act on (each line starts with "ok" or "FAIL").
// `addresses` are what the name resolved to (empty: the lookup failed, or was not done).
std::vector<std::string> describe_probe(const ServiceConfig& service,
                                        const std::vector<std::string>& addresses,
                                        const ProbeReport& report);

// Background probes of a runtime's relayed services: one at start, then every
// probe_interval (a service whose last check is younger than that is skipped: a delivery
// counted). Results go to upstream_health(). Destroying it stops the timers.
class ProbeScheduler {
 public:
  using ProbeFn = std::function<void(const std::string& service, ProbeCallback done)>;
  ProbeScheduler(uv_loop_t* loop, const Config& config, ProbeFn probe);
  ~ProbeScheduler();
  ProbeScheduler(const ProbeScheduler&) = delete;
  ProbeScheduler& operator=(const ProbeScheduler&) = delete;

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace mailcar
