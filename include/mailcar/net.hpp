// I/O glue at the edge: libuv TCP streams with optional mbedTLS (memory BIO, non-blocking),
// listeners, outbound connects with async DNS, and timers. Protocol code never sees a socket;
// it is fed bytes by whoever owns a Stream.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <uv.h>

#include "mailcar/config.hpp"
#include "mailcar/result.hpp"

namespace mailcar::net {

enum class NetErrorKind {
  None,
  Resolve,      // name did not resolve
  Refused,      // ECONNREFUSED, unreachable, reset during connect
  TimedOut,     // connect or handshake timer ran out
  Certificate,  // peer certificate chain or host name did not verify
  Tls,          // other TLS failure (handshake alert, protocol)
  Closed,       // peer closed the connection
  Io,           // other socket error
};

struct NetError {
  NetErrorKind kind = NetErrorKind::None;
  std::string detail;  // human text, e.g. "certificate not trusted; host name mismatch"
};

struct TlsClientOptions {
  bool verify = true;
  std::string ca_file;      // empty: /etc/ssl/certs/ca-certificates.crt (parsed once, cached)
  std::string server_name;  // SNI and the name checked against the certificate; set it when
                            // verify is true (mbedTLS 2.28 skips the name check if empty)
};

// What a client TLS handshake saw (issue 9: `--check --probe` explains TLS trouble). Filled
// while the handshake runs, so a failed one still tells what the server sent.
struct TlsPeerInfo {
  bool handshake_done = false;
  std::string version;                 // "TLSv1.2", "TLSv1.3" (after a handshake)
  std::string cipher;                  // after a handshake
  bool have_certificate = false;       // the server's leaf certificate was received
  std::string subject;                 // its subject DN ("CN=mail.example.com, O=...")
  std::vector<std::string> dns_names;  // its subjectAltName DNS names
  uint32_t verify_flags = 0;           // mbedTLS MBEDTLS_X509_BADCERT_* bits; 0: verified
  bool name_mismatch = false;          // the certificate does not name the server_name
  bool not_trusted = false;            // the chain does not lead to a trusted CA
  std::string verify_text;             // the flags in words; empty when they are 0
  std::string first_bytes;             // the first bytes the server sent (at most 16)
};

// Certificate + key for server-side TLS (SMTP STARTTLS, implicit TLS). Shared by the sessions
// of the listeners. load() reads files (blocking) and may run on the thread pool (reload).
class TlsServerContext {
 public:
  static Result<std::shared_ptr<TlsServerContext>> load(const std::string& cert_file,
                                                        const std::string& key_file);
  virtual ~TlsServerContext() = default;

 protected:
  TlsServerContext() = default;
};

// Largest certificate or key file mbedTLS is asked to read; a CA bundle may be larger.
inline constexpr size_t kMaxTlsFileBytes = 1024 * 1024;
inline constexpr size_t kMaxCaFileBytes = 16 * 1024 * 1024;

// What TlsServerContext::load checks, without keeping anything: both files parse (at most
// kMaxTlsFileBytes each) and the key belongs to the certificate. The error names the file(s):
// "tls_cert FILE: ...", "tls_key FILE: ...", "tls_key FILE: does not match the certificate in
// tls_cert FILE"; one line per file when neither can be read. Blocking file reads; safe on any
// thread (used by --check and reload).
Result<void> check_server_credentials(const std::string& cert_file, const std::string& key_file);
// The first bytes a client sent begin a TLS record of type handshake (0x16, version 3.x): a
// client that wanted implicit TLS reached a plaintext listener. No SMTP command and no HTTP
// method begins with 0x16. One byte is enough to tell; a second must be 0x03.
bool looks_like_tls_client_hello(std::string_view first_bytes);
// Certificate rotation (issue 13): forget the parsed ca_file bundles, so that connections
// made from now on read the files again. Loop thread only; open connections are unaffected.
void forget_ca_files();
// A CA bundle (ca_file) holds at least one certificate mbedTLS can parse ("ca_file FILE: ...").
Result<void> check_ca_file(const std::string& ca_file);

// A connected byte stream, plain or TLS. Owned by shared_ptr; stays alive until its libuv
// handle is closed even if the owner drops it, but after close() no callback fires.
//
// Callbacks never fire from inside a call into the Stream (or connect_tcp): always from the loop.
// Delivery: in plaintext mode on_data gets one line (up to and including LF, or the tail of a
// read) per call. If the callback calls start_tls_*, close() or abort(), the rest of that read
// is discarded, never delivered: after STARTTLS every byte read is TLS input, on both sides
// (a server sends no TLS bytes before the client saw its 220, so the client drops the rest too).
// If it calls pause_reading(), the rest is held and delivered after resume_reading().
// In TLS mode on_data gets decrypted records (up to 16 KiB per call).
// End: on_close fires exactly once (unless cleared) when the stream is gone: Closed after
// close()/abort() or the peer's EOF/close_notify, Io on socket errors, the handshake error after a
// failed start_tls_*. The peer's EOF ends the stream (no half-close: later writes are dropped).
class Stream {
 public:
  using DataFn = std::function<void(std::string_view bytes)>;  // plaintext
  using CloseFn = std::function<void(const NetError& why)>;    // once; then nothing more
  using DoneFn = std::function<void(const NetError& error)>;   // kind None on success

  virtual ~Stream() = default;

