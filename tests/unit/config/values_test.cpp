#include <gtest/gtest.h>

#include <map>

#include "config/config_internal.hpp"
#include "mailcar/config.hpp"

using namespace mailcar;
using config_detail::check_address;
using config_detail::check_sender_pattern;
using config_detail::expand_env;

namespace {

std::optional<std::string> fake_env(const std::string& name) {
  static const std::map<std::string, std::string> vars = {
      {"HOST", "smtp.example.com"}, {"PORT", "2525"}, {"EMPTY", ""}, {"_x1", "under"}};
  auto it = vars.find(name);
  if (it == vars.end()) return std::nullopt;
  return it->second;
}

}  // namespace

TEST(ParseRate, AcceptsEveryUnit) {
  struct Case {
    const char* text;
    uint64_t count;
    uint64_t period_ms;
  };
  for (const Case& c :
       {Case{"500/day", 500, 86'400'000}, Case{"3/d", 3, 86'400'000}, Case{"50/second", 50, 1000},
        Case{"1/s", 1, 1000}, Case{"100/minute", 100, 60'000}, Case{"7/m", 7, 60'000},
        Case{"1000/hour", 1000, 3'600'000}, Case{"2/h", 2, 3'600'000}}) {
    auto rate = parse_rate(c.text);
    ASSERT_TRUE(rate.has_value()) << c.text;
    EXPECT_EQ(rate->count, c.count) << c.text;
    EXPECT_EQ(rate->period_ms, c.period_ms) << c.text;
    EXPECT_EQ(rate->text, c.text);
  }
}

TEST(ParseRate, RejectsMalformed) {
  for (const char* text : {"", "500", "/day", "0/day", "-1/day", "5/week", "5/Day", "5 /day", "5/",
                           "1.5/s", "99999999999999999999/s", "5/day/s", "x/s"}) {
    EXPECT_FALSE(parse_rate(text).has_value()) << text;
  }
}

