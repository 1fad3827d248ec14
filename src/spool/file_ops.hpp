// Blocking file operations of the spool, for libuv's thread pool only (never the loop).
// Each takes the spool directory as an open descriptor and reports errno-based failures as
// SpoolStatus. Nothing here logs: notes go back to the loop thread, which logs them.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/spool.hpp"

namespace mailcar::spool_io {

// Something the loop thread should log after the work is done.
struct Note {
  std::string event;  // spool_corrupt | spool_state_rebuilt | spool_cleanup_failed
  std::string id;
  std::string reason;
};

// Fsync counts and byte changes one worker run made; applied to the stats on the loop.
struct Tally {
  uint64_t file_fsyncs = 0;
  uint64_t dir_fsyncs = 0;
  int64_t bytes = 0;     // change in .msg + .state bytes
  int64_t messages = 0;  // change in .msg count
  uint64_t quarantined = 0;
};

SpoolStatus status_from_errno(int err, std::string_view what);

// Writes `pieces` to <dir>/<name>.tmp and starts its writeback (sync_file_range, no wait),
// so that the fdatasync calls of a whole batch find their data already on its way and the
// journal commits of the first one cover the others. `fd` stays open for finish_temp().
// On failure the temp file is removed and `fd` is -1.
SpoolStatus start_temp(int dirfd, const std::string& name,
                       const std::vector<std::string_view>& pieces, int& fd);
// fdatasync and close of a descriptor from start_temp(); on failure the temp file is removed.
SpoolStatus finish_temp(int dirfd, const std::string& name, int fd, Tally& tally);

// rename without replacing an existing target (renameat2 RENAME_NOREPLACE, or link + unlink
// where the file system lacks it); 0 or an errno (EEXIST when the target exists).
int rename_noreplace(int dirfd, const std::string& from, const std::string& to);

// Size of <dir>/<name>, 0 when it does not exist.
uint64_t file_size_at(int dirfd, const std::string& name);
bool exists_at(int dirfd, const std::string& name);

// Moves <id>.msg and <id>.state (if there) into corrupt/ (a numbered name if taken).
void quarantine(int dirfd, const std::string& id, std::string reason, Tally& tally,
                std::vector<Note>& notes);

// Reads and checks <id>.msg in full; on a bad file it is quarantined and Corrupt returned.
struct ReadOutcome {
  SpoolStatus status;
  SpoolMessage message;
};
ReadOutcome read_message(int dirfd, const std::string& id, Tally& tally, std::vector<Note>& notes);

// Streams <id>.msg through the checks without keeping the data; the record on success.
Result<SpoolRecord> verify_message(int dirfd, const std::string& id, uint64_t& file_size);

// Reads the seal and header of <id>.msg, not its data: no checksum, so only for a file that
// verify_message() passed (recovery's second pass, the queue API).
Result<SpoolRecord> read_header(int dirfd, const std::string& id);

// Reads a small whole file (at most `limit` bytes); errors as values.
Result<std::string> read_small(int dirfd, const std::string& name, uint64_t limit);

}  // namespace mailcar::spool_io
