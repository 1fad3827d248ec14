// Real sockets on 127.0.0.1 inside a uv loop run by the test; a deadline stops a hung test.
#include <gtest/gtest.h>

#include <sys/socket.h>
#include <unistd.h>
#include "test_certificates.hpp"

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "mailcar/net.hpp"

namespace mailcar::net {
namespace {

namespace fs = std::filesystem;

class NetTest : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(uv_loop_init(&loop_), 0); }

  void TearDown() override {
    // Every handle must close by itself once the test dropped its objects.
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(3);
    while (uv_loop_alive(&loop_) && std::chrono::steady_clock::now() < deadline) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      usleep(1000);
    }
    EXPECT_EQ(uv_loop_close(&loop_), 0) << "a libuv handle was leaked";
  }

  // Runs the loop until done() or limit_ms passed; false on timeout.
  bool run_until(const std::function<bool()>& done, uint64_t limit_ms = 5000) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(limit_ms);
    bool ok = false;
    {
      Timer tick(&loop_);  // keeps uv_run(ONCE) from blocking forever
      tick.start(
          5, [] {}, 5);
      while (!(ok = done()) && std::chrono::steady_clock::now() < deadline) {
        uv_run(&loop_, UV_RUN_ONCE);
      }
    }
    uv_run(&loop_, UV_RUN_NOWAIT);  // let the tick timer close
    return ok;
  }

  std::unique_ptr<Listener> listen(Listener::AcceptFn on_accept) {
    auto listener = Listener::open(&loop_, ListenAddress{"127.0.0.1", 0, ""}, std::move(on_accept));
    EXPECT_TRUE(listener.ok()) << (listener.ok() ? "" : listener.error().message);
    return listener.ok() ? std::move(listener).value() : nullptr;
  }

  struct Connected {
    StreamPtr stream;
    NetError error;
    bool done = false;
  };

  // Connects and waits for the result.
  Connected connect(const std::string& host, uint16_t port, uint64_t timeout_ms = 2000) {
    Connected result;
    connect_tcp(&loop_, host, port, timeout_ms, [&result](StreamPtr stream, const NetError& error) {
      EXPECT_FALSE(result.done) << "connect reported twice";
      result.stream = std::move(stream);
      result.error = error;
      result.done = true;
    });
    EXPECT_FALSE(result.done) << "connect_tcp must not report from inside the call";
    EXPECT_TRUE(run_until([&] { return result.done; }));
    return result;
  }

  uv_loop_t loop_{};
};

// A peer that records what it receives and how it ended.
struct Recorder {
  std::string data;
  bool closed = false;
  NetError why;
  StreamPtr stream;

  Recorder() = default;
  Recorder(const Recorder&) = delete;
  Recorder& operator=(const Recorder&) = delete;
  ~Recorder() {
    if (stream) {  // the stream may outlive this recorder
      stream->on_data(nullptr);
      stream->on_close(nullptr);
    }
  }

  void attach(const StreamPtr& target) {
    stream = target;
    stream->on_data([this](std::string_view bytes) { data.append(bytes); });
    stream->on_close([this](const NetError& error) {
      EXPECT_FALSE(closed) << "on_close fired twice";
      closed = true;
      why = error;
    });
  }
};

std::string pattern(size_t size, unsigned seed) {
  std::string s(size, '\0');
  unsigned x = seed;
  for (auto& c : s) {
    x = x * 1103515245u + 12345u;
    c = static_cast<char>(x >> 16);
  }
  return s;
}

// ---------------------------------------------------------------- plain TCP

TEST_F(NetTest, ListenerOnPortZeroReportsBoundPortAndLoopback) {
  auto listener = listen([](StreamPtr) {});
  ASSERT_TRUE(listener);
  EXPECT_NE(listener->port(), 0);
  EXPECT_TRUE(listener->is_loopback());
}

TEST_F(NetTest, ListenerErrorsNameTheAddress) {
  auto first = listen([](StreamPtr) {});
  ASSERT_TRUE(first);
  std::string text = "127.0.0.1:" + std::to_string(first->port());
  auto second =
      Listener::open(&loop_, ListenAddress{"127.0.0.1", first->port(), text}, [](StreamPtr) {});
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.error().message, text + ": address already in use");

  auto bad = Listener::open(&loop_, ListenAddress{"localhost", 0, "localhost:0"}, [](StreamPtr) {});
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.error().message.find("localhost:0"), std::string::npos);
}

