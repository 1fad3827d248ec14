// SmtpRelay: the I/O edge around SmtpClientSession. A FIFO of messages, up to
// `connections` upstream connections; each connection is connect -> [implicit TLS] -> session,
// and takes the next message whenever its session is Ready. Time is kept as deadlines (loop
// milliseconds), each checked when its connection's one timer fires, so a read costs no timer
// work: the connection's current wait (connect + greeting, a reply, TLS handshake, body
// progress, idle) and the delivery deadline of its message. Queued messages have theirs too.
#include <algorithm>
#include <deque>
#include <utility>
#include <vector>

#include "mailcar/clock.hpp"
#include "mailcar/log.hpp"
#include "mailcar/metrics.hpp"
#include "mailcar/net.hpp"
#include "mailcar/oauth2.hpp"
#include "mailcar/relay.hpp"
#include "mailcar/smtp_client.hpp"

namespace mailcar {

namespace {

constexpr uint64_t kDefaultIdleMs = 30'000;
constexpr size_t kBodyChunk = 64 * 1024;
constexpr size_t kMaxWriteBacklog = 256 * 1024;

struct Job {
  OutboundMessage message;
  DeliveryCallback done;
  uint64_t started_ns = 0;
  uint64_t deadline_ms = 0;  // loop time when the caller gets "Connection timed out"; 0: none
  bool retried = false;
};
using JobPtr = std::shared_ptr<Job>;

// A probe (issue 9) riding on a connection of its own.
struct ProbeJob {
  ProbeReport report;
  ProbeCallback done;
  uint64_t started_ns = 0;
  // The session's state before its last reply: where a failure happened.
  std::optional<SmtpClientSession::State> last_state;
};
using ProbePtr = std::shared_ptr<ProbeJob>;

DeliveryResult timed_out() {
  return delivery_failure(DeliveryStatus::ConnectionTimedOut, "Connection timed out", true);
}

}  // namespace

struct SmtpRelay::Impl : std::enable_shared_from_this<SmtpRelay::Impl> {
  enum class Phase { Connecting, Handshake, Idle, Busy, Closing };
  // What a connection waits for; each wait ends at its deadline.
  enum class Wait { None, Tls, Reply, Body, Idle };

  struct Connection : std::enable_shared_from_this<Connection> {
    explicit Connection(uv_loop_t* loop) : timer(loop) {}
    uint64_t id = 0;
    Phase phase = Phase::Connecting;
    net::StreamPtr stream;
    std::unique_ptr<SmtpClientSession> session;
    JobPtr job;
    ProbePtr probe;  // a probe connection: never takes a message
    unsigned messages_done = 0;
    bool dead = false;
    Wait wait = Wait::None;
    uint64_t wait_deadline = 0;   // loop ms
    uint64_t setup_deadline = 0;  // connect + implicit TLS + greeting: connect_timeout
    uint64_t replies_seen = 0;    // session->replies_received() when the reply wait began
    net::Timer timer;             // fires at timer_due (0: stopped), never later than a deadline
    uint64_t timer_due = 0;
    // What the session made of the bytes just read; kept between reads so that its buffers
    // are reused. on_data never fires from inside a call, so one output per connection does.
    SmtpClientOutput read_output;
  };
  using ConnectionPtr = std::shared_ptr<Connection>;
  using WeakConnection = std::weak_ptr<Connection>;

  Impl(uv_loop_t* l, const ServiceConfig& s, std::string host_name, uint64_t delivery_ms)
      : loop(l),
        service(s),
        hostname(std::move(host_name)),
        delivery_timeout_ms(delivery_ms),
        defer_timer(l),
        queue_timer(l) {
    if (hostname.empty()) hostname = "localhost";
    if (service.oauth2) tokens = std::make_unique<oauth2::TokenSource>(l, service);
  }

