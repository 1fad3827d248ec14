// Blocking spool file operations for the thread pool; see file_ops.hpp.
#include "spool/file_ops.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace mailcar::spool_io {

namespace {

constexpr size_t kChunk = 64 * 1024;

class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) ::close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

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

// Reads exactly `n` bytes at `offset`; 0 or an errno (EIO for a short file).
int read_exact(int fd, char* out, size_t n, uint64_t offset) {
  while (n > 0) {
    ssize_t got = ::pread(fd, out, n, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (got == 0) return EIO;
    out += got;
    n -= static_cast<size_t>(got);
    offset += static_cast<uint64_t>(got);
  }
  return 0;
}

std::string free_name(int dirfd, const std::string& name) {
  std::string target = "corrupt/" + name;
  for (int n = 1; exists_at(dirfd, target) && n < 10000; ++n) {
    target = "corrupt/" + name + "." + std::to_string(n);
  }
  return target;
}

}  // namespace

SpoolStatus status_from_errno(int err, std::string_view what) {
  SpoolStatus s;
  s.code = (err == ENOSPC || err == EDQUOT || err == EFBIG) ? SpoolErrc::Full
           : err == ENOENT                                  ? SpoolErrc::NotFound
                                                            : SpoolErrc::Io;
  s.detail = std::string(what) + ": " + std::strerror(err);
  return s;
}

SpoolStatus start_temp(int dirfd, const std::string& name,
                       const std::vector<std::string_view>& pieces, int& fd) {
  std::string tmp = name + ".tmp";
  fd = ::openat(dirfd, tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return status_from_errno(errno, tmp);
  int err = 0;
  for (std::string_view piece : pieces) {
    if ((err = write_all(fd, piece)) != 0) break;
  }
  if (err == 0) {
    // Only a hint; the fdatasync in finish_temp() is what makes it durable.
    ::sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
    return {};
  }
  ::close(fd);
  fd = -1;
  ::unlinkat(dirfd, tmp.c_str(), 0);
  return status_from_errno(err, tmp);
}

SpoolStatus finish_temp(int dirfd, const std::string& name, int fd, Tally& tally) {
  int err = ::fdatasync(fd) != 0 ? errno : 0;
  ++tally.file_fsyncs;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err == 0) return {};
  std::string tmp = name + ".tmp";
  ::unlinkat(dirfd, tmp.c_str(), 0);
  return status_from_errno(err, tmp);
}

int rename_noreplace(int dirfd, const std::string& from, const std::string& to) {
#ifdef RENAME_NOREPLACE
  if (::renameat2(dirfd, from.c_str(), dirfd, to.c_str(), RENAME_NOREPLACE) == 0) return 0;
  if (errno != EINVAL && errno != ENOSYS) return errno;
#endif
  if (::linkat(dirfd, from.c_str(), dirfd, to.c_str(), 0) != 0) return errno;
  ::unlinkat(dirfd, from.c_str(), 0);
  return 0;
}

uint64_t file_size_at(int dirfd, const std::string& name) {
  struct stat st {};
  if (::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) return 0;
  return static_cast<uint64_t>(st.st_size);
}

bool exists_at(int dirfd, const std::string& name) {
  struct stat st {};
  return ::fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) == 0;
}

void quarantine(int dirfd, const std::string& id, std::string reason, Tally& tally,
                std::vector<Note>& notes) {
  for (const std::string& name : {id + ".msg", id + ".state"}) {
    uint64_t size = file_size_at(dirfd, name);
    std::string target = free_name(dirfd, name);
    if (::renameat(dirfd, name.c_str(), dirfd, target.c_str()) == 0) {
      tally.bytes -= static_cast<int64_t>(size);
      if (name.ends_with(".msg")) {
        --tally.messages;
        ++tally.quarantined;
      }
    } else if (errno != ENOENT) {
      // Could not move it: unlink rather than ever deliver it.
      ::unlinkat(dirfd, name.c_str(), 0);
      notes.push_back({"spool_cleanup_failed", id, name + ": " + std::strerror(errno)});
    }
  }
  notes.push_back({"spool_corrupt", id, std::move(reason)});
}