TEST_F(NetTest, IPv6LoopbackListener) {
  auto listener = Listener::open(&loop_, ListenAddress{"::1", 0, ""},
                                 [](StreamPtr stream) { stream->close(); });
  if (!listener.ok()) GTEST_SKIP() << "no IPv6 here: " << listener.error().message;
  EXPECT_TRUE((*listener)->is_loopback());
  auto any = Listener::open(&loop_, ListenAddress{"0.0.0.0", 0, ""}, [](StreamPtr) {});
  ASSERT_TRUE(any.ok());
  EXPECT_FALSE((*any)->is_loopback());
}

TEST_F(NetTest, EchoOverPlainTcpWithDroppedServerPointer) {
  std::string server_peer;
  bool server_loopback = false;
  auto listener = listen([&](StreamPtr stream) {
    server_peer = stream->peer_address();
    server_loopback = stream->peer_is_loopback();
    // Only a raw pointer survives: the open handle keeps the stream alive.
    Stream* raw = stream.get();
    stream->on_data([raw](std::string_view bytes) { raw->write("echo:" + std::string(bytes)); });
  });
  ASSERT_TRUE(listener);

  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream) << client.error.detail;
  EXPECT_EQ(client.error.kind, NetErrorKind::None);
  EXPECT_EQ(client.stream->peer_address(), "127.0.0.1:" + std::to_string(listener->port()));
  EXPECT_TRUE(client.stream->peer_is_loopback());
  EXPECT_FALSE(client.stream->tls_active());

  Recorder received;
  received.attach(client.stream);
  client.stream->write("hello\r\n");
  client.stream->write("world\r\n");
  EXPECT_TRUE(run_until([&] { return received.data.size() >= 24; }));
  EXPECT_EQ(received.data, "echo:hello\r\necho:world\r\n");
  EXPECT_EQ(server_peer.rfind("127.0.0.1:", 0), 0u) << server_peer;
  EXPECT_TRUE(server_loopback);

  client.stream->close();
  EXPECT_TRUE(client.stream->closed());
  EXPECT_TRUE(run_until([&] { return received.closed; }));
  EXPECT_EQ(received.why.kind, NetErrorKind::Closed);
}

TEST_F(NetTest, ConnectToClosedPortIsRefused) {
  uint16_t port = 0;
  {
    auto listener = listen([](StreamPtr) {});
    ASSERT_TRUE(listener);
    port = listener->port();
  }
  auto result = connect("127.0.0.1", port);
  EXPECT_FALSE(result.stream);
  EXPECT_EQ(result.error.kind, NetErrorKind::Refused) << result.error.detail;
  EXPECT_NE(result.error.detail.find("connection refused"), std::string::npos)
      << result.error.detail;
}

TEST_F(NetTest, UnresolvableNameIsResolveError) {
  auto result = connect("nonexistent.invalid", 25, 10000);
  EXPECT_FALSE(result.stream);
  EXPECT_EQ(result.error.kind, NetErrorKind::Resolve) << result.error.detail;
  EXPECT_NE(result.error.detail.find("nonexistent.invalid"), std::string::npos);
}

TEST_F(NetTest, DeadlineDuringResolveIsTimedOut) {
  // Timers run before the loop polls for the resolver's answer, so 0 ms always wins.
  auto result = connect("localhost", 25, 0);
  EXPECT_FALSE(result.stream);
  EXPECT_EQ(result.error.kind, NetErrorKind::TimedOut) << result.error.detail;
}

TEST_F(NetTest, DeadlineDuringConnectIsTimedOut) {
  // A listening socket that never accepts: once its accept queue is full the kernel drops
  // further SYNs, so a connect stays pending until our deadline.
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_in address{};
  uv_ip4_addr("127.0.0.1", 0, &address);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address), 0);
  ASSERT_EQ(::listen(fd, 0), 0);
  socklen_t length = sizeof address;
  ASSERT_EQ(::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length), 0);
  uint16_t port = ntohs(address.sin_port);

  std::vector<StreamPtr> fillers;
  NetError last;
  for (int i = 0; i < 8 && last.kind != NetErrorKind::TimedOut; ++i) {
    auto result = connect("127.0.0.1", port, 300);
    last = result.error;
    if (result.stream) fillers.push_back(result.stream);
  }
  EXPECT_EQ(last.kind, NetErrorKind::TimedOut) << last.detail;
  EXPECT_LE(fillers.size(), 3u);
  for (auto& stream : fillers) stream->abort();
  ::close(fd);
}

