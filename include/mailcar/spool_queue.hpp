// Spool mode's delivery side (SPEC §7.1): the queue of spooled messages, what feeds it and
// what drains it. Owned by the daemon for the life of the process (a reload keeps it; each
// delivery uses the runtime current when it starts). Loop-thread only.
//
//   enqueue()  -> SpoolStore::put (group commit, fsync) -> acknowledged -> Scheduler::add
//   timer      -> Scheduler::due -> SpoolStore::read_data -> Transport::deliver
//              -> Scheduler::on_result -> update_state | remove | failed (+ DSN)
//
// Delivery status notifications for recipients that failed for good are spooled themselves
// (from <>, so they are paced by the quota, retried, and never bounced).
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
#include "mailcar/result.hpp"
#include "mailcar/runtime.hpp"
#include "mailcar/spool.hpp"

namespace mailcar {

struct Submission;

// One message as the queue API shows it. The queue keeps only a summary of each message in
// memory (100,000 held messages must not cost their envelopes): from list() and find(),
// `record` has id, service, role, ingress, queued_at_ms and data_size, and no recipients,
// envelope_from, identity, remote or envid; read() gives all of it, read back from disk.
struct QueuedMessage {
  SpoolRecord record;
  size_t recipient_count = 0;
  SpoolState state;
  MessageState shown = MessageState::Queued;  // held while its service waits for the quota
};

struct QueueQuery {
  std::optional<MessageState> state;
  std::string service;  // empty: all
  std::string role;     // empty: every role's (queue: all)
  std::string after;    // cursor: the id after which to continue (arrival order)
  size_t limit = 100;
};

// Failed: the files could not be removed (I/O error, logged); the message left the queue
// in memory, and what is left on disk comes back at the next start.
enum class QueueOpResult { Done, NotFound, NotDeferred, Failed };

class SpoolQueue {
 public:
  // Opens (creates) the spool folder. Blocking: start-up only.
  static Result<std::shared_ptr<SpoolQueue>> open(uv_loop_t* loop, const Config& config,
                                                  RuntimeSource runtime);
  ~SpoolQueue();
  SpoolQueue(const SpoolQueue&) = delete;
  SpoolQueue& operator=(const SpoolQueue&) = delete;

  // Recovers what the spool holds (thread pool) and starts delivering. `done` on the loop;
  // until then enqueue() answers NotReady.
  void start(std::function<void(SpoolStatus)> done);
  // Spools one message that the policy admitted. `done(status, id)` once it is on stable
  // storage (Ok: acknowledge it as `id`, the message's own id unless that is not a safe file
  // name or already spooled) or refused (Full, Io: 503 / 452 4.3.1; NotReady).
  using EnqueueDone = std::function<void(SpoolStatus, const std::string& id)>;
  void enqueue(Submission submission, EnqueueDone done);

  // True while the disk or max_bytes refuses new messages (cleared by the next success).
  bool full() const;

  // Queue API (SPEC §7.1). list() goes in id order from after `query.after`; `next_cursor`
  // gets the last id returned when more match, else is cleared.
  std::vector<QueuedMessage> list(const QueueQuery& query, std::string* next_cursor) const;
  std::optional<QueuedMessage> find(std::string_view id) const;
  // find() with the whole record (recipients' addresses and the rest), read from the spool
  // on the thread pool. nullopt: unknown, or gone or unreadable meanwhile. Not called when
  // the queue is destroyed first.
  void read(std::string_view id, std::function<void(std::optional<QueuedMessage>)> done) const;
  // A deferred message is due now (the quota may still hold it). NotDeferred for any other
  // state (queued, held, sending, failed).
  QueueOpResult retry(std::string_view id);
  // Removes a message (logged by the caller with the role that did it); `done` once the files
  // are gone.
  void remove(std::string_view id, std::function<void(QueueOpResult)> done);

  // SIGTERM: no new delivery starts (with `drain`, deliveries go on until the spool is empty
  // or stop() is called again); `done` once the deliveries under way have ended and the
  // store is idle. Messages left stay in the spool for the next start.
  void shutdown(bool drain, std::function<void()> done);
  // The grace is over: stop handing out, log what is left, finish when the store is idle.
  void stop_now();

  struct Impl;

 private:
  explicit SpoolQueue(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace mailcar
