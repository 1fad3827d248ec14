// RFC 5322 character classes shared by the address parser, the address-list lexer and the
// MIME builder.
#pragma once

#include <string_view>

namespace mailcar {

inline bool is_ascii_alnum(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// atext (RFC 5322 3.2.3), ASCII only.
inline bool is_atext_ascii(unsigned char c) {
  constexpr std::string_view kSpecials = "!#$%&'*+-/=?^_`{|}~";
  return is_ascii_alnum(c) || (c != 0 && kSpecials.find(static_cast<char>(c)) != kSpecials.npos);
}

// atext plus RFC 6531 UTF8-non-ascii bytes (UTF-8 validity is checked separately).
inline bool is_atext_utf8(unsigned char c) {
  return c >= 0x80 || is_atext_ascii(c);
}

}  // namespace mailcar
