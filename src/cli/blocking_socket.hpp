// A blocking TCP connection with a deadline on every step, for the short-lived command-line
// tools (sendmail, --health-check). Never used by the daemon, whose loop must not block.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "mailcar/result.hpp"

namespace mailcar::cli {

class BlockingSocket {
 public:
  enum class Status { Ok, Closed, TimedOut, Failed };
  struct Received {
    Status status = Status::Ok;
    std::string data;   // Ok: at least one byte
    std::string error;  // Failed: strerror text
  };

  BlockingSocket() = default;
  BlockingSocket(BlockingSocket&& other) noexcept;
  BlockingSocket& operator=(BlockingSocket&& other) noexcept;
  BlockingSocket(const BlockingSocket&) = delete;
  BlockingSocket& operator=(const BlockingSocket&) = delete;
  ~BlockingSocket();

  // `host` is a literal IPv4 or IPv6 address. The error says what failed ("connection
  // refused", "timed out after 10 s").
  static Result<BlockingSocket> connect(const std::string& host, uint16_t port, int timeout_ms);
  // Writes everything within `timeout_ms`.
  Status send_all(std::string_view bytes, int timeout_ms);
  // Waits up to `timeout_ms` for data; returns at most `max_bytes`.
  Received receive(size_t max_bytes, int timeout_ms);

 private:
  explicit BlockingSocket(int fd) : fd_(fd) {}
  int fd_ = -1;
};

}  // namespace mailcar::cli
