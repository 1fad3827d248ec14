// SmtpRelay against a small scripted SMTP server on a real listener in the same loop.
#include <gtest/gtest.h>

#include "test_certificates.hpp"

#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mailcar/net.hpp"
#include "mailcar/relay.hpp"
#include "relay/loop_helper.hpp"

namespace mailcar {
namespace {

// Server side of one test: speaks just enough SMTP, records what it got.
class FakeSmtpServer {
 public:
  struct Options {
    bool greet = true;
    bool pipelining = true;
    bool starttls = false;
    bool rset_421_once = false;  // answer the first RSET "421" and hang up (stale connection)
    std::shared_ptr<net::TlsServerContext> tls;  // for STARTTLS or implicit TLS
    bool implicit_tls = false;
    uint64_t greet_delay_ms = 0;  // the 220 greeting comes this late
    uint64_t reply_delay_ms = 0;  // every later reply comes this late
    uint64_t trickle_ms = 0;      // every later reply comes one byte per trickle_ms
    bool starttls_stall = false;  // 220 to STARTTLS, then silence: no handshake
  };

  FakeSmtpServer(uv_loop_t* loop, Options o) : options(o), loop_(loop) {
    ListenAddress address{"127.0.0.1", 0, "127.0.0.1:0"};
    auto listener = net::Listener::open(loop, address, [this](net::StreamPtr s) { accept(s); });
    EXPECT_TRUE(listener.ok());
    if (listener.ok()) listener_ = std::move(listener.value());
  }
  ~FakeSmtpServer() {
    if (listener_) listener_->close();
    for (auto& c : clients_) {
      c->stream->on_close(nullptr);  // fires after we are gone otherwise
      c->stream->abort();
    }
  }

  uint16_t port() const { return listener_ ? listener_->port() : 0; }

  int connections = 0;
  std::vector<std::string> commands;  // every command line, all connections
  std::vector<std::string> bodies;    // unstuffed message data
  int quits = 0;
  int tls_handshakes = 0;
  int closes = 0;   // connections that ended (by either side)
  Options options;  // may be changed between messages

 private:
  struct Client {
    explicit Client(uv_loop_t* loop) : timer(loop) {}
    net::StreamPtr stream;
    std::string input;
    bool in_data = false;
    bool silent = false;
    std::string body;
    std::string outbox;  // delayed or trickled reply bytes
    net::Timer timer;
  };

  // A reply after the greeting: at once, after reply_delay_ms, or trickled byte by byte.
  void reply(Client& c, const std::string& bytes) {
    if (options.trickle_ms == 0 && options.reply_delay_ms == 0) return c.stream->write(bytes);
    c.outbox += bytes;
    if (!c.timer.active()) send_later(c);
  }

  void send_later(Client& c) {
    const uint64_t wait = options.trickle_ms ? options.trickle_ms : options.reply_delay_ms;
    c.timer.start(wait, [this, &c] {
      if (c.stream->closed() || c.outbox.empty()) return;
      const size_t n = options.trickle_ms ? 1 : c.outbox.size();
      c.stream->write(c.outbox.substr(0, n));
      c.outbox.erase(0, n);
      if (!c.outbox.empty()) send_later(c);
    });
  }

  void accept(net::StreamPtr stream) {
    ++connections;
    auto client = std::make_shared<Client>(loop_);
    client->stream = stream;
    clients_.push_back(client);
    Client* c = client.get();
    stream->on_data([this, c](std::string_view bytes) {
      if (c->silent) return;
      c->input.append(bytes);
      process(*c);
    });
    stream->on_close([this](const net::NetError&) { ++closes; });
    if (options.implicit_tls) {
      stream->start_tls_server(options.tls, [this, c](const net::NetError& e) {
        if (e.kind != net::NetErrorKind::None) return;
        ++tls_handshakes;
        c->stream->write("220 fake.test ESMTP\r\n");
      });
      return;
    }
    if (!options.greet) return;
    if (options.greet_delay_ms == 0) return stream->write("220 fake.test ESMTP\r\n");
    c->timer.start(options.greet_delay_ms, [c] {
      if (!c->stream->closed()) c->stream->write("220 fake.test ESMTP\r\n");
    });
  }