  uv_loop_t* loop;
  ServiceConfig service;
  std::string hostname;
  uint64_t delivery_timeout_ms;
  uint64_t idle_timeout_ms = kDefaultIdleMs;
  std::deque<JobPtr> queue;
  std::vector<ConnectionPtr> connections;
  uint64_t next_connection_id = 1;
  bool shutting_down = false;
  bool destroyed = false;
  bool pump_scheduled = false;
  std::function<void()> shutdown_done;
  net::Timer defer_timer;
  // Work for the next loop turn, in order. An empty function stands for pump(), so the common
  // deferral allocates nothing; `running` is the batch being run (its capacity is reused).
  std::vector<std::function<void()>> deferred;
  std::vector<std::function<void()>> running;
  net::Timer queue_timer;  // the delivery deadline of the oldest queued message
  uint64_t queue_timer_due = 0;
  std::unique_ptr<oauth2::TokenSource> tokens;  // OAuth2 services (issue 9)

  // ---- deferral: nothing user-visible happens inside deliver()/shutdown() ----

  void defer(std::function<void()> fn) {
    deferred.push_back(std::move(fn));
    // `this` is safe: the timer is a member, so it stops when the Impl goes.
    if (!defer_timer.active()) defer_timer.start(0, [this] { run_deferred(); });
  }

  void run_deferred() {
    auto keep = shared_from_this();  // a callback may drop the last SmtpRelay
    running.clear();
    running.swap(deferred);
    for (auto& fn : running) {
      if (destroyed) break;
      if (fn) {
        fn();
      } else {
        pump_scheduled = false;
        pump();
      }
    }
    running.clear();
  }

  void schedule_pump() {
    // With nothing queued and no stop under way pump() has nothing to do (deliver() and
    // shutdown() change that first, then call this), so a connection turning idle after its
    // message costs no loop turn.
    if (pump_scheduled || (queue.empty() && !shutting_down)) return;
    pump_scheduled = true;
    defer(nullptr);  // pump()
  }

  // ---- entry points ----

  void deliver(OutboundMessage&& message, DeliveryCallback&& done) {
    auto job = std::make_shared<Job>();
    job->message = std::move(message);
    job->done = std::move(done);
    job->started_ns = uv_hrtime();
    if (delivery_timeout_ms > 0) job->deadline_ms = uv_now(loop) + delivery_timeout_ms;
    if (shutting_down || destroyed) {
      defer([job] {
        job->done(delivery_failure(DeliveryStatus::ShuttingDown, "mailcar is shutting down", true));
      });
      return;
    }
    queue.push_back(std::move(job));
    schedule_pump();
  }

  void shutdown(std::function<void()> done) {
    shutting_down = true;
    shutdown_done = std::move(done);
    // A probe under way would only delay the stop: end it now (it reports ShuttingDown).
    for (auto& conn : std::vector<ConnectionPtr>(connections)) {
      if (!conn->probe || conn->dead) continue;
      if (conn->stream) conn->stream->abort();
      fail_connection(
          conn, delivery_failure(DeliveryStatus::ShuttingDown, "mailcar is shutting down", true));
    }
    schedule_pump();
  }

  void destroy() {
    destroyed = true;
    for (auto& conn : connections) {
      conn->dead = true;
      conn->timer.stop();
      if (!conn->stream) continue;
      conn->stream->on_drain(nullptr);
      if (conn->phase == Phase::Idle) {
        conn->stream->write("QUIT\r\n");
        conn->stream->close();
      } else {
        conn->stream->abort();
      }
    }
    connections.clear();
    queue.clear();
    deferred.clear();  // not `running`: run_deferred() may be iterating it (and stops now)
    defer_timer.stop();
    queue_timer.stop();
  }

  // ---- scheduling ----

  bool alive(const ConnectionPtr& conn) const {
    return !conn->dead && conn->phase != Phase::Closing;
  }

  void pump() {
    if (destroyed) return;
    expire_queued();
    if (destroyed) return;
    // assign() may add or remove connections: look for an idle one afresh each time.
    while (!queue.empty()) {
      ConnectionPtr conn = idle_connection();
      if (!conn) break;
      JobPtr job = std::move(queue.front());
      queue.pop_front();
      assign(conn, std::move(job));
      if (destroyed) return;
    }
    size_t starting = 0;
    size_t carriers = 0;  // connections that may carry messages (not probes)
    for (auto& conn : connections) {
      if (conn->probe) continue;
      ++carriers;
      if (!conn->dead && (conn->phase == Phase::Connecting || conn->phase == Phase::Handshake)) {
        ++starting;
      }
    }
    const size_t limit = std::max(1u, service.connections);
    while (queue.size() > starting && carriers++ < limit) {
      open_connection();
      ++starting;
    }
    if (shutting_down && queue.empty()) {
      for (auto& conn : std::vector<ConnectionPtr>(connections)) {
        if (conn->phase == Phase::Idle && !conn->dead) quit(conn);
      }
    }
    schedule_queue_timer();
    check_shutdown_done();
  }

