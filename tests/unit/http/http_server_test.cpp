// HttpServer over real loopback sockets: the client side is a plain non-blocking socket
// driven from the test thread between turns of the loop.
#include "mailcar/http_server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <map>
#include <thread>

#include "http/fakes.hpp"
#include "mailcar/net.hpp"
#include "mailcar/text.hpp"

namespace mailcar {
namespace {

using mailcar::testing::FakePolicy;

constexpr const char* kKey = "server-test-key";

// Completes each delivery after `delay_ms` on the loop, accepting every recipient.
class DelayedTransport : public Transport {
 public:
  DelayedTransport(uv_loop_t* loop, uint64_t delay_ms) : loop_(loop), delay_ms_(delay_ms) {}
  void deliver(OutboundMessage message, DeliveryCallback done) override {
    auto timer = std::make_shared<net::Timer>(loop_);
    timers_.push_back(timer);
    ++started;
    timer->start(delay_ms_, [message = std::move(message), done = std::move(done), this]() mutable {
      DeliveryResult result;
      result.accepted = message.envelope_rcpts;
      ++completed;
      auto callback = std::move(done);  // drop what it holds (the runtime) once called
      callback(std::move(result));
    });
  }
  void shutdown(std::function<void()> done) override { done(); }

  int started = 0;
  int completed = 0;

 private:
  uv_loop_t* loop_;
  uint64_t delay_ms_;
  std::vector<std::shared_ptr<net::Timer>> timers_;
};

struct ParsedResponse {
  int status = 0;
  std::map<std::string, std::string> headers;  // lower-case names
  std::string body;
};

// Splits what arrived into complete responses (interim 1xx included).
std::vector<ParsedResponse> parse_responses(const std::string& bytes) {
  std::vector<ParsedResponse> out;
  size_t pos = 0;
  while (true) {
    size_t head_end = bytes.find("\r\n\r\n", pos);
    if (head_end == std::string::npos) break;
    ParsedResponse r;
    std::string head = bytes.substr(pos, head_end - pos);
    r.status = std::stoi(head.substr(9, 3));
    size_t line = head.find("\r\n");
    while (line != std::string::npos) {
      size_t next = head.find("\r\n", line + 2);
      std::string h =
          head.substr(line + 2, next == std::string::npos ? std::string::npos : next - line - 2);
      size_t colon = h.find(':');
      if (colon != std::string::npos) {
        r.headers[text::lower_ascii(h.substr(0, colon))] =
            std::string(text::trim(h.substr(colon + 1)));
      }
      line = next;
    }
    size_t length = r.headers.count("content-length") ? std::stoul(r.headers["content-length"]) : 0;
    if (bytes.size() < head_end + 4 + length) break;
    r.body = bytes.substr(head_end + 4, length);
    pos = head_end + 4 + length;
    out.push_back(std::move(r));
  }
  return out;
}

class Client {
 public:
  explicit Client(uint16_t port) {
    fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    connected_ = ::connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::fcntl(fd_, F_SETFL, ::fcntl(fd_, F_GETFL) | O_NONBLOCK);
  }
  ~Client() {
    if (fd_ >= 0) ::close(fd_);
  }
  bool connected() const { return connected_; }
  void send(const std::string& bytes) {
    if (fd_ < 0) return;
    size_t off = 0;
    while (off < bytes.size()) {
      ssize_t n = ::send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
      if (n > 0)
        off += static_cast<size_t>(n);
      else if (n < 0 && errno != EAGAIN)
        return;
    }
  }
  void pump() {
    if (fd_ < 0) return;
    char buf[65536];
    while (true) {
      ssize_t n = ::recv(fd_, buf, sizeof buf, MSG_DONTWAIT);
      if (n > 0) {
        received.append(buf, static_cast<size_t>(n));
      } else {
        if (n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) {
          eof = true;  // like a real client: the server's close is answered with ours
          ::close(fd_);
          fd_ = -1;
        }
        return;
      }
    }
  }
  std::vector<ParsedResponse> responses() const { return parse_responses(received); }

  std::string received;
  bool eof = false;

