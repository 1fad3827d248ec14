// SpoolStore: group commit and recovery on libuv's thread pool; see mailcar/spool.hpp.
#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <limits>
#include <set>

#include "mailcar/log.hpp"
#include "mailcar/spool.hpp"
#include "spool/file_ops.hpp"

namespace mailcar {

using spool_io::Note;
using spool_io::Tally;

namespace {

enum class OpKind { Put, State, Remove };

struct Op {
  OpKind kind = OpKind::Put;
  std::string id;
  std::string header;  // put: the encoded header
  std::string body;    // put: the data; state: the encoded .state file
  uint64_t reserved = 0;
  SpoolStore::Done done;
  SpoolStatus status;    // set before the batch: the worker skips this op
  bool applied = false;  // the worker changed the directory for it
  int tmp_fd = -1;       // the worker's open temp file between phases
};

// Ops per batch: bounds the descriptors a batch holds open between its phases.
constexpr size_t kMaxBatch = 256;
// Slices of a batch synced in parallel: libuv's default thread-pool size. Measured on ext4
// (virtio disk): 200 fdatasync calls take ~0.8 s from one thread, ~0.04 s from four.
constexpr size_t kParallelSyncs = 4;

void log_notes(const std::vector<Note>& notes) {
  for (const Note& n : notes) {
    log::warn(n.event, {{"id", n.id}, {"reason", n.reason}});
  }
}

int open_dir(const std::string& path) {
  return ::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
}

// Phase 1 of a batch: temp files written, writeback started.
void start_op(int dirfd, Op& op) {
  if (op.kind == OpKind::Remove) return;
  if (op.kind == OpKind::Put) {
    std::string name = op.id + ".msg";
    if (spool_io::exists_at(dirfd, name)) {
      op.status = {SpoolErrc::Exists, name + ": already in the spool"};
      return;
    }
    uint32_t crc = crc32c_update(crc32c_update(0, op.header), op.body);
    std::string seal = encode_msg_seal(op.header.size(), op.body.size(), crc);
    op.status = spool_io::start_temp(dirfd, name, {seal, op.header, op.body}, op.tmp_fd);
  } else {
    op.status = spool_io::start_temp(dirfd, op.id + ".state", {op.body}, op.tmp_fd);
  }
}

// Phase 2: each temp file fdatasynced (the journal work of the first covers many).
void sync_op(int dirfd, Op& op, Tally& t) {
  if (op.tmp_fd < 0) return;
  std::string name = op.id + (op.kind == OpKind::Put ? ".msg" : ".state");
  op.status = spool_io::finish_temp(dirfd, name, op.tmp_fd, t);
  op.tmp_fd = -1;
}

void rename_put(int dirfd, Op& op, Tally& t) {
  std::string name = op.id + ".msg";
  if (int err = spool_io::rename_noreplace(dirfd, name + ".tmp", name); err != 0) {
    ::unlinkat(dirfd, (name + ".tmp").c_str(), 0);
    op.status = err == EEXIST ? SpoolStatus{SpoolErrc::Exists, name + ": already in the spool"}
                              : spool_io::status_from_errno(err, name);
    return;
  }
  op.applied = true;
  t.bytes += static_cast<int64_t>(op.reserved);
  ++t.messages;
}

void rename_state(int dirfd, Op& op, Tally& t) {
  std::string name = op.id + ".state";
  std::string tmp = name + ".tmp";
  // Checked here, not in phase 1: a put of the same id may be earlier in this batch.
  if (!spool_io::exists_at(dirfd, op.id + ".msg")) {
    ::unlinkat(dirfd, tmp.c_str(), 0);
    op.status = {SpoolErrc::NotFound, op.id + ".msg: not in the spool"};
    return;
  }
  uint64_t old_size = spool_io::file_size_at(dirfd, name);
  if (::renameat(dirfd, tmp.c_str(), dirfd, name.c_str()) != 0) {
    op.status = spool_io::status_from_errno(errno, name);
    ::unlinkat(dirfd, tmp.c_str(), 0);
    return;
  }
  op.applied = true;
  t.bytes += static_cast<int64_t>(op.body.size()) - static_cast<int64_t>(old_size);
}

void commit_remove(int dirfd, Op& op, Tally& t) {
  std::string msg = op.id + ".msg";
  std::string state = op.id + ".state";
  uint64_t msg_size = spool_io::file_size_at(dirfd, msg);
  uint64_t state_size = spool_io::file_size_at(dirfd, state);
  // The .msg first: a crash in between leaves an orphan .state, which recover() drops.
  bool msg_gone = ::unlinkat(dirfd, msg.c_str(), 0) == 0;
  int msg_err = msg_gone ? 0 : errno;
  bool state_gone = ::unlinkat(dirfd, state.c_str(), 0) == 0;
  if (msg_gone) {
    t.bytes -= static_cast<int64_t>(msg_size);
    --t.messages;
  }
  if (state_gone) t.bytes -= static_cast<int64_t>(state_size);
  op.applied = msg_gone || state_gone;
  if (msg_err != 0 && msg_err != ENOENT) {
    op.status = spool_io::status_from_errno(msg_err, msg);
  } else if (!op.applied) {
    op.status = {SpoolErrc::NotFound, msg + ": not in the spool"};
  }
}

// A failed directory fsync: nothing the batch changed is known to be durable.
void fail_applied(int dirfd, std::vector<Op>& ops, const SpoolStatus& s, Tally& t) {
  for (Op& op : ops) {
    if (!op.status.ok() || !op.applied) continue;
    op.status = s;
    // Never leave a put that was not acknowledged to be delivered later.
    if (op.kind == OpKind::Put && ::unlinkat(dirfd, (op.id + ".msg").c_str(), 0) == 0) {
      t.bytes -= static_cast<int64_t>(op.reserved);
      --t.messages;
    }
  }
}

// Phases 1 and 2 for every `step`-th op from `first`: several slices of one batch run on
// different pool threads, so their fdatasync calls overlap and the file system's journal
// commits each cover many of them.
void run_slice(const std::string& path, std::vector<Op>& ops, size_t first, size_t step, Tally& t) {
  int dirfd = open_dir(path);
  if (dirfd < 0) {
    SpoolStatus s = spool_io::status_from_errno(errno, path);
    if (s.code == SpoolErrc::NotFound) s.code = SpoolErrc::Io;
    for (size_t i = first; i < ops.size(); i += step) {
      if (ops[i].status.ok()) ops[i].status = s;
    }
    return;
  }
  for (size_t i = first; i < ops.size(); i += step) {
    if (ops[i].status.ok()) start_op(dirfd, ops[i]);
  }
  for (size_t i = first; i < ops.size(); i += step) sync_op(dirfd, ops[i], t);
  ::close(dirfd);
}

// Phases 3 and 4, after every slice: renames and unlinks in submission order, then one
// directory fsync covering all of them.
void run_finish(const std::string& path, std::vector<Op>& ops, Tally& t) {
  int dirfd = open_dir(path);
  if (dirfd < 0) {
    SpoolStatus s = spool_io::status_from_errno(errno, path);
    for (Op& op : ops) {
      if (!op.status.ok()) continue;
      if (op.kind != OpKind::Remove) ::unlink((path + "/" + op.id + ".tmp").c_str());
      op.status = {SpoolErrc::Io, s.detail};
    }
    return;
  }
  bool changed = false;
  for (Op& op : ops) {
    if (!op.status.ok()) continue;
    if (op.kind == OpKind::Put) rename_put(dirfd, op, t);
    if (op.kind == OpKind::State) rename_state(dirfd, op, t);
    if (op.kind == OpKind::Remove) commit_remove(dirfd, op, t);
    changed = changed || op.applied;
  }
  if (changed) {
    ++t.dir_fsyncs;
    if (::fsync(dirfd) != 0) {
      fail_applied(dirfd, ops, spool_io::status_from_errno(errno, path + " (directory fsync)"), t);
    }
  }
  ::close(dirfd);
}

struct DirListing {
  std::vector<std::string> messages;  // stems of *.msg
  std::set<std::string> states;       // stems of *.state
  std::vector<std::string> temps;     // whole names of *.tmp
};

Result<DirListing> list_spool(const std::string& path) {
  DIR* dir = ::opendir(path.c_str());
  if (dir == nullptr) return make_error(path + ": " + std::strerror(errno));
  DirListing out;
  while (dirent* e = ::readdir(dir)) {
    std::string name = e->d_name;
    if (name.ends_with(".tmp")) {
      out.temps.push_back(name);
    } else if (name.ends_with(".msg") && name.size() > 4) {
      out.messages.push_back(name.substr(0, name.size() - 4));
    } else if (name.ends_with(".state") && name.size() > 6) {
      out.states.insert(name.substr(0, name.size() - 6));
    }
  }
  ::closedir(dir);
  return out;
}

// What recovery's first pass keeps of a message that checked out: enough to sort it and to
// read its record and state again in the second pass.
struct Found {
  uint64_t queued_at = 0;
  std::string id;
  uint64_t bytes = 0;      // .msg + .state
  bool has_state = false;  // a .state that checked out
};

struct Recovered {
  std::vector<Found> found;
  Tally tally;
  std::vector<Note> notes;
  uint64_t temps_removed = 0;
};

// A message's .state, decoded; nullopt when missing or bad.
std::optional<SpoolState> read_state(int dirfd, const std::string& id, size_t recipients,
                                     std::string* error) {
  auto file = spool_io::read_small(dirfd, id + ".state", kMaxHeaderLen);
  Result<SpoolState> state =
      file.ok() ? decode_state_file(*file, recipients) : Result<SpoolState>(file.error());
  if (state.ok()) return std::move(state).value();
  if (error) *error = state.error().message;
  return std::nullopt;
}

// Whether a message that checked out has a good .state (a bad one is removed, noted).
bool check_state(int dirfd, const SpoolRecord& record, bool has_state, Recovered& r,
                 bool& changed) {
  if (!has_state) return false;
  std::string error;
  if (read_state(dirfd, record.id, record.recipients.size(), &error)) return true;
  r.notes.push_back({"spool_state_rebuilt", record.id, std::move(error)});
  if (::unlinkat(dirfd, (record.id + ".state").c_str(), 0) == 0) changed = true;
  return false;
}

// The first pass: checks every .msg in full, cleans up, and sorts what is good.
Result<Recovered> run_recover(const std::string& path) {
  auto listing = list_spool(path);
  if (!listing.ok()) return listing.error();
  int dirfd = open_dir(path);
  if (dirfd < 0) return make_error(path + ": " + std::strerror(errno));
  Recovered r;
  for (const std::string& tmp : listing->temps) {
    if (::unlinkat(dirfd, tmp.c_str(), 0) == 0) ++r.temps_removed;
  }
  bool changed = r.temps_removed > 0;
  r.found.reserve(listing->messages.size());
  for (const std::string& id : listing->messages) {
    uint64_t size = 0;
    auto record = is_safe_spool_id(id) ? spool_io::verify_message(dirfd, id, size)
                                       : Result<SpoolRecord>(make_error("not a spool id"));
    if (!record.ok()) {
      spool_io::quarantine(dirfd, id, record.error().message, r.tally, r.notes);
      changed = true;
      continue;
    }
    bool has_state = check_state(dirfd, *record, listing->states.erase(id) > 0, r, changed);
    uint64_t bytes = size + spool_io::file_size_at(dirfd, id + ".state");
    r.found.push_back({record->queued_at_ms, id, bytes, has_state});
  }
  for (const std::string& orphan : listing->states) {
    if (::unlinkat(dirfd, (orphan + ".state").c_str(), 0) == 0) changed = true;
  }
  if (changed) {
    ++r.tally.dir_fsyncs;
    ::fsync(dirfd);
  }
  ::close(dirfd);
  std::sort(r.found.begin(), r.found.end(), [](const Found& a, const Found& b) {
    if (a.queued_at != b.queued_at) return a.queued_at < b.queued_at;
    return a.id < b.id;
  });
  return r;
}

// The second pass, a batch at a time: record (header only: checked in the first pass) and
// state. A file gone or unreadable since is left out with a note.
std::vector<SpoolEntry> load_entries(int dirfd, const Found* first, const Found* last,
                                     std::vector<Note>& notes) {
  std::vector<SpoolEntry> out;
  out.reserve(static_cast<size_t>(last - first));
  for (const Found* f = first; f != last; ++f) {
    auto record = spool_io::read_header(dirfd, f->id);
    if (!record.ok()) {
      notes.push_back({"spool_unreadable", f->id, record.error().message});
      continue;
    }
    SpoolEntry& e = out.emplace_back();
    std::optional<SpoolState> state;
    if (f->has_state) state = read_state(dirfd, f->id, record->recipients.size(), nullptr);
    e.state = state ? std::move(*state) : fresh_spool_state(*record);
    e.record = std::move(record).value();
    e.bytes = f->bytes;
  }
  return out;
}

}  // namespace

// ---- Impl --------------------------------------------------------------------------------

struct SpoolStore::Impl : std::enable_shared_from_this<SpoolStore::Impl> {
  uv_loop_t* loop = nullptr;
  std::string path;
  std::optional<uint64_t> max_bytes;
  bool alive = true;
  bool recovered = false;
  bool recovering = false;
  bool is_full = false;
  bool committing = false;
  uint64_t reserved = 0;  // bytes of puts waiting or being committed
  size_t jobs = 0;        // thread-pool work queued or running
  SpoolStats stats;
  std::vector<Op> pending;  // the next batch

