#include "mailcar/failover.hpp"

#include <utility>
#include <vector>

#include "mailcar/log.hpp"

namespace mailcar {
namespace {

// One message on its way along the chain.
struct Attempt : std::enable_shared_from_this<Attempt> {
  std::shared_ptr<Runtime> runtime;
  std::vector<std::string> chain;
  size_t next = 0;
  OutboundMessage spare;  // the bytes for the tries still to come (empty without fallbacks)
  DeliveryCallback done;
  double seconds = 0;

  // The next service that has a transport, or nullptr at the end of the chain.
  Transport* take_next(std::string& name) {
    while (next < chain.size()) {
      name = chain[next++];
      if (Transport* t = runtime->transport(name)) return t;
      log::warn("failover_skipped", {{"service", name}, {"reason", "no transport"}});
    }
    return nullptr;
  }

  bool more_to_try() const { return next < chain.size(); }

  void start(OutboundMessage message) {
    std::string name;
    Transport* transport = take_next(name);
    if (transport == nullptr) {
      DeliveryResult r =
          delivery_failure(DeliveryStatus::ConnectionRefused, "Connection refused", true);
      r.delivered_via = chain.empty() ? std::string() : chain.front();
      return done(std::move(r));
    }
    // The last try may have the bytes; an earlier one gets a copy.
    OutboundMessage copy = more_to_try() ? message : std::move(message);
    if (more_to_try()) spare = std::move(message);
    transport->deliver(std::move(copy), [self = shared_from_this(), name](DeliveryResult r) {
      self->finished(name, std::move(r));
    });
  }

  void finished(const std::string& name, DeliveryResult r) {
    seconds += r.upstream_seconds;
    r.delivered_via = name;
    if (should_fail_over(r) && more_to_try()) {
      log::warn("failover", {{"id", spare.id},
                             {"service", name},
                             {"next", chain[next]},
                             {"status", delivery_status_name(r.status)},
                             {"upstream_code", static_cast<int64_t>(r.smtp_code.value_or(0))},
                             {"reason", r.smtp_code ? r.smtp_reply : r.message}});
      OutboundMessage message = std::move(spare);
      spare = OutboundMessage{};
      return start(std::move(message));
    }
    r.upstream_seconds = seconds;
    spare = OutboundMessage{};
    auto callback = std::move(done);
    callback(std::move(r));
  }
};

bool temporary_code(int code) {
  return code >= 400 && code < 500;
}

}  // namespace

bool should_fail_over(const DeliveryResult& r) {
  if (!r.accepted.empty()) return false;
  switch (r.status) {
    case DeliveryStatus::Sent:  // nobody took it: every refusal must be temporary
      if (r.rejected.empty()) return false;
      for (const RecipientOutcome& o : r.rejected) {
        if (!temporary_code(o.smtp_code)) return false;
      }
      return true;
    case DeliveryStatus::Rejected:
      return r.smtp_code && temporary_code(*r.smtp_code);
    case DeliveryStatus::ConnectionRefused:
    case DeliveryStatus::ConnectionTimedOut:
    case DeliveryStatus::CertificateError:
    case DeliveryStatus::AuthenticationFailed:
    case DeliveryStatus::TlsUnavailable:
    case DeliveryStatus::ProtocolError:
      return true;
    case DeliveryStatus::ShuttingDown:
      return false;
  }
  return false;
}

void deliver_with_failover(std::shared_ptr<Runtime> runtime, const std::string& service,
                           OutboundMessage message, DeliveryCallback done) {
  const ServiceConfig* config = runtime->config ? runtime->config->find_service(service) : nullptr;
  if (config != nullptr && config->fallback.empty()) {
    // The usual case, a chain of one: no Attempt, no chain, one callback.
    if (Transport* transport = runtime->transport(service)) {
      transport->deliver(std::move(message), [runtime = std::move(runtime), name = service,
                                              done = std::move(done)](DeliveryResult r) {
        r.delivered_via = name;
        done(std::move(r));
      });
      return;
    }
  }
  auto attempt = std::make_shared<Attempt>();
  attempt->chain = runtime->config ? fallback_chain(*runtime->config, service)
                                   : std::vector<std::string>{service};
  if (attempt->chain.empty()) attempt->chain.push_back(service);
  attempt->runtime = std::move(runtime);
  attempt->done = std::move(done);
  attempt->start(std::move(message));
}

}  // namespace mailcar
