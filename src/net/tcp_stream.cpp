#include "net/tcp_stream.hpp"

#include <cstring>
#include <utility>

#include "net/address.hpp"

namespace mailcar::net {
namespace {

constexpr size_t kReadBufferSize = 64 * 1024;
constexpr size_t kPlaintextBufferSize = 16 * 1024;  // one TLS record
constexpr uint64_t kCloseDeadlineMs = 10'000;       // flush + drain after close()
constexpr uint64_t kPromptCloseDeadlineMs = 1'000;  // flush after close_promptly()

// Reads are consumed synchronously in the read callback, so one buffer per loop thread serves
// every stream: an idle connection costs no read buffer.
char* read_buffer() {
  static thread_local std::unique_ptr<char[]> buffer(new char[kReadBufferSize]);
  return buffer.get();
}

char* plaintext_buffer() {
  static thread_local std::unique_ptr<char[]> buffer(new char[kPlaintextBufferSize]);
  return buffer.get();
}

void alloc_read(uv_handle_t* /*handle*/, size_t /*suggested*/, uv_buf_t* buf) {
  *buf = uv_buf_init(read_buffer(), kReadBufferSize);
}

struct WriteRequest {
  uv_write_t req;
  std::string data;
};

std::string uv_text(int code) {
  return uv_strerror(code);
}

}  // namespace

std::shared_ptr<TcpStream> TcpStream::create(uv_loop_t* loop) {
  auto stream = std::make_shared<TcpStream>(Tag{}, loop);
  stream->self_ = stream;
  return stream;
}

TcpStream::TcpStream(Tag, uv_loop_t* loop) {
  uv_tcp_init(loop, &tcp_);
  uv_timer_init(loop, &timer_);
  tcp_.data = this;
  timer_.data = this;
  open_handles_ = 2;
}

TcpStream::~TcpStream() = default;

void TcpStream::attach_connected() {
  uv_tcp_nodelay(&tcp_, 1);
  int length = sizeof peer_;
  has_peer_ = uv_tcp_getpeername(&tcp_, reinterpret_cast<sockaddr*>(&peer_), &length) == 0;
}

std::string TcpStream::peer_address() const {
  return has_peer_ ? format_address(reinterpret_cast<const sockaddr*>(&peer_)) : std::string();
}

bool TcpStream::peer_is_loopback() const {
  return has_peer_ && is_loopback_address(reinterpret_cast<const sockaddr*>(&peer_));
}

// ---- reading ----

void TcpStream::on_data(DataFn fn) {
  if (in_data_cb_) {
    replacement_data_fn_ = std::move(fn);
    has_replacement_ = true;
    return;
  }
  data_fn_ = std::move(fn);
  if (data_fn_ && !paused_) schedule_delivery();
  update_reading();
}

void TcpStream::on_drain(std::function<void()> fn) {
  drain_fn_ = std::move(fn);
}

void TcpStream::on_close(CloseFn fn) {
  close_fn_ = std::move(fn);
}

void TcpStream::pause_reading() {
  paused_ = true;
  update_reading();
}

void TcpStream::resume_reading() {
  if (!paused_) return;
  paused_ = false;
  schedule_delivery();
  update_reading();
}

// Buffered input is delivered from a timer callback, never from inside the caller's call.
void TcpStream::schedule_delivery() {
  if (state_ != State::Open) return;
  bool buffered = !held_.empty() || (tls_state_ == TlsState::Established && tls_->has_input());
  if (buffered) uv_timer_start(&timer_, on_timer, 0, 0);
}

void TcpStream::update_reading() {
  bool want = false;
  if (state_ == State::Open) {
    want = !eof_ && (tls_state_ == TlsState::Handshaking ||
                     (data_fn_ && !paused_ && held_.empty() && !has_replacement_));
  } else if (state_ == State::Draining) {
    want = !eof_;
  }
  if (want && !reading_) {
    int rc = uv_read_start(uv_stream(), alloc_read, on_read);
    if (rc < 0) return fail(NetErrorKind::Io, "read: " + uv_text(rc));
    reading_ = true;
  } else if (!want && reading_) {
    uv_read_stop(uv_stream());
    reading_ = false;
  }
}

void TcpStream::on_read(uv_stream_t* stream, ssize_t nread, const uv_buf_t* buf) {
  auto* self = static_cast<TcpStream*>(stream->data);
  if (nread == 0) return;
  if (self->state_ == State::Draining) {
    if (nread < 0) {
      self->eof_ = true;
      self->reading_ = false;
      self->hard_close(false);
    }
    return;
  }
  if (self->state_ != State::Open) return;
  if (nread < 0) {
    self->reading_ = false;
    if (nread == UV_EOF) return self->handle_eof();
    return self->fail(NetErrorKind::Io, "read: " + uv_text(static_cast<int>(nread)));
  }
  auto size = static_cast<size_t>(nread);
  if (self->tls_state_ != TlsState::None) {
    self->tls_->feed(std::string_view(buf->base, size));
    self->drive_tls();
  } else {
    self->deliver_plain(buf->base, size);
  }
}

// Plaintext goes out one line (up to and including LF) per call, so that a callback which
// starts TLS or closes mid-chunk stops the delivery: the rest of the chunk is discarded and
// never interpreted as plaintext (STARTTLS command injection).
void TcpStream::deliver_plain(const char* data, size_t size) {
  while (size > 0) {
    if (state_ != State::Open || tls_state_ != TlsState::None) return;
    if (paused_ || !data_fn_ || has_replacement_) {
      held_.assign(data, size);
      update_reading();
      return;
    }
    const void* lf = line_delivery_ ? std::memchr(data, '\n', size) : nullptr;
    size_t length = lf ? static_cast<size_t>(static_cast<const char*>(lf) - data) + 1 : size;
    call_data(std::string_view(data, length));
    data += length;
    size -= length;
  }
}

void TcpStream::call_data(std::string_view bytes) {
  in_data_cb_ = true;
  data_fn_(bytes);
  in_data_cb_ = false;
  if (has_replacement_) {
    data_fn_ = std::move(replacement_data_fn_);
    replacement_data_fn_ = nullptr;
    has_replacement_ = false;
  }
}

void TcpStream::on_timer(uv_timer_t* timer) {
  auto* self = static_cast<TcpStream*>(timer->data);
  if (self->state_ == State::Open) {
    if (self->tls_state_ == TlsState::Established) {
      self->drain_tls();
    } else if (!self->held_.empty()) {
      std::string held = std::move(self->held_);
      self->held_.clear();
      self->deliver_plain(held.data(), held.size());
    }
    self->update_reading();
  } else if (self->state_ == State::Flushing || self->state_ == State::Draining) {
    self->hard_close(true);  // the peer did not take our bytes or did not close in time
  }
}

void TcpStream::handle_eof() {
  eof_ = true;
  if (tls_state_ == TlsState::Handshaking) {
    set_reason(NetErrorKind::Closed, "connection closed during TLS handshake");
  } else {
    set_reason(NetErrorKind::Closed, "peer closed the connection");
  }
  begin_graceful_close();
}

// ---- TLS ----

void TcpStream::start_tls_client(const TlsClientOptions& options, DoneFn done) {
  if (state_ != State::Open) return;
  NetError error;
  auto engine = tls_state_ == TlsState::None ? TlsEngine::make_client(options, &error) : nullptr;
  start_tls(std::move(engine), error, std::move(done));
}

void TcpStream::start_tls_server(std::shared_ptr<TlsServerContext> context, DoneFn done) {
  if (state_ != State::Open) return;
  NetError error;
  auto engine = tls_state_ == TlsState::None ? TlsEngine::make_server(context, &error) : nullptr;
  start_tls(std::move(engine), error, std::move(done));
}

void TcpStream::start_tls(std::unique_ptr<TlsEngine> engine, const NetError& error, DoneFn done) {
  done_fn_ = std::move(done);
  if (tls_state_ != TlsState::None) return fail(NetErrorKind::Tls, "TLS already started");
  if (!engine) return fail(error.kind, error.detail);
  held_.clear();  // undelivered plaintext from before the upgrade is never interpreted
  tls_ = std::move(engine);
  tls_state_ = TlsState::Handshaking;
  drive_tls();
  update_reading();
}

void TcpStream::drive_tls() {
  if (tls_state_ == TlsState::Handshaking) {
    NetError error;
    auto status = tls_->handshake(&error);
    flush_tls();
    if (status == TlsEngine::Status::Failed) return fail(error.kind, error.detail);
    if (status != TlsEngine::Status::Done) return;
    tls_state_ = TlsState::Established;
    for (auto& bytes : pending_writes_) {
      if (!tls_->write(bytes, &error)) return fail(error.kind, error.detail);
    }
    pending_writes_.clear();
    pending_bytes_ = 0;
    flush_tls();
    if (auto done = std::move(done_fn_)) {
      done_fn_ = nullptr;
      done(NetError{});
    }
    if (state_ != State::Open) return;
  }
  drain_tls();
  update_reading();
}

void TcpStream::drain_tls() {
  char* buffer = plaintext_buffer();
  while (state_ == State::Open && !paused_ && data_fn_ && !has_replacement_) {
    size_t size = 0;
    NetError error;
    auto status = tls_->read(buffer, kPlaintextBufferSize, &size, &error);
    flush_tls();
    if (status == TlsEngine::Status::WantMore) return;
    if (status == TlsEngine::Status::Eof) return handle_eof();
    if (status == TlsEngine::Status::Failed) return fail(error.kind, error.detail);
    call_data(std::string_view(buffer, size));
  }
}

void TcpStream::flush_tls() {
  if (!tls_ || tls_->outgoing().empty()) return;
  std::string out;
  out.swap(tls_->outgoing());
  write_raw(std::move(out));
}

// ---- writing ----

void TcpStream::write(std::string bytes) {
  if (state_ != State::Open || bytes.empty()) return;
  if (tls_state_ == TlsState::Handshaking) {
    pending_bytes_ += bytes.size();
    pending_writes_.push_back(std::move(bytes));
    return;
  }
  if (tls_state_ == TlsState::Established) {
    NetError error;
    if (!tls_->write(bytes, &error)) return fail(error.kind, error.detail);
    return flush_tls();
  }
  write_raw(std::move(bytes));
}

void TcpStream::write_raw(std::string bytes) {
  if (state_ == State::Closing || state_ == State::Draining) return;
  uv_buf_t buf = uv_buf_init(bytes.data(), static_cast<unsigned>(bytes.size()));
  if (uv_stream_get_write_queue_size(uv_stream()) == 0) {
    int sent = uv_try_write(uv_stream(), &buf, 1);
    if (sent == static_cast<int>(bytes.size())) return;
    if (sent < 0 && sent != UV_EAGAIN) return fail(NetErrorKind::Io, "write: " + uv_text(sent));
    if (sent > 0) bytes.erase(0, static_cast<size_t>(sent));
  }
  auto* request = new WriteRequest;
  request->req.data = request;
  request->data = std::move(bytes);
  buf = uv_buf_init(request->data.data(), static_cast<unsigned>(request->data.size()));
  int rc = uv_write(&request->req, uv_stream(), &buf, 1, [](uv_write_t* req, int status) {
    auto* owned = static_cast<WriteRequest*>(req->data);
    auto* self = static_cast<TcpStream*>(req->handle->data);
    delete owned;
    if (status < 0 && status != UV_ECANCELED && self->state_ != State::Closing) {
      self->fail(NetErrorKind::Io, "write: " + uv_text(status));
    } else if (status >= 0 && self->state_ == State::Open && self->drain_fn_ &&
               self->write_backlog() == 0) {
      auto fn = self->drain_fn_;  // the callback may replace or clear drain_fn_
      fn();
    }
  });
  if (rc < 0) {
    delete request;
    fail(NetErrorKind::Io, "write: " + uv_text(rc));
  }
}

size_t TcpStream::write_backlog() const {
  return uv_stream_get_write_queue_size(reinterpret_cast<const uv_stream_t*>(&tcp_)) +
         pending_bytes_;
}

// ---- closing ----

void TcpStream::set_reason(NetErrorKind kind, std::string detail) {
  if (reason_.kind == NetErrorKind::None) reason_ = NetError{kind, std::move(detail)};
}

void TcpStream::fail(NetErrorKind kind, std::string detail) {
  set_reason(kind, std::move(detail));
  hard_close(false);
}

void TcpStream::close() {
  if (state_ != State::Open) return;
  done_fn_ = nullptr;
  set_reason(NetErrorKind::Closed, "closed");
  begin_graceful_close();
}

void TcpStream::close_promptly() {
  prompt_close_ = true;
  if (state_ == State::Open) return close();
  if (state_ == State::Draining) return hard_close(false);  // our FIN is out: stop waiting
  if (state_ == State::Flushing) uv_timer_start(&timer_, on_timer, kPromptCloseDeadlineMs, 0);
}

void TcpStream::abort() {
  done_fn_ = nullptr;
  set_reason(NetErrorKind::Closed, "aborted");
  hard_close(true);
}

void TcpStream::begin_graceful_close() {
  if (state_ != State::Open) return;
  state_ = State::Flushing;
  held_.clear();
  pending_writes_.clear();
  pending_bytes_ = 0;
  update_reading();
  if (tls_state_ == TlsState::Established) {
    tls_->close_notify();
    flush_tls();
    if (state_ != State::Flushing) return;
  }
  uv_timer_start(&timer_, on_timer, prompt_close_ ? kPromptCloseDeadlineMs : kCloseDeadlineMs, 0);
  int rc = uv_shutdown(&shutdown_req_, uv_stream(), [](uv_shutdown_t* req, int status) {
    auto* self = static_cast<TcpStream*>(req->handle->data);
    if (self->state_ != State::Flushing) return;
    if (status < 0 || self->eof_ || self->prompt_close_) return self->hard_close(false);
    self->state_ = State::Draining;
    self->update_reading();
  });
  if (rc < 0) return hard_close(false);
  shutdown_started_ = true;
}

void TcpStream::hard_close(bool reset) {
  if (state_ == State::Closing) return;
  state_ = State::Closing;
  if (reading_) uv_read_stop(uv_stream());
  reading_ = false;
  uv_timer_stop(&timer_);
  auto* handle = reinterpret_cast<uv_handle_t*>(&tcp_);
  if (!(reset && !shutdown_started_ && uv_tcp_close_reset(&tcp_, on_handle_closed) == 0)) {
    uv_close(handle, on_handle_closed);
  }
  uv_close(reinterpret_cast<uv_handle_t*>(&timer_), on_handle_closed);
}

void TcpStream::on_handle_closed(uv_handle_t* handle) {
  auto* self = static_cast<TcpStream*>(handle->data);
  if (--self->open_handles_ == 0) self->finish();
}

// Last act: report, then drop the handle's reference (which may destroy the stream).
void TcpStream::finish() {
  auto keep_alive = std::move(self_);
  self_ = nullptr;
  data_fn_ = nullptr;
  replacement_data_fn_ = nullptr;
  drain_fn_ = nullptr;
  if (tls_) last_tls_peer_ = tls_->peer_info();
  tls_.reset();
  if (reason_.kind == NetErrorKind::None) reason_ = NetError{NetErrorKind::Closed, "closed"};
  if (auto done = std::move(done_fn_)) {
    done_fn_ = nullptr;
    done(reason_);
  }
  if (auto closed_fn = std::move(close_fn_)) {
    close_fn_ = nullptr;
    closed_fn(reason_);
  }
}

}  // namespace mailcar::net