  ConnectionPtr idle_connection() const {
    for (const auto& conn : connections) {
      if (conn->phase == Phase::Idle && !conn->dead) return conn;
    }
    return nullptr;
  }

  void check_shutdown_done() {
    if (!shutting_down || !shutdown_done || !queue.empty() || !connections.empty()) return;
    auto done = std::move(shutdown_done);
    shutdown_done = nullptr;
    defer(std::move(done));
  }

  void assign(const ConnectionPtr& conn, JobPtr job) {
    conn->job = std::move(job);
    conn->phase = Phase::Busy;
    conn->wait = Wait::None;  // whatever comes next starts a wait of its own
    handle_output(conn, conn->session->start_message(conn->job->message));
  }

  // ---- connection life ----

  SmtpClientOptions session_options() const {
    SmtpClientOptions o;
    o.ehlo_name = hostname;
    o.username = service.username;
    o.password = service.password;
    o.encryption = service.encryption;
    if (service.oauth2) {
      o.oauth2 = service.oauth2->mechanism;
      o.oauth2_host = service.host;
      o.oauth2_port = service.port;
    }
    return o;
  }

  net::TlsClientOptions tls_options() const {
    net::TlsClientOptions o;
    o.verify = service.tls_verify;
    o.ca_file = service.ca_file;
    o.server_name = service.host;
    return o;
  }

  // Wraps a callback so it runs only while both the relay and the connection live.
  template <class Fn>
  auto guarded(const ConnectionPtr& conn, Fn fn) {
    return [weak_self = weak_from_this(), weak_conn = WeakConnection(conn), fn](auto&&... args) {
      auto self = weak_self.lock();
      auto c = weak_conn.lock();
      if (!self || !c || self->destroyed || c->dead) return;
      fn(self.get(), c, std::forward<decltype(args)>(args)...);
    };
  }

  ConnectionPtr open_connection(ProbePtr probe = nullptr) {
    auto conn = std::make_shared<Connection>(loop);
    conn->probe = std::move(probe);
    conn->id = next_connection_id++;
    conn->setup_deadline = uv_now(loop) + service.connect_timeout_ms;
    connections.push_back(conn);
    log::debug("upstream_connecting", {{"service", service.name},
                                       {"host", service.host},
                                       {"port", static_cast<uint64_t>(service.port)},
                                       {"connection", conn->id}});
    net::connect_tcp(loop, service.host, service.port, service.connect_timeout_ms,
                     [weak_self = weak_from_this(), weak_conn = WeakConnection(conn)](
                         net::StreamPtr stream, const net::NetError& error) {
                       auto self = weak_self.lock();
                       auto c = weak_conn.lock();
                       if (!self || !c || self->destroyed || c->dead) {
                         if (stream) stream->abort();
                         return;
                       }
                       self->on_connected(c, std::move(stream), error);
                     });
    return conn;
  }

  void on_connected(const ConnectionPtr& conn, net::StreamPtr stream, const net::NetError& error) {
    if (error.kind != net::NetErrorKind::None || !stream) {
      if (stream) stream->abort();
      lose(conn, error.kind == net::NetErrorKind::None
                     ? net::NetError{net::NetErrorKind::Io, "connect failed"}
                     : error);
      return;
    }
    conn->stream = std::move(stream);
    if (conn->probe) conn->probe->report.peer = conn->stream->peer_address();
    conn->stream->on_close(guarded(conn, [](Impl* self, const ConnectionPtr& c,
                                            const net::NetError& why) { self->lose(c, why); }));
    log::debug("upstream_connected", {{"service", service.name},
                                      {"host", service.host},
                                      {"peer", conn->stream->peer_address()},
                                      {"connection", conn->id}});
    if (service.encryption == Encryption::Tls) {
      wait_until(conn, Wait::Tls, conn->setup_deadline);
      conn->stream->start_tls_client(
          tls_options(),
          guarded(conn, [](Impl* self, const ConnectionPtr& c, const net::NetError& e) {
            self->note_tls(c);
            if (e.kind != net::NetErrorKind::None) return self->lose(c, e);
            self->begin_session(c);
          }));
      return;
    }
    begin_session(conn);
  }

