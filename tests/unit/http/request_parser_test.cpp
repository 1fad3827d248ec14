#include "http/request_parser.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>

using mailcar::http::body_limit_for;
using mailcar::http::HttpRequest;
using mailcar::http::HttpRequestParser;
using mailcar::http::kMaxHeaderBytes;
using mailcar::http::kMaxUrlBytes;
using mailcar::http::parse_query;
using mailcar::http::percent_decode;

namespace {

std::string post(const std::string& target, const std::string& body,
                 const std::string& extra = "") {
  return "POST " + target + " HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + extra +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

std::vector<HttpRequest> feed_all(HttpRequestParser& p, const std::string& bytes) {
  auto out = p.feed(bytes);
  EXPECT_FALSE(out.error_status.has_value()) << out.error_reason;
  return std::move(out.requests);
}

}  // namespace

TEST(BodyLimit, IsFourThirdsPlusSlack) {
  EXPECT_EQ(body_limit_for(0), 64u * 1024);
  EXPECT_EQ(body_limit_for(3), 4u + 64 * 1024);
  EXPECT_EQ(body_limit_for(4), 8u + 64 * 1024);
  EXPECT_EQ(body_limit_for(26214400), 34952536ull + 64 * 1024);
  // Every base64 encoding of a max-size attachment fits.
  for (uint64_t n : {1ull, 2ull, 100ull, 1000001ull}) {
    EXPECT_GE(body_limit_for(n), (n + 2) / 3 * 4) << n;
  }
}

TEST(PercentDecode, DecodesAndRejectsMalformed) {
  EXPECT_EQ(percent_decode("a%20b+c", true), "a b c");
  EXPECT_EQ(percent_decode("a%20b+c", false), "a b+c");
  EXPECT_EQ(percent_decode("%41%6a", false), "Aj");
  EXPECT_FALSE(percent_decode("%4", false).has_value());
  EXPECT_FALSE(percent_decode("%", false).has_value());
  EXPECT_FALSE(percent_decode("%zz", false).has_value());
}

// percent_decode (with its copy-only path for text without escapes) against the rule
// written plainly, on random text of escapes, pluses and plain bytes.
TEST(PercentDecode, MatchesTheReferenceOnRandomText) {
  auto reference = [](std::string_view t, bool plus) -> std::optional<std::string> {
    std::string out;
    for (size_t i = 0; i < t.size(); ++i) {
      if (t[i] == '%') {
        if (i + 2 >= t.size() || !isxdigit(static_cast<unsigned char>(t[i + 1])) ||
            !isxdigit(static_cast<unsigned char>(t[i + 2]))) {
          return std::nullopt;
        }
        out.push_back(static_cast<char>(std::stoi(std::string(t.substr(i + 1, 2)), nullptr, 16)));
        i += 2;
      } else {
        out.push_back(plus && t[i] == '+' ? ' ' : t[i]);
      }
    }
    return out;
  };
  std::mt19937 rng(5);
  const char pieces[] = "%+a/Z4f";
  for (int i = 0; i < 20000; ++i) {
    std::string t(rng() % 12, 'a');
    for (char& c : t) c = pieces[rng() % (sizeof pieces - 1)];
    ASSERT_EQ(percent_decode(t, true), reference(t, true)) << t;
    ASSERT_EQ(percent_decode(t, false), reference(t, false)) << t;
  }
}

TEST(ParseQuery, SplitsAndDecodes) {
  auto q = parse_query("api_key=a%2Bb&x=1+2&&flag&=v");
  ASSERT_TRUE(q.has_value());
  ASSERT_EQ(q->size(), 4u);
  EXPECT_EQ((*q)[0], std::make_pair(std::string("api_key"), std::string("a+b")));
  EXPECT_EQ((*q)[1], std::make_pair(std::string("x"), std::string("1 2")));
  EXPECT_EQ((*q)[2], std::make_pair(std::string("flag"), std::string("")));
  EXPECT_EQ((*q)[3], std::make_pair(std::string(""), std::string("v")));
  EXPECT_FALSE(parse_query("a=%G0").has_value());
}

TEST(HttpRequestParser, ParsesOneRequest) {
  HttpRequestParser p(1000);
  auto reqs = feed_all(
      p, post("/api/v2/email?api_key=k%20y", "{\"a\":1}", "X-DreamFactory-API-Key:  secret \r\n"));
  ASSERT_EQ(reqs.size(), 1u);
  const auto& r = reqs[0];
  EXPECT_EQ(r.method, "POST");
  EXPECT_EQ(r.target, "/api/v2/email?api_key=k%20y");
  EXPECT_EQ(r.path, "/api/v2/email");
  EXPECT_EQ(r.query_param("api_key"), "k y");
  EXPECT_EQ(r.header("x-dreamfactory-api-key"), "secret");
  EXPECT_EQ(r.header("content-type"), "application/json");
  EXPECT_EQ(r.body, "{\"a\":1}");
  EXPECT_TRUE(r.keep_alive);
  EXPECT_FALSE(p.in_message());
}

TEST(HttpRequestParser, EmptyHeaderValueStaysItsOwnField) {
  HttpRequestParser p(1000);
  auto reqs = feed_all(p, post("/api/v2/email", "{}", "Idempotency-Key:\r\nX-Other:  \r\n"));
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].header("idempotency-key"), "");
  EXPECT_EQ(reqs[0].header("x-other"), "");
  EXPECT_EQ(reqs[0].header("content-type"), "application/json");
}

