#include "mailcar/log.hpp"

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>

#include "mailcar/clock.hpp"

namespace mailcar::log {
namespace {

LogFormat g_format = LogFormat::Json;
LogLevel g_level = LogLevel::Info;

const char* level_name(LogLevel level) {
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

std::string timestamp() {
  return rfc3339_utc(wall_clock_ms());
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

}  // namespace

Field::Field(std::string_view k, double v) : key(k), quoted(false) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.6g", v);
  value = buf;
}

void configure(LogFormat format, LogLevel level) {
  g_format = format;
  g_level = level;
}

bool enabled(LogLevel level) {
  return static_cast<int>(level) <= static_cast<int>(g_level);
}

void append_json_string(std::string& out, std::string_view s) {
  static const char* hex = "0123456789abcdef";
  out.push_back('"');
  for (unsigned char c : s) {
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
      default:
        if (c < 0x20 || c == 0x7f) {
          out.append("\\u00");
          out.push_back(hex[c >> 4]);
          out.push_back(hex[c & 15]);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  out.push_back('"');
}

void write(LogLevel level, std::string_view event, std::initializer_list<Field> fields) {
  if (!enabled(level)) return;
  std::string line;
  line.reserve(256);
  if (g_format == LogFormat::Json) {
    line.append("{\"ts\":");
    append_json_string(line, timestamp());
    line.append(",\"level\":");
    append_json_string(line, level_name(level));
    line.append(",\"event\":");
    append_json_string(line, event);
    for (const Field& f : fields) {
      line.push_back(',');
      append_json_string(line, f.key);
      line.push_back(':');
      if (f.quoted) {
        append_json_string(line, f.value);
      } else {
        line.append(f.value);
      }
    }
    line.append("}\n");
  } else {
    line.append(timestamp());
    line.push_back(' ');
    line.append(level_name(level));
    line.push_back(' ');
    line.append(event);
    for (const Field& f : fields) {
      line.push_back(' ');
      line.append(f.key);
      line.push_back('=');
      append_text_value(line, f.value);
    }
    line.push_back('\n');
  }
  // One write(2) per line so concurrent readers never see interleaved halves. stdout is a
  // pipe or terminal; a short write here is not worth blocking the loop over.
  ssize_t n = ::write(STDOUT_FILENO, line.data(), line.size());
  (void)n;
}

std::string rfc3339_utc(uint64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(unix_ms % 1000));
  return buf;
}

}  // namespace mailcar::log