  void process(Client& c) {
    size_t nl;
    while (!c.stream->closed() && (nl = c.input.find("\r\n")) != std::string::npos) {
      std::string line = c.input.substr(0, nl);
      c.input.erase(0, nl + 2);
      if (c.in_data) {
        if (line == ".") {
          c.in_data = false;
          bodies.push_back(c.body);
          reply(c, "250 2.0.0 queued\r\n");
        } else {
          c.body += (line.rfind('.', 0) == 0 ? line.substr(1) : line) + "\r\n";
        }
        continue;
      }
      commands.push_back(line);
      std::string verb = line.substr(0, 4);
      if (verb == "EHLO") {
        std::string r = "250-fake.test\r\n";
        if (options.pipelining) r += "250-PIPELINING\r\n";
        if (options.starttls && !c.stream->tls_active()) r += "250-STARTTLS\r\n";
        r += "250 SIZE 10000000\r\n";
        reply(c, r);
      } else if (verb == "MAIL") {
        reply(c, "250 ok\r\n");
      } else if (verb == "RCPT") {
        reply(c, line.find("reject") != std::string::npos ? "550 5.1.1 no such user\r\n"
                                                          : "250 ok\r\n");
      } else if (verb == "DATA") {
        c.in_data = true;
        c.body.clear();
        reply(c, "354 go\r\n");
      } else if (verb == "RSET") {
        if (options.rset_421_once) {
          options.rset_421_once = false;
          c.stream->write("421 4.4.2 idle too long\r\n");
          c.stream->close();
          return;
        }
        reply(c, "250 ok\r\n");
      } else if (line == "STARTTLS" && options.starttls && !c.stream->tls_active()) {
        c.stream->write("220 2.0.0 go ahead\r\n");
        c.input.clear();
        if (options.starttls_stall) {
          c.silent = true;
          return;
        }
        c.stream->start_tls_server(options.tls, [this](const net::NetError& e) {
          if (e.kind == net::NetErrorKind::None) ++tls_handshakes;
        });
        return;
      } else if (verb == "QUIT") {
        ++quits;
        c.stream->write("221 bye\r\n");
        c.stream->close();
      } else {
        c.stream->write("502 unknown\r\n");
      }
    }
  }

  uv_loop_t* loop_;
  std::unique_ptr<net::Listener> listener_;
  std::vector<std::shared_ptr<Client>> clients_;
};

FakeSmtpServer::Options server_options(const std::function<void(FakeSmtpServer::Options&)>& set) {
  FakeSmtpServer::Options o;
  set(o);
  return o;
}

ServiceConfig smtp_service(uint16_t port) {
  ServiceConfig s;
  s.name = "email";
  s.host = "127.0.0.1";
  s.port = port;
  s.encryption = Encryption::None;
  s.connections = 2;
  s.connect_timeout_ms = 2000;
  s.command_timeout_ms = 2000;
  return s;
}

OutboundMessage message(std::vector<std::string> rcpts = {"bob@example.com"},
                        std::string data = "Subject: x\r\n\r\n.dot line\r\nhello\r\n") {
  OutboundMessage m;
  m.id = "id@test";
  m.envelope_from = "alice@example.com";
  m.envelope_rcpts = std::move(rcpts);
  m.data = std::move(data);
  return m;
}

TEST(SmtpRelay, DeliversAndReusesTheConnectionWithRset) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), {});
  SmtpRelay relay(loop.get(), smtp_service(server.port()), "mailcar.test");
  std::vector<DeliveryResult> results;
  bool inside = true;
  relay.deliver(message(), [&](DeliveryResult r) {
    EXPECT_FALSE(inside);
    results.push_back(std::move(r));
  });
  inside = false;
  ASSERT_TRUE(loop.run_until([&] { return results.size() == 1; }));
  relay.deliver(message({"carol@example.com", "reject@example.com"}),
                [&](DeliveryResult r) { results.push_back(std::move(r)); });
  ASSERT_TRUE(loop.run_until([&] { return results.size() == 2; }));

  EXPECT_EQ(results[0].status, DeliveryStatus::Sent);
  EXPECT_EQ(results[0].accepted, std::vector<std::string>{"bob@example.com"});
  EXPECT_GT(results[0].upstream_seconds, 0.0);
  EXPECT_EQ(results[1].status, DeliveryStatus::Sent);
  EXPECT_EQ(results[1].accepted, std::vector<std::string>{"carol@example.com"});
  ASSERT_EQ(results[1].rejected.size(), 1u);
  EXPECT_EQ(results[1].rejected[0].smtp_code, 550);
  EXPECT_EQ(server.connections, 1);
  ASSERT_EQ(server.bodies.size(), 2u);
  EXPECT_EQ(server.bodies[0], message().data);
  EXPECT_EQ(server.commands[0], "EHLO mailcar.test");
  bool saw_rset = false;
  for (const auto& c : server.commands) saw_rset = saw_rset || c == "RSET";
  EXPECT_TRUE(saw_rset);
}