TEST_F(NetTest, PeerCloseReportsClosedAndClearedCallbackStaysSilent) {
  StreamPtr server;
  auto listener = listen([&](StreamPtr stream) { server = std::move(stream); });
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);
  ASSERT_TRUE(run_until([&] { return server != nullptr; }));
  Recorder at_server;
  at_server.attach(server);

  bool client_close_called = false;
  client.stream->on_close([&](const NetError&) { client_close_called = true; });
  client.stream->on_close(nullptr);
  client.stream->write("bye\n");
  client.stream->close();
  client.stream->write("dropped after close\n");
  EXPECT_TRUE(run_until([&] { return at_server.closed; }));
  EXPECT_EQ(at_server.data, "bye\n");
  EXPECT_EQ(at_server.why.kind, NetErrorKind::Closed);
  EXPECT_EQ(at_server.why.detail, "peer closed the connection");
  run_until([] { return false; }, 50);
  EXPECT_FALSE(client_close_called);
}

TEST_F(NetTest, NoDataCallbackAfterAbort) {
  StreamPtr server;
  auto listener = listen([&](StreamPtr stream) { server = std::move(stream); });
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);
  ASSERT_TRUE(run_until([&] { return server != nullptr; }));
  Recorder at_server;
  at_server.attach(server);
  Recorder at_client;
  at_client.attach(client.stream);

  server->write("one\n");
  ASSERT_TRUE(run_until([&] { return at_client.data == "one\n"; }));
  client.stream->abort();
  server->write("two\n");
  EXPECT_TRUE(run_until([&] { return at_client.closed && at_server.closed; }));
  EXPECT_EQ(at_client.data, "one\n");
  EXPECT_EQ(at_client.why.kind, NetErrorKind::Closed);
  EXPECT_EQ(at_client.why.detail, "aborted");
  // The reset reaches the server as an error or as EOF, depending on timing.
  EXPECT_TRUE(at_server.why.kind == NetErrorKind::Io || at_server.why.kind == NetErrorKind::Closed);
}

TEST_F(NetTest, PauseMidChunkHoldsTheRestUntilResume) {
  StreamPtr server;
  auto listener = listen([&](StreamPtr stream) { server = std::move(stream); });
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);
  ASSERT_TRUE(run_until([&] { return server != nullptr; }));

  std::vector<std::string> lines;
  server->on_data([&](std::string_view bytes) {
    lines.emplace_back(bytes);
    if (lines.size() == 1) server->pause_reading();
  });
  client.stream->write("a\nb\nc\n");
  ASSERT_TRUE(run_until([&] { return !lines.empty(); }));
  run_until([] { return false; }, 50);
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0], "a\n");
  server->resume_reading();
  EXPECT_EQ(lines.size(), 1u) << "resume_reading must not deliver from inside the call";
  EXPECT_TRUE(run_until([&] { return lines.size() == 3; }));
  EXPECT_EQ(lines, (std::vector<std::string>{"a\n", "b\n", "c\n"}));
  client.stream->abort();
  server->abort();
}

TEST_F(NetTest, ChunkDeliveryHandsOverWholeReadsAndLineDeliveryComesBack) {
  StreamPtr server;
  auto listener = listen([&](StreamPtr stream) { server = std::move(stream); });
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);
  ASSERT_TRUE(run_until([&] { return server != nullptr; }));

  std::vector<std::string> calls;
  server->set_line_delivery(false);
  server->on_data([&](std::string_view bytes) { calls.emplace_back(bytes); });
  const std::string many_lines = pattern(20000, 7) + "\nend\n";
  client.stream->write(many_lines);
  ASSERT_TRUE(run_until([&] {
    size_t total = 0;
    for (const auto& c : calls) total += c.size();
    return total == many_lines.size();
  }));
  std::string joined;
  for (const auto& c : calls) joined += c;
  EXPECT_EQ(joined, many_lines);
  // pattern() holds many LFs; chunks, not lines, must have arrived.
  EXPECT_LT(calls.size(), 20u) << "expected whole reads, got " << calls.size() << " calls";

  calls.clear();
  server->set_line_delivery(true);
  client.stream->write("a\nb\nc\n");
  ASSERT_TRUE(run_until([&] { return calls.size() == 3; }));
  EXPECT_EQ(calls, (std::vector<std::string>{"a\n", "b\n", "c\n"}));
  client.stream->abort();
  server->abort();
}

TEST_F(NetTest, WriteBacklogGrowsWhilePeerDoesNotReadAndDrains) {
  StreamPtr server;
  auto listener = listen([&](StreamPtr stream) { server = std::move(stream); });
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);
  ASSERT_TRUE(run_until([&] { return server != nullptr; }));

  size_t received = 0;
  server->on_data([&](std::string_view bytes) { received += bytes.size(); });
  server->pause_reading();
  const std::string payload = pattern(32 * 1024 * 1024, 7);
  EXPECT_EQ(client.stream->write_backlog(), 0u);
  client.stream->write(payload);
  run_until([] { return false; }, 100);
  size_t backlog = client.stream->write_backlog();
  EXPECT_GT(backlog, 0u);
  EXPECT_LT(backlog, payload.size());  // part went to the kernel at once

  server->resume_reading();
  EXPECT_TRUE(run_until([&] { return received == payload.size(); }, 20000));
  EXPECT_EQ(client.stream->write_backlog(), 0u);
  client.stream->abort();
  server->abort();
}