TEST(HttpRequestParser, PipelinedRequestsInOneFeed) {
  HttpRequestParser p(1000);
  std::string bytes = post("/a", "one") + "GET /health HTTP/1.1\r\nHost: x\r\n\r\n" +
                      post("/c", "three", "Connection: close\r\n");
  auto reqs = feed_all(p, bytes);
  ASSERT_EQ(reqs.size(), 3u);
  EXPECT_EQ(reqs[0].path, "/a");
  EXPECT_EQ(reqs[0].body, "one");
  EXPECT_EQ(reqs[1].method, "GET");
  EXPECT_EQ(reqs[1].path, "/health");
  EXPECT_EQ(reqs[1].body, "");
  EXPECT_TRUE(reqs[1].keep_alive);
  EXPECT_EQ(reqs[2].body, "three");
  EXPECT_FALSE(reqs[2].keep_alive);
}

TEST(HttpRequestParser, SplitAtEveryByteGivesTheSameRequests) {
  std::string bytes = post("/api/v2/email?x=1", "{\"to\":\"a@b.c\"}",
                           "Expect: 100-continue\r\nX-Mixed-CASE-Name: \t a  b \t\r\nX-E:\r\n") +
                      "GET /ready HTTP/1.1\r\nHost: x\r\n\r\n" +
                      "POST /z HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n";
  for (size_t split = 0; split <= bytes.size(); ++split) {
    HttpRequestParser p(1000);
    auto first = p.feed(std::string_view(bytes).substr(0, split));
    auto second = p.feed(std::string_view(bytes).substr(split));
    ASSERT_FALSE(first.error_status.has_value()) << split;
    ASSERT_FALSE(second.error_status.has_value()) << split;
    std::vector<HttpRequest> all = std::move(first.requests);
    for (auto& r : second.requests) all.push_back(std::move(r));
    ASSERT_EQ(all.size(), 3u) << split;
    EXPECT_EQ(all[0].body, "{\"to\":\"a@b.c\"}") << split;
    EXPECT_EQ(all[0].query_param("x"), "1") << split;
    EXPECT_TRUE(all[0].expect_continue) << split;
    EXPECT_EQ(all[1].path, "/ready") << split;
    EXPECT_EQ(all[2].body, "abcde") << split;
    // Names lower-cased and values trimmed whatever the split: one entry per field, in order.
    std::vector<std::pair<std::string, std::string>> want = {{"host", "x"},
                                                             {"content-type", "application/json"},
                                                             {"expect", "100-continue"},
                                                             {"x-mixed-case-name", "a  b"},
                                                             {"x-e", ""},
                                                             {"content-length", "14"}};
    EXPECT_EQ(all[0].headers, want) << split;
  }
  // Byte by byte.
  HttpRequestParser p(1000);
  size_t count = 0;
  for (char c : bytes) count += p.feed(std::string_view(&c, 1)).requests.size();
  EXPECT_EQ(count, 3u);
}