TEST(SmtpRelay, LargeBodyStreamsWithBackpressure) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), {});
  SmtpRelay relay(loop.get(), smtp_service(server.port()), "mailcar.test");
  std::string data;
  for (int i = 0; i < 60000; ++i)
    data += (i % 7 == 0 ? ".line " : "line ") + std::to_string(i) + "\r\n";
  std::optional<DeliveryResult> result;
  relay.deliver(message({"bob@example.com"}, data), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }, 10000));
  EXPECT_EQ(result->status, DeliveryStatus::Sent) << result->message;
  ASSERT_EQ(server.bodies.size(), 1u);
  EXPECT_EQ(server.bodies[0], data);
}

TEST(SmtpRelay, ParallelMessagesUseAtMostConfiguredConnections) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), server_options([](auto& o) { o.pipelining = false; }));
  SmtpRelay relay(loop.get(), smtp_service(server.port()), "mailcar.test");
  int sent = 0;
  for (int i = 0; i < 5; ++i) {
    relay.deliver(message(), [&](DeliveryResult r) {
      EXPECT_EQ(r.status, DeliveryStatus::Sent) << r.message;
      ++sent;
    });
  }
  ASSERT_TRUE(loop.run_until([&] { return sent == 5; }));
  EXPECT_EQ(server.connections, 2);
  EXPECT_EQ(server.bodies.size(), 5u);
}

TEST(SmtpRelay, StaleConnectionIsRetriedOnceOnAFreshOne) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), server_options([](auto& o) { o.rset_421_once = true; }));
  SmtpRelay relay(loop.get(), smtp_service(server.port()), "mailcar.test");
  std::vector<DeliveryResult> results;
  relay.deliver(message(), [&](DeliveryResult r) { results.push_back(r); });
  ASSERT_TRUE(loop.run_until([&] { return results.size() == 1; }));
  relay.deliver(message(), [&](DeliveryResult r) { results.push_back(r); });
  ASSERT_TRUE(loop.run_until([&] { return results.size() == 2; }));
  EXPECT_EQ(results[1].status, DeliveryStatus::Sent) << results[1].message;
  EXPECT_EQ(server.connections, 2);
  EXPECT_EQ(server.bodies.size(), 2u);
}

TEST(SmtpRelay, ConnectionRefused) {
  testing::TestLoop loop;
  uint16_t port;
  {
    FakeSmtpServer closed(loop.get(), {});
    port = closed.port();
  }
  loop.run_until([] { return false; }, 20);
  SmtpRelay relay(loop.get(), smtp_service(port), "mailcar.test");
  std::vector<DeliveryResult> results;
  for (int i = 0; i < 3; ++i) {
    relay.deliver(message(), [&](DeliveryResult r) { results.push_back(r); });
  }
  ASSERT_TRUE(loop.run_until([&] { return results.size() == 3; }));
  for (const auto& r : results) {
    EXPECT_EQ(r.status, DeliveryStatus::ConnectionRefused);
    EXPECT_EQ(r.message, "Connection refused");
    EXPECT_TRUE(r.retryable);
    EXPECT_FALSE(r.smtp_code.has_value());
  }
}

