// Shared state (issue 11): the `shared_state.redis` URL.
#include <charconv>

#include "config/config_internal.hpp"

namespace mailcar::config_detail {
namespace {

std::optional<unsigned> small_number(std::string_view text, unsigned max) {
  unsigned value = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || end != text.data() + text.size() || value > max) {
    return std::nullopt;
  }
  return value;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<std::string> percent_decode(std::string_view text) {
  std::string out;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '%') {
      out.push_back(text[i]);
      continue;
    }
    if (i + 2 >= text.size()) return std::nullopt;
    int hi = hex_value(text[i + 1]);
    int lo = hex_value(text[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

std::optional<std::string> parse_host_port(std::string_view hostport, SharedStateConfig& out) {
  std::string_view host = hostport;
  std::string_view port;
  if (!hostport.empty() && hostport.front() == '[') {
    size_t close = hostport.find(']');
    if (close == std::string_view::npos) return "has an unclosed [IPv6] host";
    host = hostport.substr(1, close - 1);
    std::string_view rest = hostport.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return "has junk after the [IPv6] host";
      port = rest.substr(1);
      if (port.empty()) return "has an empty port";
    }
  } else if (size_t colon = hostport.rfind(':'); colon != std::string_view::npos) {
    host = hostport.substr(0, colon);
    port = hostport.substr(colon + 1);
    if (port.empty()) return "has an empty port";
  }
  if (host.empty()) return "needs a host";
  for (char c : host) {
    if (c <= ' ' || c == '/' || c == '@' || c == '?' || c == '#' || c == 0x7f) {
      return "has a malformed host";
    }
  }
  if (!port.empty()) {
    auto p = small_number(port, 65535);
    if (!p || *p == 0) return "has a port outside 1..65535";
    out.port = static_cast<uint16_t>(*p);
  }
  out.host = std::string(host);
  return std::nullopt;
}

std::optional<std::string> parse_tcp(std::string_view rest, SharedStateConfig& out) {
  std::string_view authority = rest.substr(0, rest.find('/'));
  std::string_view path =
      authority.size() < rest.size() ? rest.substr(authority.size() + 1) : std::string_view{};
  std::string shown = "redis://";
  if (size_t at = authority.rfind('@'); at != std::string_view::npos) {
    std::string_view userinfo = authority.substr(0, at);
    size_t colon = userinfo.find(':');
    if (colon == std::string_view::npos)
      return "needs :password@ before the host (user:password@ or :password@)";
    if (colon != 0) out.username = std::string(userinfo.substr(0, colon));
    auto password = percent_decode(userinfo.substr(colon + 1));
    if (!password) return "has a malformed percent escape in the password";
    out.password = std::move(*password);
    authority = authority.substr(at + 1);
    shown += out.username + ":***@";
  }
  if (auto problem = parse_host_port(authority, out)) return problem;
  if (!path.empty()) {
    auto db = small_number(path, 1'000'000);
    if (!db) return "has a database that is not a number (redis://host:port/DB)";
    out.db = *db;
  }
  out.redis = shown + std::string(authority) + (path.empty() ? "" : "/" + std::string(path));
  return std::nullopt;
}

}  // namespace

std::optional<std::string> parse_redis_url(std::string_view url, SharedStateConfig& out) {
  constexpr std::string_view kTcp = "redis://";
  constexpr std::string_view kUnix = "unix://";
  if (url.starts_with(kTcp)) return parse_tcp(url.substr(kTcp.size()), out);
  if (!url.starts_with(kUnix)) return "must start with redis:// or unix://";
  std::string_view rest = url.substr(kUnix.size());
  std::string_view path = rest.substr(0, rest.find('?'));
  if (path.empty() || path.front() != '/')
    return "needs an absolute socket path (unix:///path.sock)";
  if (path.size() < rest.size()) {
    std::string_view query = rest.substr(path.size() + 1);
    if (!query.starts_with("db=")) return "takes only ?db=N after the socket path";
    auto db = small_number(query.substr(3), 1'000'000);
    if (!db) return "has a database that is not a number (?db=N)";
    out.db = *db;
  }
  out.unix_path = std::string(path);
  out.host.clear();
  out.redis = std::string(url);
  return std::nullopt;
}

}  // namespace mailcar::config_detail
