// I/O glue of the SMTP ingress: listener, per-connection stream + session + timers, and the
// path of a submitted message through normalization, policy and transport.
#include "mailcar/smtp_server.hpp"

#include <algorithm>
#include <chrono>
#include <map>
#include <new>
#include <optional>
#include <string>
#include <utility>

#include "mailcar/address.hpp"
#include "mailcar/clock.hpp"
#include "mailcar/log.hpp"
#include "mailcar/memory_budget.hpp"
#include "mailcar/metrics.hpp"
#include "mailcar/net.hpp"
#include "mailcar/normalize.hpp"
#include "mailcar/routes.hpp"
#include "mailcar/submission.hpp"
#include "mailcar/text.hpp"
#include "smtp_server/delivery_reply.hpp"
#include "smtp_server/smtp_session.hpp"

namespace mailcar {
namespace {

constexpr uint64_t kAuthFailureDelayMs = 1000;  // slows password guessing per connection
constexpr size_t kMaxWriteBacklog = 1 << 20;    // a client that never reads its replies

// SMTP AUTH against `credentials`: every entry is compared, in constant time, so the answer
// time does not tell which user exists.
class ConfigCredentials : public smtp::CredentialStore {
 public:
  explicit ConfigCredentials(std::shared_ptr<const Config> config) : config_(std::move(config)) {}

  std::optional<std::string> authenticate(std::string_view user,
                                          std::string_view password) const override {
    std::optional<std::string> role;
    for (const CredentialConfig& c : config_->credentials) {
      if (c.smtp_username.empty()) continue;
      bool user_ok = text::constant_time_equal(c.smtp_username, user);
      bool password_ok = text::constant_time_equal(c.smtp_password, password);
      if (user_ok && password_ok && !role) role = c.role;
    }
    return role;
  }

  static bool any(const Config& config) {
    for (const CredentialConfig& c : config.credentials) {
      if (!c.smtp_username.empty()) return true;
    }
    return false;
  }

 private:
  std::shared_ptr<const Config> config_;
};

class Connection;

}  // namespace

struct SmtpServer::Impl {
  uv_loop_t* loop = nullptr;
  RuntimeSource runtime;
  std::unique_ptr<net::Listener> listener;
  std::shared_ptr<net::TlsServerContext> tls;
  std::map<Connection*, std::shared_ptr<Connection>> connections;
  net::ConnectionsPerClient per_client;  // limits.max_connections_per_client
  bool stopping = false;
  std::function<void()> shutdown_done;
  std::unique_ptr<net::Timer> grace_timer;

  void accept(net::StreamPtr stream);
  void closed(Connection* connection);
  void maybe_done();
};

namespace {

class Connection : public std::enable_shared_from_this<Connection> {
 public:
  Connection(SmtpServer::Impl* server, net::StreamPtr stream, std::shared_ptr<Runtime> runtime)
      : server_(server),
        stream_(std::move(stream)),
        runtime_(std::move(runtime)),
        remote_(stream_->peer_address()),
        deadline_(server->loop, [this] { on_deadline(); }),
        delay_timer_(server->loop) {
    const Config& config = *runtime_->config;
    if (ConfigCredentials::any(config)) {
      credentials_ = std::make_unique<ConfigCredentials>(runtime_->config);
    }
    smtp::SessionOptions options;
    options.hostname = runtime_->hostname.empty() ? config.smtp.hostname : runtime_->hostname;
    options.max_message_bytes = config.limits.max_message_bytes;
    options.tls_available = server->tls != nullptr;
    options.auth_in_clear = server->listener && server->listener->is_loopback();
    options.dsn = runtime_->spool != nullptr;                    // honoured in spool mode only
    options.shared_windows = runtime_->shared_state != nullptr;  // issue 11
    options.anonymous_role = config.smtp.anonymous_role;
    options.service = config.smtp.service;
    options.route = [this](std::string_view role, std::string_view from) {
      return route_service(*runtime_->config, role, from);  // routing (issue 9)
    };
    options.validate_address = [](std::string_view a) { return validate_address(a).ok(); };
    options.now_ms = wall_clock_ms;
    options.max_junk_commands = config.limits.smtp_junk_command_limit;
    options.reserve_data = [this](uint64_t total) {
      return data_lease_.grow_to(total, runtime_->config->limits.max_inflight_bytes);
    };
    session_ = std::make_unique<smtp::SmtpServerSession>(std::move(options), credentials_.get(),
                                                         runtime_->policy.get());
  }

