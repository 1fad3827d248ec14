// Spool mode's storage and scheduling layer (SPEC §7, §7.1): the on-disk format of a spooled
// message, the SpoolStore that writes it with group commit on libuv's thread pool, and the
// pure Scheduler that decides what to send when (retries, quota pacing, max_age).
// It knows nothing of the relay, HTTP or SMTP server; src/submission/ wires it up.
//
// ---- On disk -----------------------------------------------------------------------------
// <spool>/<id>.msg    written once, never changed:
//     "MCSPOOL1 <header_len> <data_len> <crc32c, 8 lower-case hex>\n"   (the seal line)
//     <header_len bytes: "key value\n" lines, see encode_msg_header()>
//     <data_len bytes: the message as sent upstream>
//   The CRC32C covers header and data; the file size must equal seal + header + data.
// <spool>/<id>.state  the mutable part, replaced whole (temp + fsync + rename + dir fsync):
//     "MCSTATE1 <body_len> <crc32c>\n" <body_len bytes of "key value\n" lines>
//   Missing means "fresh": queued, no attempt yet (a put writes no .state: one file, one
//   fsync per message).
// <spool>/*.tmp       files being written; never valid, removed by recover().
// <spool>/corrupt/    quarantine: .msg files that fail their check (and their .state).
// Values are percent-escaped ('%', space, controls, DEL -> %XX; the empty string -> "-",
// a lone "-" -> %2D) so every value is one token without CR/LF.
//
// ---- Crash at each point, and what recover() makes of it ---------------------------------
//   put: tmp written, not fsynced / fsynced, not renamed   -> <id>.msg.tmp: removed; never
//        acknowledged (the callback fires only after the directory fsync), nothing lost.
//   put: renamed, directory not fsynced                    -> after a power cut the entry may
//        be gone (never acknowledged) or present and complete (fsynced before the rename):
//        delivered, which is fine (the client saw no 250 and may send again: a duplicate at
//        worst, as SPEC allows for an unacknowledged message).
//   .msg whose seal, size, header or CRC does not check    -> moved to corrupt/ with its
//        .state, log line "spool_corrupt" (id, reason); never delivered.
//   update_state: tmp not renamed                          -> old .state (or none) is used;
//        a delivery under way at the crash may go out again (at least once, SPEC §7.1).
//   .state missing, unreadable, bad CRC or wrong recipient count -> rebuilt as fresh queued
//        from the .msg, log line "spool_state_rebuilt" when it existed; may re-deliver to
//        recipients that were already sent (at least once).
//   .state says "sending"                                  -> queued again (at least once).
//   remove: .msg unlinked, .state not                      -> orphan .state: removed.
//   Anything else in the folder is left alone.
// A corrupt .msg found by read_data() is quarantined the same way and reported Corrupt.
#pragma once

#include <uv.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/dsn.hpp"
#include "mailcar/message.hpp"
#include "mailcar/result.hpp"

