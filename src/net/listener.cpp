#include <netinet/in.h>

#include <utility>

#include "mailcar/log.hpp"
#include "mailcar/net.hpp"
#include "net/address.hpp"
#include "net/tcp_stream.hpp"

namespace mailcar::net {
namespace {

constexpr int kBacklog = 511;

class TcpListener;

// Heap-allocated because uv_close is asynchronous: the handle outlives the Listener object.
struct ListenHandle {
  uv_tcp_t tcp;
  TcpListener* owner = nullptr;
};

void close_listen_handle(ListenHandle* handle) {
  handle->owner = nullptr;
  uv_close(reinterpret_cast<uv_handle_t*>(&handle->tcp),
           [](uv_handle_t* h) { delete static_cast<ListenHandle*>(h->data); });
}

class TcpListener final : public Listener {
 public:
  TcpListener(ListenHandle* handle, AcceptFn on_accept, bool loopback)
      : handle_(handle), on_accept_(std::move(on_accept)), loopback_(loopback) {
    handle_->owner = this;
  }
  ~TcpListener() override { close(); }

  void close() override {
    if (!handle_) return;
    close_listen_handle(handle_);
    handle_ = nullptr;
  }
  bool is_loopback() const override { return loopback_; }
  uint16_t port() const override { return port_; }

  void remember_port() {
    sockaddr_storage bound{};
    int length = sizeof bound;
    if (uv_tcp_getsockname(&handle_->tcp, reinterpret_cast<sockaddr*>(&bound), &length) != 0)
      return;
    if (bound.ss_family == AF_INET) {
      port_ = ntohs(reinterpret_cast<const sockaddr_in*>(&bound)->sin_port);
    } else if (bound.ss_family == AF_INET6) {
      port_ = ntohs(reinterpret_cast<const sockaddr_in6*>(&bound)->sin6_port);
    }
  }

  void accept_one(uv_stream_t* server) {
    auto stream = TcpStream::create(server->loop);
    int rc = uv_accept(server, reinterpret_cast<uv_stream_t*>(stream->tcp()));
    if (rc < 0) {
      stream->on_close(nullptr);
      stream->abort();
      log::warn("accept_failed", {{"error", uv_strerror(rc)}});
      return;
    }
    stream->attach_connected();
    on_accept_(std::move(stream));
  }

 private:
  ListenHandle* handle_;
  AcceptFn on_accept_;
  bool loopback_;
  uint16_t port_ = 0;
};

void on_connection(uv_stream_t* server, int status) {
  auto* handle = static_cast<ListenHandle*>(server->data);
  if (!handle->owner) return;
  if (status < 0) {
    log::warn("accept_failed", {{"error", uv_strerror(status)}});
    return;
  }
  handle->owner->accept_one(server);
}

}  // namespace

Result<std::unique_ptr<Listener>> Listener::open(uv_loop_t* loop, const ListenAddress& address,
                                                 AcceptFn on_accept) {
  std::string host = address.host;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  std::string name = address.text;
  if (name.empty()) {
    bool v6 = host.find(':') != std::string::npos;
    name = (v6 ? "[" + host + "]" : host) + ":" + std::to_string(address.port);
  }

  sockaddr_storage storage{};
  auto* addr = reinterpret_cast<sockaddr*>(&storage);
  if (uv_ip4_addr(host.c_str(), address.port, reinterpret_cast<sockaddr_in*>(&storage)) != 0 &&
      uv_ip6_addr(host.c_str(), address.port, reinterpret_cast<sockaddr_in6*>(&storage)) != 0) {
    return make_error(name + ": not a literal IP address");
  }

  auto* handle = new ListenHandle;
  uv_tcp_init(loop, &handle->tcp);
  handle->tcp.data = handle;
  int rc = uv_tcp_bind(&handle->tcp, addr, 0);
  if (rc == 0)
    rc = uv_listen(reinterpret_cast<uv_stream_t*>(&handle->tcp), kBacklog, on_connection);
  if (rc < 0) {
    close_listen_handle(handle);
    return make_error(name + ": " + uv_strerror(rc));
  }
  auto listener =
      std::make_unique<TcpListener>(handle, std::move(on_accept), is_loopback_address(addr));
  listener->remember_port();
  return std::unique_ptr<Listener>(std::move(listener));
}

}  // namespace mailcar::net