// A connection's small body buffer serves its next request; a large one is not kept.
TEST(HttpRequestParser, SpareBodyBufferIsReusedWhenItFits) {
  HttpRequestParser p(100000);
  std::string spare;
  spare.reserve(4096);
  const char* buffer = spare.data();
  p.give_spare_body(std::move(spare));
  auto first = feed_all(p, post("/a", "{\"x\":1}"));
  ASSERT_EQ(first.size(), 1u);
  EXPECT_EQ(first[0].body.data(), buffer);
  EXPECT_EQ(first[0].body, "{\"x\":1}");
  auto second = feed_all(p, post("/a", "{}"));  // nothing spare now: a buffer of its own
  ASSERT_EQ(second.size(), 1u);
  EXPECT_NE(second[0].body.data(), buffer);
  std::string big;
  big.reserve(mailcar::http::kKeepBodyCapacity * 2);
  const char* big_buffer = big.data();
  p.give_spare_body(std::move(big));
  auto third = feed_all(p, post("/a", "{}"));
  ASSERT_EQ(third.size(), 1u);
  EXPECT_NE(third[0].body.data(), big_buffer);
  EXPECT_EQ(third[0].body, "{}");
}

TEST(HttpRequestParser, ContinueRequestedOnlyWhenABodyFollows) {
  HttpRequestParser p(1000);
  auto head = p.feed("POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n");
  EXPECT_TRUE(head.continue_requested);
  EXPECT_TRUE(head.requests.empty());
  EXPECT_TRUE(p.in_message());
  auto body = p.feed("hello");
  ASSERT_EQ(body.requests.size(), 1u);
  EXPECT_FALSE(body.continue_requested);

  HttpRequestParser q(1000);
  auto empty = q.feed("POST /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 0\r\n\r\n");
  EXPECT_FALSE(empty.continue_requested);
  EXPECT_EQ(empty.requests.size(), 1u);
}

TEST(HttpRequestParser, ContentLengthOverLimitIs413BeforeTheBody) {
  HttpRequestParser p(100);
  auto out = p.feed("POST /api/v2/email HTTP/1.1\r\nContent-Length: 101\r\n\r\n");
  ASSERT_TRUE(out.error_status.has_value());
  EXPECT_EQ(*out.error_status, 413);
  EXPECT_FALSE(out.continue_requested);
  EXPECT_TRUE(p.failed());
  ASSERT_TRUE(out.rejected_head.has_value());
  EXPECT_EQ(out.rejected_head->method, "POST");
  EXPECT_EQ(out.rejected_head->path, "/api/v2/email");
  EXPECT_TRUE(out.rejected_head->body_over_limit);
  EXPECT_TRUE(out.rejected_head->body.empty());
  EXPECT_FALSE(out.rejected_head->keep_alive);
  // Nothing more is accepted.
  auto more = p.feed("GET / HTTP/1.1\r\n\r\n");
  EXPECT_EQ(more.error_status, 413);
  EXPECT_TRUE(more.requests.empty());
}

TEST(HttpRequestParser, BodyExactlyAtLimitIsAccepted) {
  HttpRequestParser p(100);
  auto reqs = feed_all(p, post("/x", std::string(100, 'a')));
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_EQ(reqs[0].body.size(), 100u);
}