Result<std::string> read_small(int dirfd, const std::string& name, uint64_t limit) {
  Fd fd(::openat(dirfd, name.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return make_error(name + ": " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return make_error(name + ": " + std::strerror(errno));
  auto size = static_cast<uint64_t>(st.st_size);
  if (size > limit) return make_error(name + ": too large");
  std::string out(size, '\0');
  if (int err = read_exact(fd.get(), out.data(), out.size(), 0); err != 0) {
    return make_error(name + ": " + std::strerror(err));
  }
  return out;
}

ReadOutcome read_message(int dirfd, const std::string& id, Tally& tally, std::vector<Note>& notes) {
  ReadOutcome out;
  std::string name = id + ".msg";
  if (!exists_at(dirfd, name)) {
    out.status = status_from_errno(ENOENT, name);
    return out;
  }
  auto file = read_small(dirfd, name, kMaxHeaderLen + (uint64_t{1} << 32));
  if (!file.ok()) {
    out.status = {SpoolErrc::Io, file.error().message};
    return out;
  }
  auto decoded = decode_msg_file(*file);
  if (!decoded.ok() || decoded->record.id != id) {
    std::string reason = decoded.ok() ? "id does not match the file name" : decoded.error().message;
    quarantine(dirfd, id, reason, tally, notes);
    out.status = {SpoolErrc::Corrupt, name + ": " + reason};
    return out;
  }
  size_t offset = static_cast<size_t>(decoded->data.data() - file->data());
  out.message.record = std::move(decoded->record);
  out.message.data = std::move(file).value();
  out.message.data.erase(0, offset);
  return out;
}

namespace {

// The seal and header of an open .msg, its size checked against the seal.
struct MsgHead {
  MsgSeal seal;
  std::string header;
  uint64_t file_size = 0;
};

Result<MsgHead> read_msg_head(int fd) {
  MsgHead out;
  struct stat st {};
  if (::fstat(fd, &st) != 0) return make_error(std::string("stat: ") + std::strerror(errno));
  out.file_size = static_cast<uint64_t>(st.st_size);
  std::string head(std::min<uint64_t>(kMaxSealLen, out.file_size), '\0');
  if (read_exact(fd, head.data(), head.size(), 0) != 0) return make_error("read failed");
  auto seal = parse_msg_seal(head);
  if (!seal.ok()) return seal.error();
  out.seal = *seal;
  if (out.file_size != seal->seal_len + seal->header_len + seal->data_len) {
    return make_error("size does not match");
  }
  out.header.assign(seal->header_len, '\0');
  if (read_exact(fd, out.header.data(), out.header.size(), seal->seal_len) != 0) {
    return make_error("read failed");
  }
  return out;
}

Result<SpoolRecord> parse_head(const MsgHead& head, const std::string& id) {
  auto record = parse_msg_header(head.header, head.seal);
  if (!record.ok()) return record.error();
  if (record->id != id) return make_error("id does not match the file name");
  return record;
}

}  // namespace

Result<SpoolRecord> verify_message(int dirfd, const std::string& id, uint64_t& file_size) {
  std::string name = id + ".msg";
  Fd fd(::openat(dirfd, name.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return make_error(std::string("open: ") + std::strerror(errno));
  auto head = read_msg_head(fd.get());
  if (!head.ok()) return head.error();
  file_size = head->file_size;
  uint32_t crc = crc32c_update(0, head->header);
  std::string chunk(kChunk, '\0');
  uint64_t offset = head->seal.seal_len + head->seal.header_len;
  for (uint64_t left = head->seal.data_len; left > 0;) {
    size_t n = static_cast<size_t>(std::min<uint64_t>(left, kChunk));
    if (read_exact(fd.get(), chunk.data(), n, offset) != 0) return make_error("read failed");
    crc = crc32c_update(crc, std::string_view(chunk.data(), n));
    offset += n;
    left -= n;
  }
  if (crc != head->seal.crc) return make_error("checksum does not match");
  return parse_head(*head, id);
}

Result<SpoolRecord> read_header(int dirfd, const std::string& id) {
  std::string name = id + ".msg";
  Fd fd(::openat(dirfd, name.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) return make_error(name + ": " + std::strerror(errno));
  auto head = read_msg_head(fd.get());
  if (!head.ok()) return head.error();
  return parse_head(*head, id);
}

}  // namespace mailcar::spool_io