  void begin_session(const ConnectionPtr& conn) {
    conn->phase = Phase::Handshake;
    conn->session = std::make_unique<SmtpClientSession>(session_options());
    conn->stream->on_data(
        guarded(conn, [](Impl* self, const ConnectionPtr& c, std::string_view bytes) {
          SmtpClientOutput& out = c->read_output;
          out.write.clear();
          out.events.clear();
          c->session->feed(bytes, out);
          self->handle_output(c, out);
        }));
    rearm(conn);
  }

  void start_tls(const ConnectionPtr& conn) {
    wait_until(conn, Wait::Tls, uv_now(loop) + service.connect_timeout_ms);
    conn->stream->start_tls_client(
        tls_options(),
        guarded(conn, [](Impl* self, const ConnectionPtr& c, const net::NetError& e) {
          self->note_tls(c);
          if (e.kind != net::NetErrorKind::None) return self->lose(c, e);
          log::debug("upstream_tls", {{"service", self->service.name},
                                      {"host", self->service.host},
                                      {"connection", c->id}});
          self->handle_output(c, c->session->tls_established());
        }));
  }

  void quit(const ConnectionPtr& conn) {
    conn->phase = Phase::Closing;
    handle_output(conn, conn->session->quit());
  }

  // ---- deadlines ----

  // Sets the connection's current wait. The timer fires at the earlier of its deadline and
  // the message's; when it fires early (a deadline moved on) it just sets itself again.
  void wait_until(const ConnectionPtr& conn, Wait what, uint64_t deadline) {
    conn->wait = what;
    conn->wait_deadline = deadline;
    schedule_timer(conn);
  }

  void schedule_timer(const ConnectionPtr& conn) {
    if (conn->dead) return;  // close_connection() and destroy() stopped its timer for good
    uint64_t due = conn->wait == Wait::None ? 0 : conn->wait_deadline;
    if (conn->job && conn->job->deadline_ms != 0 && (due == 0 || conn->job->deadline_ms < due)) {
      due = conn->job->deadline_ms;
    }
    if (due == 0) {
      if (conn->timer_due != 0) conn->timer.stop();  // timer_due is 0 whenever it is stopped
      conn->timer_due = 0;
      return;
    }
    if (conn->timer.active() && conn->timer_due <= due) return;
    conn->timer_due = due;
    const uint64_t now = uv_now(loop);
    // Raw pointers keep the callback small (no allocation): the timer is the connection's,
    // so it stops when the connection goes, and no connection outlives destroy().
    conn->timer.start(due > now ? due - now : 0, [this, c = conn.get()] { on_timer_fired(*c); });
  }

  void on_timer_fired(Connection& c) {
    if (destroyed || c.dead) return;
    auto keep = shared_from_this();
    on_timer(c.shared_from_this());
  }

  void on_timer(const ConnectionPtr& conn) {
    conn->timer_due = 0;
    const uint64_t now = uv_now(loop);
    if (conn->job && conn->job->deadline_ms != 0 && now >= conn->job->deadline_ms) {
      on_timeout(conn, "delivery_timeout");
    } else if (conn->wait == Wait::Idle && now >= conn->wait_deadline) {
      conn->wait = Wait::None;
      if (conn->phase == Phase::Idle) quit(conn);
    } else if (conn->wait != Wait::None && now >= conn->wait_deadline) {
      on_timeout(conn, timeout_name(*conn));
    } else {
      schedule_timer(conn);
    }
  }

  // Which configured limit ran out, for the log.
  static const char* timeout_name(const Connection& conn) {
    switch (conn.wait) {
      case Wait::Tls:
        return "tls_handshake";
      case Wait::Body:
        return "body";
      case Wait::Reply:
        if (conn.session && conn.session->state() == SmtpClientSession::State::Greeting) {
          return "connect_timeout";
        }
        return "command_timeout";
      case Wait::None:
      case Wait::Idle:
        break;
    }
    return "idle";
  }