TEST(HttpRequestParser, ChunkedBodyGrowingPastLimitIs413) {
  HttpRequestParser p(10);
  auto out = p.feed("POST /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n6\r\nabcdef\r\n");
  EXPECT_FALSE(out.error_status.has_value());
  out = p.feed("6\r\nghijkl\r\n");
  EXPECT_EQ(out.error_status, 413);
  ASSERT_TRUE(out.rejected_head.has_value());
  EXPECT_EQ(out.rejected_head->path, "/x");
  EXPECT_TRUE(out.rejected_head->body.empty()) << "what was read of the body is dropped";
}

TEST(HttpRequestParser, HeaderBlockOver64KiBIs431) {
  HttpRequestParser p(100);
  std::string head = "GET / HTTP/1.1\r\n";
  while (head.size() <= kMaxHeaderBytes) head += "X-Filler: " + std::string(1000, 'f') + "\r\n";
  // Fed in pieces, so no single execute sees the whole block.
  std::optional<int> status;
  for (size_t i = 0; i < head.size() && !status; i += 777) {
    status = p.feed(std::string_view(head).substr(i, 777)).error_status;
  }
  EXPECT_EQ(status, 431);

  HttpRequestParser q(100);
  EXPECT_EQ(q.feed(head + "\r\n").error_status, 431);

  // Just under the limit passes.
  HttpRequestParser r(100);
  std::string ok = "GET / HTTP/1.1\r\nX-A: " + std::string(kMaxHeaderBytes - 100, 'a') + "\r\n\r\n";
  auto out = r.feed(ok);
  EXPECT_FALSE(out.error_status.has_value());
  EXPECT_EQ(out.requests.size(), 1u);
}

TEST(HttpRequestParser, UrlOver8KiBIs414) {
  HttpRequestParser p(100);
  auto out = p.feed("GET /" + std::string(kMaxUrlBytes, 'a') + " HTTP/1.1\r\n\r\n");
  EXPECT_EQ(out.error_status, 414);
  HttpRequestParser q(100);
  out = q.feed("GET /" + std::string(kMaxUrlBytes - 1, 'a') + " HTTP/1.1\r\n\r\n");
  EXPECT_FALSE(out.error_status.has_value());
  EXPECT_EQ(out.requests.size(), 1u);
}

