// The pure half of OAuth2: token endpoint answers, request fields, the persisted state.
#include <simdjson.h>

#include <charconv>
#include <filesystem>

#include "mailcar/crypto.hpp"
#include "mailcar/oauth2.hpp"

namespace mailcar::oauth2 {
namespace {

constexpr std::string_view kStateMagic = "mailcar-oauth2-refresh 1";

Result<void> string_member(simdjson::dom::element value, std::string_view name, std::string& out) {
  std::string_view s;
  if (value.get_string().get(s) != simdjson::SUCCESS) {
    return make_error(std::string(name) + " is not a string");
  }
  out.assign(s);
  return {};
}

Result<void> expires_member(simdjson::dom::element value, std::optional<uint64_t>& out) {
  uint64_t n = 0;
  std::string_view s;
  if (value.get_uint64().get(n) == simdjson::SUCCESS) {
    out = n;
  } else if (double d = 0; value.get_double().get(d) == simdjson::SUCCESS) {
    if (!(d >= 0 && d < 1e12)) return make_error("expires_in is out of range");
    out = static_cast<uint64_t>(d);
  } else if (value.get_string().get(s) == simdjson::SUCCESS) {
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), n);
    if (ec != std::errc() || end != s.data() + s.size())
      return make_error("expires_in is not a number");
    out = n;
  } else if (!value.is_null()) {
    return make_error("expires_in is not a number");
  }
  return {};
}

}  // namespace

Result<TokenResponse> parse_token_response(std::string_view body) {
  if (body.size() > kMaxTokenResponseBytes) return make_error("token response too large");
  simdjson::dom::parser parser;
  simdjson::padded_string padded(body);
  simdjson::dom::element root;
  if (parser.parse(padded).get(root) != simdjson::SUCCESS) return make_error("not JSON");
  simdjson::dom::object object;
  if (root.get_object().get(object) != simdjson::SUCCESS) return make_error("not a JSON object");
  TokenResponse r;
  for (auto field : object) {
    Result<void> ok;
    if (field.key == "access_token") {
      ok = string_member(field.value, field.key, r.access_token);
    } else if (field.key == "refresh_token") {
      ok = string_member(field.value, field.key, r.refresh_token);
    } else if (field.key == "error") {
      ok = string_member(field.value, field.key, r.error);
    } else if (field.key == "error_description") {
      ok = string_member(field.value, field.key, r.error_description);
    } else if (field.key == "expires_in") {
      ok = expires_member(field.value, r.expires_in_s);
    }
    if (!ok.ok()) return ok.error();
  }
  return r;
}

http_client::Fields token_request_fields(const OAuth2Config& config,
                                         const std::string& refresh_token) {
  http_client::Fields f;
  if (config.grant == OAuth2Grant::RefreshToken) {
    f.emplace_back("grant_type", "refresh_token");
    f.emplace_back("refresh_token", refresh_token);
  } else {
    f.emplace_back("grant_type", "client_credentials");
  }
  f.emplace_back("client_id", config.client_id);
  if (!config.client_secret.empty()) f.emplace_back("client_secret", config.client_secret);
  if (!config.scope.empty()) f.emplace_back("scope", config.scope);
  return f;
}

std::string encode_refresh_state(std::string_view configured, std::string_view current) {
  std::string out(kStateMagic);
  out += '\n';
  out += crypto::hex(crypto::sha256(configured));
  out += '\n';
  out += current;
  out += '\n';
  return out;
}

std::optional<std::string> decode_refresh_state(std::string_view file,
                                                std::string_view configured) {
  auto next_line = [&file]() -> std::optional<std::string_view> {
    size_t nl = file.find('\n');
    if (nl == std::string_view::npos) return std::nullopt;
    std::string_view line = file.substr(0, nl);
    file.remove_prefix(nl + 1);
    return line;
  };
  auto magic = next_line();
  auto hash = next_line();
  auto token = next_line();
  if (!magic || !hash || !token || *magic != kStateMagic || token->empty()) return std::nullopt;
  if (*hash != crypto::hex(crypto::sha256(configured))) return std::nullopt;  // reconfigured
  return std::string(*token);
}

std::string refresh_state_path(const ServiceConfig& service) {
  const std::string dir = service.oauth2 ? service.oauth2->state_dir : std::string();
  return (std::filesystem::path(dir.empty() ? "." : dir) /
          ("oauth2-" + service.name + ".refresh_token"))
      .string();
}

}  // namespace mailcar::oauth2
