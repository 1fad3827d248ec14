// The egress HTTP(S) client (issue 9: OAuth2 token endpoints; later the attachment URL fetch).
// Pure parts (URL, form encoding, proxy choice, the resumable HTTP/1.1 response parser) and
// one request runner on the libuv loop over net::Stream (async DNS, TCP, TLS with
// verification and SNI, an HTTP CONNECT tunnel through HTTPS_PROXY). Data flows outwards
// only: nothing here is shared with the ingress HTTP server (src/http/).
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <uv.h>

namespace mailcar::http_client {

using Fields = std::vector<std::pair<std::string, std::string>>;

// http:// or https:// URL. `target` is the origin-form request target ("/path?query", "/"
// when empty); `userinfo` is the percent-decoded "user:pass" (proxy URLs), empty when absent.
struct Url {
  bool https = true;
  std::string host;  // without brackets for IPv6 literals
  uint16_t port = 443;
  bool port_given = false;  // the URL named the port
  std::string target = "/";
  std::string user;
  std::string password;
  bool has_userinfo = false;
};
// nullopt for anything else (other schemes, no host, bad port, spaces or controls).
std::optional<Url> parse_url(std::string_view text);
// "host:port" as written in a CONNECT line and a Host header (IPv6 in brackets).
std::string host_port(const Url& url);

// application/x-www-form-urlencoded (WHATWG): unreserved bytes as they are, SP as '+', the
// rest as %XX.
std::string form_encode(const Fields& fields);

// NO_PROXY semantics (curl's): comma- or space-separated entries; "*" matches everything;
// "example.com" and ".example.com" match the host and its subdomains; an entry may carry
// ":port" (then the port must match too). Case-insensitive. IP literals match exactly.
bool no_proxy_matches(std::string_view no_proxy, std::string_view host, uint16_t port);

// The proxy for `target` from the environment values given (HTTPS_PROXY/https_proxy for
// https, HTTP_PROXY/http_proxy for http, NO_PROXY/no_proxy): nullopt for a direct
// connection. A proxy URL without a scheme is taken as http://; without a port, 1080.
struct ProxyEnvironment {
  std::string https_proxy;
  std::string http_proxy;
  std::string no_proxy;
  static ProxyEnvironment from_process();  // lower-case names win over upper-case, as in curl
};
struct ProxyChoice {
  std::optional<Url> proxy;  // nullopt: connect directly (unless error is set)
  std::string error;         // the proxy variable is set but unusable
};
ProxyChoice proxy_for(const Url& target, const ProxyEnvironment& env);

struct Response {
  int status = 0;
  Fields headers;  // names lower-cased, values trimmed, in order
  std::string body;
  std::optional<std::string_view> header(std::string_view lower_name) const;
};

// A resumable HTTP/1.1 response parser (llhttp in response mode): Content-Length, chunked
// and read-until-close bodies; interim 1xx responses are skipped. Feed bytes in any split;
// finish() at the peer's EOF. Limits: the head (status line + headers) at most kMaxHeadBytes,
// the body at most `max_body_bytes` (decoded). With `head_only` the response has no body
// (the answer to CONNECT or HEAD).
class ResponseParser {
 public:
  static constexpr size_t kMaxHeadBytes = 64 * 1024;
  enum class Status { NeedMore, Done, Error };

  explicit ResponseParser(size_t max_body_bytes, bool head_only = false);
  ~ResponseParser();
  ResponseParser(const ResponseParser&) = delete;
  ResponseParser& operator=(const ResponseParser&) = delete;

  // After Done or Error further bytes are ignored (and the status repeats).
  Status feed(std::string_view bytes);
  // The peer closed: completes a read-until-close body, else Error (truncated).
  Status finish();
  const Response& response() const { return response_; }
  Response take_response() { return std::move(response_); }
  const std::string& error() const { return error_; }  // why it failed, for logs

 private:
  struct Llhttp;
  Status fail(std::string why);

  std::unique_ptr<Llhttp> ll_;
  size_t max_body_bytes_;
  bool head_only_;
  Status status_ = Status::NeedMore;
  Response response_;
  std::string field_, value_;
  bool in_value_ = false;
  size_t head_bytes_ = 0;
  bool interim_ = false;  // inside a 1xx response
  std::string error_;
};

// One request. `url` must be http:// or https://; with https the server's certificate is
// checked against `ca_file` (empty: the system bundle) and `url.host` unless verify is false.
struct Request {
  std::string method = "GET";
  std::string url;
  Fields headers;  // Host, Content-Length and Connection: close are added
  std::string body;
  std::string ca_file;
  bool verify = true;
  uint64_t timeout_ms = 30'000;  // the whole exchange: DNS, connect, proxy, TLS, answer
  size_t max_response_bytes = 1024 * 1024;
  // Proxy: nullopt = decide from the process environment (ProxyEnvironment::from_process);
  // a value = use exactly that (ProxyEnvironment{} for none).
  std::optional<ProxyEnvironment> proxy_env;
};

enum class ErrorKind {
  None,
  BadUrl,       // the URL or the proxy URL does not parse
  Connect,      // DNS, refused, unreachable (the proxy's too)
  Proxy,        // the proxy refused the CONNECT (see detail: its status)
  Certificate,  // the server's certificate did not verify
  Tls,          // another TLS failure
  TimedOut,     // timeout_ms passed
  Protocol,     // the answer is not HTTP/1.x, or over a limit, or cut short
};

struct Result {
  ErrorKind error = ErrorKind::None;
  std::string detail;  // human text for logs; never holds request headers or body
  Response response;   // when error is None (any HTTP status)
};

const char* error_kind_name(ErrorKind kind);

// Runs `request` on `loop`; `done` fires exactly once, from the loop, never from inside this
// call, unless the returned handle is cancelled (or destroyed) first. Drop the handle to
// cancel: the connection is aborted and `done` never fires.
class Cancel {
 public:
  virtual ~Cancel() = default;
};
using ResultFn = std::function<void(Result)>;
std::unique_ptr<Cancel> fetch(uv_loop_t* loop, Request request, ResultFn done);

}  // namespace mailcar::http_client
