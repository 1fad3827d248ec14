// The Policy built from a Config (private to the policy layer; policy_state.cpp reads it).
#pragma once

#include <functional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "mailcar/config.hpp"
#include "mailcar/policy.hpp"
#include "mailcar/rate_limiter.hpp"
#include "mailcar/sender_pattern.hpp"

namespace mailcar {

struct RateWindow {
  Rate rate;
  RateLimiter limiter;
  // Words for decisions, made once: "rate limit 50/second of role webapp" / "50/second",
  // "quota 500/day of service email" / "service email: 500/day".
  std::string rule;
  std::string limit_text;
};

struct RoleRules {
  std::string name;
  bool all_services = true;
  std::unordered_set<std::string> services;
  SenderPatterns senders;
  std::optional<unsigned> max_recipients;
  std::vector<RateWindow> windows;  // distinct window texts, config order
};

struct ServiceRules {
  std::string name;
  std::optional<RateWindow> quota;
};

class ConfigPolicy final : public Policy {
 public:
  ConfigPolicy(const Config& config, const ConfigPolicy* previous);

  PolicyDecision admit(const PolicyRequest& request, uint64_t now_ms) override;
  PolicyDecision check(const PolicyRequest& request, uint64_t now_ms) const override;
  QuotaVerdict take_quota(std::string_view service, uint64_t recipients, uint64_t now_ms) override;
  PolicyDecision check_rules(const PolicyRequest& request,
                             std::vector<PolicyWindow>& windows) const override;
  PolicyDecision decide(const PolicyRequest& request,
                        const std::vector<RateLimiter::Judgement>& judgements) const override;
  std::optional<PolicyWindow> quota_window(std::string_view service) const override;

  enum class LimitKind { Role, Service };
  // Every limit with its owner (role or service name).
  void for_each_limit(
      const std::function<void(LimitKind, const std::string& owner, const RateWindow&)>& fn) const;
  RateWindow* find_limit(LimitKind kind, std::string_view owner, std::string_view window_text);
  const RateWindow* find_limit(LimitKind kind, std::string_view owner,
                               std::string_view window_text) const;

 private:
  // On Allow, *role and *service (when given) name the rules that judged it.
  PolicyDecision judge(const PolicyRequest& request, uint64_t now_ms,
                       const RoleRules** role_out = nullptr,
                       const ServiceRules** service_out = nullptr) const;
  // Everything but the windows; on Allow, *role and *service name the rules that apply.
  PolicyDecision judge_rules(const PolicyRequest& request, const RoleRules** role,
                             const ServiceRules** service) const;
  // The windows a request is judged against, in admit() order.
  static std::vector<const RateWindow*> windows_of(const RoleRules& role,
                                                   const ServiceRules& service,
                                                   const PolicyRequest& request);

  std::unordered_map<std::string, RoleRules> roles_;
  std::unordered_map<std::string, ServiceRules> services_;
};

}  // namespace mailcar
