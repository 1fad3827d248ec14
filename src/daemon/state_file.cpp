#include "daemon/state_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>

#include "mailcar/log.hpp"

namespace mailcar {

Result<std::string> read_state_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    if (errno == ENOENT) return std::string();
    return make_error(path + ": " + std::strerror(errno));
  }
  std::string data;
  char buffer[8192];
  while (in.read(buffer, sizeof buffer) || in.gcount() > 0) {
    data.append(buffer, static_cast<size_t>(in.gcount()));
    if (data.size() > kMaxStateFileBytes) {
      return make_error(path + ": larger than the limit of " + std::to_string(kMaxStateFileBytes) +
                        " bytes");
    }
  }
  if (in.bad()) return make_error(path + ": read error");
  return data;
}

Result<void> write_state_file(const std::string& path, const std::string& data) {
  std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return make_error(tmp + ": " + std::strerror(errno));
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      int e = errno;
      ::close(fd);
      return make_error(tmp + ": " + std::strerror(e));
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) return make_error(tmp + ": " + std::strerror(errno));
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    return make_error(path + ": " + std::strerror(errno));
  }
  return {};
}

namespace {
struct WriteJob {
  uv_work_t req{};
  std::string path;
  std::string data;
  std::string error;
};
}  // namespace

void write_state_file_async(uv_loop_t* loop, std::string path, std::string data) {
  auto* job = new WriteJob;
  job->req.data = job;
  job->path = std::move(path);
  job->data = std::move(data);
  int rc = uv_queue_work(
      loop, &job->req,
      [](uv_work_t* req) {
        auto* j = static_cast<WriteJob*>(req->data);
        auto r = write_state_file(j->path, j->data);
        if (!r.ok()) j->error = r.error().message;
      },
      [](uv_work_t* req, int) {
        auto* j = static_cast<WriteJob*>(req->data);
        if (!j->error.empty()) log::warn("state_save_failed", {{"error", j->error}});
        delete j;
      });
  if (rc != 0) {
    log::warn("state_save_failed", {{"error", uv_strerror(rc)}});
    delete job;
  }
}

}  // namespace mailcar
