#include "mailcar/text.hpp"

#include <sys/random.h>

#include <array>
#include <cstring>

namespace mailcar::text {
namespace {

constexpr char kAlphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

constexpr std::array<int8_t, 256> make_decode_table() {
  std::array<int8_t, 256> t{};
  for (auto& v : t) v = -1;
  for (int i = 0; i < 64; ++i) t[static_cast<unsigned char>(kAlphabet[i])] = static_cast<int8_t>(i);
  return t;
}
constexpr auto kDecode = make_decode_table();

}  // namespace

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  base64_encode_append(out, bytes);
  return out;
}

void base64_encode_append(std::string& out, std::string_view bytes) {
  // Sized once, then written through a pointer: no per-quantum append.
  size_t at = out.size();
  out.resize(at + (bytes.size() + 2) / 3 * 4);
  base64_encode_into(out.data() + at, bytes);
}

size_t base64_encode_into(char* o, std::string_view bytes) {
  char* start = o;
  size_t i = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  for (; i + 3 <= bytes.size(); i += 3, o += 4) {
    uint32_t v = (uint32_t{p[i]} << 16) | (uint32_t{p[i + 1]} << 8) | p[i + 2];
    o[0] = kAlphabet[(v >> 18) & 63];
    o[1] = kAlphabet[(v >> 12) & 63];
    o[2] = kAlphabet[(v >> 6) & 63];
    o[3] = kAlphabet[v & 63];
  }
  size_t rest = bytes.size() - i;
  if (rest == 0) return static_cast<size_t>(o - start);
  uint32_t v = uint32_t{p[i]} << 16;
  if (rest == 2) v |= uint32_t{p[i + 1]} << 8;
  o[0] = kAlphabet[(v >> 18) & 63];
  o[1] = kAlphabet[(v >> 12) & 63];
  o[2] = rest == 2 ? kAlphabet[(v >> 6) & 63] : '=';
  o[3] = '=';
  return static_cast<size_t>(o + 4 - start);
}

std::optional<std::string> base64_decode(std::string_view text) {
  std::string out;
  out.reserve(text.size() / 4 * 3);
  uint32_t acc = 0;
  int n = 0;    // sextets in the current quantum
  int pad = 0;  // '=' seen
  for (char ch : text) {
    auto c = static_cast<unsigned char>(ch);
    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') continue;
    if (c == '=') {
      if (n < 2) return std::nullopt;
      ++pad;
      if (n + pad > 4) return std::nullopt;
      continue;
    }
    if (pad) return std::nullopt;  // data after padding
    int8_t v = kDecode[c];
    if (v < 0) return std::nullopt;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    if (++n == 4) {
      out.push_back(static_cast<char>((acc >> 16) & 0xff));
      out.push_back(static_cast<char>((acc >> 8) & 0xff));
      out.push_back(static_cast<char>(acc & 0xff));
      acc = 0;
      n = 0;
    }
  }
  if (pad) {
    if (n + pad != 4) return std::nullopt;
  }
  if (n == 1) return std::nullopt;
  if (n == 2) {
    out.push_back(static_cast<char>((acc >> 4) & 0xff));
  } else if (n == 3) {
    out.push_back(static_cast<char>((acc >> 10) & 0xff));
    out.push_back(static_cast<char>((acc >> 2) & 0xff));
  }
  return out;
}

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Walk the longer input fully so the time depends on lengths only.
  size_t n = a.size() > b.size() ? a.size() : b.size();
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < n; ++i) {
    unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    diff |= static_cast<unsigned char>(x ^ y);
  }
  return diff == 0;
}

std::string lower_ascii(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = to_lower_ascii(c);
  return out;
}

bool istarts_with_ascii(std::string_view s, std::string_view prefix) {
  return s.size() >= prefix.size() && iequals_ascii(s.substr(0, prefix.size()), prefix);
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

bool is_ascii(std::string_view s) {
  for (unsigned char c : s) {
    if (c >= 0x80) return false;
  }
  return true;
}

size_t invalid_utf8_offset(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    auto b0 = static_cast<unsigned char>(s[i]);
    if (b0 < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    if (b0 >= 0xC2 && b0 <= 0xDF) {
      len = 2;
    } else if (b0 >= 0xE0 && b0 <= 0xEF) {
      len = 3;
    } else if (b0 >= 0xF0 && b0 <= 0xF4) {
      len = 4;
    } else {
      return i;  // a continuation byte, C0/C1 (overlong) or F5..FF
    }
    if (i + len > s.size()) return i;
    uint32_t cp = b0 & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
    for (size_t k = 1; k < len; ++k) {
      auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (c & 0x3F);
    }
    if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000)) return i;  // overlong
    if ((cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) return i;         // surrogate, range
    i += len;
  }
  return std::string_view::npos;
}

namespace {

// Random bytes drawn from the kernel a block at a time (one getrandom per 256 bytes rather
// than one per token); each byte is used once.
struct RandomPool {
  unsigned char bytes[256];
  size_t used = sizeof bytes;

  unsigned char next() {
    while (used == sizeof bytes) {
      ssize_t got = getrandom(bytes, sizeof bytes, 0);
      if (got == static_cast<ssize_t>(sizeof bytes)) used = 0;
    }
    return bytes[used++];
  }
};

}  // namespace

void append_random_token(std::string& out, size_t n) {
  static constexpr char kChars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  thread_local RandomPool pool;
  size_t at = out.size();
  out.resize(at + n);
  char* o = out.data() + at;
  for (size_t i = 0; i < n;) {
    unsigned char b = pool.next();
    if (b < 248) o[i++] = kChars[b % 62];  // 248 = 4*62: no modulo bias
  }
}

std::string random_token(size_t n) {
  std::string out;
  append_random_token(out, n);
  return out;
}

}  // namespace mailcar::text
