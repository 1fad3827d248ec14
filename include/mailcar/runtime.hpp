// What an ingress needs to handle one submission: the configuration, the policy and the
// transports, as one snapshot. A reload builds a new Runtime; a submission keeps the snapshot
// it started with (shared_ptr) until it is answered.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>

#include <uv.h>

#include "mailcar/config.hpp"
#include "mailcar/delivery.hpp"
#include "mailcar/policy.hpp"

namespace mailcar {

class SpoolQueue;
class SharedState;
class IdempotencyStore;
namespace net {
class TlsServerContext;
}

struct Runtime {
  uv_loop_t* loop = nullptr;
  std::shared_ptr<const Config> config;
  std::shared_ptr<Policy> policy;
  std::map<std::string, std::shared_ptr<Transport>, std::less<>> transports;  // by service
  std::string hostname;  // for Message-ID, Received and the SMTP greeting
  // Spool mode: the one queue of the process (it outlives reloads); null in direct mode.
  std::shared_ptr<SpoolQueue> spool;
  // Shared state (issue 11): the process's Redis link when shared_state is configured; null
  // otherwise (then the policy counts alone, as before).
  std::shared_ptr<SharedState> shared_state;
  // Idempotency keys (issue 10, SPEC §10.3): the process's store (it outlives reloads); null:
  // keys are not honoured (a runtime built by a test without one).
  std::shared_ptr<IdempotencyStore> idempotency;
  // The SMTP ingress certificate (smtp.tls_cert / tls_key) as loaded for this snapshot; null
  // when none is configured. A reload loads the files again (certificate rotation, issue 13):
  // new connections take the current one, a session keeps the one it started TLS with.
  std::shared_ptr<net::TlsServerContext> smtp_tls;

  Transport* transport(std::string_view service) const {
    auto it = transports.find(service);
    return it == transports.end() ? nullptr : it->second.get();
  }
};

using RuntimeSource = std::function<std::shared_ptr<Runtime>()>;

}  // namespace mailcar
