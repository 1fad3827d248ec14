#include "mailcar/crypto.hpp"

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/sha256.h>

#include <algorithm>
#include <array>
#include <atomic>
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

namespace {

// One parsed copy of the key with its own random generator (for RSA blinding).
struct RsaSlot {
  std::mutex mutex;
  mbedtls_pk_context pk;
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  RsaSlot() {
    mbedtls_pk_init(&pk);
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
  }
  ~RsaSlot() {
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    mbedtls_pk_free(&pk);
  }
  RsaSlot(const RsaSlot&) = delete;
  RsaSlot& operator=(const RsaSlot&) = delete;
};

// As many copies as libuv's default thread pool has threads, so signing jobs on the pool do
// not wait for each other (and do not hold pool threads that spool writes need).
constexpr size_t kRsaSlots = 4;

// Parses `pem` (NUL-terminated, `size` counting the NUL) into `slot`; "" or what is wrong.
std::string parse_slot(RsaSlot& slot, const std::string& pem) {
  int rc = mbedtls_pk_parse_key(&slot.pk, reinterpret_cast<const unsigned char*>(pem.c_str()),
                                pem.size() + 1, nullptr, 0);
  if (rc == MBEDTLS_ERR_PK_PASSWORD_REQUIRED) return "the key is encrypted";
  if (rc != 0) return "not a valid PEM private key";
  if (mbedtls_pk_get_type(&slot.pk) != MBEDTLS_PK_RSA) return "not an RSA key";
  size_t bits = mbedtls_pk_get_bitlen(&slot.pk);
  if (bits < 1024 || bits > 4096) {
    return "RSA key of " + std::to_string(bits) + " bits (1024-4096 allowed)";
  }
  static constexpr char kPersonal[] = "mailcar-dkim";
  if (mbedtls_ctr_drbg_seed(&slot.drbg, mbedtls_entropy_func, &slot.entropy,
                            reinterpret_cast<const unsigned char*>(kPersonal),
                            sizeof kPersonal - 1) != 0) {
    return "cannot seed the random generator";
  }
  return {};
}

}  // namespace

struct RsaKey::Impl {
  std::array<RsaSlot, kRsaSlots> slots;
  std::atomic<size_t> next{0};
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
  std::string text(pem);  // PEM input must be NUL-terminated
  std::string problem;
  for (RsaSlot& slot : impl->slots) {
    problem = parse_slot(slot, text);
    if (!problem.empty()) break;
  }
  std::fill(text.begin(), text.end(), '\0');  // no copy of the key left behind
  if (!problem.empty()) return make_error(std::move(problem));
  return RsaKey(std::move(impl));
}

size_t RsaKey::bits() const {
  return mbedtls_pk_get_bitlen(&impl_->slots[0].pk);
}

Result<std::string> RsaKey::sign_sha256(const Sha256Digest& digest) {
  // A free slot if there is one, else wait for the one this call was dealt.
  const size_t start = impl_->next.fetch_add(1, std::memory_order_relaxed);
  RsaSlot* slot = nullptr;
  std::unique_lock<std::mutex> lock;
  for (size_t i = 0; i < kRsaSlots && slot == nullptr; ++i) {
    RsaSlot& candidate = impl_->slots[(start + i) % kRsaSlots];
    lock = std::unique_lock<std::mutex>(candidate.mutex, std::try_to_lock);
    if (lock.owns_lock()) slot = &candidate;
  }
  if (slot == nullptr) {
    slot = &impl_->slots[start % kRsaSlots];
    lock = std::unique_lock<std::mutex>(slot->mutex);
  }
  unsigned char sig[MBEDTLS_PK_SIGNATURE_MAX_SIZE];
  size_t len = 0;
  int rc = mbedtls_pk_sign(&slot->pk, MBEDTLS_MD_SHA256, digest.data(), digest.size(), sig, &len,
                           mbedtls_ctr_drbg_random, &slot->drbg);
  if (rc != 0) return make_error("RSA signing failed (mbedTLS error " + std::to_string(rc) + ")");
  return std::string(reinterpret_cast<const char*>(sig), len);
}

std::string RsaKey::public_der() const {
  unsigned char buf[2048];
  // mbedtls_pk_write_pubkey_der writes at the END of the buffer and returns the length.
  int len = mbedtls_pk_write_pubkey_der(&impl_->slots[0].pk, buf, sizeof buf);
  if (len <= 0) return {};
  return std::string(reinterpret_cast<const char*>(buf) + sizeof buf - static_cast<size_t>(len),
                     static_cast<size_t>(len));
}

}  // namespace mailcar::crypto
