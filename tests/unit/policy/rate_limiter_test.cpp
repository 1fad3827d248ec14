#include "mailcar/rate_limiter.hpp"

#include <gtest/gtest.h>

namespace mailcar {
namespace {

constexpr uint64_t kSecond = 1000;
constexpr uint64_t kDay = 86'400'000;
// A realistic wall clock, so tests exercise large absolute times.
constexpr uint64_t kEpoch = 1'700'000'000'000;

bool take(RateLimiter& l, uint64_t cost, uint64_t now) {
  auto j = l.judge(cost, now);
  if (j.allowed) l.consume(cost, now);
  return j.allowed;
}

TEST(RateLimiter, FreshWindowAllowsFullBurst) {
  RateLimiter l(10, kSecond);
  auto j = l.judge(10, kEpoch);
  EXPECT_TRUE(j.allowed);
  EXPECT_EQ(j.remaining, 0u);
  EXPECT_EQ(j.reset_ms, 1000u);
  for (int i = 0; i < 10; ++i) EXPECT_TRUE(take(l, 1, kEpoch)) << i;
  EXPECT_FALSE(take(l, 1, kEpoch));
}

TEST(RateLimiter, ExactAtEmissionEdge) {
  RateLimiter l(10, kSecond);  // one cell per 100 ms
  ASSERT_TRUE(take(l, 10, kEpoch));
  auto j = l.judge(1, kEpoch);
  EXPECT_FALSE(j.allowed);
  EXPECT_FALSE(j.never);
  EXPECT_EQ(j.retry_after_ms, 100u);
  EXPECT_EQ(j.remaining, 0u);
  EXPECT_EQ(j.reset_ms, 1000u);
  EXPECT_FALSE(l.judge(1, kEpoch + 99).allowed);
  EXPECT_EQ(l.judge(1, kEpoch + 99).retry_after_ms, 1u);
  EXPECT_TRUE(l.judge(1, kEpoch + 100).allowed);
  EXPECT_FALSE(l.judge(2, kEpoch + 100).allowed);
  EXPECT_EQ(l.judge(2, kEpoch + 100).retry_after_ms, 100u);
}

TEST(RateLimiter, FullyReplenishedExactlyAtT) {
  RateLimiter l(10, kSecond);
  ASSERT_TRUE(take(l, 10, kEpoch));
  auto before = l.judge(10, kEpoch + 999);
  EXPECT_FALSE(before.allowed);
  EXPECT_EQ(before.retry_after_ms, 1u);
  EXPECT_EQ(before.remaining, 9u);
  auto at = l.judge(10, kEpoch + kSecond);
  EXPECT_TRUE(at.allowed);
  EXPECT_EQ(l.judge(0, kEpoch + kSecond).remaining, 10u);
  EXPECT_EQ(l.judge(0, kEpoch + kSecond).reset_ms, 0u);
}

TEST(RateLimiter, BurstAtBoundaryCannotDoubleUp) {
  // A fixed-window counter would allow 10 at 999 ms and 10 more at 1000 ms; GCRA does not.
  RateLimiter l(10, kSecond);
  ASSERT_TRUE(take(l, 10, kEpoch + 999));
  EXPECT_FALSE(take(l, 10, kEpoch + 1000));
  EXPECT_TRUE(take(l, 1, kEpoch + 1099));
  EXPECT_FALSE(take(l, 1, kEpoch + 1100));
  EXPECT_TRUE(take(l, 1, kEpoch + 1199));
  // Token-bucket semantics: a greedy sender gets the burst of N, then one cell per T/N, so
  // in [999, 1999) exactly 10 + 9 pass (at 999..1008, then 1099, 1199, ..., 1899).
  RateLimiter m(10, kSecond);
  int passed = 0;
  for (uint64_t t = 999; t < 1999; ++t) passed += take(m, 1, kEpoch + t);
  EXPECT_EQ(passed, 19);
}

TEST(RateLimiter, CostAboveNNeverPasses) {
  RateLimiter l(5, kSecond);
  auto j = l.judge(6, kEpoch);
  EXPECT_FALSE(j.allowed);
  EXPECT_TRUE(j.never);
  EXPECT_EQ(j.remaining, 5u);
  EXPECT_TRUE(l.judge(5, kEpoch).allowed);
}

TEST(RateLimiter, RefusedConsumesNothing) {
  RateLimiter l(10, kSecond);
  ASSERT_TRUE(take(l, 7, kEpoch));
  for (int i = 0; i < 100; ++i) EXPECT_FALSE(take(l, 4, kEpoch));
  EXPECT_TRUE(take(l, 3, kEpoch));
  EXPECT_FALSE(take(l, 1, kEpoch));
}

TEST(RateLimiter, CostCountsCells) {
  RateLimiter l(100, 60 * kSecond);  // one cell per 600 ms
  ASSERT_TRUE(take(l, 95, kEpoch));
  auto j = l.judge(10, kEpoch);
  EXPECT_FALSE(j.allowed);
  EXPECT_EQ(j.remaining, 5u);
  EXPECT_EQ(j.retry_after_ms, 3000u);  // 5 more cells at 600 ms each
  EXPECT_EQ(j.reset_ms, 57'000u);
  EXPECT_TRUE(l.judge(10, kEpoch + 3000).allowed);
  EXPECT_EQ(l.judge(10, kEpoch + 3000).remaining, 0u);
}

TEST(RateLimiter, NonIntegralIntervalDoesNotDrift) {
  // 7/second: 142.857... ms per cell. After 7,000,000 single cells spaced exactly at the
  // rate, a full burst must still be refused and one cell per interval still allowed.
  RateLimiter l(7, kSecond);
  uint64_t sent = 0;
  for (uint64_t s = 0; s < 1'000'000; ++s) {
    ASSERT_TRUE(take(l, 7, kEpoch + s * kSecond)) << s;
    sent += 7;
  }
  EXPECT_EQ(sent, 7'000'000u);
  uint64_t now = kEpoch + 1'000'000 * kSecond;
  EXPECT_TRUE(take(l, 7, now));
  EXPECT_FALSE(take(l, 1, now + 142));                    // 142 ms < 1000/7
  EXPECT_TRUE(take(l, 1, now + 143));                     // 143 ms >= 1000/7
  EXPECT_EQ(l.judge(1, now + 143).retry_after_ms, 143u);  // next edge at 285.71 ms → 286
}

TEST(RateLimiter, VeryLargeN) {
  const uint64_t n = 1'000'000'000;  // 1e9/day: 86.4 µs per cell
  RateLimiter l(n, kDay);
  ASSERT_TRUE(take(l, n, kEpoch));
  EXPECT_FALSE(take(l, 1, kEpoch));
  auto j = l.judge(1, kEpoch);
  EXPECT_EQ(j.retry_after_ms, 1u);  // 86.4 µs, rounded up
  EXPECT_EQ(j.reset_ms, kDay);
  // In 1 s exactly floor(1000 / 0.0864) = 11574 cells come back.
  EXPECT_TRUE(l.judge(11'574, kEpoch + kSecond).allowed);
  EXPECT_FALSE(l.judge(11'575, kEpoch + kSecond).allowed);
  EXPECT_EQ(l.judge(0, kEpoch + kSecond).remaining, 11'574u);
  // N = 2^63/day does not overflow.
  RateLimiter huge(uint64_t{1} << 63, kDay);
  EXPECT_TRUE(take(huge, uint64_t{1} << 62, kEpoch));
  EXPECT_EQ(huge.judge(0, kEpoch).remaining, uint64_t{1} << 62);
}

TEST(RateLimiter, MillionPerDay) {
  RateLimiter l(1'000'000, kDay);  // 86.4 ms per cell
  ASSERT_TRUE(take(l, 1'000'000, kEpoch));
  EXPECT_EQ(l.judge(1, kEpoch).retry_after_ms, 87u);
  EXPECT_FALSE(l.judge(1, kEpoch + 86).allowed);
  EXPECT_TRUE(l.judge(1, kEpoch + 87).allowed);
  EXPECT_EQ(l.judge(1000, kEpoch).retry_after_ms, 86'400u);
}

TEST(RateLimiter, TinyPeriod) {
  RateLimiter l(1, 1);  // one per millisecond
  EXPECT_TRUE(take(l, 1, kEpoch));
  EXPECT_FALSE(take(l, 1, kEpoch));
  EXPECT_EQ(l.judge(1, kEpoch).retry_after_ms, 1u);
  EXPECT_TRUE(take(l, 1, kEpoch + 1));
  RateLimiter many(1000, 1);  // 1000 per ms
  EXPECT_TRUE(take(many, 1000, kEpoch));
  EXPECT_FALSE(take(many, 1, kEpoch));
  EXPECT_TRUE(take(many, 1000, kEpoch + 1));
}

TEST(RateLimiter, StatePersistsAsWallClockMs) {
  RateLimiter l(3, kSecond);  // 333.33 ms per cell
  EXPECT_EQ(l.tat_ms(), 0u);
  ASSERT_TRUE(take(l, 1, kEpoch));
  EXPECT_EQ(l.tat_ms(), kEpoch + 334);  // rounded up: conservative
  RateLimiter restored(3, kSecond);
  restored.set_tat_ms(l.tat_ms());
  // Rounding up costs at most one cell, never grants one.
  EXPECT_EQ(restored.judge(0, kEpoch).remaining, 1u);
  EXPECT_TRUE(restored.judge(1, kEpoch).allowed);
  EXPECT_FALSE(restored.judge(2, kEpoch).allowed);
}

TEST(RateLimiter, ClockGoingBackBlocksAtMostOneWindow) {
  RateLimiter l(10, kSecond);
  l.set_tat_ms(kEpoch + 3'600'000);  // an hour ahead: a bad state file or a clock step back
  auto j = l.judge(1, kEpoch);
  EXPECT_FALSE(j.allowed);
  EXPECT_EQ(j.retry_after_ms, 100u);
  EXPECT_LE(j.reset_ms, kSecond);
}

TEST(RateLimiter, DegenerateWindows) {
  RateLimiter zero(0, kSecond);
  EXPECT_TRUE(zero.judge(0, kEpoch).allowed);
  EXPECT_TRUE(zero.judge(1, kEpoch).never);
}

}  // namespace
}  // namespace mailcar
