// Value syntaxes of the configuration (rates, durations, sizes, listen addresses, names,
// sender patterns) and the small helpers the loader needs.
#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <climits>
#include <cstdlib>
#include <cstring>

#include "config/config_internal.hpp"
#include "mailcar/config.hpp"
#include "mailcar/text.hpp"

namespace mailcar {
namespace {

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// All of `digits` must be decimal digits; nullopt on anything else or overflow.
std::optional<uint64_t> parse_decimal(std::string_view digits) {
  if (digits.empty()) return std::nullopt;
  for (char c : digits) {
    if (!is_digit(c)) return std::nullopt;
  }
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
  if (ec != std::errc() || end != digits.data() + digits.size()) return std::nullopt;
  return value;
}

// Splits "123unit" into the leading digits and the rest.
std::pair<std::string_view, std::string_view> split_number(std::string_view text) {
  size_t i = 0;
  while (i < text.size() && is_digit(text[i])) ++i;
  return {text.substr(0, i), text.substr(i)};
}

std::optional<uint64_t> checked_multiply(uint64_t a, uint64_t b) {
  if (a != 0 && b > UINT64_MAX / a) return std::nullopt;
  return a * b;
}

}  // namespace

const ServiceConfig* Config::find_service(std::string_view name) const {
  for (const auto& service : services) {
    if (service.name == name) return &service;
  }
  return nullptr;
}

const RoleConfig* Config::find_role(std::string_view name) const {
  for (const auto& role : roles) {
    if (role.name == name) return &role;
  }
  return nullptr;
}

std::optional<std::string> process_env(const std::string& name) {
  const char* value = std::getenv(name.c_str());  // NOLINT(concurrency-mt-unsafe): startup only
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

std::optional<Rate> parse_rate(std::string_view text) {
  std::string_view trimmed = text::trim(text);
  size_t slash = trimmed.find('/');
  if (slash == std::string_view::npos) return std::nullopt;
  auto count = parse_decimal(trimmed.substr(0, slash));
  if (!count || *count == 0) return std::nullopt;
  std::string_view unit = trimmed.substr(slash + 1);
  uint64_t period_ms = 0;
  if (unit == "second" || unit == "s") {
    period_ms = 1000;
  } else if (unit == "minute" || unit == "m") {
    period_ms = 60'000;
  } else if (unit == "hour" || unit == "h") {
    period_ms = 3'600'000;
  } else if (unit == "day" || unit == "d") {
    period_ms = 86'400'000;
  } else {
    return std::nullopt;
  }
  return Rate{*count, period_ms, std::string(trimmed)};
}

std::optional<uint64_t> parse_duration_ms(std::string_view text) {
  auto [digits, unit] = split_number(text::trim(text));
  auto count = parse_decimal(digits);
  if (!count) return std::nullopt;
  uint64_t unit_ms = 0;
  if (unit == "ms") {
    unit_ms = 1;
  } else if (unit == "s") {
    unit_ms = 1000;
  } else if (unit == "m") {
    unit_ms = 60'000;
  } else if (unit == "h") {
    unit_ms = 3'600'000;
  } else if (unit == "d") {
    unit_ms = 86'400'000;
  } else {
    return std::nullopt;  // a unit is required: "30" is ambiguous
  }
  return checked_multiply(*count, unit_ms);
}

std::optional<uint64_t> parse_size_bytes(std::string_view text) {
  auto [digits, unit_text] = split_number(text::trim(text));
  auto count = parse_decimal(digits);
  if (!count) return std::nullopt;
  std::string unit = text::lower_ascii(unit_text);
  uint64_t multiplier = 0;
  if (unit.empty() || unit == "b") {
    multiplier = 1;
  } else if (unit == "kb" || unit == "kib" || unit == "k") {
    multiplier = uint64_t{1} << 10;
  } else if (unit == "mb" || unit == "mib" || unit == "m") {
    multiplier = uint64_t{1} << 20;
  } else if (unit == "gb" || unit == "gib" || unit == "g") {
    multiplier = uint64_t{1} << 30;
  } else {
    return std::nullopt;
  }
  return checked_multiply(*count, multiplier);
}

std::optional<ListenAddress> parse_listen_address(std::string_view text) {
  auto parsed = config_detail::parse_listen_address_explained(text);
  if (!parsed) return std::nullopt;
  return std::move(parsed).value();
}

namespace config_detail {

Result<ListenAddress> parse_listen_address_explained(std::string_view text) {
  constexpr std::string_view kSyntax = "expected IP:PORT or [IPv6]:PORT";
  std::string_view host;
  std::string_view port_text;
  if (!text.empty() && text.front() == '[') {
    size_t close = text.find(']');
    if (close == std::string_view::npos || close + 1 >= text.size() || text[close + 1] != ':') {
      return make_error(std::string(kSyntax));
    }
    host = text.substr(1, close - 1);
    port_text = text.substr(close + 2);
  } else {
    size_t colon = text.rfind(':');
    if (colon == std::string_view::npos) return make_error(std::string(kSyntax));
    host = text.substr(0, colon);
    port_text = text.substr(colon + 1);
    if (host.find(':') != std::string_view::npos) {
      return make_error("an IPv6 address must be written in brackets: [::1]:PORT");
    }
  }
  auto port = parse_decimal(port_text);
  if (!port || *port == 0 || *port > 65535) {
    return make_error("the port must be a number from 1 to 65535");
  }
  std::string host_string(host);
  unsigned char buffer[sizeof(struct in6_addr)];
  bool is_v6 = !text.empty() && text.front() == '[';
  if (inet_pton(is_v6 ? AF_INET6 : AF_INET, host_string.c_str(), buffer) != 1) {
    return make_error(is_v6 ? "not a literal IPv6 address"
                            : "the host must be a literal IP address (host names are not "
                              "resolved here)");
  }
  return ListenAddress{host_string, static_cast<uint16_t>(*port), std::string(text)};
}

Result<std::string> expand_env(std::string_view text, EnvLookup env) {
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  while (pos < text.size()) {
    size_t start = text.find("${", pos);
    if (start == std::string_view::npos) {
      out.append(text.substr(pos));
      break;
    }
    out.append(text.substr(pos, start - pos));
    size_t close = text.find('}', start + 2);
    if (close == std::string_view::npos) return make_error("unterminated ${ (missing '}')");
    std::string_view inner = text.substr(start + 2, close - start - 2);
    size_t dash = inner.find(":-");
    std::string_view name = inner.substr(0, dash);
    bool name_ok = !name.empty() && !is_digit(name.front());
    for (char c : name) {
      bool word = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit(c) || c == '_';
      name_ok = name_ok && word;
    }
    if (!name_ok) {
      return make_error("bad variable reference: a name of [A-Za-z0-9_] is expected after ${");
    }
    std::optional<std::string> value;
    if (env != nullptr) value = env(std::string(name));
    if (dash != std::string_view::npos) {
      if (!value || value->empty()) value = std::string(inner.substr(dash + 2));
    } else if (!value) {
      return make_error("environment variable " + std::string(name) + " is not set");
    }
    out.append(*value);
    pos = close + 1;
  }
  return out;
}

std::optional<std::string> check_address(std::string_view address) {
  if (address.empty()) return "is empty";
  bool in_quotes = false;
  size_t at_count = 0;
  size_t at = 0;
  for (size_t i = 0; i < address.size(); ++i) {
    char c = address[i];
    if (c == '\r' || c == '\n' || c == '\0') return "contains CR, LF or NUL";
    if (in_quotes) {
      if (c == '\\') {
        ++i;  // quoted pair
      } else if (c == '"') {
        in_quotes = false;
      }
      continue;
    }
    if (c == '"') {
      in_quotes = true;
    } else if (c == '@') {
      ++at_count;
      at = i;
    } else if (c == ' ' || c == '\t' || c == '<' || c == '>') {
      return "is not a plain address (no spaces or <>; put a display name in the *_name key)";
    }
  }
  if (in_quotes) return "has an unterminated quoted local part";
  if (at_count != 1) return "must contain exactly one '@' (local@domain)";
  if (at == 0) return "has an empty local part";
  if (at + 1 == address.size()) return "has an empty domain";
  return std::nullopt;
}

namespace {

std::optional<std::string> check_domain(std::string_view domain) {
  if (domain.empty()) return "has an empty domain";
  if (domain.front() == '.' || domain.back() == '.' ||
      domain.find("..") != std::string_view::npos) {
    return "has a malformed domain (empty label)";
  }
  for (char c : domain) {
    auto byte = static_cast<unsigned char>(c);
    if (byte <= ' ' || byte == 0x7f || c == '@' || c == '*' || c == '"' || c == '<' || c == '>') {
      return "has a malformed domain";
    }
  }
  return std::nullopt;
}

}  // namespace

std::optional<std::string> check_sender_pattern(std::string_view pattern) {
  constexpr std::string_view kShapes =
      "is not a sender pattern: use an exact address, *@domain, *@*.domain or *";
  if (pattern == "*") return std::nullopt;
  if (pattern.starts_with("*@")) {
    std::string_view domain = pattern.substr(2);
    if (domain.starts_with("*.")) domain.remove_prefix(2);
    if (check_domain(domain)) return std::string(kShapes);
    return std::nullopt;
  }
  if (pattern.find('*') != std::string_view::npos) return std::string(kShapes);
  if (auto problem = check_address(pattern)) return "is not an address: " + *problem;
  if (check_domain(pattern.substr(pattern.rfind('@') + 1))) {
    return "has a malformed domain";
  }
  return std::nullopt;
}

std::optional<std::string> check_name(std::string_view name) {
  if (name.empty() || name.size() > 64) return "must be 1 to 64 characters long";
  for (char c : name) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit(c) || c == '_' ||
              c == '.' || c == '-';
    if (!ok) return "may contain only letters, digits, '_', '.' and '-'";
  }
  return std::nullopt;
}

std::optional<std::string> check_hostname(std::string_view name) {
  if (name.empty() || name.size() > 253) return "must be 1 to 253 characters long";
  for (char c : name) {
    auto byte = static_cast<unsigned char>(c);
    if (byte <= ' ' || byte >= 0x7f) return "must be printable ASCII without spaces";
  }
  return std::nullopt;
}

Result<std::string> read_small_file(const std::string& path, size_t max_bytes) {
  auto fail = [&](const char* what) { return make_error("cannot read " + path + ": " + what); };
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) return fail(std::strerror(errno));
  struct stat info {};
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    ::close(fd);
    return fail("not a regular file");
  }
  std::string content;
  char buffer[8192];
  while (true) {
    ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n < 0) {
      if (errno == EINTR) continue;
      int saved = errno;
      ::close(fd);
      return fail(std::strerror(saved));
    }
    if (n == 0) break;
    content.append(buffer, static_cast<size_t>(n));
    if (content.size() > max_bytes) {
      ::close(fd);
      return make_error("cannot read " + path + ": larger than the limit of " +
                        std::to_string(max_bytes) + " bytes");
    }
  }
  ::close(fd);
  return content;
}

std::string machine_hostname() {
  char buffer[256] = {};
  if (::gethostname(buffer, sizeof buffer - 1) != 0 || buffer[0] == '\0') return "localhost";
  std::string name(buffer);
  if (check_hostname(name)) return "localhost";
  return name;
}

}  // namespace config_detail
}  // namespace mailcar