  void begin() {
    std::weak_ptr<Connection> weak = weak_from_this();
    stream_->on_close([weak](const net::NetError&) {
      if (auto self = weak.lock()) self->closed();
    });
    auto greeting = session_->start();
    stream_->write(std::move(greeting.reply));
    // Reading starts only below, so bytes a client sent early are indistinguishable from bytes
    // sent after the greeting; the session's pre-greeting check covers what it can.
    session_->greeting_sent();
    stream_->on_data([weak](std::string_view bytes) {
      if (auto self = weak.lock()) self->on_data(bytes);
    });
    touch();
  }

  bool busy() const { return session_->busy() || delivering_; }

  // Server stopping: idle sessions close now; `force` closes busy ones too.
  void stop(bool force) {
    if (closing_ || (!force && busy())) return;
    apply(session_->shutdown());
  }

  // The owner is going away: drop the socket without callbacks.
  void abandon() {
    closing_ = true;
    deadline_.clear();
    delay_timer_.stop();
    stream_->on_data(nullptr);
    stream_->on_close(nullptr);
    stream_->abort();
  }

 private:
  void on_data(std::string_view bytes) {
    if (closing_) return;
    refresh_runtime();
    if (wait_ == Wait::Data) earn_data_time(bytes.size());
    if (delaying_) {  // replies must stay in order behind a delayed 535
      held_.append(bytes);
      return;
    }
    try {
      handle(session_->feed(bytes));
    } catch (const std::bad_alloc&) {
      // The session's state is unknown after this: it ends, the process goes on.
      log::error("out_of_memory", {{"where", "smtp_read"}, {"remote", remote_}});
      data_lease_.release();
      stream_->write("421 4.3.0 Temporary local problem, closing connection\r\n");
      closing_ = true;
      deadline_.clear();
      stream_->close();
      return;
    }
    // The DATA buffer's share of the budget ends with it (a delivered message took it along).
    if (!session_->busy() && !delivering_) data_lease_.release();
    // Message data comes in whole chunks (the session finds the end marker and keeps any
    // STARTTLS that follows from taking effect); commands come line by line.
    if (!closing_) stream_->set_line_delivery(session_->state() != smtp::SessionState::Data);
  }

  // After a reload (SIGHUP) the next command of an open connection already uses the new
  // configuration; a message in delivery keeps the snapshot it started with.
  void refresh_runtime() {
    std::shared_ptr<Runtime> current = server_->runtime ? server_->runtime() : nullptr;
    if (!current || current == runtime_ || delivering_) return;
    runtime_ = std::move(current);
    credentials_.reset();
    if (ConfigCredentials::any(*runtime_->config)) {
      credentials_ = std::make_unique<ConfigCredentials>(runtime_->config);
    }
    session_->set_backends(credentials_.get(), runtime_->policy.get());
  }

  void handle(smtp::SessionOutput out) {
    for (const smtp::PolicyRefusal& refusal : out.refusals) {
      record_policy_refusal(submitter(), runtime_->config->smtp.service, refusal.decision,
                            refusal.whole_message);
    }
    if (out.auth_failed) {
      log::warn("smtp_auth_failed", {{"remote", remote_}});
      delaying_ = true;
      stream_->pause_reading();
      std::weak_ptr<Connection> weak = weak_from_this();
      delay_timer_.start(kAuthFailureDelayMs, [weak, out = std::move(out)]() mutable {
        auto self = weak.lock();
        if (!self || self->closing_) return;
        self->delaying_ = false;
        out.auth_failed = false;
        self->apply(std::move(out));
        if (!self->closing_ && !self->delivering_) self->stream_->resume_reading();
        if (!self->held_.empty() && !self->closing_) {
          std::string held = std::move(self->held_);
          self->held_.clear();
          self->handle(self->session_->feed(held));
        }
      });
      return;
    }
    apply(std::move(out));
  }

