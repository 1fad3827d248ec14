// mbedTLS session over memory buffers: ciphertext in via feed(), ciphertext out via outgoing().
// No I/O here; TcpStream moves the bytes. All mbedTLS 2.x/3.x differences live in tls.cpp.
#pragma once

#include <mbedtls/ssl.h>

#include <memory>
#include <string>
#include <string_view>

#include "mailcar/net.hpp"

namespace mailcar::net {

class TlsEngine {
 public:
  enum class Status { WantMore, Done, Eof, Failed };

  // nullptr with *error set when the configuration (CA file, RNG) cannot be set up.
  static std::unique_ptr<TlsEngine> make_client(const TlsClientOptions& options, NetError* error);
  static std::unique_ptr<TlsEngine> make_server(const std::shared_ptr<TlsServerContext>& context,
                                                NetError* error);
  ~TlsEngine();
  TlsEngine(const TlsEngine&) = delete;
  TlsEngine& operator=(const TlsEngine&) = delete;

  void feed(std::string_view ciphertext);
  // Unprocessed ciphertext or decrypted-but-unread plaintext is waiting.
  bool has_input() const;

  Status handshake(NetError* error);
  // Done with *size > 0 bytes of plaintext in buffer; WantMore when no full record is buffered.
  Status read(char* buffer, size_t capacity, size_t* size, NetError* error);
  bool write(std::string_view plaintext, NetError* error);
  void close_notify();
  // Ciphertext to send; the caller takes it (swap/clear).
  std::string& outgoing() { return out_; }
  // Client side: what the handshake saw of the server (issue 9 probes).
  const TlsPeerInfo& peer_info() const { return peer_; }

 private:
  TlsEngine();
  static int send_cb(void* context, const unsigned char* data, size_t size);
  static int recv_cb(void* context, unsigned char* data, size_t size);
  NetError handshake_error(int code);  // also records the verify result in peer_
  static int verify_cb(void* context, mbedtls_x509_crt* crt, int depth, uint32_t* flags);

  mbedtls_ssl_context ssl_;
  std::shared_ptr<const void> config_;  // keeps the shared mbedtls_ssl_config and its certs alive
  bool verify_ = false;
  std::string in_;
  size_t in_pos_ = 0;
  std::string out_;
  TlsPeerInfo peer_;
};

}  // namespace mailcar::net