TEST(ParseDuration, AcceptsEveryUnit) {
  EXPECT_EQ(parse_duration_ms("250ms"), 250u);
  EXPECT_EQ(parse_duration_ms("30s"), 30'000u);
  EXPECT_EQ(parse_duration_ms("5m"), 300'000u);
  EXPECT_EQ(parse_duration_ms("2h"), 7'200'000u);
  EXPECT_EQ(parse_duration_ms("3d"), 259'200'000u);
  EXPECT_EQ(parse_duration_ms("0s"), 0u);
}

TEST(ParseDuration, RequiresAUnitAndRejectsGarbage) {
  for (const char* text : {"", "30", "s", "1.5s", "-1s", "5 m", "5min", "5M", "1w",
                           "99999999999999999999d", "999999999999999999d"}) {
    EXPECT_FALSE(parse_duration_ms(text).has_value()) << text;
  }
}

TEST(ParseSize, BytesAndBinarySuffixes) {
  EXPECT_EQ(parse_size_bytes("1024"), 1024u);
  EXPECT_EQ(parse_size_bytes("512B"), 512u);
  EXPECT_EQ(parse_size_bytes("10KB"), 10u * 1024);
  EXPECT_EQ(parse_size_bytes("10KiB"), 10u * 1024);
  EXPECT_EQ(parse_size_bytes("25MB"), 25u * 1024 * 1024);
  EXPECT_EQ(parse_size_bytes("25mib"), 25u * 1024 * 1024);
  EXPECT_EQ(parse_size_bytes("1GB"), uint64_t{1} << 30);
  EXPECT_EQ(parse_size_bytes("2GiB"), uint64_t{2} << 30);
}

TEST(ParseSize, RejectsGarbage) {
  for (const char* text : {"", "MB", "10TB", "1.5MB", "-1", "10 MB", "10MBs",
                           "99999999999999999999", "17179869184GB"}) {
    EXPECT_FALSE(parse_size_bytes(text).has_value()) << text;
  }
}

TEST(ParseListen, AcceptsLiteralAddresses) {
  auto v4 = parse_listen_address("127.0.0.1:2580");
  ASSERT_TRUE(v4.has_value());
  EXPECT_EQ(v4->host, "127.0.0.1");
  EXPECT_EQ(v4->port, 2580);
  EXPECT_EQ(v4->text, "127.0.0.1:2580");
  auto any = parse_listen_address("0.0.0.0:25");
  ASSERT_TRUE(any.has_value());
  EXPECT_EQ(any->port, 25);
  auto v6 = parse_listen_address("[::1]:2525");
  ASSERT_TRUE(v6.has_value());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 2525);
  EXPECT_TRUE(parse_listen_address("[::]:65535").has_value());
}

TEST(ParseListen, RejectsHostNamesAndBadPorts) {
  for (const char* text :
       {"", "localhost:2580", "example.com:25", "127.0.0.1", "127.0.0.1:", "127.0.0.1:0",
        "127.0.0.1:65536", "127.0.0.1:-1", ":::1:25", "::1:25", "[::1]", "[::1]25",
        "[127.0.0.1]:25", "[localhost]:25", "1.2.3:25", "127.0.0.1:25x"}) {
    EXPECT_FALSE(parse_listen_address(text).has_value()) << text;
  }
  auto named = config_detail::parse_listen_address_explained("localhost:2580");
  ASSERT_FALSE(named.ok());
  EXPECT_NE(named.error().message.find("literal IP address"), std::string::npos);
}

TEST(ExpandEnv, ReplacesVariablesAndDefaults) {
  EXPECT_EQ(expand_env("${HOST}", fake_env).value(), "smtp.example.com");
  EXPECT_EQ(expand_env("smtp://${HOST}:${PORT}/", fake_env).value(),
            "smtp://smtp.example.com:2525/");
  EXPECT_EQ(expand_env("${MISSING:-fallback}", fake_env).value(), "fallback");
  EXPECT_EQ(expand_env("${MISSING:-}", fake_env).value(), "");
  EXPECT_EQ(expand_env("${EMPTY:-used}", fake_env).value(), "used");
  EXPECT_EQ(expand_env("${EMPTY}", fake_env).value(), "");
  EXPECT_EQ(expand_env("${HOST:-unused}", fake_env).value(), "smtp.example.com");
  EXPECT_EQ(expand_env("${_x1}", fake_env).value(), "under");
  EXPECT_EQ(expand_env("${MISSING:-a:-b}", fake_env).value(), "a:-b");
}

TEST(ExpandEnv, LeavesOtherDollarsAlone) {
  EXPECT_EQ(expand_env("pa$$word", fake_env).value(), "pa$$word");
  EXPECT_EQ(expand_env("$HOST", fake_env).value(), "$HOST");
  EXPECT_EQ(expand_env("cost: 5$", fake_env).value(), "cost: 5$");
  EXPECT_EQ(expand_env("", fake_env).value(), "");
}

TEST(ExpandEnv, ExpandedValuesAreNotExpandedAgain) {
  auto env = [](const std::string& name) -> std::optional<std::string> {
    if (name == "A") return std::string("${B}");
    return std::nullopt;
  };
  EXPECT_EQ(expand_env("${A}", env).value(), "${B}");
}

TEST(ExpandEnv, ErrorsNameTheVariable) {
  auto missing = expand_env("x ${NOT_SET} y", fake_env);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().message, "environment variable NOT_SET is not set");
  EXPECT_FALSE(expand_env("${HOST", fake_env).ok());
  EXPECT_FALSE(expand_env("${}", fake_env).ok());
  EXPECT_FALSE(expand_env("${1X}", fake_env).ok());
  EXPECT_FALSE(expand_env("${A-B}", fake_env).ok());
  EXPECT_FALSE(expand_env("${HOST}", nullptr).ok());
  EXPECT_EQ(expand_env("${HOST:-d}", nullptr).value(), "d");
}

TEST(SenderPattern, AcceptsTheFourShapes) {
  for (const char* p : {"*", "*@example.com", "*@*.example.com", "noreply@example.com",
                        "\"odd@local\"@example.com", "a+tag@sub.example.com",
                        "*@b\xc3\xbc"
                        "cher.de"}) {
    EXPECT_EQ(check_sender_pattern(p), std::nullopt) << p;
  }
}

