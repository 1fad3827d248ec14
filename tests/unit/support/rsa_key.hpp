// A fresh RSA private key in PEM, made with mbedTLS at test time (1024 bits by default: fast
// enough for a unit test; never a key checked into the repository).
#pragma once

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/pk.h>
#include <mbedtls/rsa.h>

#include <string>

namespace mailcar::test {

inline std::string make_rsa_key_pem(unsigned bits = 1024) {
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  mbedtls_pk_context pk;
  mbedtls_entropy_init(&entropy);
  mbedtls_ctr_drbg_init(&drbg);
  mbedtls_pk_init(&pk);
  unsigned char buf[8192] = {};
  bool ok =
      mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, nullptr, 0) == 0 &&
      mbedtls_pk_setup(&pk, mbedtls_pk_info_from_type(MBEDTLS_PK_RSA)) == 0 &&
      mbedtls_rsa_gen_key(mbedtls_pk_rsa(pk), mbedtls_ctr_drbg_random, &drbg, bits, 65537) == 0 &&
      mbedtls_pk_write_key_pem(&pk, buf, sizeof buf) == 0;
  mbedtls_pk_free(&pk);
  mbedtls_ctr_drbg_free(&drbg);
  mbedtls_entropy_free(&entropy);
  return ok ? std::string(reinterpret_cast<const char*>(buf)) : std::string();
}

}  // namespace mailcar::test
