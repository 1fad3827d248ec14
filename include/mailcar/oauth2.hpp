// OAuth2 access tokens for upstream AUTH (issue 9, SPEC §9.1): the token endpoint's answer
// (pure), and a TokenSource per service that fetches, caches, renews and persists.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include <uv.h>

#include "mailcar/config.hpp"
#include "mailcar/delivery.hpp"
#include "mailcar/http_client.hpp"
#include "mailcar/result.hpp"

namespace mailcar::oauth2 {

// RFC 6749 §5.1 / §5.2. Unknown members are ignored; `expires_in` may be a number or a
// numeric string (some providers send "3599").
struct TokenResponse {
  std::string access_token;
  std::optional<uint64_t> expires_in_s;
  std::string refresh_token;  // a rotated refresh token, when the endpoint sent one
  std::string error;          // e.g. "invalid_grant"
  std::string error_description;
};
inline constexpr size_t kMaxTokenResponseBytes = 64 * 1024;

// Parses a JSON object (at most kMaxTokenResponseBytes). Error when the body is not a JSON
// object or a member has the wrong type. Whether access_token is present is the caller's check.
Result<TokenResponse> parse_token_response(std::string_view body);

// The form fields of the token request for `config` (grant_type, client_id, ...).
http_client::Fields token_request_fields(const OAuth2Config& config,
                                         const std::string& refresh_token);

// The contents of the persisted rotated refresh token file, and reading it back: the token
// is used only while the configured refresh token is the one it was rotated from.
std::string encode_refresh_state(std::string_view configured, std::string_view current);
std::optional<std::string> decode_refresh_state(std::string_view file, std::string_view configured);
// <state_dir>/oauth2-<service>.refresh_token
std::string refresh_state_path(const ServiceConfig& service);

struct TokenResult {
  bool ok = false;
  std::string token;
  bool fresh = false;      // fetched (or re-read) for this request, not served from the cache
  DeliveryResult failure;  // when !ok: AuthenticationFailed with oauth2_error
};
using TokenFn = std::function<void(const TokenResult&)>;

// One service's token. Loop-thread only. get() answers from the cache while the token is
// within 80 % of its lifetime, else fetches; one fetch at a time, callers queue behind it.
// A token at 75 % of its lifetime that was used is renewed in the background. token_file is
// stat'ed and re-read in the thread pool (at most once a second, and whenever a token was
// refused). Callbacks fire from the loop, never inside get(), and not after destruction.
class TokenSource {
 public:
  TokenSource(uv_loop_t* loop, const ServiceConfig& service);
  ~TokenSource();
  TokenSource(const TokenSource&) = delete;
  TokenSource& operator=(const TokenSource&) = delete;

  // `rejected`: the token the upstream just refused (empty if none); when it is the cached
  // one, the cache is dropped first.
  void get(const std::string& rejected, TokenFn fn);

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

}  // namespace mailcar::oauth2