TEST(HttpRequestParser, BadRequestsAre400) {
  for (std::string bad : {
           std::string("GARBAGE\r\n\r\n"),
           std::string("GET / HTTP/1.1\r\nBad Header\r\n\r\n"),
           std::string("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n"),
           std::string("POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"),
           std::string("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
           std::string("GET /a%zz HTTP/1.1\r\n\r\n"),
           std::string("GET /?a=%4 HTTP/1.1\r\n\r\n"),
           std::string("GET * HTTP/1.1\r\n\r\n"),
           std::string("GET http://x/ HTTP/1.1\r\n\r\n"),
       }) {
    HttpRequestParser p(100);
    auto out = p.feed(bad);
    EXPECT_EQ(out.error_status, 400) << bad;
    EXPECT_TRUE(out.requests.empty()) << bad;
  }
}

TEST(HttpRequestParser, KeepAliveRules) {
  HttpRequestParser p(100);
  auto reqs = feed_all(p, "GET / HTTP/1.0\r\n\r\n");
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_FALSE(reqs[0].keep_alive);
  HttpRequestParser q(100);
  reqs = feed_all(q, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_TRUE(reqs[0].keep_alive);
  HttpRequestParser r(100);
  reqs = feed_all(r, "GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
  ASSERT_EQ(reqs.size(), 1u);
  EXPECT_FALSE(reqs[0].keep_alive);
}

TEST(HttpRequestParser, RequestsBeforeAnErrorAreStillHandedOut) {
  HttpRequestParser p(100);
  auto out = p.feed("GET /a HTTP/1.1\r\n\r\nBROKEN\r\n\r\n");
  ASSERT_EQ(out.requests.size(), 1u);
  EXPECT_EQ(out.requests[0].path, "/a");
  EXPECT_EQ(out.error_status, 400);
}

TEST(HttpRequestParser, BodyIsAdmittedBeforeItIsAllocated) {
  std::vector<uint64_t> asked;
  int verdict = 0;
  HttpRequestParser p(1'000'000, [&](HttpRequest& request, uint64_t total) {
    EXPECT_EQ(request.path, "/api/v2/email");  // the head is known when it is asked
    asked.push_back(total);
    return verdict;
  });
  std::string body(5000, 'b');
  auto requests = feed_all(p, post("/api/v2/email", body));
  ASSERT_EQ(requests.size(), 1u);
  EXPECT_EQ(requests[0].body, body);
  ASSERT_EQ(asked.size(), 1u);  // once, for the announced length
  EXPECT_EQ(asked[0], 5000u);
  // Spare room after the body so that a JSON parser can read it in place.
  EXPECT_GE(requests[0].body.capacity(), body.size() + mailcar::http::kBodyPadding);
}

TEST(HttpRequestParser, BodyRefusedByAdmission) {
  // 503: out of room now; answered first, whatever the request (no head handed out).
  HttpRequestParser busy(1'000'000, [](HttpRequest&, uint64_t) { return 503; });
  auto out = busy.feed(post("/api/v2/email", std::string(100, 'x')));
  ASSERT_EQ(out.error_status, 503);
  EXPECT_FALSE(out.rejected_head.has_value());
  EXPECT_TRUE(busy.failed());
  // 413: it can never fit; the head is handed out so that 404/405/401/415 still rank first.
  HttpRequestParser big(1'000'000, [](HttpRequest&, uint64_t) { return 413; });
  out = big.feed(post("/api/v2/email", std::string(100, 'x')));
  ASSERT_EQ(out.error_status, 413);
  ASSERT_TRUE(out.rejected_head.has_value());
  EXPECT_TRUE(out.rejected_head->body_over_limit);
  EXPECT_TRUE(out.rejected_head->body.empty());
}

TEST(HttpRequestParser, ChunkedBodyIsAdmittedInGrowingSteps) {
  std::vector<uint64_t> asked;
  uint64_t room = 1'000'000;
  HttpRequestParser p(10'000'000, [&](HttpRequest&, uint64_t total) {
    asked.push_back(total);
    return total <= room ? 0 : 503;
  });
  std::string head = "POST /api/v2/email HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  std::string chunk(10'000, 'c');
  std::string framed = "2710\r\n" + chunk + "\r\n";
  auto out = p.feed(head);
  for (int i = 0; i < 50; ++i) {
    out = p.feed(framed);
    ASSERT_FALSE(out.error_status.has_value()) << i;
  }
  out = p.feed("0\r\n\r\n");
  ASSERT_EQ(out.requests.size(), 1u);
  EXPECT_EQ(out.requests[0].body.size(), 500'000u);
  // Geometric steps, each asked before it was allocated; never far above what arrived.
  ASSERT_GE(asked.size(), 2u);
  ASSERT_LE(asked.size(), 10u);
  for (size_t i = 1; i < asked.size(); ++i) EXPECT_GT(asked[i], asked[i - 1]);
  EXPECT_LE(asked.back(), 2 * 500'000u + 2 * mailcar::http::kBodyPadding);
  EXPECT_GE(out.requests[0].body.capacity(), 500'000u + mailcar::http::kBodyPadding);
  // A chunked body that outgrows the room is refused mid-way.
  room = 100'000;
  out = p.feed(head);
  for (int i = 0; i < 50 && !out.error_status; ++i) out = p.feed(framed);
  EXPECT_EQ(out.error_status, 503);
}
