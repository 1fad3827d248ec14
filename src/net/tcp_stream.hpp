// Stream over a uv_tcp_t, plain or TLS. Created by Listener (accept) and connect_tcp.
#pragma once

#include <sys/socket.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mailcar/net.hpp"
#include "net/tls_engine.hpp"

namespace mailcar::net {

class TcpStream final : public Stream, public std::enable_shared_from_this<TcpStream> {
  struct Tag {};

 public:
  // The handle holds a reference to the stream until both of its uv handles are closed.
  static std::shared_ptr<TcpStream> create(uv_loop_t* loop);
  TcpStream(Tag, uv_loop_t* loop);
  ~TcpStream() override;

  uv_tcp_t* tcp() { return &tcp_; }
  // The socket is connected (accepted or connect succeeded): TCP_NODELAY, remember the peer.
  void attach_connected();

  void on_data(DataFn fn) override;
  void on_close(CloseFn fn) override;
  void on_drain(std::function<void()> fn) override;
  void set_line_delivery(bool lines) override { line_delivery_ = lines; }
  void write(std::string bytes) override;
  size_t write_backlog() const override;
  void pause_reading() override;
  void resume_reading() override;
  void start_tls_client(const TlsClientOptions& options, DoneFn done) override;
  void start_tls_server(std::shared_ptr<TlsServerContext> context, DoneFn done) override;
  bool tls_active() const override { return tls_state_ != TlsState::None; }
  const TlsPeerInfo* tls_peer_info() const override {
    if (tls_) return &tls_->peer_info();
    return last_tls_peer_ ? &*last_tls_peer_ : nullptr;
  }
  void close() override;
  void close_promptly() override;
  void abort() override;
  bool closed() const override { return state_ != State::Open; }
  std::string peer_address() const override;
  bool peer_is_loopback() const override;

 private:
  enum class State {
    Open,      // reading and writing
    Flushing,  // close(): queued writes drain, then shutdown(SHUT_WR)
    Draining,  // write side shut; discard input until EOF so the peer gets our last bytes
    Closing,   // uv_close issued; on_close fires from the close callback
  };
  enum class TlsState { None, Handshaking, Established };

  static void on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf);
  static void on_timer(uv_timer_t* timer);
  static void on_handle_closed(uv_handle_t* handle);

  uv_stream_t* uv_stream() { return reinterpret_cast<uv_stream_t*>(&tcp_); }
  void start_tls(std::unique_ptr<TlsEngine> engine, const NetError& error, DoneFn done);
  void update_reading();
  void schedule_delivery();
  void deliver_plain(const char* data, size_t size);
  void call_data(std::string_view bytes);
  void drive_tls();
  void drain_tls();
  void flush_tls();
  void write_raw(std::string bytes);
  void handle_eof();
  void fail(NetErrorKind kind, std::string detail);
  void set_reason(NetErrorKind kind, std::string detail);
  void begin_graceful_close();
  void hard_close(bool reset);
  void finish();

  uv_tcp_t tcp_;
  uv_timer_t timer_;  // deferred delivery while Open; close deadline while Flushing/Draining
  uv_shutdown_t shutdown_req_;
  std::shared_ptr<TcpStream> self_;
  int open_handles_ = 0;

  State state_ = State::Open;
  bool reading_ = false;
  bool paused_ = false;
  bool eof_ = false;
  bool shutdown_started_ = false;
  bool prompt_close_ = false;  // close_promptly(): no wait for the peer's EOF

  DataFn data_fn_;
  DataFn replacement_data_fn_;  // on_data() called from inside data_fn_
  bool in_data_cb_ = false;
  bool has_replacement_ = false;
  CloseFn close_fn_;
  std::function<void()> drain_fn_;
  bool line_delivery_ = true;
  DoneFn done_fn_;
  NetError reason_;

  std::string held_;  // plaintext not delivered because reading was paused mid-chunk

  TlsState tls_state_ = TlsState::None;
  std::unique_ptr<TlsEngine> tls_;
  std::optional<TlsPeerInfo> last_tls_peer_;  // kept when the engine goes (issue 9 probes)
  std::vector<std::string> pending_writes_;  // plaintext written during the handshake
  size_t pending_bytes_ = 0;

  sockaddr_storage peer_{};
  bool has_peer_ = false;
};

}  // namespace mailcar::net
