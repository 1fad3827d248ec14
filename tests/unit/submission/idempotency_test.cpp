#include "mailcar/idempotency.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <vector>

namespace mailcar {
namespace {

constexpr uint64_t kNow = 1'700'000'000'000;
constexpr uint64_t kTtl = 60'000;

crypto::Sha256Digest hash_of(std::string_view s) {
  return crypto::sha256(s);
}

// begin() on a store whose answers are synchronous.
IdempotencyOutcome begin(IdempotencyStore& store, const std::string& scope, std::string_view body,
                         uint64_t now = kNow) {
  std::optional<IdempotencyOutcome> got;
  store.begin(scope, hash_of(body), now, [&](IdempotencyOutcome o) { got = std::move(o); });
  EXPECT_TRUE(got.has_value());
  return got.value_or(IdempotencyOutcome{});
}

void keep(IdempotencyStore& store, const std::string& scope, uint64_t claim, uint16_t status,
          std::string body, uint64_t now = kNow) {
  bool stored = false;
  store.complete(scope, claim, IdempotentResponse{status, std::move(body)}, now,
                 [&] { stored = true; });
  EXPECT_TRUE(stored);
}

TEST(IdempotencyKey, VisibleAsciiOneTo255) {
  EXPECT_TRUE(valid_idempotency_key("a"));
  EXPECT_TRUE(valid_idempotency_key("order-42_!~"));
  EXPECT_TRUE(valid_idempotency_key(std::string(255, 'k')));
  EXPECT_FALSE(valid_idempotency_key(""));
  EXPECT_FALSE(valid_idempotency_key(std::string(256, 'k')));
  EXPECT_FALSE(valid_idempotency_key("has space"));
  EXPECT_FALSE(valid_idempotency_key("tab\t"));
  EXPECT_FALSE(valid_idempotency_key("caf\xc3\xa9"));
  EXPECT_FALSE(valid_idempotency_key(std::string_view("nul\0", 4)));
}

TEST(IdempotencyScope, PartsNeverRunTogether) {
  EXPECT_NE(idempotency_scope(Ingress::Http, "ab", "c", "k"),
            idempotency_scope(Ingress::Http, "a", "bc", "k"));
  EXPECT_NE(idempotency_scope(Ingress::Http, "a", "b", "k"),
            idempotency_scope(Ingress::Smtp, "a", "b", "k"));
}

TEST(MemoryIdempotencyStore, FreshThenInFlightThenReplay) {
  MemoryIdempotencyStore store({kTtl, 10});
  IdempotencyOutcome first = begin(store, "s", "body");
  ASSERT_EQ(first.verdict, IdempotencyVerdict::Fresh);
  EXPECT_EQ(begin(store, "s", "body").verdict, IdempotencyVerdict::InFlight);
  EXPECT_EQ(begin(store, "s", "other").verdict, IdempotencyVerdict::Mismatch);
  keep(store, "s", first.claim, 200, "{\"count\":1}");
  IdempotencyOutcome again = begin(store, "s", "body");
  ASSERT_EQ(again.verdict, IdempotencyVerdict::Replay);
  EXPECT_EQ(again.response.status, 200);
  EXPECT_EQ(again.response.body, "{\"count\":1}");
  EXPECT_EQ(begin(store, "s", "other").verdict, IdempotencyVerdict::Mismatch);
  EXPECT_EQ(begin(store, "t", "body").verdict, IdempotencyVerdict::Fresh);  // another scope
}

TEST(MemoryIdempotencyStore, ReleasedKeyIsFreshAgain) {
  MemoryIdempotencyStore store({kTtl, 10});
  IdempotencyOutcome first = begin(store, "s", "body");
  store.complete("s", first.claim, std::nullopt, kNow, {});
  EXPECT_EQ(store.size(), 0u);
  EXPECT_EQ(begin(store, "s", "different body now").verdict, IdempotencyVerdict::Fresh);
}

TEST(MemoryIdempotencyStore, DroppedClaimReleases) {
  auto store = std::make_shared<MemoryIdempotencyStore>(IdempotencyLimits{kTtl, 10});
  IdempotencyOutcome first = begin(*store, "s", "body");
  { IdempotencyClaim claim(store, "s", first.claim); }
  EXPECT_EQ(store->in_flight(), 0u);
  EXPECT_EQ(begin(*store, "s", "body").verdict, IdempotencyVerdict::Fresh);
}

TEST(MemoryIdempotencyStore, StaleClaimIsIgnored) {
  MemoryIdempotencyStore store({kTtl, 10});
  IdempotencyOutcome first = begin(store, "s", "body");
  bool stored = false;
  store.complete("s", first.claim + 7, IdempotentResponse{200, "x"}, kNow, [&] { stored = true; });
  EXPECT_TRUE(stored);
  EXPECT_EQ(begin(store, "s", "body").verdict, IdempotencyVerdict::InFlight);
}

TEST(MemoryIdempotencyStore, AnswerExpiresAfterTtl) {
  MemoryIdempotencyStore store({kTtl, 10});
  IdempotencyOutcome first = begin(store, "s", "body");
  keep(store, "s", first.claim, 202, "{}", kNow);
  EXPECT_EQ(begin(store, "s", "body", kNow + kTtl - 1).verdict, IdempotencyVerdict::Replay);
  EXPECT_EQ(begin(store, "s", "other", kNow + kTtl).verdict, IdempotencyVerdict::Fresh);
}

TEST(MemoryIdempotencyStore, InFlightNeverExpires) {
  MemoryIdempotencyStore store({kTtl, 10});
  ASSERT_EQ(begin(store, "s", "body").verdict, IdempotencyVerdict::Fresh);
  EXPECT_EQ(begin(store, "s", "body", kNow + 10 * kTtl).verdict, IdempotencyVerdict::InFlight);
}

TEST(MemoryIdempotencyStore, BoundDropsExpiredThenOldestAnswer) {
  MemoryIdempotencyStore store({kTtl, 3});
  for (int i = 0; i < 3; ++i) {
    std::string scope = "k" + std::to_string(i);
    IdempotencyOutcome o = begin(store, scope, "b", kNow + i);
    keep(store, scope, o.claim, 200, scope, kNow + i);
  }
  EXPECT_EQ(store.size(), 3u);
  // Full: k0 (the oldest answer) makes room for k3.
  ASSERT_EQ(begin(store, "k3", "b", kNow + 10).verdict, IdempotencyVerdict::Fresh);
  EXPECT_EQ(store.size(), 3u);
  EXPECT_EQ(begin(store, "k1", "b", kNow + 10).verdict, IdempotencyVerdict::Replay);
  EXPECT_EQ(begin(store, "k2", "b", kNow + 10).verdict, IdempotencyVerdict::Replay);
  EXPECT_EQ(begin(store, "k3", "b", kNow + 10).verdict, IdempotencyVerdict::InFlight);
  // k0 was forgotten: a new request with it is fresh again (and evicts k1, then k1 evicts k2).
  EXPECT_EQ(begin(store, "k0", "other", kNow + 10).verdict, IdempotencyVerdict::Fresh);
  EXPECT_EQ(begin(store, "k1", "other", kNow + 10).verdict, IdempotencyVerdict::Fresh);
  // Now all three are in flight: a new key is refused, none is forgotten.
  EXPECT_EQ(begin(store, "k9", "b", kNow + 10).verdict, IdempotencyVerdict::Full);
  EXPECT_EQ(store.in_flight(), 3u);
  EXPECT_EQ(begin(store, "k3", "b", kNow + 10).verdict, IdempotencyVerdict::InFlight);
}

TEST(MemoryIdempotencyStore, AllInFlightIsFull) {
  MemoryIdempotencyStore store({kTtl, 2});
  ASSERT_EQ(begin(store, "a", "b").verdict, IdempotencyVerdict::Fresh);
  ASSERT_EQ(begin(store, "b", "b").verdict, IdempotencyVerdict::Fresh);
  EXPECT_EQ(begin(store, "c", "b").verdict, IdempotencyVerdict::Full);
  EXPECT_EQ(store.size(), 2u);
  EXPECT_EQ(store.in_flight(), 2u);
  // A key in flight is still answered as such at the bound.
  EXPECT_EQ(begin(store, "a", "b").verdict, IdempotencyVerdict::InFlight);
}

TEST(MemoryIdempotencyStore, SmallerBoundOnReloadDropsOldestAnswers) {
  MemoryIdempotencyStore store({kTtl, 10});
  for (int i = 0; i < 5; ++i) {
    std::string scope = "k" + std::to_string(i);
    IdempotencyOutcome o = begin(store, scope, "b", kNow + i);
    keep(store, scope, o.claim, 200, scope, kNow + i);
  }
  store.set_limits({kTtl, 2}, kNow + 5);
  EXPECT_EQ(store.size(), 2u);
  EXPECT_EQ(begin(store, "k4", "b", kNow + 5).verdict, IdempotencyVerdict::Replay);
  EXPECT_EQ(begin(store, "k3", "b", kNow + 5).verdict, IdempotencyVerdict::Replay);
}

TEST(MemoryIdempotencyStore, PersistIsToldEveryKeptAnswer) {
  std::vector<IdempotencyRecord> written;
  IdempotencyStored later;
  MemoryIdempotencyStore store({kTtl, 10}, [&](const IdempotencyRecord& r, IdempotencyStored done) {
    written.push_back(r);
    later = std::move(done);
  });
  IdempotencyOutcome o = begin(store, "s", "body");
  bool stored = false;
  store.complete("s", o.claim, IdempotentResponse{200, "x"}, kNow, [&] { stored = true; });
  ASSERT_EQ(written.size(), 1u);
  EXPECT_FALSE(stored);  // not before the journal says it is on disk
  later();
  EXPECT_TRUE(stored);
  EXPECT_EQ(written[0].scope, "s");
  EXPECT_EQ(written[0].expires_ms, kNow + kTtl);
  EXPECT_EQ(written[0].hash, hash_of("body"));
  // A released key is not written.
  IdempotencyOutcome t = begin(store, "t", "body");
  store.complete("t", t.claim, std::nullopt, kNow, {});
  EXPECT_EQ(written.size(), 1u);
}

TEST(MemoryIdempotencyStore, RestoreKeepsNewestAndSkipsExpired) {
  MemoryIdempotencyStore store({kTtl, 10});
  store.restore({"s", hash_of("old"), kNow + 100, {200, "old"}}, kNow);
  store.restore({"s", hash_of("new"), kNow + 200, {200, "new"}}, kNow);
  store.restore({"s", hash_of("older"), kNow + 50, {200, "older"}}, kNow);
  store.restore({"gone", hash_of("x"), kNow, {200, "x"}}, kNow);
  EXPECT_EQ(store.size(), 1u);
  IdempotencyOutcome o = begin(store, "s", "new");
  ASSERT_EQ(o.verdict, IdempotencyVerdict::Replay);
  EXPECT_EQ(o.response.body, "new");
  std::vector<std::string> kept;
  store.for_each_kept(kNow, [&](const IdempotencyRecord& r) { kept.push_back(r.scope); });
  EXPECT_EQ(kept, std::vector<std::string>{"s"});
}

TEST(IdempotencyJournal, RoundTripsRecords) {
  IdempotencyRecord a{
      "http\x1f"
      "app\x1f"
      "email\x1f"
      "k1",
      hash_of("a"),
      kNow,
      {200, "{\"n\":1}"}};
  IdempotencyRecord b{
      "smtp\x1f"
      "app\x1f"
      "email\x1f"
      "k2",
      hash_of("b"),
      kNow + 1,
      {250, ""}};
  std::string file = format_idempotency_record(a) + format_idempotency_record(b);
  IdempotencyJournal j = parse_idempotency_journal(file);
  EXPECT_FALSE(j.truncated);
  EXPECT_EQ(j.good_bytes, file.size());
  ASSERT_EQ(j.records.size(), 2u);
  EXPECT_EQ(j.records[0].scope, a.scope);
  EXPECT_EQ(j.records[0].hash, a.hash);
  EXPECT_EQ(j.records[0].expires_ms, a.expires_ms);
  EXPECT_EQ(j.records[0].response.status, 200);
  EXPECT_EQ(j.records[0].response.body, a.response.body);
  EXPECT_EQ(j.records[1].response.status, 250);
  EXPECT_EQ(j.records[1].response.body, "");
}

TEST(IdempotencyJournal, BodyMayHoldNewlines) {
  IdempotencyRecord a{"s", hash_of("a"), kNow, {200, "line\nK 1 2 3\n"}};
  IdempotencyJournal j = parse_idempotency_journal(format_idempotency_record(a));
  ASSERT_EQ(j.records.size(), 1u);
  EXPECT_EQ(j.records[0].response.body, a.response.body);
}

TEST(IdempotencyJournal, TornTailKeepsWhatCameBefore) {
  IdempotencyRecord a{"s1", hash_of("a"), kNow, {200, "first"}};
  IdempotencyRecord b{"s2", hash_of("b"), kNow, {200, "second"}};
  std::string one = format_idempotency_record(a);
  std::string two = format_idempotency_record(b);
  for (size_t cut = 0; cut < two.size(); ++cut) {
    IdempotencyJournal j = parse_idempotency_journal(one + two.substr(0, cut));
    ASSERT_EQ(j.records.size(), 1u) << cut;
    EXPECT_EQ(j.good_bytes, one.size());
    EXPECT_EQ(j.truncated, cut > 0);
  }
}

TEST(IdempotencyJournal, MalformedHeadsStopTheParse) {
  std::string hex(64, 'a');
  for (std::string bad :
       {"X 1 " + hex + " 200 1 1\nsb\n", "K x " + hex + " 200 1 1\nsb\n",
        "K 1 " + hex.substr(1) + " 200 1 1\nsb\n", "K 1 " + std::string(64, 'A') + " 200 1 1\nsb\n",
        "K 1 " + hex + " 70000 1 1\nsb\n", "K 1 " + hex + " 200 0 1\nb\n",
        "K 1 " + hex + " 200 1 1 9\nsb\n", "K 1 " + hex + " 200 1 1\nsbX",
        "K 1 " + hex + " 200 1 99999999999\nsb\n", "K 1 " + hex + " 200 1 -1\nsb\n"}) {
    IdempotencyJournal j = parse_idempotency_journal(bad);
    EXPECT_TRUE(j.records.empty()) << bad;
    EXPECT_TRUE(j.truncated) << bad;
    EXPECT_EQ(j.good_bytes, 0u) << bad;
  }
}

}  // namespace
}  // namespace mailcar
