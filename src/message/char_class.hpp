// RFC 5322 character classes shared by the address parser, the address-list lexer and the
// MIME builder.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

namespace mailcar {

constexpr bool is_ascii_alnum(unsigned char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
}

// atext (RFC 5322 3.2.3), ASCII only.
constexpr bool is_atext_ascii(unsigned char c) {
  constexpr std::string_view kSpecials = "!#$%&'*+-/=?^_`{|}~";
  return is_ascii_alnum(c) || (c != 0 && kSpecials.find(static_cast<char>(c)) != kSpecials.npos);
}

// atext plus RFC 6531 UTF8-non-ascii bytes (UTF-8 validity is checked separately).
constexpr bool is_atext_utf8(unsigned char c) {
  return c >= 0x80 || is_atext_ascii(c);
}

// The classes above as one table lookup for per-byte loops (validate_address).
enum AddressCharClass : uint8_t {
  kPrintableAscii = 1,  // 0x20..0x7E: needs no control-character or UTF-8 check
  kAtextUtf8 = 2,       // is_atext_utf8
  kLabelChar = 4,       // a domain label's byte: ASCII letter, digit, '-', or >= 0x80
};

constexpr std::array<uint8_t, 256> make_address_char_classes() {
  std::array<uint8_t, 256> t{};
  for (int i = 0; i < 256; ++i) {
    auto c = static_cast<unsigned char>(i);
    uint8_t bits = 0;
    if (c >= 0x20 && c <= 0x7E) bits |= kPrintableAscii;
    if (is_atext_utf8(c)) bits |= kAtextUtf8;
    if (is_ascii_alnum(c) || c == '-' || c >= 0x80) bits |= kLabelChar;
    t[c] = bits;
  }
  return t;
}

inline constexpr std::array<uint8_t, 256> kAddressCharClasses = make_address_char_classes();

inline bool has_class(unsigned char c, AddressCharClass cls) {
  return (kAddressCharClasses[c] & cls) != 0;
}

}  // namespace mailcar
