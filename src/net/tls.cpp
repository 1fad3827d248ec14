// mbedTLS glue: shared RNG, client configurations (cached per CA file), the server context,
// and TlsEngine. Differences between mbedTLS 2.28 and 3.x are confined to this file.
#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/version.h>
#include <mbedtls/x509_crt.h>
#if MBEDTLS_VERSION_MAJOR >= 3
#include <psa/crypto.h>
#endif

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <map>
#include <utility>

#include "net/tls_engine.hpp"

namespace mailcar::net {
namespace {

constexpr char kDefaultCaFile[] = "/etc/ssl/certs/ca-certificates.crt";

std::string mbedtls_text(int code) {
  char buffer[160] = {};
  mbedtls_strerror(code, buffer, sizeof buffer);
  return buffer;
}

// One RNG for the process: the loop is single-threaded.
struct Rng {
  mbedtls_entropy_context entropy;
  mbedtls_ctr_drbg_context drbg;
  bool ok = false;

  Rng() {
    mbedtls_entropy_init(&entropy);
    mbedtls_ctr_drbg_init(&drbg);
#if MBEDTLS_VERSION_MAJOR >= 3
    if (psa_crypto_init() != PSA_SUCCESS) return;
#endif
    static constexpr unsigned char kPersonalization[] = "mailcar";
    ok = mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &entropy, kPersonalization,
                               sizeof kPersonalization - 1) == 0;
  }
  ~Rng() {
    mbedtls_ctr_drbg_free(&drbg);
    mbedtls_entropy_free(&entropy);
  }
  Rng(const Rng&) = delete;
  Rng& operator=(const Rng&) = delete;
};

mbedtls_ctr_drbg_context* shared_rng() {
  static Rng rng;
  return rng.ok ? &rng.drbg : nullptr;
}

void set_min_tls12(mbedtls_ssl_config* config) {
#if MBEDTLS_VERSION_MAJOR >= 3
  mbedtls_ssl_conf_min_tls_version(config, MBEDTLS_SSL_VERSION_TLS1_2);
#else
  mbedtls_ssl_conf_min_version(config, MBEDTLS_SSL_MAJOR_VERSION_3, MBEDTLS_SSL_MINOR_VERSION_3);
#endif
}

int parse_key_file(mbedtls_pk_context* key, const std::string& file,
                   mbedtls_ctr_drbg_context* rng) {
#if MBEDTLS_VERSION_MAJOR >= 3
  return mbedtls_pk_parse_keyfile(key, file.c_str(), nullptr, mbedtls_ctr_drbg_random, rng);
#else
  (void)rng;
  return mbedtls_pk_parse_keyfile(key, file.c_str(), nullptr);
#endif
}

int check_key_pair(const mbedtls_pk_context* pub, const mbedtls_pk_context* key,
                   mbedtls_ctr_drbg_context* rng) {
#if MBEDTLS_VERSION_MAJOR >= 3
  return mbedtls_pk_check_pair(pub, key, mbedtls_ctr_drbg_random, rng);
#else
  (void)rng;
  return mbedtls_pk_check_pair(pub, key);
#endif
}

// mbedTLS reads a whole file into memory: refuse what is not a regular file of sane size
// before it does (a FIFO would block, /dev/zero would never end).
Result<void> check_file_size(std::string_view key, const std::string& file, size_t max_bytes) {
  struct stat info {};
  if (::stat(file.c_str(), &info) != 0) {
    return make_error(std::string(key) + " " + file + ": " + std::strerror(errno));
  }
  if (!S_ISREG(info.st_mode))
    return make_error(std::string(key) + " " + file + ": not a regular file");
  if (static_cast<uint64_t>(info.st_size) > max_bytes) {
    return make_error(std::string(key) + " " + file + ": larger than the limit of " +
                      std::to_string(max_bytes) + " bytes");
  }
  return {};
}

// Parses the certificate chain and the private key and checks that the key belongs to the
// first certificate. Error texts name the files and mbedTLS's reason, never key material.
Result<void> load_key_pair(mbedtls_x509_crt* chain, mbedtls_pk_context* key,
                           const std::string& cert_file, const std::string& key_file,
                           mbedtls_ctr_drbg_context* rng) {
  auto cert_ok = check_file_size("tls_cert", cert_file, kMaxTlsFileBytes);
  auto key_ok = check_file_size("tls_key", key_file, kMaxTlsFileBytes);
  if (!cert_ok && !key_ok)
    return make_error(cert_ok.error().message + "\n" + key_ok.error().message);
  if (!cert_ok) return cert_ok;
  if (!key_ok) return key_ok;
  int rc = mbedtls_x509_crt_parse_file(chain, cert_file.c_str());
  if (rc != 0) {
    return make_error("tls_cert " + cert_file + ": cannot load certificate chain (" +
                      mbedtls_text(rc) + ")");
  }
  rc = parse_key_file(key, key_file, rng);
  if (rc != 0) {
    return make_error("tls_key " + key_file + ": cannot load private key (" + mbedtls_text(rc) +
                      ")");
  }
  if (check_key_pair(&chain->pk, key, rng) != 0) {
    return make_error("tls_key " + key_file + ": does not match the certificate in tls_cert " +
                      cert_file);
  }
  return {};
}

struct SslConfig {
  mbedtls_ssl_config config;
  mbedtls_x509_crt ca;
  SslConfig() {
    mbedtls_ssl_config_init(&config);
    mbedtls_x509_crt_init(&ca);
  }
  ~SslConfig() {
    mbedtls_ssl_config_free(&config);
    mbedtls_x509_crt_free(&ca);
  }
  SslConfig(const SslConfig&) = delete;
  SslConfig& operator=(const SslConfig&) = delete;
};

// Parsing the system CA bundle costs milliseconds: do it once per (file, verify) and share the
// read-only configuration between sessions. A reload empties the cache (forget_ca_files), so a
// rotated CA file is read again by the next connection. Loop thread only.
std::map<std::pair<std::string, bool>, std::shared_ptr<SslConfig>>& client_config_cache() {
  static std::map<std::pair<std::string, bool>, std::shared_ptr<SslConfig>> cache;
  return cache;
}

std::shared_ptr<SslConfig> client_config(const TlsClientOptions& options, NetError* error) {
  auto& cache = client_config_cache();
  std::string ca_file = options.ca_file.empty() ? kDefaultCaFile : options.ca_file;
  auto key = std::make_pair(options.verify ? ca_file : std::string(), options.verify);
  if (auto it = cache.find(key); it != cache.end()) return it->second;

  auto* rng = shared_rng();
  if (!rng) {
    *error = {NetErrorKind::Tls, "TLS random number generator failed to seed"};
    return nullptr;
  }
  auto config = std::make_shared<SslConfig>();
  if (options.verify) {
    if (auto size = check_file_size("ca_file", ca_file, kMaxCaFileBytes); !size) {
      *error = {NetErrorKind::Tls, size.error().message};
      return nullptr;
    }
    int rc = mbedtls_x509_crt_parse_file(&config->ca, ca_file.c_str());
    if (rc < 0) {  // > 0: some certificates of a bundle were skipped, the rest are usable
      *error = {NetErrorKind::Tls, "ca_file " + ca_file + ": " + mbedtls_text(rc)};
      return nullptr;
    }
  }
  int rc = mbedtls_ssl_config_defaults(&config->config, MBEDTLS_SSL_IS_CLIENT,
                                       MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
  if (rc != 0) {
    *error = {NetErrorKind::Tls, "TLS configuration: " + mbedtls_text(rc)};
    return nullptr;
  }
  set_min_tls12(&config->config);
  mbedtls_ssl_conf_rng(&config->config, mbedtls_ctr_drbg_random, rng);
  if (options.verify) {
    mbedtls_ssl_conf_authmode(&config->config, MBEDTLS_SSL_VERIFY_REQUIRED);
    mbedtls_ssl_conf_ca_chain(&config->config, &config->ca, nullptr);
  } else {
    mbedtls_ssl_conf_authmode(&config->config, MBEDTLS_SSL_VERIFY_NONE);
  }
  cache.emplace(key, config);
  return config;
}

std::string describe_verify_flags(uint32_t flags) {
  static constexpr std::pair<uint32_t, const char*> kNames[] = {
      {MBEDTLS_X509_BADCERT_NOT_TRUSTED, "certificate not trusted"},
      {MBEDTLS_X509_BADCERT_CN_MISMATCH, "host name mismatch"},
      {MBEDTLS_X509_BADCERT_EXPIRED, "expired"},
      {MBEDTLS_X509_BADCERT_FUTURE, "not yet valid"},
      {MBEDTLS_X509_BADCERT_REVOKED, "revoked"},
  };
  std::string text;
  auto add = [&text](std::string_view part) {
    if (!text.empty()) text += "; ";
    text += part;
  };
  for (const auto& [flag, name] : kNames) {
    if (flags & flag) {
      add(name);
      flags &= ~flag;
    }
  }
  if (flags != 0) {  // anything else in mbedTLS's words, one line per reason
    char buffer[512] = {};
    mbedtls_x509_crt_verify_info(buffer, sizeof buffer, "", flags);
    std::string info = buffer;
    size_t start = 0;
    while (start < info.size()) {
      size_t end = info.find('\n', start);
      if (end == std::string::npos) end = info.size();
      if (end > start) add(std::string_view(info).substr(start, end - start));
      start = end + 1;
    }
  }
  return text.empty() ? "certificate verification failed" : text;
}

class ServerContext final : public TlsServerContext {
 public:
  ServerContext() {
    mbedtls_x509_crt_init(&chain);
    mbedtls_pk_init(&key);
    mbedtls_ssl_config_init(&config);
  }
  ~ServerContext() override {
    mbedtls_ssl_config_free(&config);
    mbedtls_pk_free(&key);
    mbedtls_x509_crt_free(&chain);
  }
  ServerContext(const ServerContext&) = delete;
  ServerContext& operator=(const ServerContext&) = delete;

  mbedtls_x509_crt chain;
  mbedtls_pk_context key;
  mbedtls_ssl_config config;
};

}  // namespace

// ---- server context ----

bool looks_like_tls_client_hello(std::string_view first_bytes) {
  constexpr char kHandshakeRecord = 0x16;
  constexpr char kMajorVersion = 0x03;
  if (first_bytes.empty() || first_bytes[0] != kHandshakeRecord) return false;
  return first_bytes.size() < 2 || first_bytes[1] == kMajorVersion;
}

void forget_ca_files() {
  client_config_cache().clear();  // sessions that hold a configuration keep it alive
}

Result<std::shared_ptr<TlsServerContext>> TlsServerContext::load(const std::string& cert_file,
                                                                 const std::string& key_file) {
  auto* rng = shared_rng();
  Rng parse_rng;  // its own for parsing: a reload loads on the thread pool (issue 13)
  if (!rng || !parse_rng.ok) return make_error("TLS random number generator failed to seed");
  auto context = std::make_shared<ServerContext>();
  if (auto r = load_key_pair(&context->chain, &context->key, cert_file, key_file, &parse_rng.drbg);
      !r) {
    return r.error();
  }
  int rc = mbedtls_ssl_config_defaults(&context->config, MBEDTLS_SSL_IS_SERVER,
                                       MBEDTLS_SSL_TRANSPORT_STREAM, MBEDTLS_SSL_PRESET_DEFAULT);
  if (rc != 0) return make_error("TLS configuration: " + mbedtls_text(rc));
  set_min_tls12(&context->config);
  mbedtls_ssl_conf_rng(&context->config, mbedtls_ctr_drbg_random, rng);
  mbedtls_ssl_conf_authmode(&context->config, MBEDTLS_SSL_VERIFY_NONE);
  rc = mbedtls_ssl_conf_own_cert(&context->config, &context->chain, &context->key);
  if (rc != 0) return make_error("tls_cert " + cert_file + ": " + mbedtls_text(rc));
  return std::shared_ptr<TlsServerContext>(std::move(context));
}

Result<void> check_server_credentials(const std::string& cert_file, const std::string& key_file) {
  Rng rng;  // its own: this may run on the thread pool (reload) while the loop uses the shared one
  if (!rng.ok) return make_error("TLS random number generator failed to seed");
  mbedtls_x509_crt chain;
  mbedtls_pk_context key;
  mbedtls_x509_crt_init(&chain);
  mbedtls_pk_init(&key);
  auto result = load_key_pair(&chain, &key, cert_file, key_file, &rng.drbg);
  mbedtls_pk_free(&key);
  mbedtls_x509_crt_free(&chain);
  return result;
}

Result<void> check_ca_file(const std::string& ca_file) {
  if (auto r = check_file_size("ca_file", ca_file, kMaxCaFileBytes); !r) return r;
  mbedtls_x509_crt ca;
  mbedtls_x509_crt_init(&ca);
  int rc = mbedtls_x509_crt_parse_file(&ca, ca_file.c_str());
  mbedtls_x509_crt_free(&ca);
  // > 0: some certificates of a bundle were skipped, the rest are usable (as when connecting).
  if (rc < 0)
    return make_error("ca_file " + ca_file + ": no usable certificate (" + mbedtls_text(rc) + ")");
  return {};
}

// ---- engine ----

TlsEngine::TlsEngine() {
  mbedtls_ssl_init(&ssl_);
}

TlsEngine::~TlsEngine() {
  mbedtls_ssl_free(&ssl_);
}

std::unique_ptr<TlsEngine> TlsEngine::make_client(const TlsClientOptions& options,
                                                  NetError* error) {
  auto config = client_config(options, error);
  if (!config) return nullptr;
  std::unique_ptr<TlsEngine> engine(new TlsEngine);
  engine->config_ = config;
  engine->verify_ = options.verify;
  int rc = mbedtls_ssl_setup(&engine->ssl_, &config->config);
  if (rc == 0 && !options.server_name.empty()) {
    rc = mbedtls_ssl_set_hostname(&engine->ssl_, options.server_name.c_str());
  }
  if (rc != 0) {
    *error = {NetErrorKind::Tls, "TLS setup: " + mbedtls_text(rc)};
    return nullptr;
  }
  mbedtls_ssl_set_bio(&engine->ssl_, engine.get(), send_cb, recv_cb, nullptr);
  if (options.verify) mbedtls_ssl_set_verify(&engine->ssl_, verify_cb, engine.get());
  return engine;
}

namespace {

// The leaf certificate's subject and DNS names, for TlsPeerInfo.
void describe_certificate(const mbedtls_x509_crt& crt, TlsPeerInfo& info) {
  info.have_certificate = true;
  char buffer[1024] = {};
  if (mbedtls_x509_dn_gets(buffer, sizeof buffer, &crt.subject) > 0) info.subject = buffer;
  info.dns_names.clear();
  for (const mbedtls_x509_sequence* san = &crt.subject_alt_names; san != nullptr; san = san->next) {
    if (san->buf.p == nullptr || san->buf.len == 0) continue;
    if (san->buf.tag != (MBEDTLS_ASN1_CONTEXT_SPECIFIC | MBEDTLS_X509_SAN_DNS_NAME)) continue;
    if (info.dns_names.size() >= 32) break;  // enough to say which names it has
    info.dns_names.emplace_back(reinterpret_cast<const char*>(san->buf.p), san->buf.len);
  }
}

void set_verify_result(uint32_t flags, TlsPeerInfo& info) {
  info.verify_flags = flags;
  info.name_mismatch = (flags & MBEDTLS_X509_BADCERT_CN_MISMATCH) != 0;
  info.not_trusted = (flags & MBEDTLS_X509_BADCERT_NOT_TRUSTED) != 0;
  info.verify_text = flags == 0 ? std::string() : describe_verify_flags(flags);
}

}  // namespace

// Called by mbedTLS for each certificate of the chain, the server's own last (depth 0), with
// the host name check already in its flags. Records; never changes the verdict.
int TlsEngine::verify_cb(void* context, mbedtls_x509_crt* crt, int depth, uint32_t* flags) {
  auto* engine = static_cast<TlsEngine*>(context);
  if (depth == 0 && crt != nullptr) {
    describe_certificate(*crt, engine->peer_);
    set_verify_result(*flags, engine->peer_);
  }
  return 0;
}

std::unique_ptr<TlsEngine> TlsEngine::make_server(const std::shared_ptr<TlsServerContext>& context,
                                                  NetError* error) {
  auto server = std::dynamic_pointer_cast<ServerContext>(context);
  if (!server) {
    *error = {NetErrorKind::Tls, "no TLS server context"};
    return nullptr;
  }
  std::unique_ptr<TlsEngine> engine(new TlsEngine);
  engine->config_ = server;
  int rc = mbedtls_ssl_setup(&engine->ssl_, &server->config);
  if (rc != 0) {
    *error = {NetErrorKind::Tls, "TLS setup: " + mbedtls_text(rc)};
    return nullptr;
  }
  mbedtls_ssl_set_bio(&engine->ssl_, engine.get(), send_cb, recv_cb, nullptr);
  return engine;
}

int TlsEngine::send_cb(void* context, const unsigned char* data, size_t size) {
  auto* engine = static_cast<TlsEngine*>(context);
  engine->out_.append(reinterpret_cast<const char*>(data), size);
  return static_cast<int>(size);
}

int TlsEngine::recv_cb(void* context, unsigned char* data, size_t size) {
  auto* engine = static_cast<TlsEngine*>(context);
  size_t available = engine->in_.size() - engine->in_pos_;
  if (available == 0) return MBEDTLS_ERR_SSL_WANT_READ;
  size_t n = std::min(size, available);
  std::memcpy(data, engine->in_.data() + engine->in_pos_, n);
  engine->in_pos_ += n;
  if (engine->in_pos_ == engine->in_.size()) {
    engine->in_.clear();
    engine->in_pos_ = 0;
  }
  return static_cast<int>(n);
}

void TlsEngine::feed(std::string_view ciphertext) {
  if (in_pos_ > 0 && in_pos_ >= in_.size() / 2) {
    in_.erase(0, in_pos_);
    in_pos_ = 0;
  }
  in_.append(ciphertext);
  if (peer_.first_bytes.size() < 16) {
    peer_.first_bytes.append(ciphertext.substr(0, 16 - peer_.first_bytes.size()));
  }
}

bool TlsEngine::has_input() const {
  return in_pos_ < in_.size() || mbedtls_ssl_get_bytes_avail(&ssl_) > 0 ||
         mbedtls_ssl_check_pending(&ssl_) != 0;
}

NetError TlsEngine::handshake_error(int code) {
  uint32_t flags = mbedtls_ssl_get_verify_result(&ssl_);
  bool verify_failed = code == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED ||
                       (verify_ && flags != 0 && flags != static_cast<uint32_t>(-1));
  if (verify_failed) {
    if (flags != static_cast<uint32_t>(-1)) set_verify_result(flags, peer_);
    return {NetErrorKind::Certificate, describe_verify_flags(flags)};
  }
  return {NetErrorKind::Tls, "TLS handshake failed: " + mbedtls_text(code)};
}

TlsEngine::Status TlsEngine::handshake(NetError* error) {
  int rc = mbedtls_ssl_handshake(&ssl_);
  if (rc == 0) {
    peer_.handshake_done = true;
    peer_.version = mbedtls_ssl_get_version(&ssl_);
    peer_.cipher = mbedtls_ssl_get_ciphersuite(&ssl_);
    if (!peer_.have_certificate) {
      if (const mbedtls_x509_crt* crt = mbedtls_ssl_get_peer_cert(&ssl_)) {
        describe_certificate(*crt, peer_);
      }
    }
    return Status::Done;
  }
  if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) return Status::WantMore;
  *error = handshake_error(rc);
  return Status::Failed;
}