  // The wait that fits the session's state after an event. A reply keeps the deadline its
  // wait began with until it is complete: bytes trickling in buy no time.
  void rearm(const ConnectionPtr& conn) {
    if (conn->dead) return;
    const SmtpClientSession* session = conn->session.get();
    if (session && session->awaiting_reply()) {
      if (conn->wait == Wait::Reply && session->replies_received() == conn->replies_seen) return;
      conn->replies_seen = session->replies_received();
      const bool greeting = session->state() == SmtpClientSession::State::Greeting;
      wait_until(conn, Wait::Reply,
                 greeting ? conn->setup_deadline : uv_now(loop) + service.command_timeout_ms);
    } else if (session && session->state() == SmtpClientSession::State::TlsHandshake) {
      return;  // start_tls() set the handshake's deadline
    } else if (conn->phase == Phase::Idle) {
      if (conn->wait != Wait::Idle) wait_until(conn, Wait::Idle, uv_now(loop) + idle_timeout_ms);
    } else if (!session || !session->body_pending()) {
      wait_until(conn, Wait::None, 0);
    }
  }

  void on_timeout(const ConnectionPtr& conn, std::string_view which) {
    log::warn(
        "upstream_timeout",
        {{"service", service.name},
         {"host", service.host},
         {"connection", conn->id},
         {"timeout", which},
         {"state", conn->session ? smtp_client_state_name(conn->session->state()) : "connecting"}});
    if (conn->stream) conn->stream->abort();  // its state is unknown: never reused
    fail_connection(conn, timed_out());
  }

  // Queued messages whose delivery deadline passed before a connection took them. The
  // queue is oldest first (retries go back to the front), so the front's deadline is the
  // earliest.
  void expire_queued() {
    const uint64_t now = uv_now(loop);
    while (!destroyed && !queue.empty() && queue.front()->deadline_ms != 0 &&
           queue.front()->deadline_ms <= now) {
      JobPtr job = std::move(queue.front());
      queue.pop_front();
      log::warn("upstream_timeout", {{"service", service.name},
                                     {"host", service.host},
                                     {"id", job->message.id},
                                     {"timeout", "delivery_timeout"},
                                     {"state", "queued"}});
      report(std::move(job), timed_out());
    }
  }

  void schedule_queue_timer() {
    const uint64_t due = queue.empty() ? 0 : queue.front()->deadline_ms;
    if (due == 0) {
      if (queue_timer_due != 0) queue_timer.stop();  // queue_timer_due is 0 whenever it is stopped
      queue_timer_due = 0;
      return;
    }
    if (queue_timer.active() && queue_timer_due <= due) return;
    queue_timer_due = due;
    const uint64_t now = uv_now(loop);
    queue_timer.start(due > now ? due - now : 0, [this] {  // a member: stops with the Impl
      if (destroyed) return;
      auto keep = shared_from_this();
      queue_timer_due = 0;
      pump();  // expires what is due, then sets the timer for the next
    });
  }

  // Hands a finished message to its caller.
  void report(JobPtr job, DeliveryResult&& r) {
    r.upstream_seconds = static_cast<double>(uv_hrtime() - job->started_ns) / 1e9;
    metrics::observe_upstream_seconds(r.upstream_seconds);
    if (auto check = delivery_as_check(r, wall_clock_ms())) {
      upstream_health().record(service.name, std::move(*check));  // a delivery is a probe
    }
    auto done = std::move(job->done);
    job.reset();
    done(std::move(r));
  }

  // ---- body streaming with backpressure ----

