// Fake Policy and Transport for the HTTP tests: the upstream and the rule book are not
// under test here, the handler's use of them is.
#pragma once

#include <deque>
#include <memory>
#include <utility>
#include <vector>

#include "mailcar/delivery.hpp"
#include "mailcar/policy.hpp"

namespace mailcar::testing {

class FakePolicy : public Policy {
 public:
  PolicyDecision admit(const PolicyRequest& request, uint64_t now_ms) override {
    admitted.push_back(request);
    last_now_ms = now_ms;
    return next;
  }
  PolicyDecision check(const PolicyRequest&, uint64_t) const override { return next; }
  QuotaVerdict take_quota(std::string_view, uint64_t, uint64_t) override { return quota; }

  PolicyDecision next;
  QuotaVerdict quota;  // what every take_quota() answers
  std::vector<PolicyRequest> admitted;
  uint64_t last_now_ms = 0;
};

// Keeps each delivery until the test completes it (deliver() never calls back itself).
class FakeTransport : public Transport {
 public:
  void deliver(OutboundMessage message, DeliveryCallback done) override {
    messages.push_back(message);
    pending.emplace_back(std::move(message), std::move(done));
  }
  void shutdown(std::function<void()> done) override { done(); }

  // Completes the oldest delivery; an empty `accepted` with status Sent means "all".
  void complete(DeliveryResult result) {
    auto [message, done] = std::move(pending.front());
    pending.pop_front();
    if (result.status == DeliveryStatus::Sent && result.accepted.empty() &&
        result.rejected.empty()) {
      result.accepted = message.envelope_rcpts;
    }
    done(std::move(result));
  }

  std::vector<OutboundMessage> messages;
  std::deque<std::pair<OutboundMessage, DeliveryCallback>> pending;
};

}  // namespace mailcar::testing