double seconds_since(uint64_t start_ns) {
  return static_cast<double>(uv_hrtime() - start_ns) / 1e9;
}

// connect_timeout covers connect + greeting: a server that never greets is given up on then,
// not after command_timeout.
TEST(SmtpRelay, GreetingWaitIsBoundByConnectTimeout) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), server_options([](auto& o) { o.greet = false; }));
  ServiceConfig service = smtp_service(server.port());
  service.connect_timeout_ms = 150;
  service.command_timeout_ms = 10'000;
  SmtpRelay relay(loop.get(), service, "mailcar.test");
  std::optional<DeliveryResult> result;
  const uint64_t start = uv_hrtime();
  relay.deliver(message(), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }, 8000));
  EXPECT_LT(seconds_since(start), 3.0);
  EXPECT_EQ(result->status, DeliveryStatus::ConnectionTimedOut);
  EXPECT_EQ(result->message, "Connection timed out");
  EXPECT_TRUE(result->retryable);
}

// ... and command_timeout does not apply to the greeting.
TEST(SmtpRelay, SlowGreetingWithinConnectTimeoutIsFine) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), server_options([](auto& o) { o.greet_delay_ms = 400; }));
  ServiceConfig service = smtp_service(server.port());
  service.connect_timeout_ms = 5000;
  service.command_timeout_ms = 100;
  SmtpRelay relay(loop.get(), service, "mailcar.test");
  std::optional<DeliveryResult> result;
  relay.deliver(message(), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }));
  EXPECT_EQ(result->status, DeliveryStatus::Sent) << result->message;
}

// A reply trickled one byte at a time gets command_timeout in all, not per byte. The EHLO
// reply alone would take about 36 * 60 ms = 2.2 s, the whole conversation about 4.5 s.
TEST(SmtpRelay, TrickledReplyIsCutOffAtCommandTimeout) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), server_options([](auto& o) {
                          o.trickle_ms = 60;
                          o.pipelining = false;
                        }));
  ServiceConfig service = smtp_service(server.port());
  service.command_timeout_ms = 300;
  SmtpRelay relay(loop.get(), service, "mailcar.test");
  std::optional<DeliveryResult> result;
  const uint64_t start = uv_hrtime();
  relay.deliver(message(), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }, 8000));
  const double took = seconds_since(start);
  EXPECT_EQ(result->status, DeliveryStatus::ConnectionTimedOut) << result->message;
  EXPECT_TRUE(result->retryable);
  EXPECT_GE(took, 0.25);
  EXPECT_LT(took, 1.8);
  EXPECT_TRUE(server.bodies.empty());
  // The connection was dropped; the next message gets a fresh one from a now healthy server.
  EXPECT_TRUE(loop.run_until([&] { return server.closes == 1; }));
  server.options.trickle_ms = 0;
  result.reset();
  relay.deliver(message(), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }));
  EXPECT_EQ(result->status, DeliveryStatus::Sent) << result->message;
  EXPECT_EQ(server.connections, 2);
}

// Every reply comes in time (200 ms < command_timeout), but five of them take 1 s: the
// delivery deadline (700 ms) ends it, and the connection is not reused.
TEST(SmtpRelay, DeliveryDeadlineStopsAnUpstreamThatAnswersJustInTime) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), server_options([](auto& o) {
                          o.reply_delay_ms = 200;
                          o.pipelining = false;
                        }));
  ServiceConfig service = smtp_service(server.port());
  service.command_timeout_ms = 600;
  SmtpRelay relay(loop.get(), service, "mailcar.test", 700);
  std::optional<DeliveryResult> result;
  relay.deliver(message(), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }));
  EXPECT_EQ(result->status, DeliveryStatus::ConnectionTimedOut) << result->message;
  EXPECT_EQ(result->message, "Connection timed out");
  EXPECT_TRUE(result->retryable);
  EXPECT_GE(result->upstream_seconds, 0.65);
  EXPECT_TRUE(result->accepted.empty());
  EXPECT_TRUE(server.bodies.empty());
  EXPECT_TRUE(loop.run_until([&] { return server.closes == 1; }));
  server.options.reply_delay_ms = 0;
  result.reset();
  relay.deliver(message(), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }));
  EXPECT_EQ(result->status, DeliveryStatus::Sent) << result->message;
  EXPECT_EQ(server.connections, 2);
}

