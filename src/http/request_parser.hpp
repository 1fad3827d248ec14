// HTTP/1.1 request framing over llhttp: bytes in, complete requests (or one error status) out.
// No I/O. One parser per connection; after an error it accepts nothing more.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <llhttp.h>

#include "mailcar/memory_budget.hpp"

namespace mailcar::http {

constexpr size_t kMaxHeaderBytes = 64 * 1024;  // request line + header block; over: 431
constexpr size_t kMaxUrlBytes = 8 * 1024;      // over: 414
// Spare capacity kept after a body so that a JSON parser may read it in place
// (simdjson::SIMDJSON_PADDING).
constexpr size_t kBodyPadding = 64;
// A body buffer up to this capacity may be kept for the connection's next request.
constexpr size_t kKeepBodyCapacity = 8 * 1024;

// The body limit for a given limits.max_message_bytes: a JSON request carries attachments
// as base64 (4/3 of the bytes), plus field names and quoting; 64 KiB covers the envelope.
// A body over this could never build into a message within max_message_bytes.
uint64_t body_limit_for(uint64_t max_message_bytes);

struct HttpRequest {
  std::string method;                                        // "GET", "POST", ...
  std::string target;                                        // as sent: "/api/v2/email?api_key=x"
  std::string path;                                          // percent-decoded path, no query
  std::vector<std::pair<std::string, std::string>> query;    // percent-decoded, in order
  std::vector<std::pair<std::string, std::string>> headers;  // names lower-cased, in order
  std::string body;
  bool keep_alive = true;
  bool expect_continue = false;  // "Expect: 100-continue" was sent
  // The body was over the limit and was not read (`body` is empty): only the head is known.
  bool body_over_limit = false;
  // What the body holds of the memory budgets (see BodyAdmission); given back with the body.
  MemoryLease inflight_lease;
  MemoryLease unauthenticated_lease;

  // First header / query parameter with that (lower-case) name.
  std::optional<std::string_view> header(std::string_view lower_name) const;
  std::optional<std::string_view> query_param(std::string_view name) const;
};

// Splits "a=1&b=%20x+y" into decoded pairs. nullopt when a %-escape is malformed.
std::optional<std::vector<std::pair<std::string, std::string>>> parse_query(std::string_view q);
// %XX decoding; `plus_is_space` for query strings. nullopt on a malformed escape.
std::optional<std::string> percent_decode(std::string_view s, bool plus_is_space);

// Asked before a request's body may hold `total` bytes: once at the head with the announced
// Content-Length, and as a chunked body grows. 0: go on; otherwise the status that refuses the
// request (413: it can never fit; 503: not now). It may keep leases in `request` for what it
// grants. The parser only reserves body memory that was granted.
using BodyAdmission = std::function<int(HttpRequest& request, uint64_t total)>;

class HttpRequestParser {
 public:
  struct Output {
    std::vector<HttpRequest> requests;  // complete requests, in order
    // Set once a request's headers are complete, its body is expected and it asked for
    // "100 Continue" (the server answers it when it is that request's turn).
    bool continue_requested = false;
    // When set, the stream is unusable from here on: answer this status and close.
    std::optional<int> error_status;
    std::string error_reason;  // for logs only
    // With a 413: the refused request's head (body_over_limit set), so that route and
    // authentication errors, which rank above 413, can still be answered. Not with a 503:
    // that ranks first (the server is out of room, whatever the request is).
    std::optional<HttpRequest> rejected_head;
  };

  explicit HttpRequestParser(uint64_t body_limit, BodyAdmission admit = nullptr);
  HttpRequestParser(const HttpRequestParser&) = delete;
  HttpRequestParser& operator=(const HttpRequestParser&) = delete;

  Output feed(std::string_view bytes);

  // An emptied body buffer (capacity <= kKeepBodyCapacity) that the next request with a
  // Content-Length it fits takes instead of allocating; a larger one is dropped.
  void give_spare_body(std::string body) {
    if (body.capacity() <= kKeepBodyCapacity && body.capacity() > spare_body_.capacity()) {
      body.clear();
      spare_body_ = std::move(body);
    }
  }

  // True while a request has started but is not complete (for idle-timeout decisions).
  bool in_message() const { return state_ != State::Idle; }
  bool failed() const { return state_ == State::Failed; }
  uint64_t body_limit() const { return body_limit_; }

 private:
  enum class State { Idle, Head, Body, Failed };

  static int on_message_begin(llhttp_t* p);
  static int on_url(llhttp_t* p, const char* at, size_t length);
  static int on_header_field(llhttp_t* p, const char* at, size_t length);
  static int on_header_value(llhttp_t* p, const char* at, size_t length);
  static int on_header_value_complete(llhttp_t* p);
  static int on_headers_complete(llhttp_t* p);
  static int on_body(llhttp_t* p, const char* at, size_t length);
  static int on_message_complete(llhttp_t* p);

  int fail(int status, std::string reason);
  bool head_over_limit(const char* span_end);
  void finish_header();
  std::pair<std::string, std::string>& header_being_read();  // a new entry when none is
  int admit_body(uint64_t total);
  int grow_body(size_t more);

  llhttp_settings_t settings_{};
  llhttp_t parser_{};
  uint64_t body_limit_;
  BodyAdmission admit_;
  State state_ = State::Idle;
  HttpRequest current_;
  // Room for a usual request's header fields, reserved once per request.
  static constexpr size_t kExpectedHeaders = 8;
  bool in_field_ = false;  // headers.back() is the field being read
  bool in_value_ = false;  // ... and its value has begun
  // Head size accounting: bytes of the head in earlier feeds plus this execute's span.
  size_t head_bytes_before_ = 0;
  const char* exec_start_ = nullptr;
  Output* out_ = nullptr;
  int error_status_ = 0;
  std::string error_reason_;
  std::string spare_body_;  // see give_spare_body
};

}  // namespace mailcar::http
