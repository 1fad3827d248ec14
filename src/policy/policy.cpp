#include <algorithm>
#include <array>
#include <limits>
#include <span>
#include <utility>

#include "mailcar/log.hpp"
#include "policy/config_policy.hpp"

namespace mailcar {
namespace {

std::string sender_text(std::string_view address) {
  return address.empty() ? std::string("<> (null sender)") : std::string(address);
}

void carry_over(RateWindow& window, const RateWindow* old) {
  if (old != nullptr && old->rate.count == window.rate.count &&
      old->rate.period_ms == window.rate.period_ms) {
    window.limiter.copy_state_from(old->limiter);
  }
}

// The windows that judge `request`, in order: the role's, then the service's quota when the
// request counts toward it. The one rule for judging, consuming and listing them (const or
// not, as the rules are).
template <class Role, class Service, class Fn>
void for_each_window(Role& role, Service& service, const PolicyRequest& request, Fn&& fn) {
  for (auto& w : role.windows) fn(w);
  if (service.quota && request.service_quota) fn(*service.quota);
}

struct WindowVerdict {
  const RateWindow* window;
  RateLimiter::Judgement judgement;
};

// One decision from every window's judgement, whoever judged them (here or a shared store).
PolicyDecision combine_verdicts(std::span<const WindowVerdict> verdicts, uint64_t recipients) {
  PolicyDecision d;
  // A message larger than a window's N could never pass: 403, not 429 (SPEC §4).
  for (const WindowVerdict& v : verdicts) {
    if (v.judgement.never) {
      d.verdict = Verdict::TooManyRecipients;
      d.reason = std::to_string(recipients) + " recipients exceed " + v.window->rule;
      d.limit_text = v.window->limit_text;
      d.limit = v.window->rate.count;
      return d;
    }
  }

  // Refused: report the window that makes the client wait longest. Allowed: the tightest.
  const WindowVerdict* reported = nullptr;
  for (const WindowVerdict& v : verdicts) {
    if (!v.judgement.allowed) {
      if (reported == nullptr || reported->judgement.allowed ||
          v.judgement.retry_after_ms > reported->judgement.retry_after_ms) {
        reported = &v;
      }
    } else if (reported == nullptr || (reported->judgement.allowed &&
                                       v.judgement.remaining < reported->judgement.remaining)) {
      reported = &v;
    }
  }
  if (reported == nullptr) return d;  // no windows at all
  d.limit_text = reported->window->limit_text;
  d.limit = reported->window->rate.count;
  d.remaining = reported->judgement.remaining;
  d.reset_ms = reported->judgement.reset_ms;
  if (!reported->judgement.allowed) {
    d.verdict = Verdict::RateLimited;
    d.reason = reported->window->rule + " exceeded";
    d.retry_after_ms = reported->judgement.retry_after_ms;
  }
  return d;
}

}  // namespace

ConfigPolicy::ConfigPolicy(const Config& config, const ConfigPolicy* previous) {
  for (const ServiceConfig& sc : config.services) {
    ServiceRules rules{sc.name, std::nullopt};
    if (sc.rate_limit) {
      const Rate& r = *sc.rate_limit;
      rules.quota.emplace(RateWindow{r, RateLimiter(r.count, r.period_ms),
                                     "quota " + r.text + " of service " + sc.name,
                                     "service " + sc.name + ": " + r.text});
      if (previous != nullptr) {
        carry_over(*rules.quota,
                   previous->find_limit(LimitKind::Service, sc.name, sc.rate_limit->text));
      }
    }
    services_.emplace(sc.name, std::move(rules));
  }

  for (const RoleConfig& rc : config.roles) {
    RoleRules rules;
    rules.name = rc.name;
    rules.all_services = !rc.services.has_value();
    if (rc.services) rules.services.insert(rc.services->begin(), rc.services->end());
    rules.max_recipients = rc.max_recipients;
    if (rc.senders) {
      for (const std::string& pattern : *rc.senders) {
        if (!rules.senders.add(pattern)) {
          log::warn("policy_bad_sender_pattern", {{"role", rc.name}, {"pattern", pattern}});
        }
      }
    }
    // A role may always send as the from_email of a service it may use (SPEC §3).
    for (const ServiceConfig& sc : config.services) {
      if (!sc.from_email.empty() && (rules.all_services || rules.services.contains(sc.name))) {
        (void)rules.senders.add(sc.from_email);
      }
    }
    for (const Rate& rate : rc.rate_limits) {
      bool duplicate = std::any_of(rules.windows.begin(), rules.windows.end(),
                                   [&](const RateWindow& w) { return w.rate.text == rate.text; });
      if (duplicate) continue;  // identical windows are one limit
      RateWindow& window = rules.windows.emplace_back(
          RateWindow{rate, RateLimiter(rate.count, rate.period_ms),
                     "rate limit " + rate.text + " of role " + rc.name, rate.text});
      if (previous != nullptr) {
        carry_over(window, previous->find_limit(LimitKind::Role, rc.name, rate.text));
      }
    }
    roles_.emplace(rc.name, std::move(rules));
  }
}

PolicyDecision ConfigPolicy::check(const PolicyRequest& request, uint64_t now_ms) const {
  return judge(request, now_ms);
}

PolicyDecision ConfigPolicy::admit(const PolicyRequest& request, uint64_t now_ms) {
  const RoleRules* judged_role = nullptr;
  const ServiceRules* judged_service = nullptr;
  PolicyDecision decision = judge(request, now_ms, &judged_role, &judged_service);
  if (!decision.allowed()) return decision;
  // judge() found every window willing, so consuming now is all-or-nothing. The rules are this
  // policy's own (non-const) map entries, found once by judge().
  for_each_window(const_cast<RoleRules&>(*judged_role), const_cast<ServiceRules&>(*judged_service),
                  request, [&](RateWindow& w) { w.limiter.consume(request.recipients, now_ms); });
  return decision;
}

QuotaVerdict ConfigPolicy::take_quota(std::string_view service, uint64_t recipients,
                                      uint64_t now_ms) {
  auto it = services_.find(std::string(service));
  if (it == services_.end() || !it->second.quota) return {};
  RateLimiter& limiter = it->second.quota->limiter;
  // More than N at once: wait for a full window, then let it pass (it cannot be split).
  uint64_t cost = std::min<uint64_t>(recipients, limiter.count());
  RateLimiter::Judgement j = limiter.judge(cost, now_ms);
  if (!j.allowed) return {false, std::max<uint64_t>(1, j.retry_after_ms)};
  limiter.consume(cost, now_ms);
  return {};
}

PolicyDecision ConfigPolicy::judge_rules(const PolicyRequest& request, const RoleRules** role_out,
                                         const ServiceRules** service_out) const {
  PolicyDecision d;
  auto role_it = roles_.find(request.role);
  if (role_it == roles_.end()) {
    d.verdict = Verdict::UnknownRole;
    d.reason = "unknown role " + request.role;
    return d;
  }
  const RoleRules& role = role_it->second;

  auto service_it = services_.find(request.service);
  if ((!role.all_services && !role.services.contains(request.service)) ||
      service_it == services_.end()) {
    d.verdict = Verdict::ServiceNotAllowed;
    d.reason = service_it == services_.end()
                   ? "service " + request.service + " does not exist"
                   : "role " + role.name + " may not use service " + request.service;
    return d;
  }

  // The null sender is refused unless the role allows `*`: a bounce address is a privilege.
  auto sender_refused = [&](const std::string& address) {
    if (role.senders.matches(address)) return false;
    d.verdict = Verdict::SenderNotAllowed;
    d.reason = "sender " + sender_text(address) + " not allowed for role " + role.name;
    return true;
  };
  if (sender_refused(request.envelope_from)) return d;
  for (const std::string& from : request.header_from) {
    if (sender_refused(from)) return d;
  }

  if (role.max_recipients && request.recipients > *role.max_recipients) {
    d.verdict = Verdict::TooManyRecipients;
    d.reason = std::to_string(request.recipients) + " recipients exceed max_recipients " +
               std::to_string(*role.max_recipients) + " of role " + role.name;
    return d;
  }
  *role_out = &role;
  *service_out = &service_it->second;
  return d;
}

std::vector<const RateWindow*> ConfigPolicy::windows_of(const RoleRules& role,
                                                        const ServiceRules& service,
                                                        const PolicyRequest& request) {
  std::vector<const RateWindow*> windows;
  windows.reserve(role.windows.size() + 1);
  for_each_window(role, service, request, [&](const RateWindow& w) { windows.push_back(&w); });
  return windows;
}

PolicyDecision ConfigPolicy::judge(const PolicyRequest& request, uint64_t now_ms,
                                   const RoleRules** role_out,
                                   const ServiceRules** service_out) const {
  const RoleRules* role = nullptr;
  const ServiceRules* service = nullptr;
  PolicyDecision d = judge_rules(request, &role, &service);
  if (!d.allowed()) return d;
  if (role_out != nullptr) *role_out = role;
  if (service_out != nullptr) *service_out = service;
  // Judged on every message (and every SMTP RCPT): a role has a few windows, kept on the stack.
  constexpr size_t kInline = 4;
  size_t n = 0;
  for_each_window(*role, *service, request, [&n](const RateWindow&) { ++n; });
  std::array<WindowVerdict, kInline> inline_verdicts{};
  std::vector<WindowVerdict> heap_verdicts(n > kInline ? n : 0);
  WindowVerdict* verdicts = n > kInline ? heap_verdicts.data() : inline_verdicts.data();
  size_t i = 0;
  for_each_window(*role, *service, request, [&](const RateWindow& w) {
    verdicts[i++] = {&w, w.limiter.judge(request.recipients, now_ms)};
  });
  return combine_verdicts({verdicts, n}, request.recipients);
}

PolicyDecision ConfigPolicy::check_rules(const PolicyRequest& request,
                                         std::vector<PolicyWindow>& windows) const {
  const RoleRules* role = nullptr;
  const ServiceRules* service = nullptr;
  PolicyDecision d = judge_rules(request, &role, &service);
  if (!d.allowed()) return d;
  for (const RateWindow* w : windows_of(*role, *service, request)) {
    bool is_quota = service->quota && w == &*service->quota;
    windows.push_back(
        {is_quota, is_quota ? service->name : role->name, w->rate.count, w->rate.period_ms});
  }
  return d;
}

PolicyDecision ConfigPolicy::decide(const PolicyRequest& request,
                                    const std::vector<RateLimiter::Judgement>& judgements) const {
  const RoleRules* role = nullptr;
  const ServiceRules* service = nullptr;
  PolicyDecision d = judge_rules(request, &role, &service);
  if (!d.allowed()) return d;
  std::vector<const RateWindow*> windows = windows_of(*role, *service, request);
  std::vector<WindowVerdict> verdicts;
  for (size_t i = 0; i < windows.size() && i < judgements.size(); ++i) {
    verdicts.push_back({windows[i], judgements[i]});
  }
  return combine_verdicts(std::span<const WindowVerdict>(verdicts), request.recipients);
}

std::optional<PolicyWindow> ConfigPolicy::quota_window(std::string_view service) const {
  auto it = services_.find(std::string(service));
  if (it == services_.end() || !it->second.quota) return std::nullopt;
  const Rate& r = it->second.quota->rate;
  return PolicyWindow{true, it->second.name, r.count, r.period_ms};
}

void ConfigPolicy::for_each_limit(
    const std::function<void(LimitKind, const std::string&, const RateWindow&)>& fn) const {
  for (const auto& [name, role] : roles_) {
    for (const RateWindow& w : role.windows) fn(LimitKind::Role, name, w);
  }
  for (const auto& [name, service] : services_) {
    if (service.quota) fn(LimitKind::Service, name, *service.quota);
  }
}

const RateWindow* ConfigPolicy::find_limit(LimitKind kind, std::string_view owner,
                                           std::string_view window_text) const {
  if (kind == LimitKind::Role) {
    auto it = roles_.find(std::string(owner));
    if (it == roles_.end()) return nullptr;
    for (const RateWindow& w : it->second.windows) {
      if (w.rate.text == window_text) return &w;
    }
    return nullptr;
  }
  auto it = services_.find(std::string(owner));
  if (it == services_.end() || !it->second.quota || it->second.quota->rate.text != window_text) {
    return nullptr;
  }
  return &*it->second.quota;
}

RateWindow* ConfigPolicy::find_limit(LimitKind kind, std::string_view owner,
                                     std::string_view window_text) {
  return const_cast<RateWindow*>(std::as_const(*this).find_limit(kind, owner, window_text));
}

std::unique_ptr<Policy> make_policy(const Config& config, const Policy* previous) {
  return std::make_unique<ConfigPolicy>(config, dynamic_cast<const ConfigPolicy*>(previous));
}

}  // namespace mailcar
