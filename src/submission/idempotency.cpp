#include "mailcar/idempotency.hpp"

#include <set>
#include <unordered_map>
#include <utility>

namespace mailcar {

std::string idempotency_scope(Ingress ingress, std::string_view role, std::string_view service,
                              std::string_view key) {
  // 0x1F cannot be in a key (visible ASCII only) nor in a role or service name, so the parts
  // never run into each other.
  std::string scope(ingress_name(ingress));
  for (std::string_view part : {role, service, key}) {
    scope.push_back('\x1f');
    scope.append(part);
  }
  return scope;
}

bool valid_idempotency_key(std::string_view key) {
  if (key.empty() || key.size() > 255) return false;
  for (unsigned char c : key) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

// ---- IdempotencyClaim -----------------------------------------------------------------------

IdempotencyClaim::IdempotencyClaim(std::shared_ptr<IdempotencyStore> store, std::string scope,
                                   uint64_t claim) {
  if (store) held_ = std::make_unique<Held>(Held{std::move(store), std::move(scope), claim});
}

IdempotencyClaim::IdempotencyClaim(IdempotencyClaim&& other) noexcept = default;

IdempotencyClaim& IdempotencyClaim::operator=(IdempotencyClaim&& other) noexcept {
  if (this != &other) {
    if (held_) held_->store->complete(held_->scope, held_->claim, std::nullopt, 0, {});
    held_ = std::move(other.held_);
  }
  return *this;
}

IdempotencyClaim::~IdempotencyClaim() {
  if (held_) held_->store->complete(held_->scope, held_->claim, std::nullopt, 0, {});
}

void IdempotencyClaim::complete(std::optional<IdempotentResponse> keep, uint64_t now_ms,
                                IdempotencyStored stored) {
  std::unique_ptr<Held> held = std::move(held_);
  if (!held) {
    if (stored) stored();
    return;
  }
  held->store->complete(held->scope, held->claim, std::move(keep), now_ms, std::move(stored));
}

// ---- MemoryIdempotencyStore -----------------------------------------------------------------

struct MemoryIdempotencyStore::Impl {
  struct Entry {
    crypto::Sha256Digest hash{};
    uint64_t claim = 0;  // nonzero: in flight
    uint64_t expires_ms = 0;
    IdempotentResponse response;
  };
  using Map = std::unordered_map<std::string, Entry>;
  // Completed entries by expiry (soonest first); the string points at the map's own key
  // (stable: unordered_map nodes do not move).
  using Expiry = std::set<std::pair<uint64_t, const std::string*>>;

  IdempotencyLimits limits;
  IdempotencyPersist persist;
  Map entries;
  Expiry expiry;
  size_t in_flight = 0;
  uint64_t next_claim = 1;

  void erase(Map::iterator it) {
    if (it->second.claim != 0) {
      --in_flight;
    } else {
      expiry.erase({it->second.expires_ms, &it->first});
    }
    entries.erase(it);
  }

  // Drops the completed entry that expires first; false when there is none.
  bool drop_soonest() {
    if (expiry.empty()) return false;
    erase(entries.find(*expiry.begin()->second));
    return true;
  }

  void drop_expired(uint64_t now_ms) {
    while (!expiry.empty() && expiry.begin()->first <= now_ms) drop_soonest();
  }

  // Room for one more entry: expired ones go first, then the soonest to expire.
  bool make_room(uint64_t now_ms) {
    drop_expired(now_ms);
    while (entries.size() >= limits.max_keys) {
      if (!drop_soonest()) return false;
    }
    return true;
  }

  void keep(Map::iterator it, uint64_t expires_ms, IdempotentResponse response) {
    Entry& e = it->second;
    if (e.claim != 0) {
      --in_flight;
      e.claim = 0;
    } else {
      expiry.erase({e.expires_ms, &it->first});
    }
    e.expires_ms = expires_ms;
    e.response = std::move(response);
    expiry.insert({e.expires_ms, &it->first});
  }
};

MemoryIdempotencyStore::MemoryIdempotencyStore(IdempotencyLimits limits, IdempotencyPersist persist)
    : impl_(std::make_unique<Impl>()) {
  impl_->limits = limits;
  impl_->persist = std::move(persist);
}

MemoryIdempotencyStore::~MemoryIdempotencyStore() = default;

void MemoryIdempotencyStore::begin(const std::string& scope,
                                   const crypto::Sha256Digest& request_hash, uint64_t now_ms,
                                   IdempotencyBegun done) {
  Impl& s = *impl_;
  s.drop_expired(now_ms);
  IdempotencyOutcome out;
  if (auto it = s.entries.find(scope); it != s.entries.end()) {
    const Impl::Entry& e = it->second;
    if (e.hash != request_hash) {
      out.verdict = IdempotencyVerdict::Mismatch;
    } else if (e.claim != 0) {
      out.verdict = IdempotencyVerdict::InFlight;
    } else {
      out.verdict = IdempotencyVerdict::Replay;
      out.response = e.response;
    }
    return done(std::move(out));
  }
  if (!s.make_room(now_ms)) {
    out.verdict = IdempotencyVerdict::Full;
    return done(std::move(out));
  }
  Impl::Entry e;
  e.hash = request_hash;
  e.claim = s.next_claim++;
  s.entries.emplace(scope, std::move(e));
  ++s.in_flight;
  out.verdict = IdempotencyVerdict::Fresh;
  out.claim = s.next_claim - 1;
  done(std::move(out));
}

void MemoryIdempotencyStore::complete(const std::string& scope, uint64_t claim,
                                      std::optional<IdempotentResponse> keep, uint64_t now_ms,
                                      IdempotencyStored stored) {
  Impl& s = *impl_;
  auto it = s.entries.find(scope);
  if (it == s.entries.end() || it->second.claim != claim || claim == 0) {
    if (stored) stored();
    return;
  }
  if (!keep) {
    s.erase(it);
    if (stored) stored();
    return;
  }
  s.keep(it, now_ms + s.limits.ttl_ms, std::move(*keep));
  if (!s.persist) {
    if (stored) stored();
    return;
  }
  IdempotencyRecord record{it->first, it->second.hash, it->second.expires_ms, it->second.response};
  s.persist(record, std::move(stored));
}

void MemoryIdempotencyStore::set_persist(IdempotencyPersist persist) {
  impl_->persist = std::move(persist);
}

void MemoryIdempotencyStore::restore(IdempotencyRecord record, uint64_t now_ms) {
  Impl& s = *impl_;
  if (record.expires_ms <= now_ms) return;
  if (auto it = s.entries.find(record.scope); it != s.entries.end()) {
    if (it->second.claim == 0 && it->second.expires_ms >= record.expires_ms) return;
    s.erase(it);
  }
  if (!s.make_room(now_ms)) return;
  Impl::Entry e;
  e.hash = record.hash;
  e.expires_ms = record.expires_ms;
  e.response = std::move(record.response);
  auto it = s.entries.emplace(std::move(record.scope), std::move(e)).first;
  s.expiry.insert({it->second.expires_ms, &it->first});
}

void MemoryIdempotencyStore::set_limits(IdempotencyLimits limits, uint64_t now_ms) {
  Impl& s = *impl_;
  s.limits = limits;
  s.drop_expired(now_ms);
  while (s.entries.size() > s.limits.max_keys && s.drop_soonest()) {
  }
}

void MemoryIdempotencyStore::for_each_kept(
    uint64_t now_ms, const std::function<void(const IdempotencyRecord&)>& f) const {
  for (const auto& [expires, scope] : impl_->expiry) {
    if (expires <= now_ms) continue;
    const Impl::Entry& e = impl_->entries.at(*scope);
    f(IdempotencyRecord{*scope, e.hash, e.expires_ms, e.response});
  }
}

size_t MemoryIdempotencyStore::size() const {
  return impl_->entries.size();
}
size_t MemoryIdempotencyStore::in_flight() const {
  return impl_->in_flight;
}

}  // namespace mailcar