// The delivery deadline includes the wait for a connection: here one that greets late.
TEST(SmtpRelay, DeliveryDeadlineCoversTheWaitForAConnection) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), server_options([](auto& o) { o.greet_delay_ms = 1500; }));
  ServiceConfig service = smtp_service(server.port());
  service.connect_timeout_ms = 5000;
  SmtpRelay relay(loop.get(), service, "mailcar.test", 300);
  std::optional<DeliveryResult> result;
  relay.deliver(message(), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }));
  EXPECT_EQ(result->status, DeliveryStatus::ConnectionTimedOut) << result->message;
  EXPECT_GE(result->upstream_seconds, 0.25);
  EXPECT_LT(result->upstream_seconds, 1.4);
  EXPECT_TRUE(server.commands.empty());
}

// A STARTTLS handshake the server never answers is bound by connect_timeout.
TEST(SmtpRelay, StalledStartTlsHandshakeTimesOut) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), server_options([](auto& o) {
                          o.starttls = true;
                          o.starttls_stall = true;
                        }));
  ServiceConfig service = smtp_service(server.port());
  service.encryption = Encryption::StartTls;
  service.tls_verify = false;
  service.connect_timeout_ms = 300;
  service.command_timeout_ms = 10'000;
  SmtpRelay relay(loop.get(), service, "mailcar.test", 60'000);
  std::optional<DeliveryResult> result;
  relay.deliver(message(), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }, 8000));
  EXPECT_EQ(result->status, DeliveryStatus::ConnectionTimedOut) << result->message;
  EXPECT_LT(result->upstream_seconds, 3.0);
}

TEST(SmtpRelay, StartTlsRequiredButNotOffered) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), {});
  ServiceConfig service = smtp_service(server.port());
  service.encryption = Encryption::StartTls;
  SmtpRelay relay(loop.get(), service, "mailcar.test");
  std::optional<DeliveryResult> result;
  relay.deliver(message(), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }));
  EXPECT_EQ(result->status, DeliveryStatus::TlsUnavailable);
  EXPECT_TRUE(server.bodies.empty());
  for (const auto& c : server.commands) EXPECT_EQ(c.rfind("MAIL", 0), std::string::npos);
}

TEST(SmtpRelay, ShutdownQuitsIdleConnectionsAndRefusesNewMessages) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), {});
  SmtpRelay relay(loop.get(), smtp_service(server.port()), "mailcar.test");
  std::optional<DeliveryResult> first;
  relay.deliver(message(), [&](DeliveryResult r) { first = r; });
  ASSERT_TRUE(loop.run_until([&] { return first.has_value(); }));
  bool shut = false;
  relay.shutdown([&] { shut = true; });
  std::optional<DeliveryResult> late;
  relay.deliver(message(), [&](DeliveryResult r) { late = r; });
  EXPECT_FALSE(late.has_value());
  ASSERT_TRUE(loop.run_until([&] { return shut && late.has_value(); }));
  EXPECT_EQ(late->status, DeliveryStatus::ShuttingDown);
  EXPECT_EQ(server.quits, 1);
}

