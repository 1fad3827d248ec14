// Idempotency keys (SPEC §10.3): a request that repeats a key gets the first answer again and
// nothing is sent twice.
//
// The store is asynchronous so that a shared one (Redis, SPEC §11) plugs in behind the same
// interface as the in-memory one: the doors and the submission module talk only to
// IdempotencyStore. A door
//   1. builds the scope (idempotency_scope) and the request's hash (never the request itself),
//   2. calls begin(); on Fresh it owns the key (an IdempotencyClaim) until it completes it,
//   3. calls complete() with the answer to keep, or with nullopt to release the key (429, 5xx,
//      a refused SMTP message: a retry may succeed). A claim dropped without complete()
//      releases the key, so a closed connection never leaves a key in flight for ever.
// Every callback runs on the loop thread.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/crypto.hpp"
#include "mailcar/message.hpp"

namespace mailcar {

// The answer a key replays: HTTP status and JSON body; SMTP 250 and the accepted message id.
struct IdempotentResponse {
  uint16_t status = 0;
  std::string body;
};

enum class IdempotencyVerdict {
  Fresh,        // the key is new (or expired, or released): the caller owns it now (`claim`)
  Replay,       // the first request was answered: `response` is that answer
  InFlight,     // the first request with this key has not been answered yet (HTTP 409)
  Mismatch,     // the key was used for a different request (HTTP 422)
  Full,         // the store is at its bound and holds only keys in flight (HTTP 503, SMTP 451)
  Unavailable,  // a shared store cannot be reached (HTTP 503, SMTP 451)
};

struct IdempotencyOutcome {
  IdempotencyVerdict verdict = IdempotencyVerdict::Unavailable;
  IdempotentResponse response;  // Replay only
  uint64_t claim = 0;           // Fresh only: pass back to complete()
};

using IdempotencyBegun = std::function<void(IdempotencyOutcome)>;
using IdempotencyStored = std::function<void()>;

class IdempotencyStore {
 public:
  virtual ~IdempotencyStore() = default;

  // Looks `scope` up for a request whose hash is `request_hash`, at wall-clock `now_ms`, and
  // claims it when it is free. `done` is called exactly once, possibly synchronously.
  virtual void begin(const std::string& scope, const crypto::Sha256Digest& request_hash,
                     uint64_t now_ms, IdempotencyBegun done) = 0;

  // Ends the claim `claim` on `scope`: `keep` set keeps that answer until now_ms + ttl, unset
  // releases the key. `stored` (may be empty) is called once the answer is as durable as this
  // store makes it (the persistent store: on disk), so a door may answer only then. A claim
  // that no longer matches (the store was cleared meanwhile) is ignored; `stored` still runs.
  virtual void complete(const std::string& scope, uint64_t claim,
                        std::optional<IdempotentResponse> keep, uint64_t now_ms,
                        IdempotencyStored stored) = 0;
};

// The key of one client's request: the door, role and service it came through and the key it
// gave. Doors keep separate scopes (their answers differ: JSON vs an SMTP id).
std::string idempotency_scope(Ingress ingress, std::string_view role, std::string_view service,
                              std::string_view key);

// 1-255 visible ASCII characters (0x21-0x7E).
bool valid_idempotency_key(std::string_view key);

// Owns a Fresh key until complete(); released when dropped without it. Move-only.
class IdempotencyClaim {
 public:
  IdempotencyClaim() = default;
  IdempotencyClaim(std::shared_ptr<IdempotencyStore> store, std::string scope, uint64_t claim);
  IdempotencyClaim(IdempotencyClaim&& other) noexcept;
  IdempotencyClaim& operator=(IdempotencyClaim&& other) noexcept;
  IdempotencyClaim(const IdempotencyClaim&) = delete;
  IdempotencyClaim& operator=(const IdempotencyClaim&) = delete;
  ~IdempotencyClaim();

  explicit operator bool() const { return held_ != nullptr; }
  // Keeps `keep` (or releases, when unset) at `now_ms`; `stored` as in the store's complete().
  // An empty claim (no key, or no store) just calls `stored`.
  void complete(std::optional<IdempotentResponse> keep, uint64_t now_ms, IdempotencyStored stored);

 private:
  struct Held {
    std::shared_ptr<IdempotencyStore> store;
    std::string scope;
    uint64_t claim = 0;
  };
  // Null for the empty claim every request without a key carries: moving it through the
  // doors is one pointer.
  std::unique_ptr<Held> held_;
};

struct IdempotencyLimits {
  uint64_t ttl_ms = 24ull * 3600 * 1000;
  uint64_t max_keys = 100000;
};

// The in-memory store: bounded by `max_keys`, entries expire `ttl_ms` after their answer.
// At the bound a new key first drops expired entries, then the completed entry that expires
// soonest (the oldest answer); when every entry is in flight the new key gets Full (the door
// refuses it as temporarily unavailable) rather than forgetting a key silently. Keys in
// flight never expire: every delivery has a timeout, so they always complete or are dropped.
// `persist`, when set, is told every kept answer (the spool mode's journal).
struct IdempotencyRecord {
  std::string scope;
  crypto::Sha256Digest hash{};
  uint64_t expires_ms = 0;
  IdempotentResponse response;
};
using IdempotencyPersist = std::function<void(const IdempotencyRecord&, IdempotencyStored)>;

class MemoryIdempotencyStore final : public IdempotencyStore {
 public:
  explicit MemoryIdempotencyStore(IdempotencyLimits limits, IdempotencyPersist persist = {});
  ~MemoryIdempotencyStore() override;

  void begin(const std::string& scope, const crypto::Sha256Digest& request_hash, uint64_t now_ms,
             IdempotencyBegun done) override;
  void complete(const std::string& scope, uint64_t claim, std::optional<IdempotentResponse> keep,
                uint64_t now_ms, IdempotencyStored stored) override;

  // The journal's hook (spool mode), set once it is open.
  void set_persist(IdempotencyPersist persist);
  // A kept answer read back at start (journal); an expired one is ignored. Newer wins.
  void restore(IdempotencyRecord record, uint64_t now_ms);
  // New limits on reload; entries over a smaller bound are dropped, oldest answers first.
  void set_limits(IdempotencyLimits limits, uint64_t now_ms);
  // Every kept, unexpired answer (the journal's compaction).
  void for_each_kept(uint64_t now_ms, const std::function<void(const IdempotencyRecord&)>& f) const;

  size_t size() const;
  size_t in_flight() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// ---- The spool-mode journal -----------------------------------------------------------------
// An append-only file of kept answers, one record each:
//   "K <expires_ms> <hash hex64> <status> <scope bytes> <body bytes>\n<scope><body>\n"
// A record cut short (a crash mid-append) ends the file; anything malformed stops the parse
// there: what came before it is kept.

std::string format_idempotency_record(const IdempotencyRecord& record);

struct IdempotencyJournal {
  std::vector<IdempotencyRecord> records;
  size_t good_bytes = 0;   // the prefix that parsed; the rest is dropped at compaction
  bool truncated = false;  // a record was cut short or malformed
};
IdempotencyJournal parse_idempotency_journal(std::string_view bytes);

}  // namespace mailcar