  void pump_body(const ConnectionPtr& conn) {
    bool progressed = false;
    while (conn->session->body_pending() && conn->stream->write_backlog() < kMaxWriteBacklog) {
      // Room for the chunk, some dot-stuffing and the final "\r\n.\r\n": a small message
      // does not take a 72 KiB buffer.
      const size_t want = std::min(kBodyChunk, conn->session->body_bytes_left());
      std::string chunk;
      chunk.reserve(want + want / 8 + 8);
      conn->session->pull_body(chunk, kBodyChunk);
      conn->stream->write(std::move(chunk));
      progressed = true;
    }
    if (!conn->session->body_pending()) {
      conn->stream->on_drain(nullptr);
      rearm(conn);  // now waiting for the reply to "."
      return;
    }
    // No progress for that long: give up.
    if (progressed) wait_until(conn, Wait::Body, uv_now(loop) + service.command_timeout_ms);
    // The kernel took less than we queued: refill when the queue has drained.
    conn->stream->on_drain(guarded(conn, [](Impl* self, const ConnectionPtr& c) {
      if (c->session->body_pending()) self->pump_body(c);
    }));
  }

  // ---- session output ----

  void handle_output(const ConnectionPtr& conn, SmtpClientOutput&& out) {
    handle_output(conn, out);
  }

  void handle_output(const ConnectionPtr& conn, SmtpClientOutput& out) {
    if (conn->probe && conn->session && !conn->session->terminal()) {
      conn->probe->last_state = conn->session->state();
    }
    if (!out.write.empty() && conn->stream && !conn->stream->closed()) {
      conn->stream->write(std::move(out.write));
    }
    for (auto& event : out.events) {
      switch (event.kind) {
        case SmtpClientEvent::Kind::NeedTlsHandshake:
          start_tls(conn);
          break;
        case SmtpClientEvent::Kind::Ready:
          if (conn->probe) {
            probe_ready(conn);
            break;
          }
          if (conn->phase == Phase::Handshake) {
            log::info("upstream_ready", {{"service", service.name},
                                         {"host", service.host},
                                         {"tls", conn->stream->tls_active()},
                                         {"auth", !service.username.empty()},
                                         {"connection", conn->id}});
            // STARTTLS is behind us, and the session parses whole chunks (several pipelined
            // replies at once): no need for one callback per line any more.
            conn->stream->set_line_delivery(false);
          }
          if (conn->phase != Phase::Closing) conn->phase = Phase::Idle;
          schedule_pump();
          break;
        case SmtpClientEvent::Kind::MessageDone:
          complete(conn, event);
          break;
        case SmtpClientEvent::Kind::Failed:
          session_failed(conn, event.result);
          break;
        case SmtpClientEvent::Kind::Closed:
          break;
        case SmtpClientEvent::Kind::NeedToken:
          request_token(conn);
          break;
      }
      if (destroyed) return;  // a callback dropped the last reference to the relay
    }
    if (conn->dead) return;
    if (conn->session->terminal()) {
      close_connection(conn);
      return;
    }
    if (conn->session->body_pending()) {
      pump_body(conn);
      return;
    }
    rearm(conn);
  }

  // OAuth2: the session waits in AuthToken until the service's token source answers.
  void request_token(const ConnectionPtr& conn) {
    if (!tokens) {
      handle_output(
          conn, conn->session->token_failed(delivery_failure(DeliveryStatus::AuthenticationFailed,
                                                             "Authentication failed", false)));
      return;
    }
    tokens->get(conn->session->last_token(),
                guarded(conn, [](Impl* self, const ConnectionPtr& c, const oauth2::TokenResult& r) {
                  self->handle_output(c, r.ok ? c->session->provide_token(r.token, r.fresh)
                                              : c->session->token_failed(r.failure));
                }));
  }

  void complete(const ConnectionPtr& conn, SmtpClientEvent& event) {
    JobPtr job = std::move(conn->job);
    conn->job = nullptr;
    if (!job) return;
    const bool reused = conn->messages_done > 0;
    ++conn->messages_done;
    DeliveryResult& r = event.result;
    // An idle connection the server had already given up on: the message never left, so it
    // may go once more on a fresh connection.
    const bool stale =
        event.before_data && reused && !job->retried &&
        ((r.status == DeliveryStatus::ProtocolError && r.retryable) || r.smtp_code == 421);
    if (stale && !destroyed) {
      log::info("upstream_stale_connection",
                {{"service", service.name}, {"id", job->message.id}, {"connection", conn->id}});
      job->retried = true;
      queue.push_front(std::move(job));
      schedule_pump();
      return;
    }
    if (log::enabled(LogLevel::Debug)) {  // the fields cost allocations: build them only if shown
      log::debug("upstream_delivery", {{"service", service.name},
                                       {"id", job->message.id},
                                       {"status", delivery_status_name(r.status)},
                                       {"smtp_code", static_cast<int64_t>(r.smtp_code.value_or(0))},
                                       {"accepted", static_cast<uint64_t>(r.accepted.size())},
                                       {"rejected", static_cast<uint64_t>(r.rejected.size())},
                                       {"connection", conn->id}});
    }
    report(std::move(job), std::move(r));
  }

