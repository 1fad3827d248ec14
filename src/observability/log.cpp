#include "mailcar/log.hpp"

#include <unistd.h>

#include <algorithm>
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

// A byte JSON writes escaped: '"', '\\', control bytes and DEL.
bool json_escaped(unsigned char c) {
  return c < 0x20 || c == '"' || c == '\\' || c == 0x7f;
}

// The first byte in [p, end) that JSON writes escaped, or end. 16 bytes at a time where it can.
const char* find_json_escaped(const char* p, const char* end) {
#if defined(__SSE2__)
  const __m128i quote = _mm_set1_epi8('"');
  const __m128i backslash = _mm_set1_epi8('\\');
  const __m128i del = _mm_set1_epi8(0x7f);
  const __m128i max_control = _mm_set1_epi8(0x1f);
  while (end - p >= 16) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    // Unsigned c <= 0x1f exactly when min(c, 0x1f) == c.
    __m128i hit = _mm_or_si128(
        _mm_or_si128(_mm_cmpeq_epi8(v, quote), _mm_cmpeq_epi8(v, backslash)),
        _mm_or_si128(_mm_cmpeq_epi8(v, del), _mm_cmpeq_epi8(_mm_min_epu8(v, max_control), v)));
    auto mask = static_cast<uint32_t>(_mm_movemask_epi8(hit));
    if (mask != 0) return p + std::countr_zero(mask);
    p += 16;
  }
#endif
  while (p < end && !json_escaped(static_cast<unsigned char>(*p))) ++p;
  return p;
}

void append_json_escape(std::string& out, unsigned char c) {
  static constexpr char kHex[] = "0123456789abcdef";
  switch (c) {
    case '"':
      out.append("\\\"");
      break;
    case '\\':
      out.append("\\\\");
      break;
    case '\n':
      out.append("\\n");
      break;
    case '\r':
      out.append("\\r");
      break;
    case '\t':
      out.append("\\t");
      break;
    default: {
      const char u[6] = {'\\', 'u', '0', '0', kHex[c >> 4], kHex[c & 15]};
      out.append(u, sizeof u);
    }
  }
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

void append_fields_json(std::string& line, std::initializer_list<Field> fields) {
  Field::NumberBuffer buf;
  for (const Field& f : fields) {
    line.push_back(',');
    append_json_string(line, f.key);
    line.push_back(':');
    if (f.quoted) {
      append_json_string(line, f.value(buf));
    } else {
      line.append(f.value(buf));
    }
  }
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
  out.reserve(out.size() + s.size() + 2);  // the usual case: nothing to escape
  out.push_back('"');
  const char* p = s.data();
  const char* end = p + s.size();
  while (p < end) {
    const char* stop = find_json_escaped(p, end);
    out.append(p, stop);
    if (stop == end) break;
    append_json_escape(out, static_cast<unsigned char>(*stop));
    p = stop + 1;
  }
  out.push_back('"');
}

void append_line(std::string& line, uint64_t unix_ms, LogLevel level, std::string_view event,
                 std::initializer_list<Field> fields) {
  char stamp[kStampMax];
  const size_t stamp_size = format_rfc3339(stamp, unix_ms);
  if (g_format == LogFormat::Json) {
    line.append("{\"ts\":\"");
    line.append(stamp, stamp_size);
    line.append("\",\"level\":\"");
    line.append(level_name(level));
    line.append("\",\"event\":");
    append_json_string(line, event);
    append_fields_json(line, fields);
    line.append("}\n");
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
