#include <gtest/gtest.h>

#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include "mailcar/rate_limiter.hpp"
#include "mailcar/spool.hpp"
#include "spool/spool_test_support.hpp"
#include "support/heap_bytes.hpp"

namespace mailcar {
namespace {

constexpr uint64_t kT0 = 1'700'000'000'000;  // the fake clock's start, ms
constexpr uint64_t kMinute = 60'000;

SpoolRecord record(const std::string& id, const std::string& service = "mail",
                   size_t recipients = 1, uint64_t queued_at = kT0) {
  SpoolRecord r;
  r.id = id;
  r.service = service;
  r.envelope_from = "s@example.com";
  for (size_t i = 0; i < recipients; ++i) {
    r.recipients.push_back({"r" + std::to_string(i) + "@example.com", 0, ""});
  }
  r.queued_at_ms = queued_at;
  return r;
}

SchedulerOptions options(unsigned connections = 2) {
  SchedulerOptions o;
  o.retry_ms = {kMinute, 5 * kMinute, 30 * kMinute, 120 * kMinute};
  o.max_age_ms = 3 * 24 * 60 * kMinute;
  o.connections = {{"mail", connections}, {"other", connections}};
  o.random = [] { return 0.5; };  // no jitter unless a test says otherwise
  return o;
}

std::vector<RecipientAttempt> all(const Scheduler& s, const std::string& id, int code,
                                  const std::string& reply = "reply") {
  return attempts_for_pending(*s.state(id), code, reply);
}

TEST(Scheduler, FifoPerServiceWithConnectionLimit) {
  Scheduler s(options(2));
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(s.add(record("m" + std::to_string(i)), {}));
  ASSERT_TRUE(s.add(record("o1", "other"), {}));
  auto due = s.due(kT0);
  EXPECT_EQ(due.send, (std::vector<std::string>{"m0", "m1", "o1"}));
  EXPECT_TRUE(s.due(kT0).send.empty());  // both connections busy
  EXPECT_EQ(s.state_of("m2", kT0), MessageState::Queued);
  EXPECT_EQ(s.state_of("m0", kT0), MessageState::Sending);
  auto settled = s.on_result("m1", all(s, "m1", 250), kT0 + 10);
  EXPECT_TRUE(settled.known);
  EXPECT_TRUE(settled.finished);
  EXPECT_TRUE(settled.failed_now.empty());
  EXPECT_EQ(s.next_wake(kT0 + 10), kT0 + 10);
  EXPECT_EQ(s.due(kT0 + 10).send, std::vector<std::string>{"m2"});
  EXPECT_EQ(s.size(), 5u);                // m0, m2 sending, m3, m4 queued, o1 sending
  EXPECT_FALSE(s.add(record("m3"), {}));  // already known
}

TEST(Scheduler, PerRecipientOutcomes) {
  Scheduler s(options());
  ASSERT_TRUE(s.add(record("x", "mail", 3), {}));
  ASSERT_EQ(s.due(kT0).send.size(), 1u);
  auto settled = s.on_result(
      "x", {{0, 250, "2.0.0 ok"}, {1, 451, "4.7.1 later"}, {2, 550, "5.1.1 no such user"}},
      kT0 + 100);
  EXPECT_FALSE(settled.finished);
  EXPECT_EQ(settled.failed_now, std::vector<size_t>{2});
  EXPECT_EQ(settled.state.state, MessageState::Deferred);
  EXPECT_EQ(settled.state.attempts, 1u);
  EXPECT_EQ(settled.state.next_attempt_ms, kT0 + 100 + kMinute);
  EXPECT_EQ(settled.state.recipients[0].state, RecipientState::Sent);
  EXPECT_EQ(settled.state.recipients[1].state, RecipientState::Pending);
  EXPECT_EQ(settled.state.recipients[2].state, RecipientState::Failed);
  EXPECT_EQ(settled.state.last_reply, "550 5.1.1 no such user");
  EXPECT_EQ(s.state_of("x", kT0 + 200), MessageState::Deferred);
  EXPECT_TRUE(s.due(kT0 + kMinute).send.empty());
  EXPECT_EQ(s.next_wake(kT0 + 200), kT0 + 100 + kMinute);
  ASSERT_EQ(s.due(kT0 + 100 + kMinute).send, std::vector<std::string>{"x"});
  // Only the pending one is tried again.
  EXPECT_EQ(all(s, "x", 250).size(), 1u);
  settled = s.on_result("x", all(s, "x", 250), kT0 + 2 * kMinute);
  EXPECT_TRUE(settled.finished);
  EXPECT_TRUE(settled.failed_now.empty());
  EXPECT_EQ(settled.state.state, MessageState::Failed);  // one recipient failed for good
  EXPECT_EQ(settled.state.failed_at_ms, kT0 + 2 * kMinute);
  EXPECT_EQ(s.size(), 0u);
}

TEST(Scheduler, RetryScheduleLastRepeatsWithinJitterBounds) {
  for (double r : {0.0, 0.999999, 0.25}) {
    SchedulerOptions o = options();
    o.random = [r] { return r; };
    Scheduler s(o);
    ASSERT_TRUE(s.add(record("m"), {}));
    uint64_t now = kT0;
    const std::vector<uint64_t> base = {1, 5, 30, 120, 120, 120};
    for (uint64_t minutes : base) {
      ASSERT_EQ(s.due(now).send.size(), 1u) << "at " << now;
      auto settled = s.on_result("m", all(s, "m", 421), now);
      uint64_t delay = settled.state.next_attempt_ms - now;
      double expected = static_cast<double>(minutes * kMinute) * (1 + 0.1 * (2 * r - 1));
      EXPECT_NEAR(static_cast<double>(delay), expected, 1.0) << minutes << " r=" << r;
      EXPECT_GE(delay, minutes * kMinute * 9 / 10);
      EXPECT_LE(delay, minutes * kMinute * 11 / 10);
      EXPECT_TRUE(s.due(settled.state.next_attempt_ms - 1).send.empty());
      now = settled.state.next_attempt_ms;
    }
  }
}

TEST(Scheduler, RandomJitterStaysInBoundsAndVaries) {
  SchedulerOptions o = options();
  o.random = nullptr;  // the built-in generator
  Scheduler s(o);
  std::vector<uint64_t> delays;
  for (int i = 0; i < 200; ++i) {
    std::string id = "m" + std::to_string(i);
    ASSERT_TRUE(s.add(record(id, "m" + std::to_string(i)), {}));
  }
  auto due = s.due(kT0);
  ASSERT_EQ(due.send.size(), 200u);
  for (const auto& id : due.send) {
    delays.push_back(s.on_result(id, all(s, id, 450), kT0).state.next_attempt_ms - kT0);
  }
  auto [lo, hi] = std::minmax_element(delays.begin(), delays.end());
  EXPECT_GE(*lo, 54'000u);
  EXPECT_LE(*hi, 66'000u);
  EXPECT_LT(*lo, 57'000u) << "jitter should spread the retries";
  EXPECT_GT(*hi, 63'000u);
}

TEST(Scheduler, MaxAgeFailsPendingRecipientsForGood) {
  SchedulerOptions o = options();
  o.max_age_ms = 10 * kMinute;
  Scheduler s(o);
  ASSERT_TRUE(s.add(record("m", "mail", 2), {}));
  uint64_t now = kT0;
  std::vector<uint64_t> tries;
  Scheduler::Due due;
  for (int i = 0; i < 10; ++i) {
    due = s.due(now);
    if (due.send.empty()) break;
    tries.push_back(now);
    auto settled = s.on_result("m", {{0, 250, "ok"}, {1, 451, "later"}}, now);
    if (settled.finished) {
      EXPECT_EQ(settled.failed_now, std::vector<size_t>{1});
      EXPECT_EQ(settled.state.recipients[1].smtp_code, 0);
      break;
    }
    EXPECT_LE(settled.state.next_attempt_ms, kT0 + 10 * kMinute) << "never past max_age";
    now = *s.next_wake(now);
  }
  // Tried at 0, 1 and 6 minutes; the next retry (36 min) is cut to the 10-minute limit,
  // where the message expires instead of being tried again.
  EXPECT_EQ(tries, (std::vector<uint64_t>{kT0, kT0 + kMinute, kT0 + 6 * kMinute}));
  EXPECT_EQ(now, kT0 + 10 * kMinute);
  ASSERT_EQ(due.expired.size(), 1u);
  EXPECT_EQ(due.expired[0].id, "m");
  EXPECT_EQ(due.expired[0].failed_now, std::vector<size_t>{1});
  EXPECT_EQ(due.expired[0].state.state, MessageState::Failed);
  EXPECT_EQ(due.expired[0].state.recipients[0].state, RecipientState::Sent);
  EXPECT_EQ(due.expired[0].state.recipients[1].state, RecipientState::Failed);
  EXPECT_EQ(dsn_status_for(0, due.expired[0].state.recipients[1].smtp_reply), "4.4.7");
  EXPECT_EQ(s.size(), 0u);
  EXPECT_FALSE(s.next_wake(now).has_value());
}

TEST(Scheduler, HeldByQuotaExpiresAtMaxAge) {
  SchedulerOptions o = options();
  o.max_age_ms = 5 * kMinute;
  o.quota = [](std::string_view, size_t, uint64_t) { return QuotaDecision{false, kMinute}; };
  Scheduler s(o);
  ASSERT_TRUE(s.add(record("h"), {}));
  EXPECT_TRUE(s.due(kT0).send.empty());
  EXPECT_EQ(s.state_of("h", kT0), MessageState::Held);
  EXPECT_EQ(s.counts(kT0).at(MessageState::Held), 1u);
  EXPECT_EQ(s.next_wake(kT0), kT0 + kMinute);
  uint64_t now = kT0;
  Scheduler::Due due;
  while (due.expired.empty() && now < kT0 + 10 * kMinute) {
    now = *s.next_wake(now);
    due = s.due(now);
    EXPECT_TRUE(due.send.empty());
  }
  EXPECT_EQ(now, kT0 + 5 * kMinute);
  ASSERT_EQ(due.expired.size(), 1u);
  EXPECT_EQ(due.expired[0].failed_now, std::vector<size_t>{0});
}

// SPEC §7.1 / issue 8: 10,000 accepted messages against a 100/minute provider quota go
// out at that pace, in arrival order, none lost. The quota is the policy layer's limiter.
TEST(Scheduler, TenThousandMessagesAtOneHundredPerMinute) {
  RateLimiter quota(100, kMinute);
  int quota_asks = 0;
  SchedulerOptions o = options(2);
  o.quota = [&](std::string_view service, size_t n, uint64_t now) {
    EXPECT_EQ(service, "mail");
    ++quota_asks;
    auto j = quota.judge(n, now);
    if (!j.allowed) return QuotaDecision{false, j.retry_after_ms};
    quota.consume(n, now);
    return QuotaDecision{true, 0};
  };
  Scheduler s(o);
  constexpr int kMessages = 10'000;
  for (int i = 0; i < kMessages; ++i) ASSERT_TRUE(s.add(record("m" + std::to_string(i)), {}));
  EXPECT_EQ(s.counts(kT0).at(MessageState::Queued), static_cast<size_t>(kMessages));

  std::vector<uint64_t> sent_at;
  int next_expected = 0;
  uint64_t now = kT0;
  for (int wakes = 0; s.size() > 0 && wakes < 100'000; ++wakes) {
    auto due = s.due(now);
    EXPECT_TRUE(due.expired.empty());
    for (const auto& id : due.send) {
      EXPECT_EQ(id, "m" + std::to_string(next_expected++)) << "arrival order";
      sent_at.push_back(now);
      EXPECT_TRUE(s.on_result(id, all(s, id, 250), now).finished);
    }
    if (due.send.empty()) {
      auto wake = s.next_wake(now);
      ASSERT_TRUE(wake.has_value());
      ASSERT_GT(*wake, now) << "a wake-up that hands out nothing must be in the future";
      EXPECT_EQ(s.state_of("m" + std::to_string(next_expected), now), MessageState::Held);
      now = *wake;
    }
  }
  ASSERT_EQ(sent_at.size(), static_cast<size_t>(kMessages)) << "none lost";
  // GCRA: a burst of 100, then one per 600 ms. So by time t at most 100 + t/600ms, and no
  // slower than that: the scheduler wakes exactly when the quota allows the next one.
  for (size_t i = 0; i < sent_at.size(); ++i) {
    uint64_t allowed_at = i < 100 ? kT0 : kT0 + (i - 99) * 600;
    EXPECT_GE(sent_at[i], allowed_at) << i;
    EXPECT_LE(sent_at[i], allowed_at + 1) << i;
  }
  uint64_t total_ms = sent_at.back() - kT0;
  EXPECT_NEAR(static_cast<double>(total_ms) / kMinute, 99.0, 0.1);
  // Every full minute after the burst carries 100 messages.
  for (uint64_t m = 2; m < 98; ++m) {
    auto in = std::count_if(sent_at.begin(), sent_at.end(), [&](uint64_t t) {
      return t >= kT0 + m * kMinute && t < kT0 + (m + 1) * kMinute;
    });
    EXPECT_EQ(in, 100) << "minute " << m;
  }
  EXPECT_LT(quota_asks, 3 * kMessages) << "a held service is not polled in a busy loop";
}

TEST(Scheduler, QuotaCountsPendingRecipientsOnly) {
  std::vector<size_t> asked;
  SchedulerOptions o = options();
  o.quota = [&](std::string_view, size_t n, uint64_t) {
    asked.push_back(n);
    return QuotaDecision{};
  };
  Scheduler s(o);
  ASSERT_TRUE(s.add(record("m", "mail", 3), {}));
  ASSERT_EQ(s.due(kT0).send.size(), 1u);
  s.on_result("m", {{0, 250, "ok"}, {1, 452, "full"}, {2, 452, "full"}}, kT0);
  ASSERT_EQ(s.due(kT0 + 2 * kMinute).send.size(), 1u);
  EXPECT_EQ(asked, (std::vector<size_t>{3, 2}));
}

TEST(Scheduler, RetryNowForgetAndRecoveredStates) {
  Scheduler s(options(1));
  ASSERT_TRUE(s.add(record("a"), {}));
  ASSERT_EQ(s.due(kT0).send, std::vector<std::string>{"a"});
  s.on_result("a", all(s, "a", 0, "Connection refused"), kT0);
  EXPECT_EQ(s.state("a")->last_reply, "Connection refused");
  EXPECT_TRUE(s.due(kT0 + 1000).send.empty());
  EXPECT_TRUE(s.retry_now("a", kT0 + 1000));
  EXPECT_EQ(s.due(kT0 + 1000).send, std::vector<std::string>{"a"});
  EXPECT_FALSE(s.retry_now("a", kT0 + 1000));  // being sent
  EXPECT_FALSE(s.retry_now("zzz", kT0));

  s.forget("a");  // deleted while being sent: its result is ignored, the slot freed
  EXPECT_FALSE(s.state_of("a", kT0).has_value());
  EXPECT_FALSE(s.on_result("a", {}, kT0 + 2000).known);
  SpoolRecord b = record("b", "mail", 2);
  SpoolState sending = fresh_spool_state(b);
  sending.state = MessageState::Sending;  // a crash during delivery: goes out again
  sending.attempts = 4;
  ASSERT_TRUE(s.add(b, sending));
  EXPECT_EQ(s.state_of("b", kT0), MessageState::Queued);
  EXPECT_EQ(s.due(kT0 + 2000).send, std::vector<std::string>{"b"});

  SpoolRecord c = record("c");
  SpoolState deferred = fresh_spool_state(c);
  deferred.state = MessageState::Deferred;
  deferred.next_attempt_ms = kT0 + 50'000;
  ASSERT_TRUE(s.add(c, deferred));
  EXPECT_EQ(s.state_of("c", kT0), MessageState::Deferred);
  SpoolState done = fresh_spool_state(c);
  done.recipients[0].state = RecipientState::Sent;
  EXPECT_FALSE(s.add(record("d"), done));  // nothing pending
  SpoolState failed = fresh_spool_state(c);
  failed.state = MessageState::Failed;
  EXPECT_FALSE(s.add(record("e"), failed));
  auto counts = s.counts(kT0);
  EXPECT_EQ(counts.at(MessageState::Sending), 1u);
  EXPECT_EQ(counts.at(MessageState::Deferred), 1u);
}

// Issue 8: a message held by the quota and never attempted costs the scheduler a map node
// and a set node, no SpoolState (it was 352 bytes before).
TEST(Scheduler, HeldMessagesCostLittleMemory) {
  constexpr size_t kMessages = 20'000;
  constexpr size_t kMaxBytesPerMessage = 256;
  std::vector<SpoolRecord> records;
  for (size_t i = 0; i < kMessages; ++i) {
    records.push_back(record("held-" + std::to_string(100'000'000'000'000'000 + i)));
  }
  SchedulerOptions o = options(1);
  o.quota = [](std::string_view, size_t, uint64_t) { return QuotaDecision{false, kMinute}; };
  std::optional<size_t> before = testing::heap_bytes();
  if (!before) GTEST_SKIP() << "this allocator does not report through mallinfo2";
  Scheduler s(o);
  for (const SpoolRecord& r : records) ASSERT_TRUE(s.add(r, fresh_spool_state(r)));
  EXPECT_TRUE(s.due(kT0).send.empty());
  size_t after = *testing::heap_bytes();
  size_t per_message = (after > *before ? after - *before : 0) / kMessages;
  EXPECT_LT(per_message, kMaxBytesPerMessage);
  std::cout << "scheduler heap bytes per held message: " << per_message << "\n";
  EXPECT_EQ(s.state_of(records[7].id, kT0), MessageState::Held);
  EXPECT_EQ(s.state(records[7].id), fresh_spool_state(records[7]));
}

}  // namespace
}  // namespace mailcar
