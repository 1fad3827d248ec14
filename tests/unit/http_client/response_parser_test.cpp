#include <gtest/gtest.h>

#include <string>

#include "mailcar/http_client.hpp"

namespace mailcar::http_client {
namespace {

using Status = ResponseParser::Status;

// Feeds `wire` in pieces of `step` bytes; returns the status after the last piece.
Status feed_in_steps(ResponseParser& p, std::string_view wire, size_t step) {
  Status s = Status::NeedMore;
  for (size_t i = 0; i < wire.size(); i += step) s = p.feed(wire.substr(i, step));
  return s;
}

const std::string kChunked =
    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    "7\r\n{\"a\":1,\r\n5\r\n\"b\":2\r\n1\r\n}\r\n0\r\n\r\n";
const std::string kLength =
    "HTTP/1.1 400 Bad Request\r\nContent-Length: 25\r\nX-Folded:  padded \r\n\r\n"
    "{\"error\":\"invalid_grant\"}";

TEST(ResponseParser, ChunkedBodySplitAtEveryByte) {
  for (size_t step = 1; step <= kChunked.size(); ++step) {
    ResponseParser p(1024);
    ASSERT_EQ(feed_in_steps(p, kChunked, step), Status::Done) << "step " << step;
    EXPECT_EQ(p.response().status, 200);
    EXPECT_EQ(p.response().body, "{\"a\":1,\"b\":2}");
    EXPECT_EQ(p.response().header("content-type").value_or(""), "application/json");
  }
}

TEST(ResponseParser, ContentLengthSplitAtEveryPosition) {
  for (size_t cut = 0; cut <= kLength.size(); ++cut) {
    ResponseParser p(1024);
    Status first = p.feed(std::string_view(kLength).substr(0, cut));
    EXPECT_EQ(first, cut == kLength.size() ? Status::Done : Status::NeedMore) << cut;
    ASSERT_EQ(p.feed(std::string_view(kLength).substr(cut)), Status::Done) << cut;
    EXPECT_EQ(p.response().status, 400);
    EXPECT_EQ(p.response().body, "{\"error\":\"invalid_grant\"}");
    EXPECT_EQ(p.response().header("x-folded").value_or(""), "padded");
  }
}

TEST(ResponseParser, StopsAtTheEndOfTheResponse) {
  ResponseParser p(1024);
  EXPECT_EQ(p.feed(kLength + "HTTP/1.1 200 OK\r\n\r\n"), Status::Done);
  EXPECT_EQ(p.response().status, 400);
  EXPECT_EQ(p.feed("garbage"), Status::Done);
}

TEST(ResponseParser, SkipsInterimResponses) {
  ResponseParser p(1024);
  EXPECT_EQ(
      p.feed("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"),
      Status::Done);
  EXPECT_EQ(p.response().status, 201);
  EXPECT_EQ(p.response().body, "ok");
}

TEST(ResponseParser, BodyUntilClose) {
  ResponseParser p(1024);
  EXPECT_EQ(p.feed("HTTP/1.0 200 OK\r\n\r\nhello "), Status::NeedMore);
  EXPECT_EQ(p.feed("world"), Status::NeedMore);
  EXPECT_EQ(p.finish(), Status::Done);
  EXPECT_EQ(p.response().body, "hello world");
}

TEST(ResponseParser, TruncatedBodyIsAnError) {
  ResponseParser p(1024);
  EXPECT_EQ(p.feed("HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"), Status::NeedMore);
  EXPECT_EQ(p.finish(), Status::Error);
  EXPECT_FALSE(p.error().empty());
}

TEST(ResponseParser, BodyLimitByContentLengthAndByChunks) {
  ResponseParser declared(8);
  EXPECT_EQ(declared.feed("HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n"), Status::Error);
  ResponseParser exact(8);
  EXPECT_EQ(exact.feed("HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n12345678"), Status::Done);
  ResponseParser chunked(8);
  EXPECT_EQ(chunked.feed("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n12345\r\n"),
            Status::NeedMore);
  EXPECT_EQ(chunked.feed("4\r\n6789\r\n0\r\n\r\n"), Status::Error);
  ResponseParser until_close(4);
  EXPECT_EQ(until_close.feed("HTTP/1.1 200 OK\r\n\r\n12345"), Status::Error);
}

TEST(ResponseParser, HeadLimit) {
  ResponseParser p(1024);
  std::string wire = "HTTP/1.1 200 OK\r\n";
  Status s = p.feed(wire);
  const std::string header = "X-Big: " + std::string(1000, 'a') + "\r\n";
  for (size_t sent = 0; s == Status::NeedMore && sent <= ResponseParser::kMaxHeadBytes * 2;
       sent += header.size()) {
    s = p.feed(header);
  }
  EXPECT_EQ(s, Status::Error);
}

TEST(ResponseParser, HeadOnlyForConnect) {
  ResponseParser p(0, true);
  EXPECT_EQ(p.feed("HTTP/1.1 200 Connection established\r\n\r\n"), Status::Done);
  EXPECT_EQ(p.response().status, 200);
  ResponseParser refused(0, true);
  EXPECT_EQ(refused.feed("HTTP/1.1 407 Proxy Authentication Required\r\nContent-Length: 0\r\n\r\n"),
            Status::Done);
  EXPECT_EQ(refused.response().status, 407);
}

TEST(ResponseParser, NotHttp) {
  ResponseParser p(1024);
  EXPECT_EQ(p.feed("220 smtp.example ESMTP\r\n"), Status::Error);
  EXPECT_EQ(p.feed("HTTP/1.1 200 OK\r\n\r\n"), Status::Error);
}

TEST(Url, Parses) {
  auto u = parse_url("https://login.example.com/tenant/oauth2/v2.0/token?x=1#frag");
  ASSERT_TRUE(u);
  EXPECT_TRUE(u->https);
  EXPECT_EQ(u->host, "login.example.com");
  EXPECT_EQ(u->port, 443);
  EXPECT_FALSE(u->port_given);
  EXPECT_EQ(u->target, "/tenant/oauth2/v2.0/token?x=1");
  auto v6 = parse_url("http://[::1]:8080");
  ASSERT_TRUE(v6);
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 8080);
  EXPECT_EQ(v6->target, "/");
  EXPECT_EQ(host_port(*v6), "[::1]:8080");
  auto creds = parse_url("http://us%40er:p%3Ass@proxy:3128");
  ASSERT_TRUE(creds);
  EXPECT_TRUE(creds->has_userinfo);
  EXPECT_EQ(creds->user, "us@er");
  EXPECT_EQ(creds->password, "p:ss");
  EXPECT_FALSE(parse_url("ftp://x/"));
  EXPECT_FALSE(parse_url("https:///path"));
  EXPECT_FALSE(parse_url("https://host:0/"));
  EXPECT_FALSE(parse_url("https://host:65536/"));
  EXPECT_FALSE(parse_url("https://ho st/"));
  EXPECT_FALSE(parse_url("https://host/\r\nX: y"));
}

TEST(FormEncode, WhatwgRules) {
  EXPECT_EQ(form_encode({{"grant_type", "client_credentials"},
                         {"scope", "https://outlook.office365.com/.default offline_access"},
                         {"secret", "a+b&c=d~é"}}),
            "grant_type=client_credentials&scope=https%3A%2F%2Foutlook.office365.com%2F.default+"
            "offline_access&secret=a%2Bb%26c%3Dd%7E%C3%A9");
  EXPECT_EQ(form_encode({}), "");
}

TEST(Proxy, NoProxyMatching) {
  EXPECT_TRUE(no_proxy_matches("*", "anything", 443));
  EXPECT_TRUE(no_proxy_matches("localhost, .example.com", "login.EXAMPLE.com", 443));
  EXPECT_TRUE(no_proxy_matches("example.com", "example.com", 443));
  EXPECT_FALSE(no_proxy_matches("example.com", "badexample.com", 443));
  EXPECT_TRUE(no_proxy_matches("127.0.0.1", "127.0.0.1", 8443));
  EXPECT_TRUE(no_proxy_matches("example.com:8443", "example.com", 8443));
  EXPECT_FALSE(no_proxy_matches("example.com:8443", "example.com", 443));
  EXPECT_TRUE(no_proxy_matches("[::1]", "::1", 443));
  EXPECT_FALSE(no_proxy_matches("", "example.com", 443));
}

TEST(Proxy, Choice) {
  auto target = *parse_url("https://login.example.com/token");
  ProxyEnvironment env;
  EXPECT_FALSE(proxy_for(target, env).proxy);
  env.https_proxy = "http://u:p@proxy.internal:3128";
  auto choice = proxy_for(target, env);
  ASSERT_TRUE(choice.proxy);
  EXPECT_EQ(choice.proxy->host, "proxy.internal");
  EXPECT_EQ(choice.proxy->port, 3128);
  EXPECT_EQ(choice.proxy->user, "u");
  env.https_proxy = "proxy.internal";
  EXPECT_EQ(proxy_for(target, env).proxy->port, 1080);
  env.no_proxy = "example.com";
  EXPECT_FALSE(proxy_for(target, env).proxy);
  env.no_proxy.clear();
  env.https_proxy = "https://proxy.internal";
  EXPECT_FALSE(proxy_for(target, env).error.empty());
  env.https_proxy = "http://bad host";
  EXPECT_FALSE(proxy_for(target, env).error.empty());
}

}  // namespace
}  // namespace mailcar::http_client
