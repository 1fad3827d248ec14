// The HTTP JSON ingress at the edge: accepts connections, frames requests with the HTTP
// parser, hands them to the API handler one at a time per connection and writes the answers
// in request order (SPEC §4). All on the loop thread.
//
// Timeouts (limits.idle_timeout): an idle keep-alive connection is closed after the timeout;
// a request must arrive completely within the timeout from its first byte (slow bodies get
// 408 and are closed; reads do not extend it); while a request is with the handler/upstream
// no client timeout runs (the relay has its own). Pipelining: at most kMaxQueuedRequests
// parsed requests wait behind the one in flight; beyond that reading pauses.
// Connections: limits.max_connections per listener, limits.max_connections_per_client per
// peer IP address; a connection over either gets 503 with Connection: close.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>

#include <uv.h>

#include "mailcar/config.hpp"
#include "mailcar/result.hpp"
#include "mailcar/runtime.hpp"

namespace mailcar {

class HttpServer {
 public:
  static constexpr size_t kMaxQueuedRequests = 8;

  // Binds and listens. Limits (body size, idle timeout, max connections) are read from the
  // runtime snapshot current at each accept; without one, the SPEC defaults apply.
  // Error: "listen.http ADDRESS: reason"; a failed start leaves no handle open.
  static Result<std::unique_ptr<HttpServer>> start(uv_loop_t* loop, const ListenAddress& address,
                                                   RuntimeSource runtime);
  ~HttpServer();  // aborts what is still open
  HttpServer(const HttpServer&) = delete;
  HttpServer& operator=(const HttpServer&) = delete;

  void stop_accepting();
  // Stops accepting; requests in flight finish (their answer closes the connection), queued
  // and partly received ones get 503, idle keep-alive connections close. After grace_ms the
  // rest are answered 503 where possible and closed. `done` fires once, when none is left.
  void shutdown(uint64_t grace_ms, std::function<void()> done);
  size_t connection_count() const;
  uint16_t port() const;  // the bound port

  struct Impl;

 private:
  explicit HttpServer(std::shared_ptr<Impl> impl);
  std::shared_ptr<Impl> impl_;
};

}  // namespace mailcar
