#include "mailcar/crypto.hpp"

#include <mbedtls/sha256.h>

namespace mailcar::crypto {

struct Sha256::Impl {
  mbedtls_sha256_context ctx;
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {
  mbedtls_sha256_init(&impl_->ctx);
  // mbedTLS 2.28 (Debian 12): the _ret forms; 0 selects SHA-256, not SHA-224.
  (void)mbedtls_sha256_starts_ret(&impl_->ctx, 0);
}

Sha256::~Sha256() {
  mbedtls_sha256_free(&impl_->ctx);
}

void Sha256::update(std::string_view bytes) {
  (void)mbedtls_sha256_update_ret(&impl_->ctx, reinterpret_cast<const unsigned char*>(bytes.data()),
                                  bytes.size());
}

Sha256Digest Sha256::finish() {
  Sha256Digest out{};
  (void)mbedtls_sha256_finish_ret(&impl_->ctx, out.data());
  return out;
}

Sha256Digest sha256(std::string_view bytes) {
  Sha256 h;
  h.update(bytes);
  return h.finish();
}

std::string hex(const Sha256Digest& digest) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out;
  out.reserve(digest.size() * 2);
  for (uint8_t b : digest) {
    out.push_back(kDigits[b >> 4]);
    out.push_back(kDigits[b & 0xf]);
  }
  return out;
}

}  // namespace mailcar::crypto
