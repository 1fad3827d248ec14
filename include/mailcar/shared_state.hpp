// Shared state across replicas (issue 11, SPEC §11): role rate limits and service quotas
// counted in one Redis (or Valkey, KeyDB, a managed Redis) by every replica.
//
// One Lua script runs the local limiter's algorithm (GCRA, rate_limiter.hpp) for every window
// of a message at once on the Redis server's clock (TIME): all windows consume or none does.
// It is loaded once (SCRIPT LOAD) and called with EVALSHA, one round trip per message;
// messages waiting together go out pipelined on the one connection. After NOSCRIPT (a Redis
// restart or failover) the same call is made once with EVAL, which loads the script again.
//
// All I/O runs on the loop (hiredis with its libuv adapter); host names are resolved with
// uv_getaddrinfo. Every command has a deadline (shared_state.timeout): a command that misses
// it drops the connection, failing everything in flight; reconnects back off from 100 ms to
// 5 s. The caller decides what a failure means (shared_state.on_error).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <uv.h>

#include "mailcar/config.hpp"
#include "mailcar/policy.hpp"
#include "mailcar/rate_limiter.hpp"
#include "mailcar/result.hpp"

struct redisReply;
struct redisReader;

namespace mailcar {

// hiredis 0.14 allocates an array reply's element table from the count the server announces
// (`*1555555555` is a 12 GB calloc). This makes `reader` refuse arrays of more than
// kMaxRedisReplyElements (a protocol error on that connection) before anything is allocated.
// mailcar's replies have a few elements; every reader mailcar creates gets this.
inline constexpr int kMaxRedisReplyElements = 4096;
void bound_reply_arrays(redisReader* reader);

// ---- The script: its text, arguments and reply (pure) -------------------------------------

namespace shared_script {

// The Lua source (SCRIPT LOAD / EVAL).
std::string_view source();

// Key of one window: PREFIX{limits}:role:NAME:N:T or PREFIX{limits}:service:NAME:N:T (T in
// ms). One hash tag for every limit: the keys of one message always sit on one cluster slot.
std::string window_key(std::string_view prefix, const PolicyWindow& window);

// The arguments after the script (sha or source): numkeys, the keys, then cost, clamp
// ("1": each window takes min(cost, N), spool pacing; "0": cost as is), then N and T per
// window.
std::vector<std::string> arguments(std::string_view prefix,
                                   const std::vector<PolicyWindow>& windows, uint64_t cost,
                                   bool clamp);

struct Answer {
  bool allowed = false;                            // every window consumed (or none when false)
  uint64_t now_ms = 0;                             // the server's clock
  std::vector<RateLimiter::Judgement> judgements;  // one per window, in call order
};

// Reads the script's reply: an array {allowed, now_ms, then per window: allowed, never,
// retry_after_ms, remaining, reset_ms}, all non-negative integers. Anything else (an error
// reply, a wrong shape) is an error naming what was wrong.
Result<Answer> parse_reply(const redisReply& reply, size_t windows);

// True for a NOSCRIPT error reply (the server does not know the sha).
bool is_noscript(const redisReply& reply);

}  // namespace shared_script

// ---- Idempotency keys in the shared state (SPEC §10.3, §11; pure) ----------------------------
// One hash per key, PREFIX idem:{sha256(scope)} (its own cluster slot: every call touches one
// key), fields state (inflight | done), token (the claim's owner), hash (the request's hash),
// status and body (the kept answer). The key expires: in flight after `inflight_ttl_ms` (a
// replica that died never blocks a key for ever), kept answers after the idempotency TTL.
namespace shared_idempotency {

std::string_view claim_source();
std::string_view complete_source();

std::string key(std::string_view prefix, std::string_view scope);

// Arguments after the script: 1, the key, the request hash, the claim token, the TTL in flight.
std::vector<std::string> claim_arguments(std::string_view prefix, std::string_view scope,
                                         std::string_view request_hash_hex, std::string_view token,
                                         uint64_t inflight_ttl_ms);

enum class Claim {
  Fresh,     // the key was free: claimed for `token`
  Replay,    // answered before: status and body
  InFlight,  // claimed by someone else, not answered yet (HTTP 409)
  Mismatch,  // used for a different request (HTTP 422)
};
struct ClaimAnswer {
  Claim verdict = Claim::Fresh;
  uint16_t status = 0;
  std::string body;
};
// Reply: {"fresh"} | {"inflight"} | {"mismatch"} | {"replay", status, body}.
Result<ClaimAnswer> parse_claim_reply(const redisReply& reply);

struct Kept {  // the answer to keep
  uint16_t status = 0;
  std::string body;
};
// Arguments after the script: 1, the key, the token, "keep" status body ttl | "release".
std::vector<std::string> complete_arguments(std::string_view prefix, std::string_view scope,
                                            std::string_view token, const std::optional<Kept>& keep,
                                            uint64_t ttl_ms);
// Reply: 1 when the claim was the token's (kept or released), 0 when it was not (expired,
// claimed by another).
Result<bool> parse_complete_reply(const redisReply& reply);

}  // namespace shared_idempotency

// ---- The connection ------------------------------------------------------------------------

class SharedState {
 public:
  struct Outcome {
    bool ok = false;
    std::string error;             // when !ok: what went wrong (no secret)
    shared_script::Answer answer;  // when ok
  };
  using Done = std::function<void(Outcome)>;

  // Nothing happens until start(). The object must outlive the loop's use of it; the daemon
  // keeps one for the whole process (a reload does not change shared_state).
  SharedState(uv_loop_t* loop, SharedStateConfig config);
  ~SharedState();
  SharedState(const SharedState&) = delete;
  SharedState& operator=(const SharedState&) = delete;

  void start();
  // Drops the connection and stops reconnecting; commands in flight fail.
  void stop();

  // Runs the script for these windows. `done` runs exactly once on the loop: synchronously
  // when the store is not usable now (not connected yet, reconnecting), else on the reply or
  // the timeout.
  void judge(const std::vector<PolicyWindow>& windows, uint64_t cost, bool clamp, Done done);

  // Spool pacing (SPEC §7.1): may `recipients` of a held message go through `quota` now? The
  // scheduler asks synchronously, so the answer is a grant obtained earlier: the first ask
  // sends the script and answers "not yet, ask again in a few ms"; once Redis allowed it, the
  // next ask for that service takes the grant. Refused: held until Redis says it passes.
  // Redis unusable: `fallback` decides (on_error local: the local quota; refuse: held).
  QuotaVerdict pace(const PolicyWindow& quota, uint64_t recipients,
                    const std::function<QuotaVerdict()>& fallback);

  // Idempotency keys (for an IdempotencyStore backed by Redis): claim `scope` for `token`
  // when free, else say why not; then keep the answer or release the key. One round trip
  // each; `done` runs exactly once (an Error when Redis is unusable: on_error decides).
  using ClaimDone = std::function<void(Result<shared_idempotency::ClaimAnswer>)>;
  using CompleteDone = std::function<void(Result<bool>)>;
  void idempotency_claim(std::string_view scope, std::string_view request_hash_hex,
                         std::string_view token, uint64_t inflight_ttl_ms, ClaimDone done);
  void idempotency_complete(std::string_view scope, std::string_view token,
                            const std::optional<shared_idempotency::Kept>& keep, uint64_t ttl_ms,
                            CompleteDone done);

  // Connected and the scripts loaded.
  bool ready() const;
  const SharedStateConfig& config() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace mailcar
