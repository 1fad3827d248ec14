// One policy for both doors: may this submitter send this message through this service now?
// Pure logic; time is passed in, so tests drive it with a fake clock.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/config.hpp"
#include "mailcar/rate_limiter.hpp"

namespace mailcar {

struct PolicyRequest {
  std::string role;
  std::string service;
  std::string envelope_from;             // MAIL FROM / the From address on HTTP
  std::vector<std::string> header_from;  // addresses in the From header (HTTP: the From address)
  uint64_t recipients = 0;               // to + cc + bcc (SMTP: RCPT count)
  // false in spool mode: the service quota paces delivery (take_quota) instead of judging
  // the message at submission.
  bool service_quota = true;
};

// The service quota asked by the spool just before a message is sent.
struct QuotaVerdict {
  bool allowed = true;          // the recipients were counted
  uint64_t retry_after_ms = 0;  // when refused: until the same request would pass
};

enum class Verdict {
  Allow,
  UnknownRole,        // credentials name a role that does not exist: 403
  ServiceNotAllowed,  // 403 / SMTP 550 5.7.1
  SenderNotAllowed,   // 403 / SMTP 550 5.7.1
  TooManyRecipients,  // 403 / SMTP 452 4.5.3 (also: more than a rate window's N)
  RateLimited,        // 429 / SMTP 450 4.7.1
};

struct PolicyDecision {
  Verdict verdict = Verdict::Allow;
  std::string reason;  // says which rule refused, e.g. "sender x@y.com not allowed for role webapp"
  // For RateLimited: the window that refused ("50/second" or "service email: 500/day").
  std::string limit_text;
  uint64_t limit = 0;           // X-RateLimit-Limit
  uint64_t remaining = 0;       // X-RateLimit-Remaining
  uint64_t retry_after_ms = 0;  // wait until the message would pass
  uint64_t reset_ms = 0;        // until the window is fully replenished
  bool allowed() const { return verdict == Verdict::Allow; }
};

// Shared state (issue 11): one rate window a request is judged against, for a store that
// runs the same GCRA elsewhere (Redis). Identified by owner and N/T, so a changed limit is a
// new window.
struct PolicyWindow {
  bool service = false;  // false: a rate limit of role `owner`; true: the quota of service `owner`
  std::string owner;
  uint64_t count = 0;
  uint64_t period_ms = 0;
};

class Policy {
 public:
  virtual ~Policy() = default;
  // Judge a request and, when allowed, consume its recipients from every rate window and
  // service quota at once. A refused request consumes nothing. now_ms: wall clock in ms.
  virtual PolicyDecision admit(const PolicyRequest& request, uint64_t now_ms) = 0;
  // Judge without consuming (SMTP RCPT-time checks).
  virtual PolicyDecision check(const PolicyRequest& request, uint64_t now_ms) const = 0;
  // Consume `recipients` from the service's quota if it lets them through now (a service
  // without `rate_limit`, or an unknown one, always does). A count larger than the quota's N
  // is let through (counted as N) once the window is full: a large message is slowed, never
  // stuck.
  virtual QuotaVerdict take_quota(std::string_view service, uint64_t recipients,
                                  uint64_t now_ms) = 0;

  // Shared state (issue 11): admit() in two halves for a store that keeps the windows.
  // check_rules judges all but the rate windows (role, service, senders, max_recipients);
  // when it allows, `windows` gets the windows admit() would judge, in its order.
  // The defaults are those of a policy without rate windows.
  virtual PolicyDecision check_rules(const PolicyRequest& request,
                                     std::vector<PolicyWindow>& /*windows*/) const {
    return check(request, 0);
  }
  // The decision admit() makes from one judgement per window of check_rules (same order).
  virtual PolicyDecision decide(const PolicyRequest& request,
                                const std::vector<RateLimiter::Judgement>& /*judgements*/) const {
    return check(request, 0);
  }
  // The quota window of a service; nullopt when it has none (or is unknown).
  virtual std::optional<PolicyWindow> quota_window(std::string_view /*service*/) const {
    return std::nullopt;
  }
};

// Build the policy for a configuration. `previous` (may be null) hands over the rate-limit
// state of limits that did not change across a reload.
std::unique_ptr<Policy> make_policy(const Config& config, const Policy* previous = nullptr);

}  // namespace mailcar