// A caller may drop the relay from inside a result callback (a reload releasing the last
// runtime): that callback runs to its end with its captures intact, and no later one runs.
TEST(SmtpRelay, DestroyedFromInsideAResultCallback) {
  testing::TestLoop loop;
  auto relay = std::make_unique<SmtpRelay>(loop.get(), smtp_service(1), "mailcar.test");
  relay->shutdown([] {});
  std::vector<std::string> seen;
  const std::string tag(40, 't');  // on the heap: a capture freed too early would show
  relay->deliver(message(), [&relay, &seen, tag](DeliveryResult r) {
    relay.reset();
    seen.push_back(tag + delivery_status_name(r.status));
  });
  relay->deliver(message(), [&seen](DeliveryResult) { seen.push_back("second"); });
  ASSERT_TRUE(loop.run_until([&] { return !seen.empty(); }));
  loop.run_until([] { return false; }, 100);
  EXPECT_EQ(seen, std::vector<std::string>{tag + "shutting_down"});
}

TEST(SmtpRelay, ShutdownLetsQueuedMessagesFinish) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), {});
  SmtpRelay relay(loop.get(), smtp_service(server.port()), "mailcar.test");
  int sent = 0;
  for (int i = 0; i < 3; ++i) {
    relay.deliver(message(), [&](DeliveryResult r) {
      EXPECT_EQ(r.status, DeliveryStatus::Sent);
      ++sent;
    });
  }
  bool shut = false;
  int sent_at_shutdown = -1;
  relay.shutdown([&] {
    shut = true;
    sent_at_shutdown = sent;
  });
  ASSERT_TRUE(loop.run_until([&] { return shut; }));
  EXPECT_EQ(sent_at_shutdown, 3);
  EXPECT_EQ(server.quits, server.connections);
}

TEST(SmtpRelay, IdleConnectionIsQuitAfterIdleTimeout) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), {});
  SmtpRelay relay(loop.get(), smtp_service(server.port()), "mailcar.test");
  relay.set_idle_timeout_ms(50);
  std::optional<DeliveryResult> result;
  relay.deliver(message(), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }));
  EXPECT_TRUE(loop.run_until([&] { return server.quits == 1; }));
  // The next message opens a new connection.
  result.reset();
  relay.deliver(message(), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }));
  EXPECT_EQ(result->status, DeliveryStatus::Sent);
  EXPECT_EQ(server.connections, 2);
}

class SmtpRelayTls : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = mailcar::test_support::make_test_certificates({"server", "other"});
    ASSERT_FALSE(dir_.empty()) << "openssl could not make test certificates";
  }
  static void TearDownTestSuite() { mailcar::test_support::remove_test_certificates(dir_); }

  static std::shared_ptr<net::TlsServerContext> context() {
    auto ctx = net::TlsServerContext::load(dir_ + "/server.crt", dir_ + "/server.key");
    EXPECT_TRUE(ctx.ok());
    return ctx.ok() ? *ctx : nullptr;
  }

  static ServiceConfig tls_service(uint16_t port, Encryption mode, const std::string& ca) {
    ServiceConfig s = smtp_service(port);
    s.host = "localhost";
    s.encryption = mode;
    s.tls_verify = true;
    s.ca_file = dir_ + "/" + ca + ".crt";
    return s;
  }

  static std::string dir_;
};

std::string SmtpRelayTls::dir_;

TEST_F(SmtpRelayTls, StartTlsVerifiedThenDelivers) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), server_options([](auto& o) {
                          o.starttls = true;
                          o.tls = context();
                        }));
  SmtpRelay relay(loop.get(), tls_service(server.port(), Encryption::StartTls, "server"),
                  "mailcar.test");
  std::optional<DeliveryResult> result;
  relay.deliver(message(), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }));
  EXPECT_EQ(result->status, DeliveryStatus::Sent) << result->message;
  EXPECT_EQ(server.tls_handshakes, 1);
  // EHLO twice: in clear, then again inside TLS.
  ASSERT_GE(server.commands.size(), 3u);
  EXPECT_EQ(server.commands[0], "EHLO mailcar.test");
  EXPECT_EQ(server.commands[1], "STARTTLS");
  EXPECT_EQ(server.commands[2], "EHLO mailcar.test");
  ASSERT_EQ(server.bodies.size(), 1u);
}