TEST_F(NetTest, CloseFlushesQueuedWrites) {
  StreamPtr server;
  auto listener = listen([&](StreamPtr stream) { server = std::move(stream); });
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);
  ASSERT_TRUE(run_until([&] { return server != nullptr; }));
  Recorder at_server;
  at_server.attach(server);
  Recorder at_client;
  at_client.attach(client.stream);

  const std::string payload = pattern(8 * 1024 * 1024, 3);
  client.stream->write(payload);
  EXPECT_GT(client.stream->write_backlog(), 0u);
  client.stream->close();
  client.stream = nullptr;  // the handle keeps it alive until the flush is done
  EXPECT_TRUE(run_until([&] { return at_server.closed && at_client.closed; }, 20000));
  EXPECT_TRUE(at_server.data == payload) << at_server.data.size() << " of " << payload.size();
  EXPECT_EQ(at_server.why.kind, NetErrorKind::Closed);
  EXPECT_EQ(at_client.why.kind, NetErrorKind::Closed);
  EXPECT_EQ(at_client.why.detail, "closed");
}

// A stopping server (issue 13): the reply still reaches the peer, but a peer that neither
// reads further nor closes does not hold the close up (close() waits up to 10 s for its EOF).
TEST_F(NetTest, ClosePromptlyFlushesAndDoesNotWaitForThePeer) {
  StreamPtr server;
  auto listener = listen([&](StreamPtr stream) { server = std::move(stream); });
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);
  ASSERT_TRUE(run_until([&] { return server != nullptr; }));
  Recorder at_server;
  at_server.attach(server);
  Recorder at_client;
  at_client.attach(client.stream);
  client.stream->pause_reading();  // an idle client: reads nothing, never closes
  server->write("421 4.3.2 Service shutting down\r\n");
  auto start = std::chrono::steady_clock::now();
  server->close_promptly();
  EXPECT_TRUE(run_until([&] { return at_server.closed; }, 5000));
  auto waited = std::chrono::steady_clock::now() - start;
  EXPECT_LT(waited, std::chrono::milliseconds(1500));
  client.stream->resume_reading();
  EXPECT_TRUE(run_until([&] { return at_client.closed; }, 5000));
  EXPECT_EQ(at_client.data, "421 4.3.2 Service shutting down\r\n");
}

// close() already waiting for the peer's EOF is cut short by close_promptly().
TEST_F(NetTest, ClosePromptlyCutsShortAWaitingClose) {
  StreamPtr server;
  auto listener = listen([&](StreamPtr stream) { server = std::move(stream); });
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);
  ASSERT_TRUE(run_until([&] { return server != nullptr; }));
  Recorder at_server;
  at_server.attach(server);
  Recorder at_client;
  at_client.attach(client.stream);
  client.stream->pause_reading();
  server->close();
  EXPECT_FALSE(run_until([&] { return at_server.closed; }, 300));  // waits for the peer
  server->close_promptly();
  EXPECT_TRUE(run_until([&] { return at_server.closed; }, 1500));
  client.stream->resume_reading();
  EXPECT_TRUE(run_until([&] { return at_client.closed; }, 5000));
}

TEST(TlsClientHello, RecognisedFromTheFirstBytes) {
  EXPECT_TRUE(looks_like_tls_client_hello(std::string_view("\x16", 1)));
  EXPECT_TRUE(looks_like_tls_client_hello(std::string_view("\x16\x03\x01\x02\x00", 5)));
  EXPECT_FALSE(looks_like_tls_client_hello(std::string_view("\x16\x04", 2)));
  EXPECT_FALSE(looks_like_tls_client_hello("EHLO x\r\n"));
  EXPECT_FALSE(looks_like_tls_client_hello("GET / HTTP/1.1\r\n"));
  EXPECT_FALSE(looks_like_tls_client_hello(""));
}

// ---------------------------------------------------------------- timers

