// Small byte-level helpers shared by every layer: base64, ASCII case, constant-time compare,
// random tokens.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace mailcar::text {

std::string base64_encode(std::string_view bytes);
// The same, appended to `out` (no temporary: for large data written into a final buffer).
void base64_encode_append(std::string& out, std::string_view bytes);
// The same into `out`, which has room for (bytes.size() + 2) / 3 * 4 chars; returns that count.
size_t base64_encode_into(char* out, std::string_view bytes);
// Strict RFC 4648 decoding; whitespace (SP, TAB, CR, LF) is skipped. nullopt on any other
// non-alphabet byte, bad padding or a truncated quantum.
std::optional<std::string> base64_decode(std::string_view text);

// Compares in time that depends only on the lengths, not on where the bytes differ.
bool constant_time_equal(std::string_view a, std::string_view b);

inline char to_lower_ascii(char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<char>(c + 32) : c;
}
std::string lower_ascii(std::string_view s);
// Inline: most calls compare a word of the protocol with one that differs in length.
inline bool iequals_ascii(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (to_lower_ascii(a[i]) != to_lower_ascii(b[i])) return false;
  }
  return true;
}
bool istarts_with_ascii(std::string_view s, std::string_view prefix);
std::string_view trim(std::string_view s);  // SP and TAB
bool is_ascii(std::string_view s);
// Offset of the first byte that does not begin a valid UTF-8 sequence (overlong forms,
// surrogates and code points above U+10FFFF are invalid; C1 controls are valid), or npos.
size_t invalid_utf8_offset(std::string_view s);

// `n` random characters from [A-Za-z0-9], from the kernel's CSPRNG.
std::string random_token(size_t n);
// The same, appended to `out`.
void append_random_token(std::string& out, size_t n);

}  // namespace mailcar::text