TEST_F(SmtpRelayTls, ImplicitTlsDelivers) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), server_options([](auto& o) {
                          o.tls = context();
                          o.implicit_tls = true;
                        }));
  SmtpRelay relay(loop.get(), tls_service(server.port(), Encryption::Tls, "server"),
                  "mailcar.test");
  std::optional<DeliveryResult> result;
  relay.deliver(message(), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }));
  EXPECT_EQ(result->status, DeliveryStatus::Sent) << result->message;
  EXPECT_EQ(server.tls_handshakes, 1);
}

TEST_F(SmtpRelayTls, UntrustedCertificateIsACertificateError) {
  for (Encryption mode : {Encryption::StartTls, Encryption::Tls}) {
    testing::TestLoop loop;
    FakeSmtpServer server(loop.get(), server_options([&](auto& o) {
                            o.starttls = true;
                            o.tls = context();
                            o.implicit_tls = mode == Encryption::Tls;
                          }));
    SmtpRelay relay(loop.get(), tls_service(server.port(), mode, "other"), "mailcar.test");
    std::optional<DeliveryResult> result;
    relay.deliver(message(), [&](DeliveryResult r) { result = r; });
    ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }));
    EXPECT_EQ(result->status, DeliveryStatus::CertificateError) << result->message;
    EXPECT_EQ(result->message, "Certificate error");
    EXPECT_FALSE(result->retryable);
    EXPECT_TRUE(server.bodies.empty());
  }
}

// ---- probes (issue 9) ------------------------------------------------------------------------

TEST(SmtpRelayProbe, WorkingUpstreamIsReadyAndTheProbeConnectionCarriesNoMessage) {
  testing::TestLoop loop;
  upstream_health().clear();
  FakeSmtpServer server(loop.get(), {});
  SmtpRelay relay(loop.get(), smtp_service(server.port()), "mailcar.test");
  std::optional<ProbeReport> report;
  bool inside = true;
  relay.probe([&](ProbeReport r) {
    EXPECT_FALSE(inside);
    report = std::move(r);
  });
  inside = false;
  std::optional<DeliveryResult> result;
  relay.deliver(message(), [&](DeliveryResult r) { result = r; });
  ASSERT_TRUE(loop.run_until([&] { return report && result && server.quits == 1; }));
  EXPECT_TRUE(report->ok) << report->failure.message;
  EXPECT_EQ(report->stage, ProbeStage::Done);
  EXPECT_EQ(report->peer.rfind("127.0.0.1:", 0), 0u) << report->peer;
  EXPECT_FALSE(report->ehlo.empty());
  EXPECT_TRUE(report->auth_mechanism.empty());  // no credentials configured
  EXPECT_EQ(result->status, DeliveryStatus::Sent) << result->message;
  EXPECT_EQ(server.connections, 2);  // the probe's own, and the message's
  ASSERT_EQ(server.bodies.size(), 1u);
  std::optional<UpstreamCheck> check = upstream_health().last("email");
  ASSERT_TRUE(check.has_value());
  EXPECT_TRUE(check->ok);
  upstream_health().clear();
}

TEST(SmtpRelayProbe, RefusedConnectionFailsAtConnectAndIsRecorded) {
  testing::TestLoop loop;
  upstream_health().clear();
  uint16_t port;
  {
    FakeSmtpServer closed(loop.get(), {});
    port = closed.port();
  }
  loop.run_until([] { return false; }, 20);
  SmtpRelay relay(loop.get(), smtp_service(port), "mailcar.test");
  std::optional<ProbeReport> report;
  relay.probe([&](ProbeReport r) { report = std::move(r); });
  ASSERT_TRUE(loop.run_until([&] { return report.has_value(); }));
  EXPECT_FALSE(report->ok);
  EXPECT_EQ(report->stage, ProbeStage::Connect);
  EXPECT_EQ(report->failure.status, DeliveryStatus::ConnectionRefused);
  std::optional<UpstreamCheck> check = upstream_health().last("email");
  ASSERT_TRUE(check.has_value());
  EXPECT_FALSE(check->ok);
  EXPECT_NE(check->error.find("refused"), std::string::npos) << check->error;
  upstream_health().clear();
}