 private:
  int fd_ = -1;
  bool connected_ = false;
};

std::string send_request(const std::string& extra_headers = "", const std::string& to = "a@x.org") {
  std::string body = R"({"to":")" + to + R"(","subject":"s","body_text":"hello"})";
  return "POST /api/v2/email HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
         "X-DreamFactory-API-Key: " +
         std::string(kKey) + "\r\n" + extra_headers +
         "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
}

class HttpServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    uv_loop_init(&loop_);
    auto config = std::make_shared<Config>();
    ServiceConfig email;
    email.name = "email";
    email.from_email = "noreply@example.com";
    config->services.push_back(email);
    config->credentials.push_back({kKey, "", "", "webapp"});
    config->limits.max_message_bytes = 10'000;
    config->limits.idle_timeout_ms = 2'000;
    config->limits.max_connections = 10;
    config_ = config.get();
    transport_ = std::make_shared<DelayedTransport>(&loop_, 30);
    runtime_ = std::make_shared<Runtime>();
    runtime_->loop = &loop_;
    runtime_->config = config;
    runtime_->policy = std::make_shared<FakePolicy>();
    runtime_->transports["email"] = transport_;
    runtime_->hostname = "test.local";
  }

  void TearDown() override {
    server_.reset();
    for (int i = 0; i < 100; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
    runtime_.reset();
    transport_.reset();
    for (int i = 0; i < 100; ++i) uv_run(&loop_, UV_RUN_NOWAIT);
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }

  void start() {
    ListenAddress address{"127.0.0.1", 0, "127.0.0.1:0"};
    auto server = HttpServer::start(&loop_, address, [this] { return runtime_; });
    ASSERT_TRUE(server.ok()) << server.error().message;
    server_ = std::move(*server);
    ASSERT_NE(server_->port(), 0);
  }

  // Turns the loop until `done` holds or `ms` pass; true when it held.
  bool run_until(const std::function<bool()>& done, int ms = 5000) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
    while (std::chrono::steady_clock::now() < deadline) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      if (done()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return done();
  }

  bool await_responses(Client& c, size_t n) {
    return run_until([&] {
      c.pump();
      return c.responses().size() >= n;
    });
  }

  uv_loop_t loop_{};
  Config* config_ = nullptr;
  std::shared_ptr<DelayedTransport> transport_;
  std::shared_ptr<Runtime> runtime_;
  std::unique_ptr<HttpServer> server_;
};

TEST_F(HttpServerTest, PipelinedRequestsAnsweredInOrderOnOneKeepAliveConnection) {
  start();
  Client c(server_->port());
  ASSERT_TRUE(c.connected());
  // The slow send first: the health check behind it must wait its turn.
  c.send(send_request("", "first@x.org") + "GET /health HTTP/1.1\r\nHost: x\r\n\r\n" +
         send_request("", "third@x.org") + "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(await_responses(c, 4)) << c.received;
  auto r = c.responses();
  EXPECT_EQ(r[0].status, 200);
  EXPECT_NE(r[0].body.find("\"count\":1"), std::string::npos);
  EXPECT_EQ(r[1].status, 200);
  EXPECT_EQ(r[1].body, R"({"status":"ok"})");
  EXPECT_EQ(r[2].status, 200);
  EXPECT_NE(r[2].body.find("\"count\":1"), std::string::npos);
  EXPECT_EQ(r[3].status, 404);
  for (auto& resp : r) {
    EXPECT_EQ(resp.headers.count("connection"), 0u);
    EXPECT_EQ(resp.headers["content-length"], std::to_string(resp.body.size()));
  }
  EXPECT_EQ(transport_->completed, 2);
  EXPECT_EQ(server_->connection_count(), 1u);

  // Still usable; then Connection: close is honoured.
  c.send(send_request("Connection: close\r\n"));
  ASSERT_TRUE(await_responses(c, 5));
  EXPECT_EQ(c.responses()[4].status, 200);
  EXPECT_EQ(c.responses()[4].headers["connection"], "close");
  EXPECT_TRUE(run_until([&] {
    c.pump();
    return c.eof && server_->connection_count() == 0;
  })) << c.eof
      << " " << server_->connection_count();
}

TEST_F(HttpServerTest, ManyPipelinedRequestsBeyondTheQueueLimit) {
  start();
  Client c(server_->port());
  std::string batch;
  const size_t n = HttpServer::kMaxQueuedRequests * 3;
  for (size_t i = 0; i < n; ++i) batch += send_request("", "r" + std::to_string(i) + "@x.org");
  c.send(batch);
  ASSERT_TRUE(await_responses(c, n)) << c.responses().size();
  for (auto& resp : c.responses()) EXPECT_EQ(resp.status, 200);
  EXPECT_EQ(transport_->completed, static_cast<int>(n));
}

TEST_F(HttpServerTest, ExpectContinueGetsInterimResponse) {
  start();
  Client c(server_->port());
  std::string full = send_request("Expect: 100-continue\r\n");
  size_t head = full.find("\r\n\r\n") + 4;
  c.send(full.substr(0, head));
  ASSERT_TRUE(await_responses(c, 1));
  EXPECT_EQ(c.responses()[0].status, 100);
  c.send(full.substr(head));
  ASSERT_TRUE(await_responses(c, 2));
  EXPECT_EQ(c.responses()[1].status, 200);
}

TEST_F(HttpServerTest, OversizedContentLengthIs413WithoutTheBody) {
  start();
  Client c(server_->port());
  c.send(
      "POST /api/v2/email HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
      "Expect: 100-continue\r\nContent-Length: 100000000\r\n\r\n");
  ASSERT_TRUE(await_responses(c, 1)) << c.received;
  EXPECT_EQ(c.responses()[0].status, 413);
  EXPECT_EQ(c.responses()[0].headers["connection"], "close");
  EXPECT_TRUE(run_until([&] {
    c.pump();
    return c.eof;
  }));
}

// An unread oversized body still gets the answers that rank above 413 (SPEC order 404/405,
// 401, 415, 413) as far as the head can tell them.
TEST_F(HttpServerTest, OversizedBodyKeepsTheErrorOrderTheHeadCanDecide) {
  start();
  auto status_for = [&](const std::string& path, const std::string& headers) {
    Client c(server_->port());
    c.send("POST " + path + " HTTP/1.1\r\nHost: x\r\n" + headers +
           "Content-Length: 100000000\r\n\r\n{");
    EXPECT_TRUE(await_responses(c, 1)) << c.received;
    if (c.responses().empty()) return 0;
    EXPECT_EQ(c.responses()[0].headers["connection"], "close");
    return c.responses()[0].status;
  };
  const std::string json = "Content-Type: application/json\r\n";
  const std::string good_key = "X-DreamFactory-API-Key: " + std::string(kKey) + "\r\n";
  EXPECT_EQ(status_for("/api/v2/nosuch", json + good_key), 404);
  EXPECT_EQ(status_for("/health", json), 405);
  EXPECT_EQ(status_for("/api/v2/email", json + "X-DreamFactory-API-Key: wrong\r\n"), 401);
  EXPECT_EQ(status_for("/api/v2/email", "Content-Type: text/plain\r\n" + good_key), 415);
  EXPECT_EQ(status_for("/api/v2/email", json + good_key), 413);
  // No key in the head: it may be in the unread body, so "too large" is all that is known.
  EXPECT_EQ(status_for("/api/v2/email", json), 413);
}

TEST_F(HttpServerTest, IdleAndSlowClientsAreClosed) {
  config_->limits.idle_timeout_ms = 150;
  start();
  Client idle(server_->port());
  Client slow(server_->port());
  slow.send("POST /api/v2/email HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nab");
  auto last_send = std::chrono::steady_clock::now();
  int sent = 0;
  // The slow one sends a byte every 20 ms (7 of the 8 missing); that does not extend its time.
  ASSERT_TRUE(run_until(
      [&] {
        idle.pump();
        slow.pump();
        auto now = std::chrono::steady_clock::now();
        if (!slow.eof && sent < 7 && now - last_send > std::chrono::milliseconds(20)) {
          slow.send("c");
          ++sent;
          last_send = now;
        }
        return idle.eof && slow.eof;
      },
      3000));
  EXPECT_TRUE(idle.received.empty());
  ASSERT_EQ(slow.responses().size(), 1u) << slow.received;
  EXPECT_EQ(slow.responses()[0].status, 408);
  EXPECT_TRUE(run_until([&] { return server_->connection_count() == 0; }));
}

// Each answered request starts the idle time afresh (the deadline moves later without a
// timer restart, so it must still be honoured later): requests every 100 ms for longer than
// the timeout keep the connection; once they stop it is closed.
TEST_F(HttpServerTest, IdleTimeCountsFromTheLastAnswer) {
  config_->limits.idle_timeout_ms = 1'000;
  start();
  Client c(server_->port());
  auto started = std::chrono::steady_clock::now();
  auto last_send = started - std::chrono::seconds(1);
  size_t sent = 0;
  ASSERT_TRUE(run_until(
      [&] {
        c.pump();
        auto now = std::chrono::steady_clock::now();
        if (!c.eof && now - last_send > std::chrono::milliseconds(100) &&
            c.responses().size() == sent) {
          c.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
          ++sent;
          last_send = now;
        }
        return c.eof || now - started > std::chrono::milliseconds(2'500);
      },
      5000));
  EXPECT_FALSE(c.eof) << "closed while requests kept coming";
  EXPECT_GE(sent, 10u);
  ASSERT_TRUE(run_until(
      [&] {
        c.pump();
        return c.eof;
      },
      5000));
  EXPECT_EQ(c.responses().size(), sent);
}

TEST_F(HttpServerTest, ConnectionsOverTheLimitGet503) {
  config_->limits.max_connections = 1;
  start();
  Client first(server_->port());
  ASSERT_TRUE(run_until([&] { return server_->connection_count() == 1; }));
  Client second(server_->port());
  ASSERT_TRUE(await_responses(second, 1));
  EXPECT_EQ(second.responses()[0].status, 503);
  first.send("GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
  ASSERT_TRUE(await_responses(first, 1));
  EXPECT_EQ(first.responses()[0].status, 200);
}

TEST_F(HttpServerTest, ShutdownFinishesInFlightAnswersQueued503AndClosesIdle) {
  transport_ = std::make_shared<DelayedTransport>(&loop_, 200);
  runtime_->transports["email"] = transport_;
  start();
  Client busy(server_->port());
  Client idle(server_->port());
  busy.send(send_request() + send_request());
  ASSERT_TRUE(run_until([&] { return transport_->started == 1; }));
  bool done = false;
  server_->shutdown(5'000, [&] { done = true; });
  ASSERT_TRUE(run_until([&] {
    busy.pump();
    idle.pump();
    return done;
  }));
  busy.pump();
  auto r = busy.responses();
  ASSERT_EQ(r.size(), 2u) << busy.received;
  EXPECT_EQ(r[0].status, 200);  // in flight: finished
  EXPECT_EQ(r[1].status, 503);  // queued: refused
  EXPECT_EQ(r[1].headers["connection"], "close");
  EXPECT_TRUE(idle.received.empty());
  EXPECT_EQ(server_->connection_count(), 0u);
  // No longer accepting.
  Client late(server_->port());
  EXPECT_FALSE(late.connected() && (run_until(
                                       [&] {
                                         late.pump();
                                         return !late.received.empty();
                                       },
                                       200)));
}

TEST_F(HttpServerTest, ShutdownGraceForcesTheRest) {
  transport_ = std::make_shared<DelayedTransport>(&loop_, 2'000);
  runtime_->transports["email"] = transport_;
  start();
  Client busy(server_->port());
  busy.send(send_request());
  ASSERT_TRUE(run_until([&] { return transport_->started == 1; }));
  bool done = false;
  auto t0 = std::chrono::steady_clock::now();
  server_->shutdown(100, [&] { done = true; });
  ASSERT_TRUE(run_until(
      [&] {
        busy.pump();
        return done;
      },
      1500));
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(1500));
  ASSERT_TRUE(await_responses(busy, 1));
  EXPECT_EQ(busy.responses()[0].status, 503);
  // Let the delayed delivery fire against the gone connection: nothing happens.
  run_until([&] { return transport_->completed == 1; }, 3000);
}

}  // namespace
}  // namespace mailcar
