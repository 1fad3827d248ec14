#include "mailcar/http_server.hpp"

#include <deque>
#include <new>
#include <optional>
#include <string>
#include <unordered_map>
#include <utility>

#include "http/api_handler.hpp"
#include "http/request_parser.hpp"
#include "http/response.hpp"
#include "mailcar/log.hpp"
#include "mailcar/memory_budget.hpp"
#include "mailcar/metrics.hpp"
#include "mailcar/net.hpp"

namespace mailcar {
namespace {

using http::HttpRequest;
using http::HttpResponse;

constexpr int kBusyRetryAfterSeconds = 5;  // memory budget spent: bodies drain in seconds

// What a connection owes the client, in order: a parsed request, or the parse error that
// ends the connection after everything before it was answered.
struct QueueItem {
  std::optional<HttpRequest> request;
  int error_status = 0;
};

const char* error_message_for(int status) {
  switch (status) {
    case 413:
      return "Request body too large.";
    case 414:
      return "Request target too long.";
    case 431:
      return "Request header fields too large.";
    case 500:
      return "Internal error: out of memory.";
    case 503:
      return "Too much request data in flight: try again later.";
    default:
      return "Bad request.";
  }
}

HttpResponse parse_error_response(int status) {
  HttpResponse r = http::error_response(status, error_message_for(status));
  if (status == 503) r.headers.emplace_back("Retry-After", std::to_string(kBusyRetryAfterSeconds));
  return r;
}

}  // namespace

class HttpConnection;

struct HttpServer::Impl : std::enable_shared_from_this<HttpServer::Impl> {
  uv_loop_t* loop = nullptr;
  RuntimeSource runtime_source;
  std::unique_ptr<net::Listener> listener;
  std::unordered_map<HttpConnection*, std::shared_ptr<HttpConnection>> connections;
  net::ConnectionsPerClient per_client;  // limits.max_connections_per_client
  bool stopping = false;
  std::function<void()> shutdown_done;
  std::unique_ptr<net::Timer> grace_timer;

  std::shared_ptr<Runtime> runtime() const { return runtime_source ? runtime_source() : nullptr; }
  void accept(net::StreamPtr stream);
  void remove(HttpConnection* connection);
  void maybe_finish_shutdown();
};

class HttpConnection : public std::enable_shared_from_this<HttpConnection> {
 public:
  HttpConnection(std::weak_ptr<HttpServer::Impl> server, net::StreamPtr stream, uv_loop_t* loop,
                 const LimitsConfig& limits)
      : server_(std::move(server)),
        stream_(std::move(stream)),
        parser_(
            http::body_limit_for(limits.max_message_bytes),
            [this](HttpRequest& request, uint64_t total) { return admit_body(request, total); }),
        deadline_(loop, [this] { on_timeout(); }),
        idle_timeout_ms_(limits.idle_timeout_ms),
        peer_(stream_->peer_address()) {}

  void start() {
    std::weak_ptr<HttpConnection> weak = shared_from_this();
    stream_->on_close([weak](const net::NetError&) {
      if (auto self = weak.lock()) self->on_stream_closed();
    });
    stream_->set_line_delivery(false);  // no STARTTLS on HTTP: whole chunks to the parser
    stream_->on_data([weak](std::string_view bytes) {
      if (auto self = weak.lock()) self->on_data(bytes);
    });
    update_timer();
  }

  // The server stops: idle connections close now, busy ones after their answers.
  void begin_shutdown() {
    if (closing_) return stream_->close_promptly();  // no wait for the client's EOF now
    stream_->pause_reading();
    if (!in_flight_ && queue_.empty()) {
      if (parser_.in_message()) write(http::error_response(503, "Shutting down."), false);
      close();
    }
  }

  // Grace is over: whatever is still open is told so (if nothing was answered yet) and closed.
  void force_close() {
    if (closing_) return;
    if (in_flight_ || !queue_.empty() || parser_.in_message()) {
      write(http::error_response(503, "Shutting down."), false);
    }
    close();
  }