TEST_F(NetTest, TimerFiresOnceAndRepeats) {
  Timer once(&loop_);
  int fired = 0;
  once.start(1, [&] { ++fired; });
  EXPECT_TRUE(once.active());
  EXPECT_TRUE(run_until([&] { return fired == 1; }));
  run_until([] { return false; }, 20);
  EXPECT_EQ(fired, 1);
  EXPECT_FALSE(once.active());

  Timer repeating(&loop_);
  int ticks = 0;
  repeating.start(
      1,
      [&] {
        if (++ticks == 3) repeating.stop();
      },
      1);
  EXPECT_TRUE(run_until([&] { return ticks == 3; }));
  run_until([] { return false; }, 20);
  EXPECT_EQ(ticks, 3);
  EXPECT_FALSE(repeating.active());
}

TEST_F(NetTest, StoppedOrDestroyedTimerNeverCallsBack) {
  bool stopped_fired = false;
  Timer stopped(&loop_);
  stopped.start(1, [&] { stopped_fired = true; });
  stopped.stop();

  bool destroyed_fired = false;
  auto destroyed = std::make_unique<Timer>(&loop_);
  destroyed->start(1, [&] { destroyed_fired = true; });
  destroyed.reset();

  run_until([] { return false; }, 30);
  EXPECT_FALSE(stopped_fired);
  EXPECT_FALSE(destroyed_fired);
}

TEST_F(NetTest, TimerCanRestartOrDestroyItselfFromItsCallback) {
  auto timer = std::make_unique<Timer>(&loop_);
  int fired = 0;
  std::function<void()> again = [&] {
    if (++fired < 3) {
      timer->start(1, again);
    } else {
      timer.reset();
    }
  };
  timer->start(1, again);
  EXPECT_TRUE(run_until([&] { return timer == nullptr; }));
  EXPECT_EQ(fired, 3);
}

// ---------------------------------------------------------------- deadlines

TEST_F(NetTest, DeadlineFiresAtTheLatestTimeItWasMovedTo) {
  uint64_t fired_at = 0;
  int fired = 0;
  Deadline deadline(&loop_, [&] {
    ++fired;
    fired_at = uv_now(&loop_);
  });
  uint64_t start = deadline.now();
  deadline.set(start + 30);
  // Moved later many times (as every read of a trickling client would): no restart needed,
  // and the expiry follows the last move, not the first.
  for (int i = 1; i <= 100; ++i) deadline.set(start + 30 + static_cast<uint64_t>(i));
  EXPECT_TRUE(deadline.armed());
  EXPECT_TRUE(run_until([&] { return fired == 1; }));
  EXPECT_GE(fired_at, start + 130);
  EXPECT_FALSE(deadline.armed());
  run_until([] { return false; }, 20);
  EXPECT_EQ(fired, 1);
}

