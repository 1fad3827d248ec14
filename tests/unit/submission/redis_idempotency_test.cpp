// The Redis-backed idempotency store when Redis cannot answer (never connected here):
// on_error local claims in the local store and maps its claims, refuse answers Unavailable.
// Its Redis path runs against a real redis-server in tests/integration/test_shared_state.py.
#include "submission/redis_idempotency.hpp"

#include <gtest/gtest.h>

#include "relay/loop_helper.hpp"

namespace mailcar {
namespace {

class RedisIdempotencyDown : public ::testing::Test {
 protected:
  std::shared_ptr<RedisIdempotencyStore> make(SharedStateOnError on_error) {
    SharedStateConfig c;
    c.host = "127.0.0.1";
    c.port = 1;
    c.on_error = on_error;
    shared_ = std::make_shared<SharedState>(loop_.get(), c);  // not started: unusable
    local_ = std::make_shared<MemoryIdempotencyStore>(IdempotencyLimits{60'000, 10});
    return std::make_shared<RedisIdempotencyStore>(shared_, local_, 60'000, 120'000);
  }

  static IdempotencyOutcome begin(IdempotencyStore& store, const std::string& scope,
                                  std::string_view request) {
    IdempotencyOutcome got;
    bool called = false;
    store.begin(scope, crypto::sha256(request), 1000, [&](IdempotencyOutcome out) {
      got = std::move(out);
      called = true;
    });
    EXPECT_TRUE(called);  // Redis unusable: answered at once
    return got;
  }

  testing::TestLoop loop_;
  std::shared_ptr<SharedState> shared_;
  std::shared_ptr<MemoryIdempotencyStore> local_;
};

TEST_F(RedisIdempotencyDown, LocalFallsBackToTheMemoryStore) {
  auto store = make(SharedStateOnError::Local);
  IdempotencyOutcome first = begin(*store, "s1", "req");
  ASSERT_EQ(first.verdict, IdempotencyVerdict::Fresh);
  EXPECT_EQ(store->claims(), 1u);
  EXPECT_EQ(local_->in_flight(), 1u);
  EXPECT_EQ(begin(*store, "s1", "req").verdict, IdempotencyVerdict::InFlight);
  EXPECT_EQ(begin(*store, "s1", "other").verdict, IdempotencyVerdict::Mismatch);

  bool stored = false;
  store->complete("s1", first.claim, IdempotentResponse{200, "{\"ok\":1}"}, 1000,
                  [&] { stored = true; });
  EXPECT_TRUE(stored);
  EXPECT_EQ(store->claims(), 0u);
  IdempotencyOutcome again = begin(*store, "s1", "req");
  ASSERT_EQ(again.verdict, IdempotencyVerdict::Replay);
  EXPECT_EQ(again.response.status, 200);
  EXPECT_EQ(again.response.body, "{\"ok\":1}");

  // A claim released through the adapter frees the local key.
  IdempotencyOutcome second = begin(*store, "s2", "req");
  ASSERT_EQ(second.verdict, IdempotencyVerdict::Fresh);
  EXPECT_NE(second.claim, first.claim);
  store->complete("s2", second.claim, std::nullopt, 1000, {});
  EXPECT_EQ(local_->in_flight(), 0u);
  EXPECT_EQ(begin(*store, "s2", "req").verdict, IdempotencyVerdict::Fresh);
}

TEST_F(RedisIdempotencyDown, RefuseAnswersUnavailable) {
  auto store = make(SharedStateOnError::Refuse);
  EXPECT_EQ(begin(*store, "s1", "req").verdict, IdempotencyVerdict::Unavailable);
  EXPECT_EQ(local_->size(), 0u);
  EXPECT_EQ(store->claims(), 0u);
  // An unknown claim is ignored; `stored` still runs.
  bool stored = false;
  store->complete("s1", 77, IdempotentResponse{200, "x"}, 1000, [&] { stored = true; });
  EXPECT_TRUE(stored);
}

}  // namespace
}  // namespace mailcar
