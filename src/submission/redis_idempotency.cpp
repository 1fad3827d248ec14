#include "submission/redis_idempotency.hpp"

#include <algorithm>
#include <utility>

#include "mailcar/log.hpp"
#include "mailcar/text.hpp"

namespace mailcar {
namespace {

constexpr uint64_t kInflightSlackMs = 60'000;

IdempotencyVerdict verdict_of(shared_idempotency::Claim c) {
  switch (c) {
    case shared_idempotency::Claim::Fresh:
      return IdempotencyVerdict::Fresh;
    case shared_idempotency::Claim::Replay:
      return IdempotencyVerdict::Replay;
    case shared_idempotency::Claim::InFlight:
      return IdempotencyVerdict::InFlight;
    case shared_idempotency::Claim::Mismatch:
      return IdempotencyVerdict::Mismatch;
  }
  return IdempotencyVerdict::Unavailable;
}

}  // namespace

RedisIdempotencyStore::RedisIdempotencyStore(std::shared_ptr<SharedState> shared,
                                             std::shared_ptr<MemoryIdempotencyStore> local,
                                             uint64_t ttl_ms, uint64_t inflight_ttl_ms)
    : shared_(std::move(shared)),
      local_(std::move(local)),
      ttl_ms_(ttl_ms),
      inflight_ttl_ms_(inflight_ttl_ms),
      replica_id_(text::random_token(16)) {}

void RedisIdempotencyStore::set_ttls(uint64_t ttl_ms, uint64_t inflight_ttl_ms) {
  ttl_ms_ = ttl_ms;
  inflight_ttl_ms_ = inflight_ttl_ms;
}

std::string RedisIdempotencyStore::token(uint64_t claim) const {
  return replica_id_ + ":" + std::to_string(claim);
}

void RedisIdempotencyStore::begin(const std::string& scope,
                                  const crypto::Sha256Digest& request_hash, uint64_t now_ms,
                                  IdempotencyBegun done) {
  const uint64_t claim = next_claim_++;
  auto self = shared_from_this();
  auto answered = [self, scope, request_hash, now_ms, claim,
                   done = std::move(done)](Result<shared_idempotency::ClaimAnswer> r) mutable {
    if (!r.ok()) {
      // Redis unusable: on_error decides for this request (the outage is logged by SharedState).
      if (self->shared_->config().on_error == SharedStateOnError::Local && self->local_) {
        return self->fall_back(scope, request_hash, now_ms, std::move(done));
      }
      return done(IdempotencyOutcome{});  // Unavailable
    }
    IdempotencyOutcome out;
    out.verdict = verdict_of(r->verdict);
    if (out.verdict == IdempotencyVerdict::Fresh) {
      self->claims_[claim] = Held{};
      out.claim = claim;
    } else if (out.verdict == IdempotencyVerdict::Replay) {
      out.response = {r->status, std::move(r->body)};
    }
    done(std::move(out));
  };
  shared_->idempotency_claim(scope, crypto::hex(request_hash), token(claim), inflight_ttl_ms_,
                             std::move(answered));
}

void RedisIdempotencyStore::fall_back(const std::string& scope,
                                      const crypto::Sha256Digest& request_hash, uint64_t now_ms,
                                      IdempotencyBegun done) {
  auto self = shared_from_this();
  local_->begin(scope, request_hash, now_ms,
                [self, done = std::move(done)](IdempotencyOutcome out) {
                  if (out.verdict == IdempotencyVerdict::Fresh) {
                    const uint64_t claim = self->next_claim_++;
                    self->claims_[claim] = Held{true, out.claim};
                    out.claim = claim;
                  }
                  done(std::move(out));
                });
}

void RedisIdempotencyStore::complete(const std::string& scope, uint64_t claim,
                                     std::optional<IdempotentResponse> keep, uint64_t now_ms,
                                     IdempotencyStored stored) {
  auto it = claims_.find(claim);
  if (it == claims_.end()) {
    if (stored) stored();
    return;
  }
  const Held held = it->second;
  claims_.erase(it);
  if (held.local) {
    return local_->complete(scope, held.local_claim, std::move(keep), now_ms, std::move(stored));
  }
  std::optional<shared_idempotency::Kept> kept;
  if (keep) kept = shared_idempotency::Kept{keep->status, std::move(keep->body)};
  shared_->idempotency_complete(
      scope, token(claim), kept, ttl_ms_, [stored = std::move(stored)](Result<bool> r) {
        // Not kept: the key stays in flight in Redis until its TTL.
        if (!r.ok()) {
          log::warn("idempotency_not_kept", {{"error", r.error().message}});
        }
        if (stored) stored();
      });
}

uint64_t idempotency_inflight_ttl_ms(const Config& config) {
  const uint64_t tries = std::max<size_t>(1, config.services.size());
  return tries * config.limits.delivery_timeout_ms + kInflightSlackMs;
}

}  // namespace mailcar
