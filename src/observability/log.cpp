#include "mailcar/log.hpp"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <bit>
#include <charconv>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ctime>

#include "mailcar/clock.hpp"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace mailcar::log {
namespace {

LogFormat g_format = LogFormat::Json;
LogLevel g_level = LogLevel::Info;

std::string_view level_name(LogLevel level) {
  switch (level) {
    case LogLevel::Error:
      return "error";
    case LogLevel::Warn:
      return "warn";
    case LogLevel::Info:
      return "info";
    case LogLevel::Debug:
      return "debug";
  }
  return "info";
}

#if !defined(__SSE2__)
// The bytes JSON writes escaped: '"', '\\', control bytes and DEL.
constexpr std::array<bool, 256> kJsonEscaped = [] {
  std::array<bool, 256> t{};
  for (int c = 0; c < 0x20; ++c) t[static_cast<size_t>(c)] = true;
  t['"'] = t['\\'] = t[0x7f] = true;
  return t;
}();
#endif

#if defined(__SSE2__)
// Bit i set when byte i of v is one JSON writes escaped.
inline uint32_t json_escaped_mask(__m128i v) {
  // Unsigned c <= 0x1f exactly when min(c, 0x1f) == c.
  __m128i hit = _mm_or_si128(
      _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('"')), _mm_cmpeq_epi8(v, _mm_set1_epi8('\\'))),
      _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f)),
                   _mm_cmpeq_epi8(_mm_min_epu8(v, _mm_set1_epi8(0x1f)), v)));
  return static_cast<uint32_t>(_mm_movemask_epi8(hit));
}
#endif

