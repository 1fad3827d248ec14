// Spool mode's persistent idempotency keys (SPEC §10.3): the kept answers of a
// MemoryIdempotencyStore appended to <spool.path>/idempotency.journal (format in
// mailcar/idempotency.hpp), so that keys survive a restart.
//
// At start the journal is read back into the store and compacted (rewritten with only the
// unexpired answers, under a new name, then renamed over the old one); this happens before
// the loop serves anything. From then on every kept answer is appended on libuv's thread pool,
// many per write and fdatasync (group commit), and the door answers once its record is on
// disk. When the file has grown well past what is live, it is compacted again, on the pool.
#pragma once

#include <uv.h>

#include <memory>
#include <string>

#include "mailcar/idempotency.hpp"
#include "mailcar/result.hpp"

namespace mailcar {

class IdempotencyJournalFile {
 public:
  // Reads `path` (missing: empty) into `store`, compacts it and opens it for appending. The
  // store's persist hook is set to this journal. Blocking: call before the loop serves. While
  // running, the file is compacted once it is over `compact_at_bytes` and four times its size
  // at the last compaction.
  static constexpr uint64_t kCompactAtBytes = 16ull << 20;
  static Result<std::shared_ptr<IdempotencyJournalFile>> open(
      uv_loop_t* loop, std::string path, const std::shared_ptr<MemoryIdempotencyStore>& store,
      uint64_t now_ms, uint64_t compact_at_bytes = kCompactAtBytes);
  ~IdempotencyJournalFile();

  // Appends `record`; `done` runs on the loop once it is on disk (or failed: logged).
  void append(const IdempotencyRecord& record, IdempotencyStored done);

  struct Impl;

 private:
  explicit IdempotencyJournalFile(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace mailcar
