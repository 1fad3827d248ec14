// driver: file. The blocking part (open/write/fsync/rename) runs in libuv's thread pool; the
// result is reported back on the loop thread in the work's after-callback.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>
#include <utility>

#include "mailcar/log.hpp"
#include "mailcar/relay.hpp"
#include "mailcar/text.hpp"

namespace mailcar {

struct FileTransport::State {
  std::string service;
  std::string path;
  size_t in_flight = 0;
  bool shutting_down = false;
  std::function<void()> shutdown_done;
};

namespace {

std::string errno_text(int error) {
  return std::error_code(error, std::generic_category()).message();
}

// mkdir -p; returns 0 or an errno.
int make_directories(const std::string& path) {
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    std::string prefix = path.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0750) != 0 && errno != EEXIST) return errno;
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return errno;
  return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
}

// Thread-pool side: write `data` to dir/final_name via a temp file. Returns "" or the error.
std::string write_atomically(const std::string& dir, const std::string& temp_name,
                             const std::string& final_name, const std::string& data) {
  if (int e = make_directories(dir)) return "cannot create " + dir + ": " + errno_text(e);
  const std::string temp = dir + "/" + temp_name;
  const std::string target = dir + "/" + final_name;
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
  if (fd < 0) return errno_text(errno);
  auto give_up = [&](int e) {
    ::close(fd);
    ::unlink(temp.c_str());
    return errno_text(e);
  };
  size_t written = 0;
  while (written < data.size()) {
    ssize_t n = ::write(fd, data.data() + written, data.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      return give_up(errno);
    }
    written += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0) return give_up(errno);
  if (::close(fd) != 0) {
    int e = errno;
    ::unlink(temp.c_str());
    return errno_text(e);
  }
  if (::rename(temp.c_str(), target.c_str()) != 0) {
    int e = errno;
    ::unlink(temp.c_str());
    return errno_text(e);
  }
  // The rename itself is durable only once the folder is synced.
  int dir_fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir_fd < 0) return errno_text(errno);
  int rc = ::fsync(dir_fd);
  int e = errno;
  ::close(dir_fd);
  return rc == 0 ? std::string() : errno_text(e);
}

struct FileWork {
  uv_work_t req{};
  std::shared_ptr<FileTransport::State> state;
  OutboundMessage message;
  DeliveryCallback done;
  std::function<void()> after;  // a deferred call instead of a write
  bool refused = false;
  std::string temp_name;
  std::string final_name;
  std::string error;
  uint64_t started_ns = 0;
};

void finish_shutdown_if_idle(const std::shared_ptr<FileTransport::State>& state) {
  if (state->shutting_down && state->in_flight == 0 && state->shutdown_done) {
    auto done = std::move(state->shutdown_done);
    state->shutdown_done = nullptr;
    done();
  }
}

void run_work(uv_work_t* req) {
  auto* work = static_cast<FileWork*>(req->data);
  if (work->refused || work->after) return;
  work->error =
      write_atomically(work->state->path, work->temp_name, work->final_name, work->message.data);
}

void after_work(uv_work_t* req, int status) {
  std::unique_ptr<FileWork> work(static_cast<FileWork*>(req->data));
  if (work->after) {
    work->after();
    return;
  }
  DeliveryResult result;
  result.upstream_seconds = static_cast<double>(uv_hrtime() - work->started_ns) / 1e9;
  if (work->refused) {
    result.status = DeliveryStatus::ShuttingDown;
    result.message = "mailcar is shutting down";
    result.retryable = true;
  } else if (status != 0 || !work->error.empty()) {
    result.status = DeliveryStatus::Rejected;
    result.message =
        "cannot write outbox: " + (status != 0 ? std::string(uv_strerror(status)) : work->error);
    result.retryable = true;
    log::error(
        "outbox_write_failed",
        {{"service", work->state->service}, {"id", work->message.id}, {"error", result.message}});
  } else {
    result.status = DeliveryStatus::Sent;
    result.message = "written to outbox";
    result.accepted = work->message.envelope_rcpts;
    log::debug("outbox_written",
               {{"service", work->state->service},
                {"id", work->message.id},
                {"file", work->final_name},
                {"recipients", static_cast<uint64_t>(work->message.envelope_rcpts.size())}});
  }
  auto state = work->state;
  if (!work->refused) --state->in_flight;
  auto done = std::move(work->done);
  work.reset();  // free the message before calling out
  done(std::move(result));
  finish_shutdown_if_idle(state);
}

void queue(uv_loop_t* loop, std::unique_ptr<FileWork> work) {
  work->req.data = work.get();
  if (uv_queue_work(loop, &work->req, run_work, after_work) == 0) work.release();
}

}  // namespace

std::string outbox_file_name(std::string_view message_id) {
  std::string name;
  name.reserve(message_id.size() + 4);
  for (char c : message_id) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '@' || c == '_' || c == '-';
    name += ok ? c : '_';
  }
  if (name.empty()) name = text::random_token(16);
  if (name.front() == '.') name.front() = '_';  // only temp files are hidden
  return name + ".eml";
}

FileTransport::FileTransport(uv_loop_t* loop, const ServiceConfig& service)
    : loop_(loop), state_(std::make_shared<State>()) {
  state_->service = service.name;
  state_->path = service.path.empty() ? std::string(".") : service.path;
  while (state_->path.size() > 1 && state_->path.back() == '/') state_->path.pop_back();
}

// Work in flight keeps the state alive and still reports to its callers.
FileTransport::~FileTransport() = default;

void FileTransport::deliver(OutboundMessage message, DeliveryCallback done) {
  auto work = std::make_unique<FileWork>();
  work->state = state_;
  work->started_ns = uv_hrtime();
  work->done = std::move(done);
  if (state_->shutting_down) {
    work->refused = true;
  } else {
    work->final_name = outbox_file_name(message.id);
    // A unique temp name: two deliveries of one id must not write into the same temp file.
    work->temp_name = "." + work->final_name.substr(0, work->final_name.size() - 4) + "." +
                      text::random_token(8) + ".tmp";
    work->message = std::move(message);
    ++state_->in_flight;
  }
  queue(loop_, std::move(work));
}

void FileTransport::shutdown(std::function<void()> done) {
  state_->shutting_down = true;
  state_->shutdown_done = std::move(done);
  if (state_->in_flight > 0) return;  // the last write finishes the shutdown
  auto work = std::make_unique<FileWork>();
  work->state = state_;
  work->after = [state = state_] { finish_shutdown_if_idle(state); };
  queue(loop_, std::move(work));
}

}  // namespace mailcar
