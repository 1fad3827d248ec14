// libFuzzer: DKIM canonicalization and signing over arbitrary message bytes. Checks that the
// canonical body is a fixed point for bodies that end in CRLF, that every canonical header is
// one lower-case-named field ending in CRLF, and that signing any message gives one
// DKIM-Signature field that splits off as the first field of the signed message.
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/rsa.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "mailcar/dkim.hpp"

namespace {

// One 1024-bit key for the whole run, made once with mbedTLS.
mailcar::crypto::RsaKey& key() {
  static mailcar::crypto::RsaKey* k = [] {
    mbedtls_entropy_context entropy;
    mbedtls_ctr_drbg_context drbg;
    mbedtls_pk_context pk;
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
    mbedtls_pk_init(&pk);
    unsigned char pem[4096] = {};
    if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, nullptr, 0) != 0 ||
        mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA)) != 0 ||
        mbedtls_rsa_gen_key(mbedtls_pk_rsa(pk), mbedtls_ctr_drbg_random, &drbg, 1024, 65537) != 0 ||
        mbedtls_pk_write_key_pem(&pk, pem, sizeof pem) != 0) {
      std::abort();
    }
    mbedtls_pk_free(&pk);
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
    auto loaded = mailcar::crypto::RsaKey::load_pem(reinterpret_cast<const char*>(pem));
    if (!loaded) std::abort();
    return new mailcar::crypto::RsaKey(std::move(loaded).value());
  }();
  return *k;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  namespace dkim = mailcar::dkim;
  std::string_view message(reinterpret_cast<const char*>(data), size);
  dkim::SplitMessage split = dkim::split_message(message);
  for (std::string_view field : split.fields) {
    std::string canon = dkim::relaxed_header(field);
    if (!canon.ends_with("\r\n") || canon.find(':') == std::string::npos) std::abort();
    for (char c : canon.substr(0, canon.find(':'))) {
      if (c >= 'A' && c <= 'Z') std::abort();
    }
  }
  std::string body = dkim::relaxed_body(split.body);
  if (!body.empty() && (!body.ends_with("\r\n") || body.ends_with("\r\n\r\n"))) std::abort();
  if (split.body.empty() || split.body.ends_with("\r\n")) {
    if (dkim::relaxed_body(body) != body) std::abort();
  }
  (void)dkim::canonical_signed_fields(split, dkim::signed_field_list(split));
  auto field = dkim::sign(message, {"example.com", "sel", 1700000000}, key());
  if (!field) std::abort();
  // (A message that starts with WSP would continue the new field: messages mailcar signs
  // start with a header field.)
  if (message.empty() || (message[0] != ' ' && message[0] != '\t')) {
    std::string signed_message = *field + std::string(message);
    dkim::SplitMessage again = dkim::split_message(signed_message);
    if (again.fields.empty() || again.fields.front().size() + 2 != field->size()) std::abort();
  }
  return 0;
}