  void apply(smtp::SessionOutput out) {
    if (closing_) return;
    if (!out.reply.empty()) {
      replied_ = true;
      stream_->write(std::move(out.reply));
    }
    if (stream_->write_backlog() > kMaxWriteBacklog) {
      log::warn("smtp_client_not_reading", {{"remote", remote_}});
      closing_ = true;
      stream_->abort();
      return;
    }
    switch (out.event) {
      case smtp::SessionEvent::None:
        break;
      case smtp::SessionEvent::StartTls: {
        std::weak_ptr<Connection> weak = weak_from_this();
        stream_->start_tls_server(server_->tls, [weak](const net::NetError& error) {
          auto self = weak.lock();
          if (!self || self->closing_) return;
          if (error.kind != net::NetErrorKind::None) {
            log::debug("smtp_tls_failed", {{"remote", self->remote_}, {"error", error.detail}});
            self->closing_ = true;
            self->stream_->abort();
            return;
          }
          self->session_->tls_started();
          self->touch();  // the handshake is the STARTTLS reply: the next command is awaited
        });
        break;
      }
      case smtp::SessionEvent::Deliver:
        refresh_runtime();   // a message uses the runtime current at its end of data
        delivering_ = true;  // the client is waiting for us: no deadline runs
        update_deadline();
        stream_->pause_reading();  // backpressure while the upstream works
        try {
          deliver(std::move(*out.submission));
        } catch (const std::bad_alloc&) {
          log::error("out_of_memory", {{"where", "smtp_submission"}, {"remote", remote_}});
          data_lease_.release();
          finish_delivery({451, "4.3.0", "Temporary local problem, try again later"});
        }
        return;
      case smtp::SessionEvent::Close:
        closing_ = true;
        stream_->close();
        break;
    }
    update_deadline();
  }

  // Time limits (SPEC §5): reads never restart a timer, they only move deadlines.
  //  * Command: the next command line must be complete within smtp_idle_timeout of our last
  //    reply (RFC 5321 4.5.3.2.7), whatever arrives in between;
  //  * Line: once part of a line is here, also within smtp_command_timeout of its first byte;
  //  * Data: at most smtp_command_timeout ahead, plus 1 s earned per smtp_min_data_rate bytes
  //    (up to max_message_bytes), so a trickle runs out and all of DATA is bounded;
  //  * Tls: the STARTTLS handshake within smtp_command_timeout.
  enum class Wait { None, Command, Line, Data, Tls };

  // We answered (or greeted, or finished TLS): the wait for the next command starts now.
  void touch() {
    replied_ = true;
    update_deadline();
  }

  // Which wait the session is in follows from its state; called after every output.
  void update_deadline() {
    if (closing_ || delivering_) {
      wait_ = Wait::None;
      deadline_.clear();
      return;
    }
    const LimitsConfig& limits = runtime_->config->limits;
    uint64_t now = deadline_.now();
    smtp::SessionState state = session_->state();
    if (state == smtp::SessionState::Data || state == smtp::SessionState::DataDraining) {
      if (wait_ != Wait::Data) {
        wait_ = Wait::Data;
        data_deadline_ = now + limits.smtp_command_timeout_ms;
        data_bytes_ = 0;
        data_carry_ = 0;
      }
      return deadline_.set(data_deadline_);
    }
    if (state == smtp::SessionState::StartTlsPending) {
      if (wait_ != Wait::Tls) deadline_.set(now + limits.smtp_command_timeout_ms);
      wait_ = Wait::Tls;
      return;
    }
    if (replied_ || wait_ == Wait::None || wait_ == Wait::Data || wait_ == Wait::Tls) {
      idle_deadline_ = now + limits.smtp_idle_timeout_ms;
      wait_ = Wait::Command;
    }
    replied_ = false;
    if (!session_->line_pending()) {
      wait_ = Wait::Command;
      return deadline_.set(idle_deadline_);
    }
    if (wait_ != Wait::Line) {
      wait_ = Wait::Line;
      line_deadline_ = now + limits.smtp_command_timeout_ms;
    }
    deadline_.set(std::min(idle_deadline_, line_deadline_));
  }