TlsEngine::Status TlsEngine::read(char* buffer, size_t capacity, size_t* size, NetError* error) {
  for (;;) {
    int rc = mbedtls_ssl_read(&ssl_, reinterpret_cast<unsigned char*>(buffer), capacity);
    if (rc > 0) {
      *size = static_cast<size_t>(rc);
      return Status::Done;
    }
    if (rc == 0 || rc == MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY) return Status::Eof;
    if (rc == MBEDTLS_ERR_SSL_WANT_READ || rc == MBEDTLS_ERR_SSL_WANT_WRITE) {
      return Status::WantMore;
    }
#if defined(MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET)
    if (rc == MBEDTLS_ERR_SSL_RECEIVED_NEW_SESSION_TICKET) continue;  // TLS 1.3, 3.x
#endif
    *error = {NetErrorKind::Tls, "TLS read: " + mbedtls_text(rc)};
    return Status::Failed;
  }
}

bool TlsEngine::write(std::string_view plaintext, NetError* error) {
  // The memory BIO accepts every byte, so WANT_WRITE cannot occur; records are <= 16 KiB.
  const auto* data = reinterpret_cast<const unsigned char*>(plaintext.data());
  size_t left = plaintext.size();
  while (left > 0) {
    int rc = mbedtls_ssl_write(&ssl_, data, left);
    if (rc <= 0) {
      *error = {NetErrorKind::Tls, "TLS write: " + mbedtls_text(rc)};
      return false;
    }
    data += rc;
    left -= static_cast<size_t>(rc);
  }
  return true;
}

void TlsEngine::close_notify() {
  mbedtls_ssl_close_notify(&ssl_);
}

}  // namespace mailcar::net
