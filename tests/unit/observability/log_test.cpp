// The log line writer: the fast routines against simple reference versions on random input,
// and whole lines byte for byte.
#include "mailcar/log.hpp"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <ctime>
#include <limits>
#include <random>
#include <string>

namespace mailcar {
namespace {

// The escaping as it was written first: one byte at a time.
std::string reference_json_string(std::string_view s) {
  static const char* hex = "0123456789abcdef";
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\r':
        out += "\\r";
        break;
      case '\t':
        out += "\\t";
        break;
      default:
        if (c < 0x20 || c == 0x7f) {
          out += "\\u00";
          out.push_back(hex[c >> 4]);
          out.push_back(hex[c & 15]);
        } else {
          out.push_back(static_cast<char>(c));
        }
    }
  }
  return out + "\"";
}

std::string reference_rfc3339(uint64_t unix_ms) {
  std::time_t t = static_cast<std::time_t>(unix_ms / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(unix_ms % 1000));
  return buf;
}

std::string value_of(const log::Field& f) {
  log::Field::NumberBuffer buf;
  return std::string(f.value(buf));
}

TEST(LogJsonString, MatchesReferenceOnRandomInput) {
  std::mt19937 rng(12);
  // Mostly plain text with now and then a byte to escape, and fully random bytes.
  for (int round = 0; round < 20000; ++round) {
    size_t len = rng() % 80;
    std::string s(len, 'a');
    const bool sparse = round % 2 == 0;
    for (char& c : s) {
      if (!sparse || rng() % 16 == 0) {
        c = static_cast<char>(rng() % 256);
      } else {
        c = static_cast<char>('a' + rng() % 26);
      }
    }
    std::string out = "prefix";
    log::append_json_string(out, s);
    ASSERT_EQ(out, "prefix" + reference_json_string(s)) << "round " << round;
  }
}

// Every length up to 40 (the vector, 8-byte and byte-at-a-time parts), every byte at every
// position, among plain bytes that sit next to the escaped ones (0x20, '!', '#', '[', ']',
// 0x7e, 0x80, 0xff).
TEST(LogJsonString, EveryByteAtEveryPosition) {
  for (char filler : {'x', ' ', '!', '#', '[', ']', '~', '\x80', '\xff'}) {
    for (size_t len = 1; len <= 40; ++len) {
      for (int c = 0; c < 256; ++c) {
        for (size_t pos = 0; pos < len; ++pos) {
          std::string s(len, filler);
          s[pos] = static_cast<char>(c);
          std::string out;
          log::append_json_string(out, s);
          ASSERT_EQ(out, reference_json_string(s))
              << "byte " << c << " at " << pos << " of " << len;
        }
      }
    }
  }
}

TEST(LogField, NumbersAsToStringAndPrintf) {
  std::mt19937_64 rng(7);
  for (int i = 0; i < 20000; ++i) {
    const uint64_t u = rng() >> (rng() % 64);
    const auto s = static_cast<int64_t>(rng()) >> (rng() % 64);
    const int small = static_cast<int>(rng() % 1000) - 500;
    ASSERT_EQ(value_of(log::Field("u", u)), std::to_string(u));
    ASSERT_EQ(value_of(log::Field("s", s)), std::to_string(s));
    ASSERT_EQ(value_of(log::Field("i", small)), std::to_string(small));
  }
  EXPECT_EQ(value_of(log::Field("max", std::numeric_limits<uint64_t>::max())),
            "18446744073709551615");
  EXPECT_EQ(value_of(log::Field("min", std::numeric_limits<int64_t>::min())),
            "-9223372036854775808");
}