namespace mailcar {

// ---- Records -----------------------------------------------------------------------------

struct SpoolRecipient {
  std::string address;  // RCPT TO
  uint8_t notify = 0;   // dsn_notify bits; 0: NOTIFY not given
  std::string orcpt;    // ORCPT "type;address" (xtext decoded); empty: not given
  bool operator==(const SpoolRecipient&) const = default;
};

// The immutable part: the envelope and who submitted it. Not kept in memory for waiting
// messages (SpoolQueue keeps a summary): read_data() loads it with the data when it is sent.
struct SpoolRecord {
  std::string id;  // file name stem; must satisfy is_safe_spool_id()
  std::string service;
  std::string role;
  std::string identity;
  Ingress ingress = Ingress::Http;
  std::string remote;
  std::string envelope_from;               // may be empty (null reverse-path)
  std::vector<SpoolRecipient> recipients;  // at least one
  bool smtputf8 = false;
  bool eight_bit = false;
  DsnRet ret = DsnRet::Unspecified;
  std::string envid;          // ENVID, empty when not given
  uint64_t queued_at_ms = 0;  // wall clock, ms since the epoch
  uint64_t data_size = 0;     // filled in by the encoder and reader
  bool operator==(const SpoolRecord&) const = default;
};

enum class MessageState : uint8_t { Queued, Held, Sending, Deferred, Failed };
enum class RecipientState : uint8_t { Pending, Sent, Failed };
const char* message_state_name(MessageState s);      // "queued", "held", ...
const char* recipient_state_name(RecipientState s);  // "pending", "sent", "failed"

struct RecipientStatus {
  RecipientState state = RecipientState::Pending;
  int smtp_code = 0;       // last reply code for this recipient, 0: none yet
  std::string smtp_reply;  // last reply text
  bool operator==(const RecipientStatus&) const = default;
};

// The mutable part, in <id>.state.
struct SpoolState {
  MessageState state = MessageState::Queued;
  uint32_t attempts = 0;
  uint64_t next_attempt_ms = 0;  // wall clock; 0: as soon as possible
  std::string last_reply;
  uint64_t failed_at_ms = 0;  // when it failed for good (keep_failed counts from here)
  std::vector<RecipientStatus> recipients;  // parallel to SpoolRecord::recipients
  bool operator==(const SpoolState&) const = default;
};

SpoolState fresh_spool_state(const SpoolRecord& record);

// ---- Format (pure) ------------------------------------------------------------------------

// [A-Za-z0-9.@_-], 1..200 characters, not starting with '.'.
bool is_safe_spool_id(std::string_view id);
// Any string made safe: other bytes (and a leading '.') become '_', cut to 200; "_" if
// empty. Not injective: put() refuses an id already in the spool (SpoolErrc::Exists).
std::string make_safe_spool_id(std::string_view id);

// CRC32C (Castagnoli), the running form: crc32c_update(0, all) == crc32c_update(
// crc32c_update(0, a), b) for all == a + b.
uint32_t crc32c_update(uint32_t crc, std::string_view bytes);

// The header block of a .msg (no seal), record.data_size ignored.
std::string encode_msg_header(const SpoolRecord& record);
// The seal line for a header and data of these sizes with this CRC.
std::string encode_msg_seal(uint64_t header_len, uint64_t data_len, uint32_t crc);
// A whole .msg file (tests, tools; the store streams the same bytes without the copy).
std::string encode_msg_file(const SpoolRecord& record, std::string_view data);

// The parsed seal line of a .msg.
struct MsgSeal {
  size_t seal_len = 0;  // bytes of the seal line including '\n'
  uint64_t header_len = 0;
  uint64_t data_len = 0;
  uint32_t crc = 0;
};
inline constexpr size_t kMaxSealLen = 64;
inline constexpr uint64_t kMaxHeaderLen = 64ull << 20;  // 100,000 recipients fit
// Parses the seal from the first bytes of a file (at least min(kMaxSealLen, size) of them).
Result<MsgSeal> parse_msg_seal(std::string_view head);
// Parses a header block; sets data_size from the seal given.
Result<SpoolRecord> parse_msg_header(std::string_view header, const MsgSeal& seal);

struct DecodedMsg {
  SpoolRecord record;
  std::string_view data;  // points into the input
};
// The whole-file reader (read_data, the fuzz target): seal, exact size, CRC, header.
Result<DecodedMsg> decode_msg_file(std::string_view file);

std::string encode_state_file(const SpoolState& state);
// Checks seal, size and CRC; the recipient count must be `recipients`.
Result<SpoolState> decode_state_file(std::string_view file, size_t recipients);

// ---- SpoolStore (I/O on libuv's thread pool) ----------------------------------------------

enum class SpoolErrc : uint8_t {
  Ok,
  Full,      // max_bytes reached, ENOSPC, EDQUOT, EFBIG: answer 503 / 452 4.3.1
  Io,        // any other I/O error (EIO, EACCES, ...): also 503 / 452 4.3.1
  Exists,    // put: an id already in the spool
  NotFound,  // no such message
  Corrupt,   // read_data: the .msg failed its check (now quarantined)
  NotReady,  // called before recover() finished, or with a bad id
};
const char* spool_errc_name(SpoolErrc e);

struct SpoolStatus {
  SpoolErrc code = SpoolErrc::Ok;
  std::string detail;  // for logs: path and strerror; never message data
  bool ok() const { return code == SpoolErrc::Ok; }
};

struct SpoolEntry {
  SpoolRecord record;
  SpoolState state;
  uint64_t bytes = 0;  // .msg + .state on disk
};

// A message read back for delivery: its envelope and its data.
struct SpoolMessage {
  SpoolRecord record;
  std::string data;
};

struct SpoolStats {
  uint64_t bytes = 0;        // .msg + .state bytes in the spool (not corrupt/)
  uint64_t messages = 0;     // .msg files in the spool
  uint64_t file_fsyncs = 0;  // fdatasync of .msg / .state files
  uint64_t dir_fsyncs = 0;   // fsync of the spool directory (one per commit batch)
  uint64_t commits = 0;      // group-commit batches run
  uint64_t puts = 0;         // messages committed by put()
  uint64_t quarantined = 0;  // .msg files moved to corrupt/
};

class SpoolStore {
 public:
  using Done = std::function<void(SpoolStatus)>;
  using DataDone = std::function<void(SpoolStatus, SpoolMessage)>;
  using RecoverDone = std::function<void(Result<std::vector<SpoolEntry>>)>;
  using RecoverBatch = std::function<void(std::vector<SpoolEntry>)>;

