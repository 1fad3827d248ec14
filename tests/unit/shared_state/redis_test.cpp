// Shared state (issue 11) against a real redis-server (Debian's package), on a real libuv
// loop: the Lua GCRA gives the local limiter's answers, window for window, at the server's
// clock; the idempotency-key scripts claim, keep, replay and release. Skipped only when
// redis-server is not installed.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "mailcar/rate_limiter.hpp"
#include "mailcar/shared_state.hpp"
#include "relay/loop_helper.hpp"

extern char** environ;

namespace mailcar {
namespace {

uint16_t free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

bool port_open(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

class RedisTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access("/usr/bin/redis-server", X_OK) != 0) GTEST_SKIP() << "redis-server not installed";
    port_ = free_port();
    std::string port = std::to_string(port_);
    std::vector<std::string> args{"redis-server", "--port", port,  "--bind",
                                  "127.0.0.1",    "--save", "",    "--appendonly",
                                  "no",           "--dir",  "/tmp"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, "/dev/null", O_WRONLY, 0);
    ASSERT_EQ(posix_spawn(&pid_, "/usr/bin/redis-server", &actions, nullptr, argv.data(), environ),
              0);
    posix_spawn_file_actions_destroy(&actions);
    for (int i = 0; i < 200 && !port_open(port_); ++i) usleep(25'000);
    ASSERT_TRUE(port_open(port_));
    SharedStateConfig c;
    c.host = "127.0.0.1";
    c.port = port_;
    c.redis = "redis://127.0.0.1:" + port;
    shared_ = std::make_unique<SharedState>(loop_.get(), c);
    shared_->start();
    ASSERT_TRUE(loop_.run_until([&] { return shared_->ready(); }, 10'000));
  }
  void TearDown() override {
    if (shared_) shared_->stop();
    shared_.reset();
    if (pid_ > 0) {
      kill(pid_, SIGTERM);
      waitpid(pid_, nullptr, 0);
    }
  }

  SharedState::Outcome judge(const std::vector<PolicyWindow>& windows, uint64_t cost) {
    SharedState::Outcome got;
    bool done = false;
    shared_->judge(windows, cost, false, [&](SharedState::Outcome o) {
      got = std::move(o);
      done = true;
    });
    EXPECT_TRUE(loop_.run_until([&] { return done; }));
    return got;
  }

  shared_idempotency::ClaimAnswer claim(const std::string& scope, const std::string& hash,
                                        const std::string& token) {
    Result<shared_idempotency::ClaimAnswer> got = Error{"no answer"};
    bool done = false;
    shared_->idempotency_claim(scope, hash, token, 60'000, [&](auto r) {
      got = std::move(r);
      done = true;
    });
    EXPECT_TRUE(loop_.run_until([&] { return done; }));
    EXPECT_TRUE(got.ok()) << got.error().message;
    return got.ok() ? got.value() : shared_idempotency::ClaimAnswer{};
  }

  bool complete(const std::string& scope, const std::string& token,
                std::optional<shared_idempotency::Kept> keep) {
    Result<bool> got = Error{"no answer"};
    bool done = false;
    shared_->idempotency_complete(scope, token, keep, 60'000, [&](Result<bool> r) {
      got = std::move(r);
      done = true;
    });
    EXPECT_TRUE(loop_.run_until([&] { return done; }));
    EXPECT_TRUE(got.ok()) << got.error().message;
    return got.ok() && got.value();
  }

