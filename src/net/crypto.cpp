#include "mailcar/crypto.hpp"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>

#include <algorithm>
#include <mutex>
#include <string>
#include <utility>

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

// ---- RSA signing (DKIM) ----------------------------------------------------------------------

namespace mailcar::crypto {

struct RsaKey::Impl {
  std::mutex mutex;  // sign() runs on libuv's thread pool; the blinding state is per key
  mbedtls_pk_context pk;
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  Impl() {
    mbedtls_pk_init(&pk);
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
  }
  ~Impl() {
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    mbedtls_pk_free(&pk);
  }
  Impl(const Impl&) = delete;
  Impl& operator=(const Impl&) = delete;
};

RsaKey::RsaKey(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
RsaKey::RsaKey(RsaKey&&) noexcept = default;
RsaKey& RsaKey::operator=(RsaKey&&) noexcept = default;
RsaKey::~RsaKey() = default;

Result<RsaKey> RsaKey::load_pem(std::string_view pem) {
  if (pem.find("-----BEGIN") == std::string_view::npos) {
    return make_error("not a PEM key (no -----BEGIN line)");
  }
  auto impl = std::make_unique<Impl>();
  // PEM input must be NUL-terminated and the length must count the NUL.
  std::string text(pem);
  int rc = mbedtls_pk_parse_key(&impl->pk, reinterpret_cast<const unsigned char*>(text.c_str()),
                                text.size() + 1, nullptr, 0);
  std::fill(text.begin(), text.end(), '\0');  // no copy of the key left behind
  if (rc != 0) {
    if (rc == MBEDTLS_ERR_PK_PASSWORD_REQUIRED) return make_error("the key is encrypted");
    return make_error("not a valid PEM private key");
  }
  if (mbedtls_pk_get_type(&impl->pk) != MBEDTLS_PK_RSA) return make_error("not an RSA key");
  size_t bits = mbedtls_pk_get_bitlen(&impl->pk);
  if (bits < 1024 || bits > 4096) {
    return make_error("RSA key of " + std::to_string(bits) + " bits (1024-4096 allowed)");
  }
  static constexpr char kPersonal[] = "mailcar-dkim";
  if (mbedtls_ctr_drbg_seed(&impl->drbg, mbedtls_entropy_func, &impl->entropy,
                            reinterpret_cast<const unsigned char*>(kPersonal),
                            sizeof kPersonal - 1) != 0) {
    return make_error("cannot seed the random generator");
  }
  return RsaKey(std::move(impl));
}

size_t RsaKey::bits() const {
  return mbedtls_pk_get_bitlen(&impl_->pk);
}

Result<std::string> RsaKey::sign_sha256(const Sha256Digest& digest) {
  unsigned char sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
  size_t len = 0;
  std::lock_guard<std::mutex> lock(impl_->mutex);
  int rc = mbedtls_pk_sign(&impl_->pk, MBEDTLS_MD_SHA256, digest.data(), digest.size(), sig, &len,
                           mbedtls_ctr_drbg_random, &impl_->drbg);
  if (rc != 0) return make_error("RSA signing failed (mbedTLS error " + std::to_string(rc) + ")");
  return std::string(reinterpret_cast<const char*>(sig), len);
}

std::string RsaKey::public_der() const {
  unsigned char buf[2048];
  // mbedtls_pk_write_pubkey_der writes at the END of the buffer and returns the length.
  int len = mbedtls_pk_write_pubkey_der(&impl_->pk, buf, sizeof buf);
  if (len <= 0) return {};
  return std::string(reinterpret_cast<const char*>(buf) + sizeof buf - static_cast<size_t>(len),
                     static_cast<size_t>(len));
}

}  // namespace mailcar::crypto