  void abort() {
    closing_ = true;
    deadline_.clear();
    stream_->on_close(nullptr);
    stream_->abort();
  }

 private:
  enum class TimerMode { Off, Idle, Request };

  bool server_stopping() const {
    auto server = server_.lock();
    return !server || server->stopping;
  }

  void on_data(std::string_view bytes) {
    if (closing_ || parser_.failed()) return;
    if (std::exchange(first_read_, false) && net::looks_like_tls_client_hello(bytes)) {
      log::warn("http_tls_on_plaintext",
                {{"remote", peer_},
                 {"reason",
                  "TLS ClientHello on a plaintext listener; listen.http serves plain "
                  "HTTP only: use http://, or put a TLS proxy in front"}});
      closing_ = true;
      deadline_.clear();
      stream_->abort();
      return;
    }
    try {
      take(parser_.feed(bytes));
    } catch (const std::bad_alloc&) {
      out_of_memory("http_read");
    }
  }

  // Memory ran out on this connection: it ends with a 500, the process goes on.
  void out_of_memory(const char* where) {
    log::error("out_of_memory", {{"where", where}, {"remote", peer_}});
    queue_.clear();
    in_flight_ = false;
    ++request_seq_;  // an answer still under way for the old request is dropped
    write(http::error_response(500, error_message_for(500)), false);
    close();
  }

  // Body admission (see http::BodyAdmission): every body counts against the in-flight budget;
  // one whose request is not authenticated by its head also against the small budget for
  // unauthenticated bodies.
  int admit_body(HttpRequest& request, uint64_t total) {
    auto server = server_.lock();
    auto runtime = server ? server->runtime() : nullptr;
    static const LimitsConfig kDefaults;
    const LimitsConfig& limits =
        runtime && runtime->config ? runtime->config->limits : kDefaults;  // runtime holds it
    if (!request.inflight_lease.attached()) {
      request.inflight_lease = MemoryLease(inflight_budget());
      bool head_ok =
          runtime && runtime->config && http::head_authenticates(request, *runtime->config);
      if (!head_ok) request.unauthenticated_lease = MemoryLease(unauthenticated_budget());
    }
    if (request.unauthenticated_lease.attached()) {
      if (total > limits.unauthenticated_body_bytes) return 413;
      if (!request.unauthenticated_lease.grow_to(total, limits.unauthenticated_body_bytes)) {
        log::warn("http_body_refused",
                  {{"reason", "unauthenticated_body_bytes"}, {"remote", peer_}});
        return 503;
      }
    }
    if (!request.inflight_lease.grow_to(total, limits.max_inflight_bytes)) {
      log::warn("http_body_refused", {{"reason", "max_inflight_bytes"}, {"remote", peer_}});
      return 503;
    }
    return 0;
  }

  void take(http::HttpRequestParser::Output out) {
    if (!out.requests.empty()) timer_mode_ = TimerMode::Off;  // a new request starts afresh
    for (auto& request : out.requests) queue_.push_back(QueueItem{std::move(request), 0});
    if (out.error_status) {
      log::debug("http_bad_request",
                 {{"status", *out.error_status}, {"reason", out.error_reason}, {"remote", peer_}});
      if (out.rejected_head) {
        // Too large: the handler still answers 404/405/401/415 first, then 413, and closes.
        queue_.push_back(QueueItem{std::move(out.rejected_head), 0});
      } else {
        queue_.push_back(QueueItem{std::nullopt, *out.error_status});
      }
      stream_->pause_reading();
    }
    if (out.continue_requested) continue_owed_ = true;
    process();
  }