  testing::TestLoop loop_;
  uint16_t port_ = 0;
  pid_t pid_ = 0;
  std::unique_ptr<SharedState> shared_;
};

// The same requests to the script and to RateLimiter at the server's clock: every window's
// judgement is identical, and consumption is all or nothing.
TEST_F(RedisTest, ScriptJudgesExactlyAsTheLocalLimiter) {
  const std::vector<PolicyWindow> windows{{false, "r", 3, 1000},
                                          {false, "r", 7, 60'000},
                                          {true, "s", 1'000'000, 86'400'000},
                                          {false, "odd", 13, 777}};
  std::vector<RateLimiter> local;
  for (const PolicyWindow& w : windows) local.emplace_back(w.count, w.period_ms);
  std::mt19937 rng(7);
  int allowed = 0;
  int refused = 0;
  for (int i = 0; i < 120; ++i) {
    const uint64_t cost = rng() % 4;
    SharedState::Outcome out = judge(windows, cost);
    ASSERT_TRUE(out.ok) << out.error;
    ASSERT_EQ(out.answer.judgements.size(), windows.size());
    bool all = true;
    for (size_t w = 0; w < windows.size(); ++w) {
      RateLimiter::Judgement expected = local[w].judge(cost, out.answer.now_ms);
      const RateLimiter::Judgement& got = out.answer.judgements[w];
      EXPECT_EQ(got.allowed, expected.allowed) << i << " window " << w;
      EXPECT_EQ(got.never, expected.never) << i << " window " << w;
      EXPECT_EQ(got.retry_after_ms, expected.retry_after_ms) << i << " window " << w;
      EXPECT_EQ(got.remaining, expected.remaining) << i << " window " << w;
      EXPECT_EQ(got.reset_ms, expected.reset_ms) << i << " window " << w;
      all = all && expected.allowed;
    }
    EXPECT_EQ(out.answer.allowed, all) << i;
    if (all) {
      for (RateLimiter& l : local) l.consume(cost, out.answer.now_ms);
      ++allowed;
    } else {
      ++refused;
    }
    if (i % 10 == 9) usleep(120'000);  // let the short windows replenish now and then
  }
  EXPECT_GT(allowed, 10);
  EXPECT_GT(refused, 10);
}

TEST_F(RedisTest, MoreThanNIsNever) {
  SharedState::Outcome out = judge({{false, "r", 3, 1000}}, 4);
  ASSERT_TRUE(out.ok) << out.error;
  EXPECT_FALSE(out.answer.allowed);
  EXPECT_TRUE(out.answer.judgements[0].never);
}

TEST_F(RedisTest, IdempotencyKeysClaimKeepReplayRelease) {
  using shared_idempotency::Claim;
  const std::string h1(64, 'a');
  const std::string h2(64, 'b');
  EXPECT_EQ(claim("http|app|email|k1", h1, "replica1-1").verdict, Claim::Fresh);
  EXPECT_EQ(claim("http|app|email|k1", h1, "replica2-1").verdict, Claim::InFlight);
  EXPECT_EQ(claim("http|app|email|k1", h2, "replica2-2").verdict, Claim::Mismatch);
  EXPECT_FALSE(complete("http|app|email|k1", "replica2-1", shared_idempotency::Kept{200, "x"}));
  EXPECT_TRUE(complete("http|app|email|k1", "replica1-1",
                       shared_idempotency::Kept{200, R"({"count":1,"id":"m1"})"}));
  auto replay = claim("http|app|email|k1", h1, "replica2-3");
  EXPECT_EQ(replay.verdict, Claim::Replay);
  EXPECT_EQ(replay.status, 200);
  EXPECT_EQ(replay.body, R"({"count":1,"id":"m1"})");
  // Released (a 429 or 5xx is not kept): the next request with the key is fresh again.
  EXPECT_EQ(claim("http|app|email|k2", h1, "replica1-2").verdict, Claim::Fresh);
  EXPECT_TRUE(complete("http|app|email|k2", "replica1-2", std::nullopt));
  EXPECT_EQ(claim("http|app|email|k2", h1, "replica2-4").verdict, Claim::Fresh);
}

TEST_F(RedisTest, StoppedServerFailsCallsWithoutBlocking) {
  kill(pid_, SIGTERM);
  waitpid(pid_, nullptr, 0);
  pid_ = 0;
  ASSERT_TRUE(loop_.run_until([&] { return !shared_->ready(); }, 10'000));
  SharedState::Outcome out = judge({{false, "r", 3, 1000}}, 1);
  EXPECT_FALSE(out.ok);
}

}  // namespace
}  // namespace mailcar