  // Creates `path` (and its parents) and `path`/corrupt (mode 0700) if missing, checks
  // that both are writable folders. Blocking (start-up only).
  // max_bytes: the budget for .msg + .state bytes; nullopt: only the disk limits.
  static Result<std::unique_ptr<SpoolStore>> open(uv_loop_t* loop, std::string path,
                                                  std::optional<uint64_t> max_bytes);
  // Callbacks of work still queued or running are dropped, never called. The loop must keep
  // running until that work ends (uv_loop_close() fails before); idle() says when.
  ~SpoolStore();
  SpoolStore(const SpoolStore&) = delete;
  SpoolStore& operator=(const SpoolStore&) = delete;

  // Scans the folder on the thread pool: removes *.tmp and orphan .state files, checks every
  // .msg in full (seal, size, CRC, header) streaming 64 KiB at a time, quarantines the bad
  // ones, reads the .state of the good ones (fresh when missing or bad), fsyncs the folder
  // if it changed anything. Entries come sorted by (queued_at, id); no data is loaded.
  // Call once; every other operation answers NotReady until `done` ran.
  void recover(RecoverDone done);
  // The same in batches, so that 100,000 messages never have their records in memory at
  // once: the first pass checks every file and keeps only id, arrival and size; the second
  // reads header and .state again, `batch` messages at a time, and gives each batch to
  // `each` (in order, on the loop). `done` after the last batch, or with the first pass's
  // error (Io; `each` not called). A file that vanished between the passes is left out and
  // logged ("spool_unreadable").
  void recover(size_t batch, RecoverBatch each, Done done);

  // Writes <id>.msg (record.data_size is set from data): the bytes and then the directory
  // entry are on stable storage when `done` gets Ok. Group commit: puts, updates and removes
  // that arrive while a batch is being committed form the next batch, which costs one
  // fdatasync per file plus one directory fsync. On any failure nothing of this put is
  // left in the spool. Full: max_bytes would be exceeded (checked before any I/O) or the
  // disk said so; full() then stays true until a put succeeds.
  void put(SpoolRecord record, std::string data, Done done);
  // Replaces <id>.state (same group commit). NotFound when <id>.msg is not there.
  void update_state(std::string id, SpoolState state, Done done);
  // Unlinks <id>.msg, then <id>.state (same group commit). NotFound when neither existed.
  void remove(std::string id, Done done);
  // Reads and checks <id>.msg on the thread pool and gives back its record and data, so a
  // caller need not keep records of waiting messages in memory. Corrupt: the file was
  // quarantined (logged) and must be dropped from the queue.
  void read_data(std::string id, DataDone done);
  // The record of <id>.msg alone (seal and header; the data is neither read nor checked),
  // for the queue API. NotFound when it is not there; a bad header is Io (read_data() or the
  // next start finds and quarantines such a file).
  void read_record(std::string id, DataDone done);

  bool full() const;
  bool idle() const;  // no work queued or running
  SpoolStats stats() const;
  const std::string& path() const;

  struct Impl;

