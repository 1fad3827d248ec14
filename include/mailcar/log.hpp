// One line per event to stdout, JSON or text (SPEC §8). Callers pass fields explicitly;
// never pass a password, API key or message body.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>

#include "mailcar/config.hpp"

namespace mailcar::log {

struct Field {
  std::string_view key;
  std::string value;
  bool quoted = true;  // false for numbers and booleans

  Field(std::string_view k, std::string_view v) : key(k), value(v) {}
  Field(std::string_view k, const char* v) : key(k), value(v ? v : "") {}
  Field(std::string_view k, const std::string& v) : key(k), value(v) {}
  Field(std::string_view k, bool v) : key(k), value(v ? "true" : "false"), quoted(false) {}
  Field(std::string_view k, double v);
  template <class T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  Field(std::string_view k, T v) : key(k), value(std::to_string(v)), quoted(false) {}
};

void configure(LogFormat format, LogLevel level);
bool enabled(LogLevel level);
void write(LogLevel level, std::string_view event, std::initializer_list<Field> fields);

inline void error(std::string_view event, std::initializer_list<Field> f = {}) {
  write(LogLevel::Error, event, f);
}
inline void warn(std::string_view event, std::initializer_list<Field> f = {}) {
  write(LogLevel::Warn, event, f);
}
inline void info(std::string_view event, std::initializer_list<Field> f = {}) {
  write(LogLevel::Info, event, f);
}
inline void debug(std::string_view event, std::initializer_list<Field> f = {}) {
  if (enabled(LogLevel::Debug)) write(LogLevel::Debug, event, f);
}

// JSON string escaping, shared with the HTTP responses.
void append_json_string(std::string& out, std::string_view s);
// RFC 3339 UTC with milliseconds ("2026-12-01T17:01:16.123Z"), as log lines are stamped.
std::string rfc3339_utc(uint64_t unix_ms);

}  // namespace mailcar::log