// The first byte in [p, end) that JSON writes escaped, or end. 16 bytes at a time; a shorter
// rest (most keys and values) is copied to a block of its own, so nothing past end is read.
inline const char* find_json_escaped(const char* p, const char* end) {
#if defined(__SSE2__)
  while (end - p >= 16) {
    uint32_t mask = json_escaped_mask(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    if (mask != 0) return p + std::countr_zero(mask);
    p += 16;
  }
  if (p == end) return end;
  const auto n = static_cast<size_t>(end - p);
  alignas(16) char block[16] = {};
  std::memcpy(block, p, n);
  const uint32_t valid = (1u << n) - 1u;  // the zero padding would count as control bytes
  uint32_t mask =
      json_escaped_mask(_mm_load_si128(reinterpret_cast<const __m128i*>(block))) & valid;
  return mask != 0 ? p + std::countr_zero(mask) : end;
#else
  while (p < end && !kJsonEscaped[static_cast<unsigned char>(*p)]) ++p;
  return p;
#endif
}

// Worst case: every byte written as \u00XX.
constexpr size_t kEscapeRatio = 6;

// Writes the escape of `c` at p; returns the end.
char* put_json_escape(char* p, unsigned char c) {
  static constexpr char kHex[] = "0123456789abcdef";
  char short_form = 0;
  switch (c) {
    case '"':
    case '\\':
      short_form = static_cast<char>(c);
      break;
    case '\n':
      short_form = 'n';
      break;
    case '\r':
      short_form = 'r';
      break;
    case '\t':
      short_form = 't';
      break;
    default:
      break;
  }
  *p++ = '\\';
  if (short_form != 0) {
    *p++ = short_form;
    return p;
  }
  const char u[5] = {'u', '0', '0', kHex[c >> 4], kHex[c & 15]};
  std::memcpy(p, u, sizeof u);
  return p + sizeof u;
}

// Writes `s` escaped (no quotes) at p, room for kEscapeRatio * size bytes; returns the end.
// Runs without escapes are copied whole.
char* put_json_body(char* p, std::string_view s) {
  const char* q = s.data();
  const char* end = q + s.size();
  while (true) {
    const char* stop = find_json_escaped(q, end);
    if (stop != q) std::memcpy(p, q, static_cast<size_t>(stop - q));  // q may be null when empty
    p += stop - q;
    if (stop == end) break;
    p = put_json_escape(p, static_cast<unsigned char>(*stop));
    q = stop + 1;
  }
  return p;
}

// Writes `s` as a JSON string at p (room for kEscapeRatio * size + 2 bytes); returns the end.
char* put_json_string(char* p, std::string_view s) {
  *p++ = '"';
  p = put_json_body(p, s);
  *p++ = '"';
  return p;
}

char* put(char* p, std::string_view s) {
  if (!s.empty()) std::memcpy(p, s.data(), s.size());  // an empty view's data() may be null
  return p + s.size();
}

// Text format: values with spaces, quotes or control bytes are quoted JSON-style.
void append_text_value(std::string& out, std::string_view v) {
  bool plain = !v.empty();
  for (unsigned char c : v) {
    if (c <= ' ' || c == '"' || c == '=' || c == 0x7f) {
      plain = false;
      break;
    }
  }
  if (plain) {
    out.append(v);
  } else {
    append_json_string(out, v);
  }
}

void append_digits(char* p, unsigned v, int width) {
  for (int i = width - 1; i >= 0; --i) {
    p[i] = static_cast<char>('0' + v % 10);
    v /= 10;
  }
}

// "YYYY-MM-DDTHH:MM:SS.mmmZ" at p (room for kStampMax bytes); returns its length. The
// calendar part is worked out once per second.
constexpr size_t kStampMax = 96;

size_t format_rfc3339(char* p, uint64_t unix_ms) {
  thread_local int64_t cached_second = -1;
  thread_local char cached[19];
  const auto second = static_cast<int64_t>(unix_ms / 1000);
  const auto ms = static_cast<unsigned>(unix_ms % 1000);
  if (second != cached_second) {
    std::time_t t = static_cast<std::time_t>(second);
    std::tm tm{};
    gmtime_r(&t, &tm);
    if (tm.tm_year + 1900 < 0 || tm.tm_year + 1900 > 9999) {
      // Outside four-digit years (never the clock): printf's widths, as ever, and no cache.
      int n = std::snprintf(p, kStampMax, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                            tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                            static_cast<int>(ms));
      return n < 0 ? 0 : std::min(static_cast<size_t>(n), kStampMax - 1);
    }
    append_digits(cached, static_cast<unsigned>(tm.tm_year + 1900), 4);
    cached[4] = '-';
    append_digits(cached + 5, static_cast<unsigned>(tm.tm_mon + 1), 2);
    cached[7] = '-';
    append_digits(cached + 8, static_cast<unsigned>(tm.tm_mday), 2);
    cached[10] = 'T';
    append_digits(cached + 11, static_cast<unsigned>(tm.tm_hour), 2);
    cached[13] = ':';
    append_digits(cached + 14, static_cast<unsigned>(tm.tm_min), 2);
    cached[16] = ':';
    append_digits(cached + 17, static_cast<unsigned>(tm.tm_sec), 2);
    cached_second = second;
  }
  std::memcpy(p, cached, sizeof cached);
  p[19] = '.';
  append_digits(p + 20, ms, 3);
  p[23] = 'Z';
  return 24;
}

// A JSON line is written through a pointer into room for its worst case, made once.
void append_json_line(std::string& line, std::string_view stamp, LogLevel level,
                      std::string_view event, std::initializer_list<Field> fields) {
  constexpr std::string_view kTs = "{\"ts\":\"";
  constexpr std::string_view kLevel = "\",\"level\":\"";
  constexpr std::string_view kEvent = "\",\"event\":";
  size_t room = kTs.size() + stamp.size() + kLevel.size() + 8 + kEvent.size() +
                kEscapeRatio * event.size() + 2 + 2;
  Field::NumberBuffer buf;
  for (const Field& f : fields) {
    room += 1 + f.key.size() + 2 + 1 + kEscapeRatio * f.value_size_bound() + 2;
  }
  const size_t start = line.size();
  line.resize(start + room);
  char* p = line.data() + start;
  p = put(p, kTs);
  p = put(p, stamp);
  p = put(p, kLevel);
  p = put(p, level_name(level));
  p = put(p, kEvent);
  p = put_json_string(p, event);
  for (const Field& f : fields) {
    *p++ = ',';
    *p++ = '"';
    p = put(p, f.key);  // a Key: nothing to escape
    *p++ = '"';
    *p++ = ':';
    p = f.quoted ? put_json_string(p, f.value(buf)) : put(p, f.value(buf));
  }
  *p++ = '}';
  *p++ = '\n';
  line.resize(static_cast<size_t>(p - line.data()));
}

void append_fields_text(std::string& line, std::initializer_list<Field> fields) {
  Field::NumberBuffer buf;
  for (const Field& f : fields) {
    line.push_back(' ');
    line.append(f.key);
    line.push_back('=');
    append_text_value(line, f.value(buf));
  }
}

}  // namespace