  // Start delivering data. Reading starts on the first call.
  virtual void on_data(DataFn fn) = 0;
  virtual void on_close(CloseFn fn) = 0;
  // Plaintext is handed to on_data one line per call by default, so that a callback that
  // starts TLS mid-chunk stops delivery (STARTTLS injection defence). A consumer that parses
  // whole chunks safely itself (HTTP; SMTP message data) turns that off for speed.
  virtual void set_line_delivery(bool lines) = 0;
  // Called (from the loop) each time queued writes have all been handed to the kernel, so a
  // writer of a large body can refill without polling. nullptr clears it.
  virtual void on_drain(std::function<void()> fn) = 0;

  // Queue bytes for sending (encrypted when TLS is active). Never blocks.
  virtual void write(std::string bytes) = 0;
  // Bytes queued but not yet handed to the kernel.
  virtual size_t write_backlog() const = 0;

  virtual void pause_reading() = 0;
  virtual void resume_reading() = 0;

  // Upgrade to TLS. Bytes that arrive before the handshake completes are handshake data;
  // plaintext the peer sent before the upgrade and not yet delivered is discarded (never
  // interpreted after the upgrade: STARTTLS command injection). `done` fires once.
  // Writes made during the handshake are sent encrypted once it completes. On failure `done`
  // gets the error (Certificate, Tls, Closed, Io), then the stream closes (on_close: same error).
  // After close()/abort() `done` does not fire. A handshake timeout is the caller's Timer.
  virtual void start_tls_client(const TlsClientOptions& options, DoneFn done) = 0;
  virtual void start_tls_server(std::shared_ptr<TlsServerContext> context, DoneFn done) = 0;
  virtual bool tls_active() const = 0;
  // A client TLS handshake's view of the server (see TlsPeerInfo); nullptr before
  // start_tls_client(). Stays readable after a failed handshake, while the Stream lives.
  virtual const TlsPeerInfo* tls_peer_info() const { return nullptr; }

  // Flush queued writes, then close. Idempotent. on_close fires (kind Closed) unless the
  // owner cleared it. TLS sends close_notify; unflushed bytes are dropped after 10 s.
  virtual void close() = 0;
  // close() for a server that is stopping: queued writes still go out (for at most 1 s), but
  // the peer's EOF is not awaited, so an idle client that never reads or closes does not hold
  // the stop up. Also cuts short a close() already waiting for the peer.
  virtual void close_promptly() = 0;
  // Close now, dropping queued writes (RST where possible).
  virtual void abort() = 0;
  virtual bool closed() const = 0;

  virtual std::string peer_address() const = 0;  // "ip:port", "[v6]:port"
  virtual bool peer_is_loopback() const = 0;
};

using StreamPtr = std::shared_ptr<Stream>;

// Resolve `host` (async, uv_getaddrinfo), connect to the first address that answers, within
// `timeout_ms` in total. `done` fires once on the loop thread, never from inside this call:
// a stream (TCP_NODELAY set) and kind None, or nullptr and Resolve / Refused / TimedOut / Io.
void connect_tcp(uv_loop_t* loop, const std::string& host, uint16_t port, uint64_t timeout_ms,
                 std::function<void(StreamPtr stream, const NetError& error)> done);

class Listener {
 public:
  using AcceptFn = std::function<void(StreamPtr stream)>;
  // Bind and listen on a literal IP address and port.
  static Result<std::unique_ptr<Listener>> open(uv_loop_t* loop, const ListenAddress& address,
                                                AcceptFn on_accept);
  virtual ~Listener() = default;
  virtual void close() = 0;  // stop accepting; existing streams are unaffected
  virtual bool is_loopback() const = 0;
  virtual uint16_t port() const = 0;  // the bound port (useful with port 0 in tests)
};

// A one-shot or repeating timer whose handle closes safely when the Timer is destroyed.
class Timer {
 public:
  explicit Timer(uv_loop_t* loop);
  ~Timer();
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  void start(uint64_t timeout_ms, std::function<void()> fn, uint64_t repeat_ms = 0);
  void stop();
  bool active() const;

 private:
  struct Handle;
  Handle* handle_;
};

// A deadline on the loop's clock (uv_now), checked when its timer fires. Moving it later costs
// no timer restart (a timer that fires early sleeps again for the rest), so a connection may
// move it on every read; moving it earlier re-arms the timer. `on_expired` runs once per
// expiry, from the loop; it may set, clear or destroy the Deadline.
class Deadline {
 public:
  Deadline(uv_loop_t* loop, std::function<void()> on_expired);
  Deadline(const Deadline&) = delete;
  Deadline& operator=(const Deadline&) = delete;
  void set(uint64_t at_ms);  // absolute, on now()'s clock
  void clear();
  bool armed() const { return armed_; }
  uint64_t at() const { return at_; }
  uint64_t now() const;

 private:
  void arm(uint64_t at_ms);
  void fired();

  uv_loop_t* loop_;
  std::function<void()> on_expired_;
  Timer timer_;
  uint64_t at_ = 0;
  uint64_t timer_at_ = 0;  // when the uv timer fires, if it runs
  bool armed_ = false;
};

// "1.2.3.4:25" -> "1.2.3.4", "[::1]:25" -> "::1" (Stream::peer_address() without the port).
std::string host_of(std::string_view peer_address);

// Open connections per client address, for a listener's limits.max_connections_per_client.
class ConnectionsPerClient {
 public:
  unsigned count(const std::string& host) const;  // open now
  void add(const void* connection, const std::string& host);
  void remove(const void* connection);  // unknown connections are ignored

 private:
  std::unordered_map<const void*, std::string> host_of_;
  std::unordered_map<std::string, unsigned> open_;
};

}  // namespace mailcar::net