 private:
  explicit SpoolStore(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

// ---- Scheduler (pure: time is passed in, no I/O) ------------------------------------------

struct QuotaDecision {
  bool allowed = true;
  uint64_t retry_after_ms = 0;  // when not allowed: ask again after this long (>= 1 used)
};
// Asked once per message just before it is handed out by due(); `allowed` means the
// recipients were counted (the hook consumes the quota).
using QuotaHook =
    std::function<QuotaDecision(std::string_view service, size_t recipients, uint64_t now_ms)>;

struct SchedulerOptions {
  std::vector<uint64_t> retry_ms = {60'000, 300'000, 1'800'000, 7'200'000};  // last repeats
  uint64_t max_age_ms = 3ull * 24 * 3600 * 1000;
  double jitter = 0.1;  // each delay is multiplied by 1 + jitter * (2r - 1)
  // Messages in flight per service (the service's `connections`); unknown services: 1.
  std::map<std::string, unsigned, std::less<>> connections;
  QuotaHook quota;                 // empty: no quota
  std::function<double()> random;  // uniform in [0, 1); empty: a seeded std::mt19937_64
};

// One recipient's result from one delivery attempt. index: into SpoolRecord::recipients.
// smtp_code 2xx: sent; 5xx: failed for good; anything else (4xx, 0 = no reply, connection
// or TLS or AUTH trouble): temporary.
struct RecipientAttempt {
  size_t index = 0;
  int smtp_code = 0;
  std::string smtp_reply;
};

// Attempts for every pending recipient with the same reply (a whole-message failure).
std::vector<RecipientAttempt> attempts_for_pending(const SpoolState& state, int smtp_code,
                                                   std::string_view smtp_reply);

class Scheduler {
 public:
  explicit Scheduler(SchedulerOptions options);
  ~Scheduler();
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;

  // Takes in a message (just put, or recovered: add those in recover()'s order). Arrival
  // order per service is the order of add() calls. A state "sending" becomes "queued"; a
  // message with no pending recipient or state "failed" is not taken (returns false), nor
  // is an id already known.
  bool add(const SpoolRecord& record, SpoolState state);

  // A message failed for good by max_age: its pending recipients are now failed (code 0,
  // status 4.4.7 in a DSN); it is no longer scheduled. Persist `state`, send DSNs for
  // `failed_now`.
  struct Expired {
    std::string id;
    SpoolState state;
    std::vector<size_t> failed_now;
  };
  struct Due {
    std::vector<std::string> send;  // now "sending": read, deliver, then on_result()
    std::vector<Expired> expired;
  };
  // Per service in arrival order: messages whose next attempt has come, at most the
  // service's `connections` in flight, each allowed by the quota hook. A message the quota
  // refuses is held, with every later one of its service, until retry_after has passed.
  // max_age is checked at the head of each service's queue (arrival order is age order),
  // so a held message expires even while its service waits for the quota.
  Due due(uint64_t now_ms);
  // The earliest time due() may hand out or expire something; nullopt: nothing waits (the
  // next add() or on_result() changes that). May be <= now_ms: call due() now.
  std::optional<uint64_t> next_wake(uint64_t now_ms) const;

  struct Settled {
    bool known = false;              // false: id not sending (unknown, or forgotten meanwhile)
    bool finished = false;           // no recipient pending: no longer scheduled
    std::vector<size_t> failed_now;  // recipients failed for good by this result
    SpoolState state;                // to persist (remove instead when all sent)
  };
  // The result of delivering a message due() handed out. Retry delay: retry_ms[attempts-1]
  // (the last one repeats) with jitter, never past queued_at + max_age; at or past max_age
  // a temporary failure is final (failed_now, status 4.4.7 in the DSN).
  Settled on_result(std::string_view id, const std::vector<RecipientAttempt>& attempts,
                    uint64_t now_ms);
  // Queue API retry: a deferred message is due now (the quota still applies). False when
  // the id is unknown or being sent.
  bool retry_now(std::string_view id, uint64_t now_ms);
  // Queue API delete: no longer scheduled; a result still coming for it is ignored.
  void forget(std::string_view id);

  // Current state as the queue API shows it (held when its service waits for the quota).
  std::optional<MessageState> state_of(std::string_view id, uint64_t now_ms) const;
  std::optional<SpoolState> state(std::string_view id) const;
  // Messages per state (queued, held, sending, deferred) for mailcar_spool_messages.
  std::map<MessageState, size_t> counts(uint64_t now_ms) const;
  size_t size() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace mailcar