std::string_view Field::value(NumberBuffer& buf) const {
  std::to_chars_result r{buf, std::errc()};
  switch (kind_) {
    case Kind::View:
      return view_;
    case Kind::Owned:
      return owned_;
    case Kind::Signed:
      r = std::to_chars(buf, buf + sizeof buf, num_.i);
      break;
    case Kind::Unsigned:
      r = std::to_chars(buf, buf + sizeof buf, num_.u);
      break;
    case Kind::Double:
      // Exactly printf's "%.6g" (the C++17 definition of this overload).
      r = std::to_chars(buf, buf + sizeof buf, num_.d, std::chars_format::general, 6);
      break;
  }
  return r.ec == std::errc() ? std::string_view(buf, static_cast<size_t>(r.ptr - buf))
                             : std::string_view();
}

void configure(LogFormat format, LogLevel level) {
  g_format = format;
  g_level = level;
}

bool enabled(LogLevel level) {
  return static_cast<int>(level) <= static_cast<int>(g_level);
}

void append_json_string(std::string& out, std::string_view s) {
  const size_t start = out.size();
  const char* first = find_json_escaped(s.data(), s.data() + s.size());
  // The usual case, nothing to escape: room for exactly the string; else for its worst case.
  const size_t plain = static_cast<size_t>(first - s.data());
  out.resize(start + plain + 2 + (s.size() - plain) * kEscapeRatio);
  char* p = out.data() + start;
  *p++ = '"';
  p = put(p, s.substr(0, plain));
  p = put_json_body(p, s.substr(plain));
  *p++ = '"';
  out.resize(static_cast<size_t>(p - out.data()));
}

void append_line(std::string& line, uint64_t unix_ms, LogLevel level, std::string_view event,
                 std::initializer_list<Field> fields) {
  char stamp[kStampMax];
  const size_t stamp_size = format_rfc3339(stamp, unix_ms);
  if (g_format == LogFormat::Json) {
    append_json_line(line, std::string_view(stamp, stamp_size), level, event, fields);
  } else {
    line.append(stamp, stamp_size);
    line.push_back(' ');
    line.append(level_name(level));
    line.push_back(' ');
    line.append(event);
    append_fields_text(line, fields);
    line.push_back('\n');
  }
}

void write(LogLevel level, std::string_view event, std::initializer_list<Field> fields) {
  if (!enabled(level)) return;
  // One buffer per thread, reused line after line.
  thread_local std::string line;
  line.clear();
  append_line(line, wall_clock_ms(), level, event, fields);
  // One write(2) per line so concurrent readers never see interleaved halves. stdout is a
  // pipe or terminal; a short write here is not worth blocking the loop over.
  ssize_t n = ::write(STDOUT_FILENO, line.data(), line.size());
  (void)n;
  if (line.capacity() > 64 * 1024) std::string().swap(line);  // an odd huge line is not kept
}

std::string rfc3339_utc(uint64_t unix_ms) {
  char stamp[kStampMax];
  return std::string(stamp, format_rfc3339(stamp, unix_ms));
}

}  // namespace mailcar::log
