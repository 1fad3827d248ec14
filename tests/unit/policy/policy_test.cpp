#include "mailcar/policy.hpp"

#include <gtest/gtest.h>

#include "policy/policy_test_support.hpp"

namespace mailcar {
namespace {

using testing::rate;
using testing::role;
using testing::service;

constexpr uint64_t kNow = 1'700'000'000'000;

Config base_config() {
  Config c;
  c.services.push_back(service("email", "noreply@example.com", rate(500, "day")));
  c.services.push_back(service("outbox", "robot@outbox.test"));
  c.services.push_back(service("bulk", "bulk@bulk.test"));
  c.roles.push_back(role("webapp", std::vector<std::string>{"email", "outbox"},
                         std::vector<std::string>{"*@example.com", "*@*.example.com"},
                         {rate(50, "second"), rate(1000, "hour")}, 10));
  c.roles.push_back(role("plain", std::nullopt, std::nullopt));  // all services, no senders
  c.roles.push_back(role("relay", std::nullopt, std::vector<std::string>{"*"}));
  return c;
}

PolicyRequest request(std::string role_name, std::string service_name, std::string from,
                      uint64_t recipients = 1) {
  PolicyRequest r;
  r.role = std::move(role_name);
  r.service = std::move(service_name);
  r.envelope_from = from;
  r.header_from = {from};
  r.recipients = recipients;
  return r;
}

TEST(Policy, AllowsAndReportsTightestWindow) {
  auto p = make_policy(base_config());
  auto d = p->admit(request("webapp", "email", "a@example.com", 3), kNow);
  EXPECT_EQ(d.verdict, Verdict::Allow) << d.reason;
  EXPECT_TRUE(d.reason.empty());
  EXPECT_EQ(d.limit_text, "50/second");
  EXPECT_EQ(d.limit, 50u);
  EXPECT_EQ(d.remaining, 47u);
}

// judge() keeps a few window verdicts on the stack and the rest on the heap: a role with more
// windows than that is judged the same way (every window counts, the longest wait is reported).
TEST(Policy, ManyWindowsAllJudged) {
  Config c;
  c.services.push_back(service("email", "noreply@example.com", rate(9, "day")));
  c.roles.push_back(
      role("busy", std::nullopt, std::vector<std::string>{"*"},
           {rate(100, "second"), rate(90, "minute"), rate(80, "hour"), rate(70, "day"),
            rate(60, "second"), rate(50, "minute"), rate(40, "hour"), rate(30, "day")}));
  auto p = make_policy(c);
  auto d = p->admit(request("busy", "email", "a@example.com", 5), kNow);
  ASSERT_EQ(d.verdict, Verdict::Allow) << d.reason;
  EXPECT_EQ(d.limit_text, "service email: 9/day");  // the quota, last of nine windows
  EXPECT_EQ(d.remaining, 4u);
  d = p->admit(request("busy", "email", "a@example.com", 5), kNow);
  EXPECT_EQ(d.verdict, Verdict::RateLimited);
  EXPECT_EQ(d.reason, "quota 9/day of service email exceeded");
  // 31 > the role's 30/day window, the eighth of its windows: never, whatever the wait.
  d = p->check(request("busy", "email", "a@example.com", 31), kNow);
  EXPECT_EQ(d.verdict, Verdict::TooManyRecipients);
  EXPECT_EQ(d.limit_text, "30/day");
}

TEST(Policy, UnknownRole) {
  auto p = make_policy(base_config());
  auto d = p->admit(request("ghost", "email", "a@example.com"), kNow);
  EXPECT_EQ(d.verdict, Verdict::UnknownRole);
  EXPECT_EQ(d.reason, "unknown role ghost");
}

TEST(Policy, ServiceNotAllowed) {
  auto p = make_policy(base_config());
  auto d = p->check(request("webapp", "bulk", "a@example.com"), kNow);
  EXPECT_EQ(d.verdict, Verdict::ServiceNotAllowed);
  EXPECT_EQ(d.reason, "role webapp may not use service bulk");
  EXPECT_EQ(p->check(request("plain", "nope", "robot@outbox.test"), kNow).verdict,
            Verdict::ServiceNotAllowed);
  EXPECT_EQ(p->check(request("plain", "bulk", "bulk@bulk.test"), kNow).verdict, Verdict::Allow);
}

TEST(Policy, SenderRules) {
  auto p = make_policy(base_config());
  auto d = p->check(request("webapp", "email", "x@evil.com"), kNow);
  EXPECT_EQ(d.verdict, Verdict::SenderNotAllowed);
  EXPECT_EQ(d.reason, "sender x@evil.com not allowed for role webapp");
  EXPECT_TRUE(p->check(request("webapp", "email", "x@Mail.Example.com"), kNow).allowed());
  // The envelope passes but one header From address does not.
  auto r = request("webapp", "email", "a@example.com");
  r.header_from = {"a@example.com", "b@evil.com"};
  d = p->check(r, kNow);
  EXPECT_EQ(d.verdict, Verdict::SenderNotAllowed);
  EXPECT_EQ(d.reason, "sender b@evil.com not allowed for role webapp");
  // The header passes but the envelope does not.
  r = request("webapp", "email", "bounce@evil.com");
  r.header_from = {"a@example.com"};
  EXPECT_EQ(p->check(r, kNow).verdict, Verdict::SenderNotAllowed);
}

TEST(Policy, FromEmailOfUsableServicesIsAlwaysAllowed) {
  auto p = make_policy(base_config());
  // webapp's senders do not cover outbox.test, but it may use service outbox.
  EXPECT_TRUE(p->check(request("webapp", "email", "robot@outbox.test"), kNow).allowed());
  // bulk@bulk.test belongs to a service webapp may not use.
  EXPECT_EQ(p->check(request("webapp", "email", "bulk@bulk.test"), kNow).verdict,
            Verdict::SenderNotAllowed);
  // A role without senders may send only as its services' from_email.
  EXPECT_TRUE(p->check(request("plain", "email", "noreply@example.com"), kNow).allowed());
  EXPECT_EQ(p->check(request("plain", "email", "NoReply@example.com"), kNow).verdict,
            Verdict::SenderNotAllowed);  // local parts are exact
  EXPECT_TRUE(p->check(request("plain", "email", "noreply@EXAMPLE.com"), kNow).allowed());
  EXPECT_EQ(p->check(request("plain", "email", "other@example.com"), kNow).verdict,
            Verdict::SenderNotAllowed);
}

TEST(Policy, NullSenderNeedsStar) {
  auto p = make_policy(base_config());
  auto r = request("webapp", "email", "");
  r.header_from = {"a@example.com"};
  auto d = p->check(r, kNow);
  EXPECT_EQ(d.verdict, Verdict::SenderNotAllowed);
  EXPECT_EQ(d.reason, "sender <> (null sender) not allowed for role webapp");
  r.role = "relay";
  EXPECT_TRUE(p->check(r, kNow).allowed());
}

TEST(Policy, TooManyRecipients) {
  auto p = make_policy(base_config());
  auto d = p->admit(request("webapp", "email", "a@example.com", 20), kNow);
  EXPECT_EQ(d.verdict, Verdict::TooManyRecipients);
  EXPECT_EQ(d.reason, "20 recipients exceed max_recipients 10 of role webapp");
  EXPECT_TRUE(p->check(request("webapp", "email", "a@example.com", 10), kNow).allowed());
}

TEST(Policy, CostAboveAWindowIsTooManyRecipientsNotRateLimited) {
  Config c = base_config();
  c.roles.push_back(
      role("small", std::nullopt, std::vector<std::string>{"*"}, {rate(5, "minute")}));
  auto p = make_policy(c);
  auto d = p->admit(request("small", "outbox", "a@b.c", 6), kNow);
  EXPECT_EQ(d.verdict, Verdict::TooManyRecipients);
  EXPECT_EQ(d.reason, "6 recipients exceed rate limit 5/minute of role small");
  d = p->admit(request("relay", "email", "a@b.c", 501), kNow);
  EXPECT_EQ(d.verdict, Verdict::TooManyRecipients);
  EXPECT_EQ(d.reason, "501 recipients exceed quota 500/day of service email");
}

TEST(Policy, VerdictOrder) {
  Config c = base_config();
  auto p = make_policy(c);
  // Every rule broken at once: the first in order wins, and so on down the list.
  auto r = request("webapp", "bulk", "x@evil.com", 100);
  EXPECT_EQ(p->check(r, kNow).verdict, Verdict::ServiceNotAllowed);
  r.service = "email";
  EXPECT_EQ(p->check(r, kNow).verdict, Verdict::SenderNotAllowed);
  r.envelope_from = "a@example.com";
  r.header_from = {"a@example.com"};
  EXPECT_EQ(p->check(r, kNow).verdict, Verdict::TooManyRecipients);
  r.recipients = 10;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(p->admit(r, kNow).allowed()) << i;
  EXPECT_EQ(p->check(r, kNow).verdict, Verdict::RateLimited);
  r.role = "nobody";
  EXPECT_EQ(p->check(r, kNow).verdict, Verdict::UnknownRole);
}

TEST(Policy, RateLimitedReportsLongestWaitAndConsumesNothing) {
  Config c;
  c.services.push_back(service("email", "noreply@example.com", rate(20, "minute")));
  c.roles.push_back(role("a", std::nullopt, std::vector<std::string>{"*"},
                         {rate(10, "second"), rate(15, "minute")}));
  c.roles.push_back(role("b", std::nullopt, std::vector<std::string>{"*"}));
  auto p = make_policy(c);
  ASSERT_TRUE(p->admit(request("a", "email", "x@y.z", 10), kNow).allowed());
  // 10/second refuses 1 for 100 ms; 15/minute still has 5.
  auto d = p->admit(request("a", "email", "x@y.z", 1), kNow);
  EXPECT_EQ(d.verdict, Verdict::RateLimited);
  EXPECT_EQ(d.reason, "rate limit 10/second of role a exceeded");
  EXPECT_EQ(d.limit_text, "10/second");
  EXPECT_EQ(d.limit, 10u);
  EXPECT_EQ(d.retry_after_ms, 100u);
  EXPECT_EQ(d.remaining, 0u);
  EXPECT_EQ(d.reset_ms, 1000u);
  // At +1 s, 10/second has room for 6 but 15/minute (4 s per cell) has only 5.
  d = p->admit(request("a", "email", "x@y.z", 6), kNow + 1000);
  EXPECT_EQ(d.verdict, Verdict::RateLimited);
  EXPECT_EQ(d.reason, "rate limit 15/minute of role a exceeded");
  EXPECT_EQ(d.retry_after_ms, 3000u);  // one more cell at 4 s per cell: t = 4 s
  // The refusals consumed nothing: 5 still pass, in every window.
  EXPECT_TRUE(p->admit(request("a", "email", "x@y.z", 5), kNow + 1000).allowed());
  // The service quota is shared with role b: 15 used, 5 left.
  d = p->admit(request("b", "email", "x@y.z", 6), kNow + 1000);
  EXPECT_EQ(d.verdict, Verdict::RateLimited);
  EXPECT_EQ(d.reason, "quota 20/minute of service email exceeded");
  EXPECT_EQ(d.limit_text, "service email: 20/minute");
  EXPECT_EQ(d.remaining, 5u);
  EXPECT_TRUE(p->admit(request("b", "email", "x@y.z", 5), kNow + 1000).allowed());
}

TEST(Policy, CheckDoesNotConsume) {
  auto p = make_policy(base_config());
  for (int i = 0; i < 100; ++i) {
    ASSERT_TRUE(p->check(request("webapp", "email", "a@example.com", 10), kNow).allowed());
  }
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(p->admit(request("webapp", "email", "a@example.com", 10), kNow).allowed());
  }
  EXPECT_FALSE(p->admit(request("webapp", "email", "a@example.com", 1), kNow).allowed());
}

TEST(Policy, ReloadCarriesOverUnchangedLimits) {
  Config c = base_config();
  auto old = make_policy(c);
  for (int i = 0; i < 5; ++i) {
    ASSERT_TRUE(old->admit(request("webapp", "email", "a@example.com", 10), kNow).allowed());
  }
  // 50/second is exhausted; 450 of the service's 500/day are left.
  Config same = base_config();
  auto kept = make_policy(same, old.get());
  EXPECT_EQ(kept->check(request("webapp", "email", "a@example.com", 1), kNow).verdict,
            Verdict::RateLimited);
  EXPECT_EQ(kept->check(request("relay", "email", "a@b.c", 451), kNow).verdict,
            Verdict::RateLimited);

  Config changed = base_config();
  changed.roles[0].rate_limits[0] = rate(60, "second");  // changed: reset
  auto reset = make_policy(changed, old.get());
  auto d = reset->check(request("webapp", "email", "a@example.com", 10), kNow);
  EXPECT_TRUE(d.allowed()) << d.reason;
  // The unchanged 1000/hour window and the unchanged quota still remember 50.
  d = reset->check(request("relay", "email", "a@b.c", 451), kNow);
  EXPECT_EQ(d.verdict, Verdict::RateLimited);
  EXPECT_EQ(d.limit_text, "service email: 500/day");

  changed.services[0].rate_limit = rate(501, "day");  // quota changed: reset
  auto reset_quota = make_policy(changed, old.get());
  EXPECT_TRUE(reset_quota->check(request("relay", "email", "a@b.c", 501), kNow).allowed());

  // A role renamed is a new role: fresh state.
  Config renamed = base_config();
  renamed.roles[0].name = "webapp2";
  auto fresh = make_policy(renamed, old.get());
  EXPECT_TRUE(fresh->check(request("webapp2", "email", "a@example.com", 10), kNow).allowed());
}

TEST(Policy, ReloadFromForeignPolicyStartsFresh) {
  struct Other : Policy {
    PolicyDecision admit(const PolicyRequest&, uint64_t) override { return {}; }
    PolicyDecision check(const PolicyRequest&, uint64_t) const override { return {}; }
    QuotaVerdict take_quota(std::string_view, uint64_t, uint64_t) override { return {}; }
  } other;
  auto p = make_policy(base_config(), &other);
  EXPECT_TRUE(p->check(request("webapp", "email", "a@example.com", 10), kNow).allowed());
}

TEST(Policy, InvalidPatternsAreIgnoredNotWidened) {
  Config c;
  c.services.push_back(service("email", ""));
  c.roles.push_back(role("r", std::nullopt, std::vector<std::string>{"*@*", "example.com"}));
  auto p = make_policy(c);
  EXPECT_EQ(p->check(request("r", "email", "a@example.com"), kNow).verdict,
            Verdict::SenderNotAllowed);
}

}  // namespace
}  // namespace mailcar