  // The connection failed outside a message: greeting, TLS, AUTH, connect.
  void session_failed(const ConnectionPtr& conn, const DeliveryResult& result) {
    if (conn->probe) return probe_failed(conn, result);
    log::warn("upstream_failed", {{"service", service.name},
                                  {"host", service.host},
                                  {"status", delivery_status_name(result.status)},
                                  {"error", result.message},
                                  {"smtp_code", static_cast<int64_t>(result.smtp_code.value_or(0))},
                                  {"connection", conn->id}});
    // While another connection may still serve the queue, leave it waiting; when none is
    // left, everything queued would meet the same fate: report it now rather than retry
    // the same failure message by message.
    for (auto& other : connections) {
      if (other != conn && !other->probe && alive(other)) return;
    }
    auto failed = std::move(queue);
    queue.clear();
    for (auto& job : failed) {
      if (destroyed) return;
      report(std::move(job), DeliveryResult(result));
    }
  }

  // ---- probes (issue 9) ----

  void probe(ProbeCallback done) {
    auto job = std::make_shared<ProbeJob>();
    job->report.service = service.name;
    job->done = std::move(done);
    job->started_ns = uv_hrtime();
    if (shutting_down || destroyed) {
      job->report.failure =
          delivery_failure(DeliveryStatus::ShuttingDown, "mailcar is shutting down", true);
      defer([job] { job->done(std::move(job->report)); });
      return;
    }
    open_connection(std::move(job));
  }

  void note_tls(const ConnectionPtr& conn) {
    if (!conn->probe || !conn->stream) return;
    if (const net::TlsPeerInfo* info = conn->stream->tls_peer_info())
      conn->probe->report.tls = *info;
  }

  static ProbeStage stage_of(const Connection& conn, const DeliveryResult& failure) {
    if (!conn.session) return conn.stream ? ProbeStage::Tls : ProbeStage::Connect;
    if (failure.status == DeliveryStatus::TlsUnavailable) return ProbeStage::StartTls;
    if (!conn.probe->last_state) return ProbeStage::Greeting;
    using S = SmtpClientSession::State;
    switch (*conn.probe->last_state) {
      case S::Greeting:
        return ProbeStage::Greeting;
      case S::StartTls:
      case S::TlsHandshake:
        return ProbeStage::StartTls;
      case S::AuthPlain:
      case S::AuthLogin:
      case S::AuthLoginUser:
      case S::AuthLoginPassword:
        return ProbeStage::Auth;
      default:
        return ProbeStage::Ehlo;
    }
  }

  void finish_probe(const ConnectionPtr& conn, bool ok, DeliveryResult failure) {
    ProbePtr job = conn->probe;
    if (!job || !job->done) return;
    ProbeReport& report = job->report;
    report.ok = ok;
    report.latency_ms = (uv_hrtime() - job->started_ns) / 1'000'000;
    report.stage = ok ? ProbeStage::Done : stage_of(*conn, failure);
    report.failure = std::move(failure);
    if (conn->session) {
      report.ehlo = conn->session->extensions().keywords;
      report.auth_mechanism = std::string(conn->session->auth_mechanism());
    }
    if (report.failure.status != DeliveryStatus::ShuttingDown) {  // a stop says nothing
      UpstreamCheck check{ok, wall_clock_ms(), report.latency_ms,
                          ok ? "" : probe_error_text(service, report)};
      upstream_health().record(service.name, std::move(check));
    }
    log::write(ok ? LogLevel::Debug : LogLevel::Warn, "upstream_probe",
               {{"service", service.name},
                {"ok", ok},
                {"stage", probe_stage_name(report.stage)},
                {"latency_ms", report.latency_ms},
                {"error", ok ? std::string() : report.failure.message}});
    auto done = std::move(job->done);
    job->done = nullptr;
    done(std::move(report));
  }

