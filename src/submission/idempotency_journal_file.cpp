#include "submission/idempotency_journal_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <utility>
#include <vector>

#include "mailcar/clock.hpp"
#include "mailcar/log.hpp"

namespace mailcar {
namespace {

constexpr uint64_t kMaxJournalBytes = 1ull << 30;  // read back at most this much

std::string errno_text(std::string_view what) {
  return std::string(what) + ": " + std::strerror(errno);
}

// Writes all of `bytes` to `fd`; 0 or an errno.
int write_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return 0;
}

std::string folder_of(const std::string& path) {
  std::string dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? std::string(".") : dir;
}

// Replaces `path` with `bytes` (written under a new name, synced, renamed, folder synced) and
// opens it for appending. The descriptor, or an error.
Result<int> rewrite(const std::string& path, std::string_view bytes) {
  const std::string fresh = path + ".new";  // not *.tmp: the spool's recovery removes those
  int fd = ::open(fresh.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(errno_text(fresh));
  if (int err = write_all(fd, bytes); err != 0 || ::fdatasync(fd) != 0) {
    if (err != 0) errno = err;
    std::string why = errno_text(fresh);
    ::close(fd);
    ::unlink(fresh.c_str());
    return make_error(why);
  }
  ::close(fd);
  if (::rename(fresh.c_str(), path.c_str()) != 0) return make_error(errno_text(path));
  int dirfd = ::open(folder_of(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dirfd >= 0) {
    ::fsync(dirfd);
    ::close(dirfd);
  }
  fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd < 0) return make_error(errno_text(path));
  return fd;
}

std::string snapshot(const MemoryIdempotencyStore& store, uint64_t now_ms) {
  std::string out;
  store.for_each_kept(now_ms,
                      [&out](const IdempotencyRecord& r) { out += format_idempotency_record(r); });
  return out;
}

}  // namespace

struct IdempotencyJournalFile::Impl : std::enable_shared_from_this<Impl> {
  uv_loop_t* loop = nullptr;
  std::string path;
  std::weak_ptr<MemoryIdempotencyStore> store;
  int fd = -1;
  std::string pending;
  std::vector<IdempotencyStored> pending_done;
  bool writing = false;
  uint64_t file_bytes = 0;
  uint64_t live_bytes = 0;  // the file's size at the last compaction
  uint64_t compact_at = IdempotencyJournalFile::kCompactAtBytes;

  ~Impl() {
    if (fd >= 0) ::close(fd);
  }

  void kick();
};

namespace {

// One thread-pool run: an optional compaction, then the appended records and their fdatasync.
struct WriteJob {
  uv_work_t req{};
  std::shared_ptr<IdempotencyJournalFile::Impl> impl;
  int fd = -1;
  std::optional<std::string> compacted;  // set: rewrite the file with this first
  std::string bytes;
  std::vector<IdempotencyStored> done;
  int new_fd = -1;
  std::string error;
};

void run_write(uv_work_t* req) {
  auto* job = static_cast<WriteJob*>(req->data);
  const std::string& path = job->impl->path;  // never changes after open
  if (job->compacted) {
    Result<int> fd = rewrite(path, *job->compacted);
    if (!fd.ok()) {
      job->error = fd.error().message;
    } else {
      job->new_fd = fd.value();
      job->fd = job->new_fd;
    }
  }
  if (job->bytes.empty() || job->fd < 0) return;
  if (int err = write_all(job->fd, job->bytes); err != 0 || ::fdatasync(job->fd) != 0) {
    if (err != 0) errno = err;
    job->error = errno_text(path);
  }
}

void after_write(uv_work_t* req, int) {
  std::unique_ptr<WriteJob> job(static_cast<WriteJob*>(req->data));
  IdempotencyJournalFile::Impl& impl = *job->impl;
  impl.writing = false;
  if (job->new_fd >= 0) {
    if (impl.fd >= 0) ::close(impl.fd);
    impl.fd = job->new_fd;
    impl.file_bytes = impl.live_bytes = job->compacted->size();
  }
  impl.file_bytes += job->bytes.size();
  if (!job->error.empty()) {
    // The answers still go out: their keys hold in memory until a restart.
    log::error("idempotency_journal_failed", {{"path", impl.path}, {"error", job->error}});
  }
  for (IdempotencyStored& d : job->done) {
    if (d) d();
  }
  impl.kick();
}

}  // namespace

void IdempotencyJournalFile::Impl::kick() {
  if (writing) return;
  auto owner = store.lock();
  bool compact = owner && file_bytes > std::max(compact_at, 4 * live_bytes);
  if (pending.empty() && !compact) return;
  auto job = std::make_unique<WriteJob>();
  job->impl = shared_from_this();
  job->fd = fd;
  if (compact) job->compacted = snapshot(*owner, wall_clock_ms());
  // Records kept after the snapshot was taken are in `pending`: written after it.
  job->bytes.swap(pending);
  job->done.swap(pending_done);
  job->req.data = job.get();
  if (uv_queue_work(loop, &job->req, run_write, after_write) != 0) std::abort();
  writing = true;
  (void)job.release();  // after_write owns it
}

IdempotencyJournalFile::IdempotencyJournalFile(std::shared_ptr<Impl> impl)
    : impl_(std::move(impl)) {}

IdempotencyJournalFile::~IdempotencyJournalFile() = default;

void IdempotencyJournalFile::append(const IdempotencyRecord& record, IdempotencyStored done) {
  impl_->pending += format_idempotency_record(record);
  impl_->pending_done.push_back(std::move(done));
  impl_->kick();
}

Result<std::shared_ptr<IdempotencyJournalFile>> IdempotencyJournalFile::open(
    uv_loop_t* loop, std::string path, const std::shared_ptr<MemoryIdempotencyStore>& store,
    uint64_t now_ms, uint64_t compact_at_bytes) {
  std::string bytes;
  if (std::ifstream in(path, std::ios::binary); in) {
    std::error_code ec;
    uint64_t size = std::filesystem::file_size(path, ec);
    if (ec || size > kMaxJournalBytes) return make_error(path + ": too large or unreadable");
    std::ostringstream all;
    all << in.rdbuf();
    bytes = std::move(all).str();
  }
  IdempotencyJournal journal = parse_idempotency_journal(bytes);
  if (journal.truncated) {
    log::warn("idempotency_journal_truncated",
              {{"path", path},
               {"kept_bytes", journal.good_bytes},
               {"dropped_bytes", static_cast<uint64_t>(bytes.size() - journal.good_bytes)}});
  }
  for (IdempotencyRecord& r : journal.records) store->restore(std::move(r), now_ms);
  std::string compacted = snapshot(*store, now_ms);
  Result<int> fd = rewrite(path, compacted);
  if (!fd.ok()) return fd.error();
  auto impl = std::make_shared<Impl>();
  impl->loop = loop;
  impl->path = std::move(path);
  impl->store = store;
  impl->fd = fd.value();
  impl->file_bytes = impl->live_bytes = compacted.size();
  impl->compact_at = compact_at_bytes;
  log::info("idempotency_keys_restored",
            {{"path", impl->path}, {"keys", static_cast<uint64_t>(store->size())}});
  auto journal_file =
      std::shared_ptr<IdempotencyJournalFile>(new IdempotencyJournalFile(std::move(impl)));
  std::weak_ptr<IdempotencyJournalFile> weak = journal_file;
  store->set_persist([weak](const IdempotencyRecord& r, IdempotencyStored done) {
    if (auto j = weak.lock()) return j->append(r, std::move(done));
    if (done) done();
  });
  return journal_file;
}

}  // namespace mailcar
