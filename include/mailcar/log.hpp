// One line per event to stdout, JSON or text (SPEC §8). Callers pass fields explicitly;
// never pass a password, API key or message body.
#pragma once

#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <type_traits>

#include "mailcar/config.hpp"

namespace mailcar::log {

// A field's name: a string literal of ASCII letters, digits and '_', checked when the
// program is compiled (a name that breaks the rule does not compile), so line writers copy
// names as they are, without escaping.
class Key {
 public:
  template <size_t N>
  consteval Key(const char (&name)[N]) : view_(name, N - 1) {  // NOLINT: implicit on purpose
    for (size_t i = 0; i + 1 < N; ++i) {
      char c = name[i];
      bool plain =
          (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
      if (!plain) throw "a log field name is ASCII letters, digits and '_'";
    }
  }
  constexpr operator std::string_view() const { return view_; }  // NOLINT

 private:
  std::string_view view_;
};

// One key and value of a log line. Cheap to build, because most lines are built on every
// message and many are then dropped by the level: a string value is only referred to (the
// caller's string outlives the log call, being part of its full expression), a temporary
// std::string is moved in, and a number is kept as a number and formatted only when the line
// is written. A Field kept in a variable must not refer to a string that dies before the call.
class Field {
 public:
  std::string_view key;  // from a Key: needs no escaping
  bool quoted = true;    // false for numbers, booleans and raw values (null)

  Field(Key k, std::string_view v) : key(k), view_(v) {}
  Field(Key k, const char* v) : key(k), view_(v ? v : "") {}
  Field(Key k, const std::string& v) : key(k), view_(v) {}
  Field(Key k, std::string&& v) : key(k), owned_(std::move(v)), kind_(Kind::Owned) {}
  Field(Key k, bool v) : key(k), quoted(false), view_(v ? "true" : "false") {}
  Field(Key k, double v) : key(k), quoted(false), kind_(Kind::Double) { num_.d = v; }
  template <class T, std::enable_if_t<std::is_integral_v<T> && !std::is_same_v<T, bool>, int> = 0>
  Field(Key k, T v) : key(k), quoted(false) {
    if constexpr (std::is_signed_v<T>) {
      kind_ = Kind::Signed;
      num_.i = static_cast<int64_t>(v);
    } else {
      kind_ = Kind::Unsigned;
      num_.u = static_cast<uint64_t>(v);
    }
  }
  // An unquoted value written as it is (e.g. `null`, or a number already formatted).
  static Field raw(Key k, std::string_view v) {
    Field f(k, v);
    f.quoted = false;
    return f;
  }

  // The value's text, unquoted and unescaped: a number is formatted into `buf` (integers as
  // std::to_string writes them, doubles as printf's "%.6g").
  using NumberBuffer = char[32];
  std::string_view value(NumberBuffer& buf) const;
  // At least value(buf).size(), without formatting a number.
  size_t value_size_bound() const {
    return kind_ == Kind::View    ? view_.size()
           : kind_ == Kind::Owned ? owned_.size()
                                  : sizeof(NumberBuffer);
  }

 private:
  enum class Kind : uint8_t { View, Owned, Signed, Unsigned, Double };
  std::string_view view_;
  std::string owned_;
  union {
    int64_t i;
    uint64_t u;
    double d;
  } num_{};
  Kind kind_ = Kind::View;
};

void configure(LogFormat format, LogLevel level);
bool enabled(LogLevel level);
void write(LogLevel level, std::string_view event, std::initializer_list<Field> fields);
// The line write() prints for an event at wall-clock `unix_ms`, appended to `line` (write()
// itself, and tests).
void append_line(std::string& line, uint64_t unix_ms, LogLevel level, std::string_view event,
                 std::initializer_list<Field> fields);

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