TEST(SenderPattern, RejectsOtherShapes) {
  for (const char* p : {"", "*.example.com", "*@", "*@*.", "*@*", "a*@example.com",
                        "*@exa*mple.com", "*@*.*.example.com", "@example.com", "user@", "user",
                        "a@b@c", "*@example..com", "*@.example.com", "*@example.com.",
                        "user@exa mple.com", "**", "*@*example.com", "Name <a@example.com>"}) {
    EXPECT_NE(check_sender_pattern(p), std::nullopt) << p;
  }
}

TEST(Address, ChecksShape) {
  EXPECT_EQ(check_address("noreply@example.com"), std::nullopt);
  EXPECT_EQ(check_address("\"a@b\"@example.com"), std::nullopt);
  EXPECT_EQ(check_address("\"a\\\"@b\"@example.com"), std::nullopt);
  for (const char* a :
       {"", "example.com", "a@b@example.com", "@example.com", "a@", "a@example.com\r\nBcc: x@y",
        "Name <a@example.com>", "\"a@example.com", "a b@example.com"}) {
    EXPECT_NE(check_address(a), std::nullopt) << a;
  }
}

TEST(Names, ServiceAndRoleNames) {
  EXPECT_EQ(config_detail::check_name("email"), std::nullopt);
  EXPECT_EQ(config_detail::check_name("out-box_2.v1"), std::nullopt);
  EXPECT_NE(config_detail::check_name(""), std::nullopt);
  EXPECT_NE(config_detail::check_name("a/b"), std::nullopt);
  EXPECT_NE(config_detail::check_name("a b"), std::nullopt);
  EXPECT_NE(config_detail::check_name(std::string(65, 'a')), std::nullopt);
}

// ---- shared_state.redis (issue 11) ------------------------------------------------------

namespace mailcar {
namespace {

TEST(ParseRedisUrl, TcpWithPasswordPortAndDatabase) {
  SharedStateConfig c;
  EXPECT_EQ(config_detail::parse_redis_url("redis://:p%40ss%3Aw@redis.mail.svc:6380/2", c),
            std::nullopt);
  EXPECT_EQ(c.host, "redis.mail.svc");
  EXPECT_EQ(c.port, 6380);
  EXPECT_EQ(c.db, 2u);
  EXPECT_EQ(c.password, "p@ss:w");
  EXPECT_EQ(c.username, "");
  EXPECT_EQ(c.redis, "redis://:***@redis.mail.svc:6380/2");  // never the password
}

TEST(ParseRedisUrl, DefaultsUserAndIpv6) {
  SharedStateConfig c;
  EXPECT_EQ(config_detail::parse_redis_url("redis://127.0.0.1", c), std::nullopt);
  EXPECT_EQ(c.port, 6379);
  EXPECT_EQ(c.db, 0u);
  SharedStateConfig v6;
  EXPECT_EQ(config_detail::parse_redis_url("redis://app:pw@[::1]:7000/0", v6), std::nullopt);
  EXPECT_EQ(v6.host, "::1");
  EXPECT_EQ(v6.port, 7000);
  EXPECT_EQ(v6.username, "app");
  EXPECT_EQ(v6.password, "pw");
}

TEST(ParseRedisUrl, UnixSocket) {
  SharedStateConfig c;
  EXPECT_EQ(config_detail::parse_redis_url("unix:///run/redis/redis.sock?db=3", c), std::nullopt);
  EXPECT_EQ(c.unix_path, "/run/redis/redis.sock");
  EXPECT_EQ(c.db, 3u);
  EXPECT_TRUE(c.host.empty());
}

TEST(ParseRedisUrl, RejectsMalformed) {
  for (const char* url :
       {"http://x", "redis://", "redis://:6379", "redis://h:0", "redis://h:99999", "redis://h:x",
        "redis://h/db", "redis://pw@h", "redis://:%zz@h", "redis://[::1", "unix://relative.sock",
        "unix:///s.sock?x=1", "unix:///s.sock?db=x", "redis://h:"}) {
    SharedStateConfig c;
    EXPECT_NE(config_detail::parse_redis_url(url, c), std::nullopt) << url;
  }
}

}  // namespace
}  // namespace mailcar