namespace mailcar {
namespace {

// Spool mode: the service quota does not refuse at submission; take_quota() paces sending.
TEST(PolicyQuota, SpoolModeSubmissionSkipsTheQuotaAndTakeQuotaPaces) {
  Config c;
  c.services.push_back(
      testing::service("email", "noreply@example.com", testing::rate(2, "minute")));
  c.roles.push_back(testing::role("relay", std::nullopt, std::vector<std::string>{"*"}));
  auto policy = make_policy(c);
  PolicyRequest r;
  r.role = "relay";
  r.service = "email";
  r.envelope_from = "a@example.com";
  r.header_from = {"a@example.com"};
  r.recipients = 2;
  r.service_quota = false;
  // Submissions pass however many there are, and consume nothing of the quota...
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(policy->admit(r, kNow).allowed());
  r.recipients = 5;  // ... even more than the quota's N at once.
  EXPECT_TRUE(policy->admit(r, kNow).allowed());
  // ... which the sending side then takes at its pace.
  EXPECT_TRUE(policy->take_quota("email", 2, kNow).allowed);
  QuotaVerdict later = policy->take_quota("email", 1, kNow);
  EXPECT_FALSE(later.allowed);
  EXPECT_GT(later.retry_after_ms, 0u);
  EXPECT_LE(later.retry_after_ms, 30'000u);
  EXPECT_TRUE(policy->take_quota("email", 1, kNow + later.retry_after_ms).allowed);
  // More than N waits for a full window, then goes.
  EXPECT_FALSE(policy->take_quota("email", 5, kNow + later.retry_after_ms).allowed);
  EXPECT_TRUE(policy->take_quota("email", 5, kNow + later.retry_after_ms + 60'000).allowed);
  // No quota, or an unknown service: always.
  EXPECT_TRUE(policy->take_quota("other", 1000, kNow).allowed);
  // Direct mode still refuses at submission.
  r.recipients = 1;
  r.service_quota = true;
  EXPECT_EQ(policy->admit(r, kNow + later.retry_after_ms).verdict, Verdict::RateLimited);
}

}  // namespace
}  // namespace mailcar