TEST_F(NetTest, DeadlineMovedEarlierFiresEarlier) {
  bool fired = false;
  Deadline deadline(&loop_, [&] { fired = true; });
  uint64_t start = deadline.now();
  deadline.set(start + 60'000);
  deadline.set(start + 5);
  EXPECT_TRUE(run_until([&] { return fired; }, 2000));
}

TEST_F(NetTest, ClearedOrDestroyedDeadlineNeverCallsBack) {
  bool cleared_fired = false;
  Deadline cleared(&loop_, [&] { cleared_fired = true; });
  cleared.set(cleared.now() + 1);
  cleared.clear();
  EXPECT_FALSE(cleared.armed());

  bool destroyed_fired = false;
  auto destroyed = std::make_unique<Deadline>(&loop_, [&] { destroyed_fired = true; });
  destroyed->set(destroyed->now() + 1);
  destroyed.reset();

  run_until([] { return false; }, 30);
  EXPECT_FALSE(cleared_fired);
  EXPECT_FALSE(destroyed_fired);
}

TEST_F(NetTest, DeadlineCanBeSetAgainFromItsCallback) {
  int fired = 0;
  std::unique_ptr<Deadline> deadline;
  deadline = std::make_unique<Deadline>(&loop_, [&] {
    if (++fired < 3) deadline->set(deadline->now() + 1);
  });
  deadline->set(deadline->now() + 1);
  EXPECT_TRUE(run_until([&] { return fired == 3; }));
  EXPECT_FALSE(deadline->armed());
}

// ---------------------------------------------------------------- connections per client

TEST(HostOf, DropsThePort) {
  EXPECT_EQ(host_of("127.0.0.1:2525"), "127.0.0.1");
  EXPECT_EQ(host_of("[::1]:2525"), "::1");
  EXPECT_EQ(host_of("[::ffff:10.0.0.1]:80"), "::ffff:10.0.0.1");
  EXPECT_EQ(host_of("unknown"), "unknown");
}

TEST(ConnectionsPerClient, CountsOpenConnectionsPerHost) {
  ConnectionsPerClient per_client;
  int a = 0, b = 0, c = 0;
  per_client.add(&a, "127.0.0.1");
  per_client.add(&b, "127.0.0.1");
  per_client.add(&b, "127.0.0.1");  // the same connection twice counts once
  per_client.add(&c, "10.0.0.2");
  EXPECT_EQ(per_client.count("127.0.0.1"), 2u);
  EXPECT_EQ(per_client.count("10.0.0.2"), 1u);
  EXPECT_EQ(per_client.count("10.0.0.3"), 0u);
  per_client.remove(&a);
  per_client.remove(&a);  // already gone: ignored
  EXPECT_EQ(per_client.count("127.0.0.1"), 1u);
  per_client.remove(&b);
  per_client.remove(&c);
  EXPECT_EQ(per_client.count("127.0.0.1"), 0u);
  EXPECT_EQ(per_client.count("10.0.0.2"), 0u);
}

// ---------------------------------------------------------------- TLS

class TlsTest : public NetTest {
 protected:
  static void SetUpTestSuite() {
    dir_ = mailcar::test_support::make_test_certificates({"server", "other"});
    ASSERT_FALSE(dir_.empty()) << "openssl could not make test certificates";
  }
  static void TearDownTestSuite() { mailcar::test_support::remove_test_certificates(dir_); }

  static std::string file(const std::string& name) { return dir_ + "/" + name; }

  std::shared_ptr<TlsServerContext> server_context() {
    auto context = TlsServerContext::load(file("server.crt"), file("server.key"));
    EXPECT_TRUE(context.ok()) << (context.ok() ? "" : context.error().message);
    return context.ok() ? *context : nullptr;
  }

  struct ServerSide {
    NetError result{NetErrorKind::Io, "not run"};
    bool done = false;
  };

  // Implicit-TLS echo server: every accepted stream starts the handshake at once. The state
  // is shared so that a late callback after the test body cannot touch a dead stack frame.
  std::unique_ptr<Listener> tls_echo_server(std::shared_ptr<ServerSide> side) {
    auto context = server_context();
    return listen([context, side](StreamPtr stream) {
      Stream* raw = stream.get();
      stream->on_data([raw](std::string_view bytes) { raw->write(std::string(bytes)); });
      stream->start_tls_server(context, [side](const NetError& error) {
        side->result = error;
        side->done = true;
      });
    });
  }

  struct Handshake {
    NetError error;
    bool done = false;
  };

  // `early` is written right after start_tls_client(), while the handshake runs.
  Handshake handshake(const StreamPtr& stream, const TlsClientOptions& options,
                      const std::string& early = "") {
    Handshake result;
    stream->start_tls_client(options, [&result](const NetError& error) {
      EXPECT_FALSE(result.done) << "done fired twice";
      result.error = error;
      result.done = true;
    });
    EXPECT_FALSE(result.done) << "start_tls_client must not report from inside the call";
    if (!early.empty()) {
      stream->write(early);
      EXPECT_EQ(stream->write_backlog(), early.size());
    }
    EXPECT_TRUE(run_until([&] { return result.done; }));
    return result;
  }

  static inline std::string dir_;
};

TEST_F(TlsTest, ServerContextLoadErrorsNameTheFile) {
  auto missing = TlsServerContext::load(file("missing.crt"), file("server.key"));
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.error().message.find("missing.crt"), std::string::npos);

  auto mismatched = TlsServerContext::load(file("server.crt"), file("other.key"));
  ASSERT_FALSE(mismatched.ok());
  EXPECT_NE(mismatched.error().message.find("other.key"), std::string::npos);

  auto key_as_cert = TlsServerContext::load(file("server.key"), file("server.key"));
  ASSERT_FALSE(key_as_cert.ok());
  EXPECT_EQ(key_as_cert.error().message.find("PRIVATE KEY"), std::string::npos);
}

