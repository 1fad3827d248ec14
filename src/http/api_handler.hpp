// The HTTP API as request -> response logic (SPEC §4; the queue API of §7.1 is in
// queue_api.hpp). No I/O: delivery completes through the runtime's Transport, whose
// callback produces the response later on the loop thread.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "http/request_parser.hpp"
#include "http/response.hpp"
#include "mailcar/clock.hpp"
#include "mailcar/runtime.hpp"

namespace simdjson::dom {
class parser;
}

namespace mailcar::http {

using Respond = std::function<void(HttpResponse)>;
using WallClock = std::function<uint64_t()>;  // milliseconds since the Unix epoch

// Replaces every "{key}" for which lookup gives a value, in one left-to-right pass: inserted
// values are not scanned again, unknown placeholders stay as they are. nullopt as soon as the
// output would pass `max_bytes` (nothing larger is ever allocated: a short template with a
// large value repeated must not grow the process).
std::optional<std::string> expand_template(
    std::string_view text, const std::function<const std::string*(std::string_view)>& lookup,
    size_t max_bytes);

// True when the request's head (query api_key, X-DreamFactory-API-Key or a Bearer token)
// carries a configured API key: its body is then read as an authenticated one. The body is
// not looked at (it has not been read yet).
bool head_authenticates(const HttpRequest& request, const Config& config);

// Who calls the API (SPEC §4). The first key found wins: ?api_key=, X-DreamFactory-API-Key,
// the JSON body's "api_key" (`body_key`, when the route reads a body), Authorization: Bearer.
// Every configured key is compared in constant time, match or not.
struct ApiCaller {
  std::optional<std::string_view> key;           // the key given, if any (into the request)
  const CredentialConfig* credential = nullptr;  // null: no key, or an unknown one
  size_t index = 0;                              // 1-based position in `credentials`
  // For logs and the spool: which key, never the key itself.
  std::string identity() const { return "api_key#" + std::to_string(index); }
};
ApiCaller authenticate(const HttpRequest& request, const Config& config,
                       std::optional<std::string_view> body_key = std::nullopt);
// The 401 for a caller without a credential; logs http_auth_failed (who tried and where,
// never the key). `service` empty: a route that is not a service's.
HttpResponse unauthorized(const ApiCaller& caller, const std::string& remote, std::string_view path,
                          std::string_view service);

class ApiHandler {
 public:
  explicit ApiHandler(WallClock now_ms = wall_clock_ms);
  ~ApiHandler();
  ApiHandler(const ApiHandler&) = delete;
  ApiHandler& operator=(const ApiHandler&) = delete;

  // Answers `request`. `respond` is called exactly once: synchronously for everything except
  // a send that reaches the transport (or the spool) and a queue DELETE (queue_api.hpp),
  // which answer later on the loop thread. `runtime` null: not ready.
  // Nothing of `this` is used after handle() returns, so the handler may go away while a
  // delivery is in flight. The request's body and leases may be taken (a built message keeps
  // the in-flight lease; the body is freed as soon as it is parsed, or kept for the next
  // request when it is small: take_spare_body).
  void handle(HttpRequest& request, std::shared_ptr<Runtime> runtime, Respond respond,
              const std::string& remote);

  // A parsed JSON body's buffer (emptied; capacity at most kKeepBodyCapacity) for the next
  // request of the connection (HttpRequestParser::give_spare_body), or an empty string.
  std::string take_spare_body() { return std::move(spare_body_); }

 private:
  void handle_send(HttpRequest& request, std::string_view service, std::shared_ptr<Runtime> runtime,
                   Respond& respond, const std::string& remote);

  WallClock now_ms_;
  std::unique_ptr<simdjson::dom::parser> json_;  // reused across requests
  std::string spare_body_;                       // see take_spare_body
};

}  // namespace mailcar::http
