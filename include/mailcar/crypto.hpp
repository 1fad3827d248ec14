// Hashing for the layers above net/ (DKIM body hashes, idempotency request hashes). The
// implementation is mbedTLS, kept in src/net/ with the rest of the TLS library's use.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace mailcar::crypto {

using Sha256Digest = std::array<uint8_t, 32>;

// Incremental SHA-256: update() any number of times, then finish() once.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void update(std::string_view bytes);
  Sha256Digest finish();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

Sha256Digest sha256(std::string_view bytes);
std::string hex(const Sha256Digest& digest);  // lower-case, 64 characters

}  // namespace mailcar::crypto