  void process() {
    if (processing_ || closing_) return;
    processing_ = true;
    auto self = shared_from_this();  // a synchronous answer may end the connection
    while (!in_flight_ && !queue_.empty() && !closing_) {
      QueueItem item = std::move(queue_.front());
      queue_.pop_front();
      if (!item.request) {
        write(parse_error_response(item.error_status), false);
        close();
        break;
      }
      if (server_stopping()) {
        bool last = queue_.empty();
        write(http::error_response(503, "Shutting down."), !last);
        if (last) close();
        continue;
      }
      in_flight_ = true;
      bool keep_alive = item.request->keep_alive;
      std::weak_ptr<HttpConnection> weak = self;
      auto server = server_.lock();
      uint64_t seq = ++request_seq_;
      try {
        handler_.handle(
            *item.request, server ? server->runtime() : nullptr,
            [weak, keep_alive, seq](HttpResponse response) {
              auto connection = weak.lock();
              if (connection && connection->request_seq_ == seq) {
                connection->finish(std::move(response), keep_alive);
              }
            },
            peer_);
        parser_.give_spare_body(handler_.take_spare_body());  // the next body's buffer
      } catch (const std::bad_alloc&) {
        item.request.reset();  // give its memory back before answering
        out_of_memory("http_request");
        break;
      }
    }
    processing_ = false;
    if (closing_) return;

    if (queue_.size() >= HttpServer::kMaxQueuedRequests) {
      stream_->pause_reading();
      reading_paused_ = true;
    } else if (reading_paused_ && !parser_.failed() && !server_stopping()) {
      stream_->resume_reading();
      reading_paused_ = false;
    }
    if (continue_owed_ && !in_flight_ && queue_.empty()) {
      continue_owed_ = false;
      // Only while the request that asked is still being received.
      if (parser_.in_message()) stream_->write("HTTP/1.1 100 Continue\r\n\r\n");
    }
    if (server_stopping() && !in_flight_ && queue_.empty()) {
      begin_shutdown();
      return;
    }
    update_timer();
  }

  void finish(HttpResponse response, bool keep_alive) {
    if (closing_ || !in_flight_) return;
    in_flight_ = false;
    // While stopping, the last answer on the connection says close.
    bool keep = keep_alive && !(server_stopping() && queue_.empty());
    write(response, keep);
    if (!keep) {
      close();
      return;
    }
    process();
  }

  void write(const HttpResponse& response, bool keep_alive) {
    stream_->write(http::serialize_response(response, keep_alive));
  }

  void close() {
    if (closing_) return;
    closing_ = true;
    deadline_.clear();
    if (server_stopping()) {
      stream_->close_promptly();  // a stopping server does not wait for the client's EOF
    } else {
      stream_->close();
    }
  }

  void update_timer() {
    if (closing_ || in_flight_ || !queue_.empty()) {
      // Not cleared: a deadline that fires now is ignored (on_timeout), and setting it again
      // after the answer costs no timer restart.
      timer_mode_ = TimerMode::Off;
      return;
    }
    if (parser_.in_message()) {
      if (timer_mode_ == TimerMode::Request) return;  // reads do not extend a request's time
      timer_mode_ = TimerMode::Request;
    } else {
      timer_mode_ = TimerMode::Idle;
    }
    deadline_.set(deadline_.now() + idle_timeout_ms_);
  }

  // From the deadline (owned by this connection, so it cannot outlive it).
  void on_timeout() {
    if (closing_ || timer_mode_ == TimerMode::Off) return;
    auto self = shared_from_this();  // close() may drop the server's reference
    if (timer_mode_ == TimerMode::Request) {
      write(http::error_response(408, "Request not received in time."), false);
    }
    close();
  }

  void on_stream_closed() {
    closing_ = true;
    deadline_.clear();
    if (auto server = server_.lock()) server->remove(this);  // may destroy this
  }