  void apply(const Tally& t) {
    stats.file_fsyncs += t.file_fsyncs;
    stats.dir_fsyncs += t.dir_fsyncs;
    stats.quarantined += t.quarantined;
    auto add = [](uint64_t& v, int64_t d) {
      v = d < 0 && static_cast<uint64_t>(-d) > v ? 0 : v + static_cast<uint64_t>(d);
    };
    add(stats.bytes, t.bytes);
    add(stats.messages, t.messages);
  }

  void enqueue(Op op) {
    pending.push_back(std::move(op));
    start_commit();
  }

  void start_commit();
  void finish_commit(std::vector<Op>& ops, const Tally& t);
  void read(std::string id, bool header_only, SpoolStore::DataDone done);
};

namespace {

// One group-commit batch, shared by its slice jobs.
struct Batch {
  std::shared_ptr<SpoolStore::Impl> impl;
  std::string path;
  std::vector<Op> ops;
  std::vector<Tally> tallies;      // one per slice, plus one for the final phase
  std::atomic<size_t> running{0};  // slices still in their work (pool threads)
  size_t unfinished = 0;           // slices whose after-work has not run (loop thread)
};

struct SliceJob {
  uv_work_t req{};
  std::shared_ptr<SpoolStore::Impl> impl;
  std::shared_ptr<Batch> batch;
  size_t index = 0;
};

struct RecoverJob {
  uv_work_t req{};
  std::shared_ptr<SpoolStore::Impl> impl;
  std::string path;
  Result<Recovered> result = make_error("not run");
  size_t batch = 0;
  size_t next = 0;  // the first entry of `found` not yet loaded
  SpoolStore::RecoverBatch each;
  SpoolStore::Done done;
};

// Recovery's second pass: loads found[first, last), hands it over, queues the next batch.
struct LoadJob {
  uv_work_t req{};
  std::shared_ptr<SpoolStore::Impl> impl;
  std::shared_ptr<RecoverJob> run;  // path, found, batch, each, done
  size_t first = 0;
  size_t last = 0;
  std::vector<SpoolEntry> entries;
  std::vector<Note> notes;
};

struct ReadJob {
  uv_work_t req{};
  std::shared_ptr<SpoolStore::Impl> impl;
  std::string path;
  std::string id;
  bool header_only = false;  // read_record()
  spool_io::ReadOutcome outcome;
  Tally tally;
  std::vector<Note> notes;
  SpoolStore::DataDone done;
};

// read_record()'s work: the record of <id>.msg, without its data and checksum.
spool_io::ReadOutcome read_record_at(int dirfd, const std::string& id) {
  spool_io::ReadOutcome out;
  if (!spool_io::exists_at(dirfd, id + ".msg")) {
    out.status = spool_io::status_from_errno(ENOENT, id + ".msg");
    return out;
  }
  auto record = spool_io::read_header(dirfd, id);
  if (!record.ok()) {
    out.status = {SpoolErrc::Io, record.error().message};
    return out;
  }
  out.message.record = std::move(record).value();
  return out;
}

// Queues `job` (a heap object with a uv_work_t `req` and an `impl`) on the thread pool.
template <class Job>
bool queue_job(Job* job, uv_work_cb work, uv_after_work_cb after) {
  job->req.data = job;
  ++job->impl->jobs;
  if (uv_queue_work(job->impl->loop, &job->req, work, after) == 0) return true;
  --job->impl->jobs;
  return false;
}

}  // namespace

void SpoolStore::Impl::start_commit() {
  if (committing || pending.empty() || !alive) return;
  auto batch = std::make_shared<Batch>();
  batch->impl = shared_from_this();
  batch->path = path;
  if (pending.size() <= kMaxBatch) {
    batch->ops.swap(pending);
  } else {
    auto cut = pending.begin() + static_cast<std::ptrdiff_t>(kMaxBatch);
    batch->ops.assign(std::make_move_iterator(pending.begin()), std::make_move_iterator(cut));
    pending.erase(pending.begin(), cut);
  }
  const size_t slices = std::min(kParallelSyncs, batch->ops.size());
  batch->tallies.resize(slices + 1);
  batch->running = slices;
  batch->unfinished = slices;
  committing = true;
  for (size_t i = 0; i < slices; ++i) {
    auto* job = new SliceJob;
    job->impl = batch->impl;
    job->batch = batch;
    job->index = i;
    bool queued = queue_job(
        job,
        [](uv_work_t* req) {
          auto* j = static_cast<SliceJob*>(req->data);
          Batch& b = *j->batch;
          run_slice(b.path, b.ops, j->index, b.tallies.size() - 1, b.tallies[j->index]);
          if (b.running.fetch_sub(1, std::memory_order_acq_rel) == 1) {
            run_finish(b.path, b.ops, b.tallies.back());  // the last slice to end
          }
        },
        [](uv_work_t* req, int) {
          std::unique_ptr<SliceJob> j(static_cast<SliceJob*>(req->data));
          --j->impl->jobs;
          Batch& b = *j->batch;
          if (--b.unfinished > 0) return;
          Tally sum;
          for (const Tally& t : b.tallies) {
            sum.file_fsyncs += t.file_fsyncs;
            sum.dir_fsyncs += t.dir_fsyncs;
            sum.bytes += t.bytes;
            sum.messages += t.messages;
          }
          j->impl->finish_commit(b.ops, sum);
        });
    if (!queued) std::abort();  // uv_queue_work fails only for a null work callback
  }
}

void SpoolStore::Impl::finish_commit(std::vector<Op>& ops, const Tally& t) {
  committing = false;
  if (!alive) return;
  auto keep = shared_from_this();  // a callback may destroy the SpoolStore
  ++stats.commits;
  apply(t);
  for (Op& op : ops) {
    reserved -= std::min(reserved, op.reserved);
    if (op.kind != OpKind::Put) continue;
    if (op.status.ok()) {
      ++stats.puts;
      is_full = false;
    } else if (op.status.code == SpoolErrc::Full) {
      is_full = true;
    }
  }
  for (Op& op : ops) {
    if (!alive) return;
    if (op.done) op.done(std::move(op.status));
  }
  start_commit();
}

// ---- SpoolStore ----------------------------------------------------------------------------

SpoolStore::SpoolStore(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

SpoolStore::~SpoolStore() {
  impl_->alive = false;
  impl_->pending.clear();
}

Result<std::unique_ptr<SpoolStore>> SpoolStore::open(uv_loop_t* loop, std::string path,
                                                     std::optional<uint64_t> max_bytes) {
  // Parents too (mkdir -p); only the spool's own folders get mode 0700.
  for (size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    ::mkdir(path.substr(0, slash).c_str(), 0755);
  }
  for (const std::string& dir : {path, path + "/corrupt"}) {
    if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
      return make_error(dir + ": " + std::strerror(errno));
    }
    struct stat st {};
    if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
      return make_error(dir + ": not a directory");
    }
    if (::access(dir.c_str(), R_OK | W_OK | X_OK) != 0) {
      return make_error(dir + ": " + std::strerror(errno));
    }
  }
  auto impl = std::make_shared<Impl>();
  impl->loop = loop;
  impl->path = std::move(path);
  impl->max_bytes = max_bytes;
  return std::unique_ptr<SpoolStore>(new SpoolStore(std::move(impl)));
}

