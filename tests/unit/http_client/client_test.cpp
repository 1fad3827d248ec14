// fetch() on a real loop against a loopback server (net::Listener) that answers what each
// test scripts: plain http://, so the exchange itself is what is tested (TLS and the proxy
// are covered by tests/integration/test_oauth2.py).
#include <gtest/gtest.h>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mailcar/http_client.hpp"
#include "mailcar/net.hpp"
#include "support/loop_fixture.hpp"

namespace mailcar::http_client {
namespace {

Request get(std::string target) {
  Request r;
  r.url = std::move(target);
  return r;
}

class FetchTest : public mailcar::testing::LoopFixture {
 protected:
  // Serves each connection: collects the request until its head and `body_bytes` of body,
  // then writes `answer` (and closes when `close_after`).
  void serve(std::string answer, bool close_after = true) {
    answer_ = std::move(answer);
    close_after_ = close_after;
    ListenAddress address{"127.0.0.1", 0, "127.0.0.1:0"};
    auto listener = net::Listener::open(loop(), address, [this](net::StreamPtr stream) {
      streams_.push_back(stream);
      stream->set_line_delivery(false);
      stream->on_close([](const net::NetError&) {});
      stream->on_data([this, weak = std::weak_ptr<net::Stream>(stream)](std::string_view bytes) {
        received_.append(bytes);
        auto s = weak.lock();
        if (!s || received_.find("\r\n\r\n") == std::string::npos || answer_.empty()) return;
        s->write(answer_);
        if (close_after_) s->close();
      });
    });
    ASSERT_TRUE(listener.ok());
    listener_ = std::move(listener.value());
  }

  std::string url(const std::string& path = "/token") {
    return "http://127.0.0.1:" + std::to_string(listener_->port()) + path;
  }

  Result run(Request request, uint64_t timeout_ms = 10'000) {
    request.proxy_env = ProxyEnvironment{};  // never the machine's proxy
    std::optional<Result> result;
    auto handle = fetch(loop(), std::move(request), [&](Result r) { result = std::move(r); });
    EXPECT_FALSE(result.has_value()) << "done fired inside fetch()";
    EXPECT_TRUE(run_until([&] { return result.has_value(); }, timeout_ms));
    return result.value_or(Result{ErrorKind::Protocol, "no result", {}});
  }

  void TearDown() override {
    for (auto& s : streams_) s->abort();
    streams_.clear();
    if (listener_) listener_->close();
    listener_.reset();
    LoopFixture::TearDown();
  }

  std::unique_ptr<net::Listener> listener_;
  std::vector<net::StreamPtr> streams_;
  std::string answer_;
  bool close_after_ = true;
  std::string received_;
};

TEST_F(FetchTest, PostsAFormAndReadsTheAnswer) {
  serve("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}");
  Request req;
  req.method = "POST";
  req.url = url("/t?x=1");
  req.headers = {{"Content-Type", "application/x-www-form-urlencoded"}};
  req.body = form_encode({{"grant_type", "client_credentials"}});
  Result r = run(req);
  ASSERT_EQ(r.error, ErrorKind::None) << r.detail;
  EXPECT_EQ(r.response.status, 200);
  EXPECT_EQ(r.response.body, "{}");
  EXPECT_EQ(received_.substr(0, received_.find("\r\n")), "POST /t?x=1 HTTP/1.1");
  EXPECT_NE(received_.find("\r\nHost: 127.0.0.1:" + std::to_string(listener_->port()) + "\r\n"),
            std::string::npos);
  EXPECT_NE(received_.find("\r\nContent-Length: 29\r\n"), std::string::npos);
  EXPECT_NE(received_.find("\r\nConnection: close\r\n"), std::string::npos);
  EXPECT_TRUE(received_.ends_with("\r\n\r\ngrant_type=client_credentials"));
}

TEST_F(FetchTest, BodyUntilClose) {
  serve("HTTP/1.0 500 Oops\r\n\r\n{\"error\":\"server_error\"}");
  Result r = run(get(url()));
  ASSERT_EQ(r.error, ErrorKind::None) << r.detail;
  EXPECT_EQ(r.response.status, 500);
  EXPECT_EQ(r.response.body, "{\"error\":\"server_error\"}");
}

TEST_F(FetchTest, TruncatedAnswerIsAProtocolError) {
  serve("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort");
  Result r = run(get(url()));
  EXPECT_EQ(r.error, ErrorKind::Protocol);
}

TEST_F(FetchTest, OverLimitIsAProtocolError) {
  serve("HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + std::string(100, 'x'));
  Request req = get(url());
  req.max_response_bytes = 99;
  EXPECT_EQ(run(req).error, ErrorKind::Protocol);
}

TEST_F(FetchTest, SilentServerTimesOut) {
  serve("");  // reads, never answers
  Request req = get(url());
  req.timeout_ms = 200;
  const uint64_t start = uv_hrtime();
  Result r = run(req);
  EXPECT_EQ(r.error, ErrorKind::TimedOut);
  EXPECT_GE((uv_hrtime() - start) / 1'000'000, 150u);
}

TEST_F(FetchTest, RefusedAndBadUrl) {
  serve("");
  const uint16_t port = listener_->port();
  listener_->close();
  Result refused = run(get("http://127.0.0.1:" + std::to_string(port) + "/"));
  EXPECT_EQ(refused.error, ErrorKind::Connect);
  EXPECT_EQ(run(get("gopher://x/")).error, ErrorKind::BadUrl);
  Request injected = get(url());
  injected.headers = {{"X", "a\r\nInjected: 1"}};
  EXPECT_EQ(run(injected).error, ErrorKind::BadUrl);
}

TEST_F(FetchTest, DroppingTheHandleCancels) {
  serve("");
  bool fired = false;
  {
    Request req = get(url());
    req.proxy_env = ProxyEnvironment{};
    auto handle = fetch(loop(), req, [&](Result) { fired = true; });
    run_until([&] { return !received_.empty(); }, 5'000);
  }
  run_until([] { return false; }, 200);
  EXPECT_FALSE(fired);
}

}  // namespace
}  // namespace mailcar::http_client