TEST_F(TlsTest, CheckServerCredentialsParsesBothAndMatchesThePair) {
  EXPECT_TRUE(check_server_credentials(file("server.crt"), file("server.key")).ok());

  auto mismatched = check_server_credentials(file("server.crt"), file("other.key"));
  ASSERT_FALSE(mismatched.ok());
  EXPECT_EQ(mismatched.error().message, "tls_key " + file("other.key") +
                                            ": does not match the certificate in tls_cert " +
                                            file("server.crt"));

  auto key_as_cert = check_server_credentials(file("server.key"), file("server.key"));
  ASSERT_FALSE(key_as_cert.ok());
  EXPECT_TRUE(key_as_cert.error().message.starts_with("tls_cert " + file("server.key") +
                                                      ": cannot load certificate chain"));

  auto cert_as_key = check_server_credentials(file("server.crt"), file("server.crt"));
  ASSERT_FALSE(cert_as_key.ok());
  EXPECT_TRUE(cert_as_key.error().message.starts_with("tls_key " + file("server.crt") +
                                                      ": cannot load private key"));

  auto both_missing = check_server_credentials(file("missing.crt"), file("missing.key"));
  ASSERT_FALSE(both_missing.ok());
  EXPECT_NE(both_missing.error().message.find("missing.crt"), std::string::npos);
  EXPECT_NE(both_missing.error().message.find("\ntls_key " + file("missing.key")),
            std::string::npos);

  auto not_regular = check_server_credentials("/dev/null", file("server.key"));
  ASSERT_FALSE(not_regular.ok());
  EXPECT_EQ(not_regular.error().message, "tls_cert /dev/null: not a regular file");

  EXPECT_TRUE(check_ca_file(file("server.crt")).ok());
  EXPECT_FALSE(check_ca_file(file("server.key")).ok());
}

TEST_F(TlsTest, VerifiedHandshakeAndEchoBothWays) {
  auto side = std::make_shared<ServerSide>();
  auto listener = tls_echo_server(side);
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);

  Recorder received;
  received.attach(client.stream);
  auto result = handshake(client.stream, {true, file("server.crt"), "localhost"},
                          "written during the handshake\n");
  EXPECT_EQ(result.error.kind, NetErrorKind::None) << result.error.detail;
  EXPECT_TRUE(client.stream->tls_active());
  EXPECT_TRUE(run_until([&] { return side->done; }));
  EXPECT_EQ(side->result.kind, NetErrorKind::None) << side->result.detail;

  client.stream->write("ping\n");
  EXPECT_TRUE(run_until([&] { return received.data.size() >= 34; }));
  EXPECT_EQ(received.data, "written during the handshake\nping\n");
  client.stream->close();
  EXPECT_TRUE(run_until([&] { return received.closed; }));
}

TEST_F(TlsTest, OneMebibyteBothWays) {
  auto side = std::make_shared<ServerSide>();
  auto listener = tls_echo_server(side);
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);
  auto result = handshake(client.stream, {true, file("server.crt"), "localhost"});
  ASSERT_EQ(result.error.kind, NetErrorKind::None) << result.error.detail;

  Recorder received;
  received.attach(client.stream);
  const std::string payload = pattern(1024 * 1024, 11);
  client.stream->write(payload);
  EXPECT_TRUE(run_until([&] { return received.data.size() >= payload.size(); }, 20000));
  EXPECT_TRUE(received.data == payload) << received.data.size();
  client.stream->close();
  EXPECT_TRUE(run_until([&] { return received.closed; }));
}

TEST_F(TlsTest, WrongHostNameIsCertificateError) {
  auto side = std::make_shared<ServerSide>();
  auto listener = tls_echo_server(side);
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);
  Recorder at_client;
  at_client.attach(client.stream);
  auto result = handshake(client.stream, {true, file("server.crt"), "wrong.example"});
  EXPECT_EQ(result.error.kind, NetErrorKind::Certificate) << result.error.detail;
  EXPECT_NE(result.error.detail.find("host name mismatch"), std::string::npos)
      << result.error.detail;
  // The stream ends after a failed handshake; on_close reports the same reason.
  EXPECT_TRUE(run_until([&] { return at_client.closed; }));
  EXPECT_EQ(at_client.why.kind, NetErrorKind::Certificate);
  EXPECT_TRUE(run_until([&] { return side->done; }));
  EXPECT_NE(side->result.kind, NetErrorKind::None);
}

TEST_F(TlsTest, UntrustedCaIsCertificateError) {
  auto side = std::make_shared<ServerSide>();
  auto listener = tls_echo_server(side);
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);
  auto result = handshake(client.stream, {true, file("other.crt"), "localhost"});
  EXPECT_EQ(result.error.kind, NetErrorKind::Certificate) << result.error.detail;
  EXPECT_NE(result.error.detail.find("certificate not trusted"), std::string::npos)
      << result.error.detail;
  EXPECT_TRUE(run_until([&] { return side->done; }));
}

TEST_F(TlsTest, MissingCaFileIsTlsError) {
  auto side = std::make_shared<ServerSide>();
  auto listener = tls_echo_server(side);
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);
  auto result = handshake(client.stream, {true, file("nope.crt"), "localhost"});
  EXPECT_EQ(result.error.kind, NetErrorKind::Tls) << result.error.detail;
  EXPECT_NE(result.error.detail.find("nope.crt"), std::string::npos) << result.error.detail;
}