void SpoolStore::recover(RecoverDone done) {
  auto all = std::make_shared<std::vector<SpoolEntry>>();
  recover(
      std::numeric_limits<size_t>::max(),
      [all](std::vector<SpoolEntry> batch) {
        if (all->empty()) {
          *all = std::move(batch);
        } else {
          std::move(batch.begin(), batch.end(), std::back_inserter(*all));
        }
      },
      [all, done = std::move(done)](SpoolStatus status) {
        if (!status.ok()) return done(make_error(status.detail));
        done(std::move(*all));
      });
}

namespace {

void load_next(std::shared_ptr<RecoverJob> run);

void recovered_first_pass(std::unique_ptr<RecoverJob> j) {
  SpoolStore::Impl& impl = *j->impl;
  if (!j->result.ok()) {
    impl.recovering = false;
    return j->done({SpoolErrc::Io, j->result.error().message});
  }
  Recovered& r = *j->result;
  log_notes(r.notes);
  impl.stats.messages = r.found.size();
  impl.stats.bytes = 0;
  for (const Found& f : r.found) impl.stats.bytes += f.bytes;
  impl.stats.quarantined += r.tally.quarantined;
  impl.stats.dir_fsyncs += r.tally.dir_fsyncs;
  log::info("spool_recovered", {{"path", impl.path},
                                {"messages", impl.stats.messages},
                                {"bytes", impl.stats.bytes},
                                {"quarantined", r.tally.quarantined},
                                {"temp_files_removed", r.temps_removed}});
  load_next(std::shared_ptr<RecoverJob>(std::move(j)));
}

// Queues the load of the next batch, or ends recovery when none is left.
void load_next(std::shared_ptr<RecoverJob> run) {
  SpoolStore::Impl& impl = *run->impl;
  const std::vector<Found>& found = run->result->found;
  if (run->next >= found.size()) {
    impl.recovering = false;
    impl.recovered = true;
    return run->done({});
  }
  auto* job = new LoadJob;
  job->impl = run->impl;
  job->first = run->next;
  job->last = job->first + std::min(run->batch, found.size() - job->first);
  run->next = job->last;
  job->run = std::move(run);
  bool queued = queue_job(
      job,
      [](uv_work_t* req) {
        auto* j = static_cast<LoadJob*>(req->data);
        const std::vector<Found>& all = j->run->result->found;
        int dirfd = open_dir(j->run->path);
        if (dirfd < 0) {
          j->notes.push_back({"spool_unreadable", "", j->run->path + ": " + std::strerror(errno)});
          return;
        }
        j->entries = load_entries(dirfd, all.data() + j->first, all.data() + j->last, j->notes);
        ::close(dirfd);
      },
      [](uv_work_t* req, int) {
        std::unique_ptr<LoadJob> j(static_cast<LoadJob*>(req->data));
        --j->impl->jobs;
        if (!j->impl->alive) return;
        log_notes(j->notes);
        j->run->each(std::move(j->entries));
        load_next(std::move(j->run));
      });
  if (!queued) {
    std::unique_ptr<LoadJob> j(job);
    j->impl->recovering = false;
    j->run->done({SpoolErrc::Io, "the thread pool refused the work"});
  }
}

}  // namespace