  // `n` bytes of message data arrived: they buy n / smtp_min_data_rate seconds, never more
  // than smtp_command_timeout ahead, and nothing past max_message_bytes.
  void earn_data_time(size_t n) {
    const LimitsConfig& limits = runtime_->config->limits;
    if (data_bytes_ >= limits.max_message_bytes) return;
    data_bytes_ += n;
    data_carry_ += static_cast<uint64_t>(n) * 1000;
    uint64_t rate = std::max<uint64_t>(limits.smtp_min_data_rate, 1);
    uint64_t earned_ms = data_carry_ / rate;
    data_carry_ %= rate;
    data_deadline_ =
        std::min(data_deadline_ + earned_ms, deadline_.now() + limits.smtp_command_timeout_ms);
  }

  void on_deadline() {
    if (closing_ || delivering_) return;
    auto self = shared_from_this();  // the reply may end the connection
    switch (wait_) {
      case Wait::Tls:  // nothing can be said in the middle of a handshake
        log::info("smtp_client_too_slow", {{"remote", remote_}, {"wait", "tls_handshake"}});
        closing_ = true;
        deadline_.clear();
        stream_->abort();
        return;
      case Wait::Data:
        log::info("smtp_client_too_slow", {{"remote", remote_}, {"wait", "data"}});
        return apply(session_->timeout(smtp::Timeout::DataRate));
      case Wait::Line:
        if (deadline_.now() < idle_deadline_) {
          log::info("smtp_client_too_slow", {{"remote", remote_}, {"wait", "command_line"}});
          return apply(session_->timeout(smtp::Timeout::CommandLine));
        }
        break;
      case Wait::None:
      case Wait::Command:
        break;
    }
    log::debug("smtp_idle_timeout", {{"remote", remote_}});
    apply(session_->timeout(smtp::Timeout::Idle));
  }

  // Who this session's client is, for the submission path and its log lines.
  Submitter submitter() const {
    const Config& config = *runtime_->config;
    Submitter s;
    s.ingress = Ingress::Smtp;
    s.role = session_->authenticated() ? session_->role() : config.smtp.anonymous_role.value_or("");
    s.identity =
        session_->authenticated() ? "smtp:" + session_->auth_user() : std::string("anonymous");
    s.remote = remote_;
    return s;
  }

  // The submitted data as a normalized message (RFC 5322 checks, trace header, defaults).
  // Normalized in the DATA buffer itself (taken from `submission`: no copy of the message).
  Result<NormalizedMessage> normalize(const Runtime& rt, const std::string& service_name,
                                      smtp::Submission& submission, const std::string& trace_id,
                                      int64_t now_unix) const {
    std::string protocol = session_->esmtp() ? "ESMTP" : "SMTP";
    if (session_->esmtp() && session_->tls_active()) protocol += "S";
    if (session_->esmtp() && session_->authenticated()) protocol += "A";
    NormalizeInput input;
    const ServiceConfig* service = rt.config->find_service(service_name);
    if (service != nullptr && !service->from_email.empty()) {
      input.default_from = Mailbox{service->from_email, service->from_name};
    }
    input.received_header = make_received_header(session_->helo(), net::host_of(remote_),
                                                 rt.hostname, protocol, trace_id, now_unix);
    input.hostname = rt.hostname;
    input.now_unix = now_unix;
    return normalize_message(input, std::move(submission.data));
  }

