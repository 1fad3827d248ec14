#include "mailcar/policy_state.hpp"

#include <gtest/gtest.h>

#include "policy/policy_test_support.hpp"

namespace mailcar {
namespace {

using testing::rate;
using testing::role;
using testing::service;

constexpr uint64_t kNow = 1'700'000'000'000;

Config config() {
  Config c;
  c.services.push_back(service("email", "noreply@example.com", rate(500, "day")));
  c.roles.push_back(role("webapp", std::nullopt, std::vector<std::string>{"*"},
                         {rate(50, "second"), rate(100, "day")}));
  c.roles.push_back(role("idle", std::nullopt, std::vector<std::string>{"*"}, {rate(5, "hour")}));
  c.roles.push_back(role("free", std::nullopt, std::vector<std::string>{"*"}));
  return c;
}

PolicyRequest request(std::string role_name, uint64_t recipients) {
  PolicyRequest r;
  r.role = std::move(role_name);
  r.service = "email";
  r.envelope_from = "a@example.com";
  r.recipients = recipients;
  return r;
}

TEST(PolicyState, SerializesOnlyLimitsInUse) {
  auto p = make_policy(config());
  ASSERT_TRUE(p->admit(request("webapp", 10), kNow).allowed());
  std::string state = serialize_state(*p, kNow);
  // 10 of 50/second: TAT = now + 200 ms; 10 of 100/day: now + 8640 s; 10 of 500/day: + 1728 s.
  EXPECT_EQ(state,
            "mailcar-policy-state 1\n"
            "role\twebapp\t100/day\t1700008640000\n"
            "role\twebapp\t50/second\t1700000000200\n"
            "service\temail\t500/day\t1700001728000\n");
  // Once replenished, a window is no longer written.
  EXPECT_EQ(serialize_state(*p, kNow + 1000),
            "mailcar-policy-state 1\n"
            "role\twebapp\t100/day\t1700008640000\n"
            "service\temail\t500/day\t1700001728000\n");
}

TEST(PolicyState, RestartKeepsDailyQuota) {
  auto before = make_policy(config());
  for (int i = 0; i < 9; ++i)
    ASSERT_TRUE(before->admit(request("webapp", 10), kNow + i * 1000).allowed());
  std::string state = serialize_state(*before, kNow + 10'000);

  auto after = make_policy(config());
  EXPECT_EQ(restore_state(*after, state), 2u);
  auto d = after->admit(request("webapp", 11), kNow + 10'000);
  EXPECT_EQ(d.verdict, Verdict::RateLimited);
  EXPECT_EQ(d.limit_text, "100/day");
  EXPECT_TRUE(after->admit(request("webapp", 10), kNow + 10'000).allowed());
  // Without the restore the day would have started over.
  auto forgetful = make_policy(config());
  EXPECT_TRUE(forgetful->admit(request("webapp", 11), kNow + 10'000).allowed());
}

TEST(PolicyState, IgnoresUnknownChangedAndMalformedLines) {
  auto p = make_policy(config());
  // Every bad line claims a fully used window; only the last line is valid.
  std::string state =
      "mailcar-policy-state 1\n"
      "role\tghost\t100/day\t1700086400000\n"     // role gone
      "role\twebapp\t99/day\t1700086400000\n"     // window changed
      "service\tother\t500/day\t1700086400000\n"  // service gone
      "bogus\twebapp\t100/day\t1700086400000\n"   // unknown kind
      "role\twebapp\t100/day\t17000x8640000\n"    // bad number
      "role\twebapp\t100/day\n"                   // missing field
      "role\twebapp\t50/second\t1700000001000\textra\n"
      "service\temail\t500/day\t1700001728000\n";  // 10 of 500/day used
  EXPECT_EQ(restore_state(*p, state), 1u);
  EXPECT_TRUE(p->check(request("webapp", 50), kNow).allowed());
  EXPECT_EQ(p->check(request("free", 491), kNow).verdict, Verdict::RateLimited);
  auto d = p->check(request("free", 490), kNow);
  EXPECT_TRUE(d.allowed());
  EXPECT_EQ(d.remaining, 0u);
  EXPECT_EQ(restore_state(*p, "not a state file\nrole\twebapp\t100/day\t1700008640000\n"), 0u);
  EXPECT_EQ(restore_state(*p, ""), 0u);
}

TEST(PolicyState, EscapesNames) {
  Config c;
  c.services.push_back(service("e\tmail%", "", rate(5, "minute")));
  c.roles.push_back(
      role("we\nird", std::nullopt, std::vector<std::string>{"*"}, {rate(5, "minute")}));
  auto p = make_policy(c);
  PolicyRequest r;
  r.role = "we\nird";
  r.service = "e\tmail%";
  r.recipients = 5;
  ASSERT_TRUE(p->admit(r, kNow).allowed());
  std::string state = serialize_state(*p, kNow);
  EXPECT_NE(state.find("we%0Aird"), std::string::npos) << state;
  EXPECT_NE(state.find("e%09mail%25"), std::string::npos) << state;
  auto restored = make_policy(c);
  EXPECT_EQ(restore_state(*restored, state), 2u);
  r.recipients = 1;
  EXPECT_EQ(restored->check(r, kNow).verdict, Verdict::RateLimited);
}

}  // namespace
}  // namespace mailcar