TEST(SmtpRelayProbe, NoGreetingIsTheGreetingStage) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), server_options([](auto& o) { o.greet = false; }));
  ServiceConfig service = smtp_service(server.port());
  service.connect_timeout_ms = 200;
  SmtpRelay relay(loop.get(), service, "mailcar.test");
  std::optional<ProbeReport> report;
  relay.probe([&](ProbeReport r) { report = std::move(r); });
  ASSERT_TRUE(loop.run_until([&] { return report.has_value(); }, 5000));
  EXPECT_EQ(report->stage, ProbeStage::Greeting);
  EXPECT_EQ(report->failure.status, DeliveryStatus::ConnectionTimedOut);
  std::vector<std::string> lines = describe_probe(service, {}, *report);
  ASSERT_FALSE(lines.empty());
  EXPECT_NE(lines.back().find("implicit TLS expected on this port?"), std::string::npos)
      << lines.back();
}

TEST(SmtpRelayProbe, ShutdownEndsAProbeAtOnce) {
  testing::TestLoop loop;
  upstream_health().clear();
  FakeSmtpServer server(loop.get(), server_options([](auto& o) { o.greet = false; }));
  SmtpRelay relay(loop.get(), smtp_service(server.port()), "mailcar.test");
  std::optional<ProbeReport> report;
  relay.probe([&](ProbeReport r) { report = std::move(r); });
  ASSERT_TRUE(loop.run_until([&] { return server.connections == 1; }));
  bool stopped = false;
  relay.shutdown([&] { stopped = true; });
  ASSERT_TRUE(loop.run_until([&] { return report.has_value() && stopped; }, 1000));
  EXPECT_EQ(report->failure.status, DeliveryStatus::ShuttingDown);
  EXPECT_FALSE(upstream_health().last("email").has_value());  // a stop is not a failure
}

TEST_F(SmtpRelayTls, ProbeReportsTheCertificate) {
  testing::TestLoop loop;
  FakeSmtpServer server(loop.get(), server_options([](auto& o) {
                          o.starttls = true;
                          o.tls = context();
                        }));
  SmtpRelay good(loop.get(), tls_service(server.port(), Encryption::StartTls, "server"),
                 "mailcar.test");
  std::optional<ProbeReport> ok;
  good.probe([&](ProbeReport r) { ok = std::move(r); });
  ASSERT_TRUE(loop.run_until([&] { return ok.has_value(); }));
  EXPECT_TRUE(ok->ok) << ok->failure.message;
  ASSERT_TRUE(ok->tls.has_value());
  EXPECT_TRUE(ok->tls->handshake_done);
  EXPECT_EQ(ok->tls->version.rfind("TLSv1.", 0), 0u) << ok->tls->version;
  EXPECT_EQ(ok->tls->subject, "CN=localhost");
  EXPECT_EQ(ok->tls->dns_names, std::vector<std::string>{"localhost"});
  EXPECT_EQ(ok->tls->verify_flags, 0u);

  SmtpRelay untrusted(loop.get(), tls_service(server.port(), Encryption::StartTls, "other"),
                      "mailcar.test");
  std::optional<ProbeReport> bad;
  untrusted.probe([&](ProbeReport r) { bad = std::move(r); });
  ASSERT_TRUE(loop.run_until([&] { return bad.has_value(); }));
  EXPECT_FALSE(bad->ok);
  EXPECT_EQ(bad->stage, ProbeStage::StartTls);
  EXPECT_EQ(bad->failure.status, DeliveryStatus::CertificateError);
  ASSERT_TRUE(bad->tls.has_value());
  EXPECT_TRUE(bad->tls->have_certificate);
  EXPECT_TRUE(bad->tls->not_trusted);
  EXPECT_FALSE(bad->tls->name_mismatch);
  EXPECT_EQ(bad->tls->subject, "CN=localhost");
}

}  // namespace
}  // namespace mailcar