  void deliver(smtp::Submission data) {
    std::shared_ptr<Runtime> rt = runtime_;
    uint64_t now = wall_clock_ms();
    std::string trace_id = text::random_token(12);
    Submission submission;
    submission.submitter = submitter();
    submission.service = route_service(*rt->config, submission.submitter.role, data.envelope_from);
    const size_t submitted_size = data.data.size();
    Result<NormalizedMessage> normalized =
        normalize(*rt, submission.service, data, trace_id, static_cast<int64_t>(now / 1000));
    if (!normalized.ok()) {
      record_invalid_message(submission.submitter, submission.service, trace_id, submitted_size,
                             data.recipients.size(), normalized.error().message);
      return finish_delivery({554, "5.6.0", "Message refused: " + normalized.error().message});
    }
    NormalizedMessage& message = normalized.value();
    for (const Mailbox& m : message.from) submission.header_from.push_back(m.address);
    OutboundMessage& outbound = submission.message;
    outbound.id = message.message_id;
    outbound.envelope_from = std::move(data.envelope_from);
    outbound.envelope_rcpts = std::move(data.recipients);
    submission.dsn = std::move(data.dsn);
    outbound.smtputf8 = data.smtputf8;
    outbound.eight_bit = message.eight_bit || data.eight_bit;
    outbound.data = std::move(message.data);
    // The budget's share goes with the message; the next DATA starts a lease of its own.
    outbound.memory = std::exchange(data_lease_, MemoryLease(inflight_budget()));
    outbound.memory.resize(outbound.data.size());
    std::weak_ptr<Connection> weak = weak_from_this();
    submit(std::move(rt), std::move(submission), now, [weak](SubmissionResult result) {
      if (auto self = weak.lock()) self->finish_delivery(smtp::reply_for_submission(result));
    });
  }

  void finish_delivery(const smtp::FinalReply& reply) {
    delivering_ = false;
    if (closing_) return;
    touch();
    apply(session_->delivery_finished(reply.code, reply.enhanced, reply.text));
    if (closing_) return;
    if (server_->stopping && !session_->busy()) {
      apply(session_->shutdown());
      return;
    }
    if (!session_->busy() && !delaying_) stream_->resume_reading();
  }

  void closed() {
    closing_ = true;
    deadline_.clear();
    delay_timer_.stop();
    server_->closed(this);  // may destroy *this: nothing after it
  }

