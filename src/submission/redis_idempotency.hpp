// Idempotency keys in the shared state (SPEC §10.3, §11): an IdempotencyStore whose keys live
// in Redis (SharedState::idempotency_claim / idempotency_complete), so that a replay on any
// replica returns the first response and nothing is sent twice across replicas.
//
// A claim in Redis is owned by a token, "<replica id>:<claim number>": the replica id is random
// per process, so two replicas (or one restarted) never share a token. A key in flight expires
// in Redis after `inflight_ttl_ms` (longer than any delivery may take), so a replica that dies
// holding a key never blocks it for ever; a kept answer expires after the idempotency TTL.
//
// When Redis cannot answer a claim, shared_state.on_error decides for that request: `local`
// claims the key in the local in-memory store instead (during an outage a key holds per
// replica only), `refuse` gives Unavailable (HTTP 503, SMTP 451). When Redis cannot answer a
// completion the answer is not kept: the key stays in flight in Redis until its TTL.
// Redis has no bound of its own here (maxmemory is the operator's): Full never comes from it.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>

#include "mailcar/config.hpp"
#include "mailcar/idempotency.hpp"
#include "mailcar/shared_state.hpp"

namespace mailcar {

class RedisIdempotencyStore final : public IdempotencyStore,
                                    public std::enable_shared_from_this<RedisIdempotencyStore> {
 public:
  // `local` is the fallback under on_error local (and the spool mode's journal store).
  RedisIdempotencyStore(std::shared_ptr<SharedState> shared,
                        std::shared_ptr<MemoryIdempotencyStore> local, uint64_t ttl_ms,
                        uint64_t inflight_ttl_ms);

  void begin(const std::string& scope, const crypto::Sha256Digest& request_hash, uint64_t now_ms,
             IdempotencyBegun done) override;
  void complete(const std::string& scope, uint64_t claim, std::optional<IdempotentResponse> keep,
                uint64_t now_ms, IdempotencyStored stored) override;

  // New TTLs on reload (the local store's limits are set by its owner).
  void set_ttls(uint64_t ttl_ms, uint64_t inflight_ttl_ms);

  // Claims held now (Redis and local fallback ones).
  size_t claims() const { return claims_.size(); }

 private:
  struct Held {
    bool local = false;        // claimed in the local store (Redis was unusable)
    uint64_t local_claim = 0;  // its claim number there
  };

  std::string token(uint64_t claim) const;
  void fall_back(const std::string& scope, const crypto::Sha256Digest& request_hash,
                 uint64_t now_ms, IdempotencyBegun done);

  std::shared_ptr<SharedState> shared_;
  std::shared_ptr<MemoryIdempotencyStore> local_;
  uint64_t ttl_ms_;
  uint64_t inflight_ttl_ms_;
  std::string replica_id_;
  uint64_t next_claim_ = 1;
  std::unordered_map<uint64_t, Held> claims_;
};

// How long a key may stay in flight in Redis: every delivery along the longest fallback chain
// (at most one try per service) with its timeout, plus a minute for the rest of the request.
uint64_t idempotency_inflight_ttl_ms(const Config& config);

}  // namespace mailcar