void SpoolStore::recover(size_t batch, RecoverBatch each, Done done) {
  auto* job = new RecoverJob;
  job->impl = impl_;
  job->path = impl_->path;
  job->batch = std::max<size_t>(1, batch);
  job->each = std::move(each);
  job->done = std::move(done);
  impl_->recovering = true;
  bool queued = queue_job(
      job,
      [](uv_work_t* req) {
        auto* j = static_cast<RecoverJob*>(req->data);
        j->result = run_recover(j->path);
      },
      [](uv_work_t* req, int) {
        std::unique_ptr<RecoverJob> j(static_cast<RecoverJob*>(req->data));
        --j->impl->jobs;
        if (!j->impl->alive) return;
        recovered_first_pass(std::move(j));
      });
  if (!queued) {
    std::unique_ptr<RecoverJob> j(job);
    impl_->recovering = false;
    j->done({SpoolErrc::Io, "the thread pool refused the work"});
  }
}

void SpoolStore::put(SpoolRecord record, std::string data, Done done) {
  Op op;
  op.kind = OpKind::Put;
  op.id = record.id;
  op.done = std::move(done);
  record.data_size = data.size();
  if (!impl_->recovered) {
    op.status = {SpoolErrc::NotReady, "spool not recovered yet"};
  } else if (!is_safe_spool_id(record.id) || record.recipients.empty()) {
    op.status = {SpoolErrc::NotReady, "bad id or no recipient"};
  } else {
    op.header = encode_msg_header(record);
    uint64_t size =
        encode_msg_seal(op.header.size(), data.size(), 0).size() + op.header.size() + data.size();
    const Impl& impl = *impl_;
    if (impl.max_bytes && impl.stats.bytes + impl.reserved + size > *impl.max_bytes) {
      op.status = {SpoolErrc::Full, "spool.max_bytes reached"};
      op.header.clear();
    } else {
      op.reserved = size;
      impl_->reserved += size;
      op.body = std::move(data);
    }
  }
  impl_->enqueue(std::move(op));
}

