#include "mailcar/address.hpp"

#include <arpa/inet.h>

#include <cstdint>

#include "mailcar/text.hpp"
#include "message/char_class.hpp"

namespace mailcar {
namespace {

constexpr size_t kMaxLocal = 64;
constexpr size_t kMaxDomain = 255;
constexpr size_t kMaxLabel = 63;
constexpr size_t kMaxAddress = 254;  // RFC 5321 path (256) minus the angle brackets

// Length of the UTF-8 sequence at s[i], or 0 when it is invalid.
size_t utf8_sequence_length(std::string_view s, size_t i) {
  auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return 1;
  size_t len;
  uint32_t cp;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2;
    cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3;
    cp = b0 & 0x0F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4;
    cp = b0 & 0x07;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return 0;  // overlong
  if (cp >= 0xD800 && cp <= 0xDFFF) return 0;                            // surrogate
  if (cp > 0x10FFFF) return 0;
  if (cp >= 0x80 && cp <= 0x9F) return 0;  // C1 controls have no place in an address
  return len;
}

Result<void> check_local(std::string_view local) {
  if (local.empty()) return make_error("empty local part");
  if (local.size() > kMaxLocal) return make_error("local part longer than 64 octets");
  if (local.front() == '"') {
    if (local.size() < 2 || local.back() != '"')
      return make_error("unterminated quoted local part");
    for (size_t i = 1; i + 1 < local.size(); ++i) {
      auto c = static_cast<unsigned char>(local[i]);
      if (c == '\\') {
        if (i + 2 >= local.size()) return make_error("unterminated quoted local part");
        auto q = static_cast<unsigned char>(local[++i]);
        if (q < 32 || q > 126) return make_error("invalid quoted-pair in local part");
      } else if (c == '"') {
        return make_error("unescaped quote in local part");
      } else if (c < 32 || c == 127) {
        return make_error("control character in local part");
      }
    }
    return {};
  }
  if (local.front() == '.' || local.back() == '.')
    return make_error("local part starts or ends with a dot");
  char prev = 0;
  for (char ch : local) {
    auto c = static_cast<unsigned char>(ch);
    if (ch != '.' && has_class(c, kAtextUtf8)) {  // the usual byte
      prev = ch;
      continue;
    }
    if (ch == '.') {
      if (prev == '.') return make_error("consecutive dots in local part");
    } else if (c == ' ' || c == '\t') {
      return make_error("space in local part (quote it)");
    } else if (!is_atext_utf8(c)) {
      return make_error("invalid character in local part");
    }
    prev = ch;
  }
  return {};
}

Result<void> check_address_literal(std::string_view lit) {
  // lit is the inside of [ ... ].
  std::string buf;
  unsigned char addr[16];
  if (text::istarts_with_ascii(lit, "IPv6:")) {
    buf.assign(lit.substr(5));
    if (buf.empty() || inet_pton(AF_INET6, buf.c_str(), addr) != 1) {
      return make_error("invalid IPv6 address literal");
    }
    return {};
  }
  buf.assign(lit);
  // inet_pton's AF_INET form is exactly the dotted quad of RFC 5321 (no octal, no short forms).
  if (buf.empty() || inet_pton(AF_INET, buf.c_str(), addr) != 1) {
    return make_error("invalid address literal");
  }
  return {};
}

Result<void> check_domain(std::string_view domain) {
  if (domain.empty()) return make_error("empty domain");
  if (domain.front() == '[') {
    if (domain.back() != ']') return make_error("unterminated address literal");
    return check_address_literal(domain.substr(1, domain.size() - 2));
  }
  if (domain.size() > kMaxDomain) return make_error("domain longer than 255 octets");
  size_t start = 0;
  while (true) {
    size_t dot = domain.find('.', start);
    std::string_view label =
        domain.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    if (label.empty()) return make_error("invalid domain: empty label");
    if (label.size() > kMaxLabel) return make_error("invalid domain: label longer than 63 octets");
    if (label.front() == '-' || label.back() == '-') {
      return make_error("invalid domain: label starts or ends with a hyphen");
    }
    for (char ch : label) {
      if (!has_class(static_cast<unsigned char>(ch), kLabelChar)) {
        return make_error("invalid domain: character not allowed");
      }
    }
    if (dot == std::string_view::npos) break;
    start = dot + 1;
  }
  return {};
}

}  // namespace

bool is_valid_utf8(std::string_view s) {
  return text::invalid_utf8_offset(s) == std::string_view::npos;
}

Result<std::string> validate_address(std::string_view addr) {
  auto checked = check_address(addr);
  if (!checked) return checked.error();
  return std::string(*checked);
}

Result<std::string_view> check_address(std::string_view addr) {
  addr = text::trim(addr);
  if (addr.empty()) return make_error("empty address");
  // Control characters first: CR/LF injection must fail loudly whatever else is wrong.
  for (size_t i = 0; i < addr.size();) {
    auto c = static_cast<unsigned char>(addr[i]);
    if (has_class(c, kPrintableAscii)) {  // the usual byte: nothing to check
      ++i;
      continue;
    }
    if (c == '\r' || c == '\n') return make_error("CR or LF in address");
    if (c == 0) return make_error("NUL in address");
    if (c < 32 && c != '\t') return make_error("control character in address");
    if (c == 127) return make_error("control character in address");
    size_t len = utf8_sequence_length(addr, i);
    if (len == 0) return make_error("invalid UTF-8 in address");
    i += len;
  }
  if (addr.front() == '<' || addr.back() == '>') return make_error("angle brackets around address");
  // The local part ends at the '@' that follows it: after the closing quote of a
  // quoted-string, else the first '@'.
  size_t at;
  if (addr.front() == '"') {
    size_t i = 1;
    for (; i < addr.size(); ++i) {
      if (addr[i] == '\\') {
        ++i;
      } else if (addr[i] == '"') {
        break;
      }
    }
    if (i >= addr.size()) return make_error("unterminated quoted local part");
    if (i + 1 >= addr.size() || addr[i + 1] != '@') {
      return make_error(i + 1 >= addr.size() ? "missing @" : "text after quoted local part");
    }
    at = i + 1;
  } else {
    at = addr.find('@');
    if (at == std::string_view::npos) return make_error("missing @");
  }
  if (addr.size() > kMaxAddress) return make_error("address longer than 254 octets");
  if (auto r = check_local(addr.substr(0, at)); !r) return r.error();
  std::string_view domain = addr.substr(at + 1);
  if (domain.find('@') != std::string_view::npos) return make_error("more than one @");
  if (auto r = check_domain(domain); !r) return r.error();
  return addr;
}

bool address_is_ascii(std::string_view addr) {
  return text::is_ascii(addr);
}

std::string_view address_domain(std::string_view addr) {
  size_t at = addr.rfind('@');
  return at == std::string_view::npos ? std::string_view{} : addr.substr(at + 1);
}

std::string_view address_local(std::string_view addr) {
  size_t at = addr.rfind('@');
  return at == std::string_view::npos ? addr : addr.substr(0, at);
}

}  // namespace mailcar