  SmtpServer::Impl* server_;
  net::StreamPtr stream_;
  std::shared_ptr<Runtime> runtime_;  // keeps credentials and policy of the session alive
  std::string remote_;
  std::unique_ptr<ConfigCredentials> credentials_;
  std::unique_ptr<smtp::SmtpServerSession> session_;
  net::Deadline deadline_;
  net::Timer delay_timer_;
  Wait wait_ = Wait::None;
  bool replied_ = false;        // a reply went out since the deadline was last worked out
  uint64_t idle_deadline_ = 0;  // loop-clock ms
  uint64_t line_deadline_ = 0;
  uint64_t data_deadline_ = 0;
  uint64_t data_bytes_ = 0;  // message data bytes that earned time
  uint64_t data_carry_ = 0;  // bytes x 1000 not yet worth a whole millisecond
  std::string held_;
  MemoryLease data_lease_{inflight_budget()};  // the DATA buffer's share of the in-flight budget
  bool delaying_ = false;
  bool delivering_ = false;
  bool closing_ = false;
};

}  // namespace

void SmtpServer::Impl::accept(net::StreamPtr stream) {
  if (stopping) {
    stream->abort();
    return;
  }
  std::shared_ptr<Runtime> rt = runtime ? runtime() : nullptr;
  if (!rt || !rt->config) {
    stream->abort();
    return;
  }
  if (connections.size() >= rt->config->limits.max_connections) {
    log::warn("smtp_connection_refused",
              {{"remote", stream->peer_address()}, {"reason", "max_connections"}});
    stream->write("421 4.7.0 " + rt->hostname + " Too many connections, try again later\r\n");
    stream->close();
    return;
  }
  std::string host = net::host_of(stream->peer_address());
  if (per_client.count(host) >= rt->config->limits.max_connections_per_client) {
    log::warn("smtp_connection_refused",
              {{"remote", stream->peer_address()}, {"reason", "max_connections_per_client"}});
    stream->write("421 4.7.0 " + rt->hostname + " Too many connections from your address\r\n");
    stream->close();
    return;
  }
  auto connection = std::make_shared<Connection>(this, stream, rt);
  connections.emplace(connection.get(), connection);
  per_client.add(connection.get(), host);
  metrics::connection_opened("smtp");
  log::debug("smtp_connect", {{"remote", stream->peer_address()}});
  connection->begin();
}

void SmtpServer::Impl::closed(Connection* connection) {
  auto it = connections.find(connection);
  if (it == connections.end()) return;
  // The stream's close callback holds its own reference while it runs.
  per_client.remove(connection);
  connections.erase(it);
  metrics::connection_closed("smtp");
  maybe_done();
}

void SmtpServer::Impl::maybe_done() {
  if (!stopping || !connections.empty() || !shutdown_done) return;
  grace_timer.reset();
  auto done = std::move(shutdown_done);
  shutdown_done = nullptr;
  done();
}

SmtpServer::SmtpServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

SmtpServer::~SmtpServer() {
  if (impl_->listener) impl_->listener->close();
  for (auto& [ptr, connection] : impl_->connections) {
    connection->abandon();
    metrics::connection_closed("smtp");
  }
  impl_->connections.clear();
}

Result<std::unique_ptr<SmtpServer>> SmtpServer::start(uv_loop_t* loop, const ListenAddress& address,
                                                      RuntimeSource runtime) {
  auto impl = std::make_unique<Impl>();
  impl->loop = loop;
  impl->runtime = std::move(runtime);
  std::shared_ptr<Runtime> rt = impl->runtime ? impl->runtime() : nullptr;
  if (!rt || !rt->config) return make_error("smtp: no runtime configuration");
  const SmtpIngressConfig& smtp = rt->config->smtp;
  if (!smtp.tls_cert.empty() && !smtp.tls_key.empty()) {
    auto tls = net::TlsServerContext::load(smtp.tls_cert, smtp.tls_key);
    if (!tls.ok()) return make_error("smtp." + tls.error().message);  // "smtp.tls_cert FILE: ..."
    impl->tls = std::move(tls.value());
  }
  Impl* raw = impl.get();
  auto listener =
      net::Listener::open(loop, address, [raw](net::StreamPtr stream) { raw->accept(stream); });
  if (!listener.ok()) return make_error("listen.smtp " + listener.error().message);
  impl->listener = std::move(listener.value());
  log::info("smtp_listening", {{"address", address.text},
                               {"port", impl->listener->port()},
                               {"starttls", impl->tls != nullptr},
                               {"auth_in_clear", impl->listener->is_loopback()}});
  return std::unique_ptr<SmtpServer>(new SmtpServer(std::move(impl)));
}

void SmtpServer::stop_accepting() {
  if (impl_->listener) impl_->listener->close();
}

void SmtpServer::shutdown(uint64_t grace_ms, std::function<void()> done) {
  stop_accepting();
  impl_->stopping = true;
  impl_->shutdown_done = std::move(done);
  // Copy: stopping a session may close it and change the map.
  std::vector<std::shared_ptr<Connection>> open;
  for (auto& [ptr, connection] : impl_->connections) open.push_back(connection);
  for (auto& connection : open) connection->stop(false);
  if (!impl_->connections.empty()) {
    impl_->grace_timer = std::make_unique<net::Timer>(impl_->loop);
    Impl* raw = impl_.get();
    impl_->grace_timer->start(grace_ms, [raw] {
      std::vector<std::shared_ptr<Connection>> left;
      for (auto& [ptr, connection] : raw->connections) left.push_back(connection);
      for (auto& connection : left) connection->stop(true);
    });
  }
  impl_->maybe_done();
}

uint16_t SmtpServer::port() const {
  return impl_->listener ? impl_->listener->port() : 0;
}

size_t SmtpServer::connections() const {
  return impl_->connections.size();
}

}  // namespace mailcar