void SpoolStore::update_state(std::string id, SpoolState state, Done done) {
  Op op;
  op.kind = OpKind::State;
  op.done = std::move(done);
  if (!impl_->recovered || !is_safe_spool_id(id)) {
    op.status = {SpoolErrc::NotReady, "spool not recovered yet, or a bad id"};
  } else {
    op.body = encode_state_file(state);
  }
  op.id = std::move(id);
  impl_->enqueue(std::move(op));
}

void SpoolStore::remove(std::string id, Done done) {
  Op op;
  op.kind = OpKind::Remove;
  op.done = std::move(done);
  if (!impl_->recovered || !is_safe_spool_id(id)) {
    op.status = {SpoolErrc::NotReady, "spool not recovered yet, or a bad id"};
  }
  op.id = std::move(id);
  impl_->enqueue(std::move(op));
}

void SpoolStore::read_data(std::string id, DataDone done) {
  impl_->read(std::move(id), false, std::move(done));
}

void SpoolStore::read_record(std::string id, DataDone done) {
  impl_->read(std::move(id), true, std::move(done));
}

void SpoolStore::Impl::read(std::string id, bool header_only, DataDone done) {
  auto* job = new ReadJob;
  job->impl = shared_from_this();
  job->path = path;
  job->id = std::move(id);
  job->header_only = header_only;
  job->done = std::move(done);
  if (!recovered || !is_safe_spool_id(job->id)) {
    job->outcome.status = {SpoolErrc::NotReady, "spool not recovered yet, or a bad id"};
  }
  bool queued = queue_job(
      job,
      [](uv_work_t* req) {
        auto* j = static_cast<ReadJob*>(req->data);
        if (!j->outcome.status.ok()) return;
        int dirfd = open_dir(j->path);
        if (dirfd < 0) {
          j->outcome.status = spool_io::status_from_errno(errno, j->path);
          return;
        }
        j->outcome = j->header_only ? read_record_at(dirfd, j->id)
                                    : spool_io::read_message(dirfd, j->id, j->tally, j->notes);
        if (j->tally.quarantined > 0) ::fsync(dirfd);
        ::close(dirfd);
      },
      [](uv_work_t* req, int) {
        std::unique_ptr<ReadJob> j(static_cast<ReadJob*>(req->data));
        --j->impl->jobs;
        if (!j->impl->alive) return;
        j->impl->apply(j->tally);
        log_notes(j->notes);
        j->done(std::move(j->outcome.status), std::move(j->outcome.message));
      });
  if (!queued) {
    std::unique_ptr<ReadJob> j(job);
    j->done({SpoolErrc::Io, "the thread pool refused the work"}, {});
  }
}

bool SpoolStore::full() const {
  return impl_->is_full;
}

bool SpoolStore::idle() const {
  return impl_->jobs == 0 && impl_->pending.empty();
}

SpoolStats SpoolStore::stats() const {
  return impl_->stats;
}

const std::string& SpoolStore::path() const {
  return impl_->path;
}

const char* spool_errc_name(SpoolErrc e) {
  switch (e) {
    case SpoolErrc::Ok:
      return "ok";
    case SpoolErrc::Full:
      return "full";
    case SpoolErrc::Io:
      return "io";
    case SpoolErrc::Exists:
      return "exists";
    case SpoolErrc::NotFound:
      return "not_found";
    case SpoolErrc::Corrupt:
      return "corrupt";
    case SpoolErrc::NotReady:
      return "not_ready";
  }
  return "io";
}

}  // namespace mailcar
