// Hashing and RSA signing for the layers above net/ (DKIM, idempotency request hashes). The
// implementation is mbedTLS, kept in src/net/ with the rest of the TLS library's use.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "mailcar/result.hpp"

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

// An RSA private key for signing (DKIM, SPEC §10.2): RSASSA-PKCS1-v1_5 over SHA-256, with
// blinding from its own CTR_DRBG. Loaded once (start or reload, off the loop); the key
// material never leaves this object and nothing here logs it. sign_sha256() may be called from
// any thread: up to four calls run at once, each on its own parsed copy of the key (the
// blinding state is per copy); more wait for one.
class RsaKey {
 public:
  // A PEM (PKCS#1 "RSA PRIVATE KEY" or PKCS#8 "PRIVATE KEY") RSA key of 1024-4096 bits,
  // unencrypted. The error says what is wrong without quoting the key.
  static Result<RsaKey> load_pem(std::string_view pem);

  RsaKey(RsaKey&&) noexcept;
  RsaKey& operator=(RsaKey&&) noexcept;
  ~RsaKey();

  size_t bits() const;
  // The signature (bits()/8 bytes) of a SHA-256 digest; an Error only if mbedTLS fails.
  Result<std::string> sign_sha256(const Sha256Digest& digest);
  // The public key as DER SubjectPublicKeyInfo, what a DKIM TXT record's p= holds in base64.
  std::string public_der() const;

 private:
  struct Impl;
  explicit RsaKey(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mailcar::crypto