TEST(LogField, DoublesAsPrintfG6) {
  std::mt19937_64 rng(9);
  std::uniform_real_distribution<double> unit(0, 1);
  auto check = [](double d) {
    char want[64];
    std::snprintf(want, sizeof want, "%.6g", d);
    ASSERT_EQ(value_of(log::Field("d", d)), want) << d;
  };
  for (int i = 0; i < 20000; ++i) {
    // Seconds as the relay measures them, and values over many magnitudes.
    check(unit(rng) * 2);
    check((unit(rng) - 0.5) * std::pow(10.0, static_cast<int>(rng() % 40) - 20));
  }
  for (double d : {0.0, -0.0, 1.0, 0.0001, 0.00001, 123456.0, 1234567.0, 0.1234565, 1e300, 5e-324,
                   std::numeric_limits<double>::infinity()}) {
    check(d);
  }
}

TEST(LogField, StringsReferredToOrOwned) {
  std::string kept = "kept value";
  log::Field view("k", kept);
  EXPECT_EQ(value_of(view), "kept value");
  EXPECT_TRUE(view.quoted);
  // A temporary string is moved in, so a copy of the field still holds it.
  log::Field owned("k", std::string(40, 'z'));
  log::Field copy = owned;
  EXPECT_EQ(value_of(copy), std::string(40, 'z'));
  EXPECT_EQ(value_of(log::Field("k", static_cast<const char*>(nullptr))), "");
  EXPECT_EQ(value_of(log::Field("b", true)), "true");
  EXPECT_FALSE(log::Field("b", false).quoted);
  log::Field raw = log::Field::raw("code", "null");
  EXPECT_FALSE(raw.quoted);
  EXPECT_EQ(value_of(raw), "null");
}

TEST(LogTimestamp, MatchesReference) {
  std::mt19937_64 rng(3);
  // Within a second the cached part is reused; across seconds and years it is not.
  uint64_t ms = 1764608476123;  // 2025-12-01T17:01:16.123Z
  for (int i = 0; i < 5000; ++i) {
    ms += rng() % (i % 3 == 0 ? 1000 : 40000000000ull);
    ASSERT_EQ(log::rfc3339_utc(ms), reference_rfc3339(ms)) << ms;
  }
  for (uint64_t v : {uint64_t{0}, uint64_t{999}, uint64_t{253402300799999},
                     uint64_t{253402300800000}, uint64_t{1} << 52}) {
    ASSERT_EQ(log::rfc3339_utc(v), reference_rfc3339(v)) << v;
  }
}

class LogLine : public ::testing::Test {
 protected:
  void TearDown() override { log::configure(LogFormat::Json, LogLevel::Info); }
};

TEST_F(LogLine, JsonByteForByte) {
  log::configure(LogFormat::Json, LogLevel::Info);
  std::string id = "<a\"b>";
  std::string line;
  log::append_line(line, 1764608476123, LogLevel::Info, "message",
                   {{"id", id},
                    {"recipients", uint64_t{3}},
                    {"code", -4},
                    {"upstream_seconds", 0.0123456789},
                    {"ok", true},
                    log::Field::raw("upstream_code", "null"),
                    {"reply", std::string("250 ok\r\n")},
                    {"none", std::string_view()}});
  EXPECT_EQ(line,
            "{\"ts\":\"2025-12-01T17:01:16.123Z\",\"level\":\"info\",\"event\":\"message\","
            "\"id\":\"<a\\\"b>\",\"recipients\":3,\"code\":-4,\"upstream_seconds\":0.0123457,"
            "\"ok\":true,\"upstream_code\":null,\"reply\":\"250 ok\\r\\n\",\"none\":\"\"}\n");
}

TEST_F(LogLine, TextByteForByte) {
  log::configure(LogFormat::Text, LogLevel::Info);
  std::string line;
  log::append_line(line, 1764608476123, LogLevel::Warn, "recipient_rejected",
                   {{"id", "abc"},
                    {"reply", "550 no such user"},
                    {"empty", ""},
                    {"n", uint64_t{12}},
                    {"s", 1.5}});
  EXPECT_EQ(line,
            "2025-12-01T17:01:16.123Z warn recipient_rejected id=abc reply=\"550 no such user\" "
            "empty=\"\" n=12 s=1.5\n");
}

}  // namespace
}  // namespace mailcar