  std::weak_ptr<HttpServer::Impl> server_;
  net::StreamPtr stream_;
  http::HttpRequestParser parser_;
  http::ApiHandler handler_;
  net::Deadline deadline_;  // idle or request deadline (timer_mode_)
  uint64_t idle_timeout_ms_;
  std::string peer_;
  std::deque<QueueItem> queue_;
  TimerMode timer_mode_ = TimerMode::Off;
  bool in_flight_ = false;
  bool processing_ = false;
  bool closing_ = false;
  bool first_read_ = true;  // a TLS ClientHello is recognised in the first bytes only
  bool reading_paused_ = false;
  bool continue_owed_ = false;
  uint64_t request_seq_ = 0;  // which request an asynchronous answer belongs to
};

void HttpServer::Impl::accept(net::StreamPtr stream) {
  auto snapshot = runtime();
  LimitsConfig limits = snapshot && snapshot->config ? snapshot->config->limits : LimitsConfig{};
  if (stopping) {
    stream->abort();
    return;
  }
  if (connections.size() >= limits.max_connections) {
    log::warn("http_connection_refused",
              {{"reason", "max_connections"}, {"remote", stream->peer_address()}});
    stream->write(
        http::serialize_response(http::error_response(503, "Too many connections."), false));
    stream->close();
    return;
  }
  std::string host = net::host_of(stream->peer_address());
  if (per_client.count(host) >= limits.max_connections_per_client) {
    log::warn("http_connection_refused",
              {{"reason", "max_connections_per_client"}, {"remote", stream->peer_address()}});
    stream->write(http::serialize_response(
        http::error_response(503, "Too many connections from your address."), false));
    stream->close();
    return;
  }
  auto connection = std::make_shared<HttpConnection>(weak_from_this(), stream, loop, limits);
  connections.emplace(connection.get(), connection);
  per_client.add(connection.get(), host);
  metrics::connection_opened("http");
  connection->start();
}

void HttpServer::Impl::remove(HttpConnection* connection) {
  auto it = connections.find(connection);
  if (it == connections.end()) return;
  auto keep = std::move(it->second);  // destroyed after the map no longer names it
  connections.erase(it);
  per_client.remove(connection);
  metrics::connection_closed("http");
  maybe_finish_shutdown();
}

void HttpServer::Impl::maybe_finish_shutdown() {
  if (!stopping || !connections.empty() || !shutdown_done) return;
  if (grace_timer) grace_timer->stop();
  auto done = std::move(shutdown_done);
  shutdown_done = nullptr;
  done();
}

HttpServer::HttpServer(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<HttpServer>> HttpServer::start(uv_loop_t* loop, const ListenAddress& address,
                                                      RuntimeSource runtime) {
  auto impl = std::make_shared<Impl>();
  impl->loop = loop;
  impl->runtime_source = std::move(runtime);
  std::weak_ptr<Impl> weak = impl;
  auto listener = net::Listener::open(loop, address, [weak](net::StreamPtr stream) {
    if (auto server = weak.lock()) {
      server->accept(std::move(stream));
    } else {
      stream->abort();
    }
  });
  if (!listener) return make_error("listen.http " + listener.error().message);
  impl->listener = std::move(*listener);
  return std::unique_ptr<HttpServer>(new HttpServer(std::move(impl)));
}

HttpServer::~HttpServer() {
  if (impl_->listener) impl_->listener->close();
  impl_->shutdown_done = nullptr;
  auto connections = std::move(impl_->connections);
  impl_->connections.clear();
  for (auto& [ptr, connection] : connections) {
    connection->abort();
    metrics::connection_closed("http");
  }
}

void HttpServer::stop_accepting() {
  if (impl_->listener) impl_->listener->close();
}

void HttpServer::shutdown(uint64_t grace_ms, std::function<void()> done) {
  stop_accepting();
  impl_->stopping = true;
  impl_->shutdown_done = std::move(done);
  impl_->grace_timer = std::make_unique<net::Timer>(impl_->loop);
  std::weak_ptr<Impl> weak = impl_;
  impl_->grace_timer->start(grace_ms, [weak] {
    auto server = weak.lock();
    if (!server) return;
    std::vector<std::shared_ptr<HttpConnection>> open;
    for (auto& [ptr, connection] : server->connections) open.push_back(connection);
    for (auto& connection : open) connection->force_close();
  });
  std::vector<std::shared_ptr<HttpConnection>> open;
  for (auto& [ptr, connection] : impl_->connections) open.push_back(connection);
  for (auto& connection : open) connection->begin_shutdown();
  impl_->maybe_finish_shutdown();
}

size_t HttpServer::connection_count() const {
  return impl_->connections.size();
}

uint16_t HttpServer::port() const {
  return impl_->listener ? impl_->listener->port() : 0;
}

}  // namespace mailcar