  // The session is ready: everything a delivery needs worked. QUIT and report.
  void probe_ready(const ConnectionPtr& conn) {
    finish_probe(conn, true, DeliveryResult{});
    if (!conn->dead && conn->phase != Phase::Closing) quit(conn);
  }

  void probe_failed(const ConnectionPtr& conn, const DeliveryResult& result) {
    finish_probe(conn, false, result);
  }

  // ---- endings ----

  DeliveryResult net_failure(const ConnectionPtr& conn, const net::NetError& why) const {
    const bool answered =
        conn->session && conn->session->state() != SmtpClientSession::State::Greeting;
    switch (why.kind) {
      case net::NetErrorKind::Resolve:
      case net::NetErrorKind::Refused:
        return delivery_failure(DeliveryStatus::ConnectionRefused, "Connection refused", true);
      case net::NetErrorKind::TimedOut:
        return timed_out();
      case net::NetErrorKind::Certificate:
        return delivery_failure(DeliveryStatus::CertificateError, "Certificate error", false);
      case net::NetErrorKind::Tls:
        return delivery_failure(DeliveryStatus::ProtocolError, "TLS failure: " + why.detail, true);
      case net::NetErrorKind::None:
      case net::NetErrorKind::Closed:
      case net::NetErrorKind::Io:
        break;
    }
    if (!answered)
      return delivery_failure(DeliveryStatus::ConnectionRefused, "Connection refused", true);
    return delivery_failure(DeliveryStatus::ProtocolError,
                            "connection to upstream lost: " + why.detail, true);
  }

  // The stream is gone (closed by the peer, network error, TLS failure).
  void lose(const ConnectionPtr& conn, const net::NetError& why) {
    if (conn->dead) return;
    note_tls(conn);
    const bool closed = why.kind == net::NetErrorKind::Closed;
    log::write(closed ? LogLevel::Debug : LogLevel::Warn, "upstream_connection_error",
               {{"service", service.name},
                {"host", service.host},
                {"connection", conn->id},
                {"detail", why.detail}});
    fail_connection(conn, net_failure(conn, why));
  }

  void fail_connection(const ConnectionPtr& conn, DeliveryResult why) {
    if (conn->dead) return;
    if (conn->session) {
      handle_output(conn, conn->session->connection_lost(std::move(why)));
      if (!conn->dead) close_connection(conn);
    } else {
      session_failed(conn, why);
      close_connection(conn);
    }
  }

  void close_connection(const ConnectionPtr& conn) {
    if (conn->dead) return;
    conn->dead = true;
    conn->phase = Phase::Closing;
    conn->timer.stop();
    if (conn->stream) {
      conn->stream->on_drain(nullptr);
      conn->stream->close();  // flushes a QUIT still queued
    }                         // flushes a QUIT still queued
    if (conn->probe && conn->probe->done) {
      probe_failed(conn, delivery_failure(DeliveryStatus::ProtocolError,
                                          "connection to upstream lost", true));
    }
    if (conn->job) {
      // Defensive: a session that ended without reporting its message.
      JobPtr job = std::move(conn->job);
      queue.push_front(std::move(job));
    }
    connections.erase(std::remove(connections.begin(), connections.end(), conn), connections.end());
    if (destroyed) return;
    schedule_pump();
  }
};

SmtpRelay::SmtpRelay(uv_loop_t* loop, const ServiceConfig& service, std::string our_hostname,
                     uint64_t delivery_timeout_ms)
    : impl_(std::make_shared<Impl>(loop, service, std::move(our_hostname), delivery_timeout_ms)) {}

SmtpRelay::~SmtpRelay() {
  impl_->destroy();
}

void SmtpRelay::deliver(OutboundMessage message, DeliveryCallback done) {
  impl_->deliver(std::move(message), std::move(done));
}

void SmtpRelay::shutdown(std::function<void()> done) {
  impl_->shutdown(std::move(done));
}

void SmtpRelay::set_idle_timeout_ms(uint64_t ms) {
  impl_->idle_timeout_ms = ms;
}

void SmtpRelay::probe(ProbeCallback done) {
  impl_->probe(std::move(done));
}

}  // namespace mailcar
