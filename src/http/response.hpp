// HTTP responses: what the API handler produces and the server writes. No I/O.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mailcar::http {

struct HttpResponse {
  int status = 200;
  std::string_view content_type = "application/json";  // a string constant
  // Extra headers (Allow, Retry-After, X-RateLimit-*); Content-Type, Content-Length and
  // Connection are written by serialize_response.
  std::vector<std::pair<std::string, std::string>> headers;
  std::string body;

  std::optional<std::string_view> header(std::string_view name) const;
};

const char* reason_phrase(int status);

// The full wire form: status line, headers (Content-Length always), blank line, body.
// keep_alive false adds "Connection: close".
std::string serialize_response(const HttpResponse& response, bool keep_alive);

// DreamFactory's envelope: {"error":{"code":S,"message":M,"status_code":S,"context":C}}.
// context_json is raw JSON ("null" or an object).
HttpResponse error_response(int status, std::string_view message,
                            std::string_view context_json = "null");
// {"field":"<name>"} for error contexts.
std::string field_context(std::string_view field);
// A response with this status and JSON body.
HttpResponse json_response(int status, std::string body);
// 405 with the Allow header ("GET", "GET, DELETE", ...).
HttpResponse method_not_allowed(const char* allow);

}  // namespace mailcar::http
