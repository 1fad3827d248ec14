// URLs, form bodies and the proxy choice: pure functions.
#include <charconv>
#include <cstdlib>

#include "mailcar/http_client.hpp"
#include "mailcar/text.hpp"

namespace mailcar::http_client {
namespace {

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::optional<std::string> percent_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    int hi = hex_digit(s[i + 1]);
    int lo = hex_digit(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out.push_back(static_cast<char>(hi * 16 + lo));
    i += 2;
  }
  return out;
}

bool has_controls_or_space(std::string_view s) {
  for (char c : s) {
    const auto u = static_cast<unsigned char>(c);
    if (u <= 0x20 || u == 0x7f) return true;
  }
  return false;
}

// "host", "host:port", "[v6]", "[v6]:port" into url.host / url.port.
bool parse_authority(std::string_view authority, Url& url) {
  std::string_view port_text;
  if (!authority.empty() && authority.front() == '[') {
    size_t close = authority.find(']');
    if (close == std::string_view::npos) return false;
    url.host = std::string(authority.substr(1, close - 1));
    std::string_view rest = authority.substr(close + 1);
    if (!rest.empty()) {
      if (rest.front() != ':') return false;
      port_text = rest.substr(1);
    }
  } else {
    size_t colon = authority.rfind(':');
    url.host = std::string(authority.substr(0, colon));
    if (colon != std::string_view::npos) port_text = authority.substr(colon + 1);
  }
  if (url.host.empty()) return false;
  if (!port_text.empty()) {
    unsigned port = 0;
    auto [end, ec] = std::from_chars(port_text.data(), port_text.data() + port_text.size(), port);
    if (ec != std::errc() || end != port_text.data() + port_text.size() || port == 0 ||
        port > 65535) {
      return false;
    }
    url.port = static_cast<uint16_t>(port);
    url.port_given = true;
  }
  return true;
}

bool parse_userinfo(std::string_view userinfo, Url& url) {
  size_t colon = userinfo.find(':');
  auto user = percent_decode(userinfo.substr(0, colon));
  auto password = percent_decode(colon == std::string_view::npos ? std::string_view()
                                                                 : userinfo.substr(colon + 1));
  if (!user || !password) return false;
  url.user = std::move(*user);
  url.password = std::move(*password);
  url.has_userinfo = true;
  return true;
}

std::string env_value(const char* lower, const char* upper) {
  if (const char* v = std::getenv(lower); v && *v) return v;
  if (const char* v = std::getenv(upper); v && *v) return v;
  return {};
}

}  // namespace

std::optional<Url> parse_url(std::string_view text) {
  Url url;
  if (has_controls_or_space(text)) return std::nullopt;
  size_t scheme_end = text.find("://");
  if (scheme_end == std::string_view::npos) return std::nullopt;
  std::string scheme = text::lower_ascii(text.substr(0, scheme_end));
  if (scheme == "https") {
    url.https = true;
    url.port = 443;
  } else if (scheme == "http") {
    url.https = false;
    url.port = 80;
  } else {
    return std::nullopt;
  }
  std::string_view rest = text.substr(scheme_end + 3);
  size_t path_start = rest.find_first_of("/?#");
  std::string_view authority = rest.substr(0, path_start);
  std::string_view target =
      path_start == std::string_view::npos ? std::string_view() : rest.substr(path_start);
  if (size_t hash = target.find('#'); hash != std::string_view::npos)
    target = target.substr(0, hash);
  if (size_t at = authority.rfind('@'); at != std::string_view::npos) {
    if (!parse_userinfo(authority.substr(0, at), url)) return std::nullopt;
    authority = authority.substr(at + 1);
  }
  if (!parse_authority(authority, url)) return std::nullopt;
  if (target.empty()) {
    url.target = "/";
  } else if (target.front() == '?') {
    url.target = "/" + std::string(target);
  } else {
    url.target = std::string(target);
  }
  return url;
}

std::string host_port(const Url& url) {
  std::string out = url.host.find(':') != std::string::npos ? "[" + url.host + "]" : url.host;
  return out + ":" + std::to_string(url.port);
}

std::string form_encode(const Fields& fields) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  auto append = [](std::string& out, std::string_view s) {
    for (char c : s) {
      const auto u = static_cast<unsigned char>(c);
      if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' ||
          c == '.' || c == '_' || c == '*') {
        out.push_back(c);
      } else if (c == ' ') {
        out.push_back('+');
      } else {
        out.push_back('%');
        out.push_back(kHex[u >> 4]);
        out.push_back(kHex[u & 15]);
      }
    }
  };
  std::string out;
  for (const auto& [name, value] : fields) {
    if (!out.empty()) out.push_back('&');
    append(out, name);
    out.push_back('=');
    append(out, value);
  }
  return out;
}

bool no_proxy_matches(std::string_view no_proxy, std::string_view host, uint16_t port) {
  const std::string h = text::lower_ascii(host);
  while (!no_proxy.empty()) {
    size_t sep = no_proxy.find_first_of(", ");
    std::string entry = text::lower_ascii(no_proxy.substr(0, sep));
    no_proxy = sep == std::string_view::npos ? std::string_view() : no_proxy.substr(sep + 1);
    if (entry.empty()) continue;
    if (entry == "*") return true;
    // An optional ":port" (not inside an IPv6 literal without brackets).
    if (size_t colon = entry.rfind(':');
        colon != std::string::npos && entry.find(':') == colon && entry.front() != '[') {
      if (entry.substr(colon + 1) != std::to_string(port)) continue;
      entry.resize(colon);
    }
    if (entry.size() > 2 && entry.front() == '[' && entry.back() == ']') {
      entry = entry.substr(1, entry.size() - 2);
    }
    if (!entry.empty() && entry.front() == '.') entry.erase(0, 1);
    if (h == entry) return true;
    if (h.size() > entry.size() && h.ends_with(entry) && h[h.size() - entry.size() - 1] == '.') {
      return true;
    }
  }
  return false;
}

ProxyEnvironment ProxyEnvironment::from_process() {
  ProxyEnvironment env;
  env.https_proxy = env_value("https_proxy", "HTTPS_PROXY");
  env.http_proxy = env_value("http_proxy", "HTTP_PROXY");
  env.no_proxy = env_value("no_proxy", "NO_PROXY");
  return env;
}

ProxyChoice proxy_for(const Url& target, const ProxyEnvironment& env) {
  ProxyChoice choice;
  const std::string& value = target.https ? env.https_proxy : env.http_proxy;
  if (value.empty() || no_proxy_matches(env.no_proxy, target.host, target.port)) return choice;
  const bool has_scheme = value.find("://") != std::string::npos;
  auto proxy = parse_url(has_scheme ? value : "http://" + value);
  if (!proxy) {
    choice.error = "the proxy URL does not parse";
  } else if (proxy->https) {
    // TLS to the proxy itself is not supported: say so rather than send CONNECT in clear.
    choice.error = "https:// proxies are not supported (use http://host:port)";
  } else {
    if (!proxy->port_given) proxy->port = 1080;  // curl's default for a proxy
    choice.proxy = std::move(proxy);
  }
  return choice;
}

}  // namespace mailcar::http_client
