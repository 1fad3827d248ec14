#include <netdb.h>

#include <cstring>
#include <utility>
#include <vector>

#include "mailcar/net.hpp"
#include "net/tcp_stream.hpp"

namespace mailcar::net {
namespace {

using ConnectDone = std::function<void(StreamPtr stream, const NetError& error)>;

NetErrorKind connect_error_kind(int code) {
  switch (code) {
    case UV_ECONNREFUSED:
    case UV_ENETUNREACH:
    case UV_EHOSTUNREACH:
    case UV_ECONNRESET:
      return NetErrorKind::Refused;
    case UV_ETIMEDOUT:
      return NetErrorKind::TimedOut;
    default:
      return NetErrorKind::Io;
  }
}

// One outbound connect: resolve, try each address in turn, all under one deadline.
// Every pending libuv request holds a shared_ptr to it (in req.data), so a late callback
// after the deadline finds the operation alive but finished and does nothing.
class ConnectOperation : public std::enable_shared_from_this<ConnectOperation> {
 public:
  ConnectOperation(uv_loop_t* loop, std::string host, uint16_t port, ConnectDone done)
      : loop_(loop), host_(std::move(host)), port_(port), done_(std::move(done)), deadline_(loop) {}

  void start(uint64_t timeout_ms) {
    self_ = shared_from_this();
    deadline_.start(timeout_ms, [this] { on_deadline(); });
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_protocol = IPPROTO_TCP;
    std::string service = std::to_string(port_);
    resolve_.data = new std::shared_ptr<ConnectOperation>(shared_from_this());
    int rc = uv_getaddrinfo(loop_, &resolve_, on_resolved, host_.c_str(), service.c_str(), &hints);
    if (rc < 0) {
      delete static_cast<std::shared_ptr<ConnectOperation>*>(resolve_.data);
      resolving_ = false;
      // Report from the loop, never from inside connect_tcp().
      NetError error{NetErrorKind::Resolve, host_ + ": " + uv_strerror(rc)};
      deadline_.start(0, [this, error] { finish(nullptr, error); });
    }
  }

 private:
  static void on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* result) {
    std::unique_ptr<std::shared_ptr<ConnectOperation>> holder(
        static_cast<std::shared_ptr<ConnectOperation>*>(req->data));
    ConnectOperation& op = **holder;
    op.resolving_ = false;
    if (!op.finished_ && status < 0) {
      op.finish(nullptr, {NetErrorKind::Resolve, op.host_ + ": " + uv_strerror(status)});
    } else if (!op.finished_) {
      for (addrinfo* ai = result; ai; ai = ai->ai_next) {
        if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
        sockaddr_storage address{};
        std::memcpy(&address, ai->ai_addr, ai->ai_addrlen);
        op.addresses_.push_back(address);
      }
      if (op.addresses_.empty()) {
        op.finish(nullptr, {NetErrorKind::Resolve, op.host_ + ": no address"});
      } else {
        op.try_next();
      }
    }
    uv_freeaddrinfo(result);
  }

  void try_next() {
    if (next_ >= addresses_.size()) {
      return finish(nullptr,
                    {connect_error_kind(last_error_),
                     host_ + ":" + std::to_string(port_) + ": " + uv_strerror(last_error_)});
    }
    const auto* address = reinterpret_cast<const sockaddr*>(&addresses_[next_++]);
    attempt_ = TcpStream::create(loop_);
    connect_.data = new std::shared_ptr<ConnectOperation>(shared_from_this());
    int rc = uv_tcp_connect(&connect_, attempt_->tcp(), address, on_connected);
    if (rc < 0) {
      delete static_cast<std::shared_ptr<ConnectOperation>*>(connect_.data);
      last_error_ = rc;
      attempt_->abort();
      attempt_ = nullptr;
      try_next();
    }
  }

  static void on_connected(uv_connect_t* req, int status) {
    std::unique_ptr<std::shared_ptr<ConnectOperation>> holder(
        static_cast<std::shared_ptr<ConnectOperation>*>(req->data));
    ConnectOperation& op = **holder;
    if (op.finished_) return;  // the deadline closed the attempt
    auto stream = std::move(op.attempt_);
    op.attempt_ = nullptr;
    if (status < 0) {
      op.last_error_ = status;
      stream->abort();
      return op.try_next();
    }
    stream->attach_connected();
    op.finish(std::move(stream), {});
  }

  void on_deadline() {
    if (resolving_) uv_cancel(reinterpret_cast<uv_req_t*>(&resolve_));
    if (attempt_) {
      attempt_->abort();  // the pending connect callback fires with UV_ECANCELED
      attempt_ = nullptr;
    }
    finish(nullptr,
           {NetErrorKind::TimedOut, host_ + ":" + std::to_string(port_) + ": connect timed out"});
  }

  void finish(StreamPtr stream, const NetError& error) {
    if (finished_) return;
    finished_ = true;
    auto keep_alive = std::move(self_);  // may be the last reference: nothing touches *this after
    self_ = nullptr;
    deadline_.stop();
    auto done = std::move(done_);
    done_ = nullptr;
    done(std::move(stream), error);
  }

  uv_loop_t* loop_;
  std::string host_;
  uint16_t port_;
  ConnectDone done_;
  Timer deadline_;
  uv_getaddrinfo_t resolve_{};
  uv_connect_t connect_{};
  bool resolving_ = true;
  bool finished_ = false;
  std::vector<sockaddr_storage> addresses_;
  size_t next_ = 0;
  int last_error_ = UV_ECONNREFUSED;
  std::shared_ptr<TcpStream> attempt_;
  std::shared_ptr<ConnectOperation> self_;  // alive until done fires
};

}  // namespace

void connect_tcp(uv_loop_t* loop, const std::string& host, uint16_t port, uint64_t timeout_ms,
                 std::function<void(StreamPtr stream, const NetError& error)> done) {
  auto op = std::make_shared<ConnectOperation>(loop, host, port, std::move(done));
  op->start(timeout_ms);
}

}  // namespace mailcar::net