TEST_F(TlsTest, VerifyOffAcceptsAnyCertificate) {
  auto side = std::make_shared<ServerSide>();
  auto listener = tls_echo_server(side);
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);
  auto result = handshake(client.stream, {false, file("other.crt"), "wrong.example"});
  EXPECT_EQ(result.error.kind, NetErrorKind::None) << result.error.detail;
  Recorder received;
  received.attach(client.stream);
  client.stream->write("x\n");
  EXPECT_TRUE(run_until([&] { return received.data == "x\n"; }));
  client.stream->abort();
  EXPECT_TRUE(run_until([&] { return received.closed; }));
}

// Plaintext SMTP-like exchange, STARTTLS, then the session continues encrypted. The client
// sends bytes after STARTTLS in the same segment: they must never reach the server as plaintext.
TEST_F(TlsTest, StartTlsUpgradeDiscardsInjectedPlaintext) {
  auto context = server_context();
  std::vector<std::string> server_lines;
  bool server_tls = false;
  StreamPtr server;
  auto listener = listen([&](StreamPtr stream) {
    server = stream;
    Stream* raw = stream.get();
    stream->on_data([&, raw](std::string_view line) {
      server_lines.emplace_back(line);
      if (line == "STARTTLS\r\n") {
        raw->write("220 go ahead\r\n");
        raw->start_tls_server(
            context, [&](const NetError& error) { server_tls = error.kind == NetErrorKind::None; });
      } else {
        raw->write("250 " + std::string(line));
      }
    });
    stream->write("220 ready\r\n");
  });
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);

  std::vector<std::string> client_lines;
  bool client_tls = false;
  Stream* raw_client = client.stream.get();
  client.stream->on_data([&](std::string_view line) {
    client_lines.emplace_back(line);
    if (line == "220 ready\r\n") {
      raw_client->write("EHLO plain\r\n");
    } else if (line == "250 EHLO plain\r\n") {
      raw_client->write("STARTTLS\r\nRCPT TO:<injected@example.com>\r\n");
    } else if (line == "220 go ahead\r\n") {
      raw_client->start_tls_client({true, file("server.crt"), "localhost"},
                                   [&](const NetError& error) {
                                     client_tls = error.kind == NetErrorKind::None;
                                     EXPECT_EQ(error.kind, NetErrorKind::None) << error.detail;
                                     raw_client->write("EHLO secure\r\n");
                                   });
    }
  });

  ASSERT_TRUE(run_until([&] { return client_lines.size() >= 4; }));
  EXPECT_TRUE(client_tls);
  EXPECT_TRUE(server_tls);
  EXPECT_EQ(server_lines,
            (std::vector<std::string>{"EHLO plain\r\n", "STARTTLS\r\n", "EHLO secure\r\n"}));
  EXPECT_EQ(client_lines, (std::vector<std::string>{"220 ready\r\n", "250 EHLO plain\r\n",
                                                    "220 go ahead\r\n", "250 EHLO secure\r\n"}));
  EXPECT_TRUE(server->tls_active());
  client.stream->close();
  EXPECT_TRUE(run_until([&] { return server->closed(); }));
}

// The client side likewise drops what followed the 220 reply in the same segment.
TEST_F(TlsTest, ClientDiscardsPlaintextAfterUpgradeTrigger) {
  auto context = server_context();
  bool server_tls = false;
  StreamPtr server;
  auto listener = listen([&](StreamPtr stream) {
    server = stream;
    Stream* raw = stream.get();
    stream->on_data([&, raw](std::string_view line) {
      if (line == "STARTTLS\r\n") {
        raw->write("220 go ahead\r\n250 injected\r\n");
        raw->start_tls_server(context, [&](const NetError& error) {
          server_tls = error.kind == NetErrorKind::None;
          raw->write("hello over tls\r\n");
        });
      }
    });
  });
  ASSERT_TRUE(listener);
  auto client = connect("127.0.0.1", listener->port());
  ASSERT_TRUE(client.stream);
  std::vector<std::string> client_lines;
  Stream* raw_client = client.stream.get();
  client.stream->on_data([&](std::string_view line) {
    client_lines.emplace_back(line);
    if (line == "220 go ahead\r\n") {
      raw_client->start_tls_client({true, file("server.crt"), "localhost"}, [](const NetError&) {});
    }
  });
  client.stream->write("STARTTLS\r\n");
  ASSERT_TRUE(run_until([&] { return client_lines.size() >= 2; }));
  EXPECT_TRUE(server_tls);
  EXPECT_EQ(client_lines, (std::vector<std::string>{"220 go ahead\r\n", "hello over tls\r\n"}));
  client.stream->abort();
  server->abort();
}

}  // namespace
}  // namespace mailcar::net
