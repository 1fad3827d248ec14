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
#include "mailcar/idempotency.hpp"
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
  SmtpListener kind = SmtpListener::Plain;
  const char* name = "smtp";  // listener label in logs and metrics
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
    options.tls_available = runtime_->smtp_tls != nullptr;
    options.implicit_tls = server->kind == SmtpListener::ImplicitTls;
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
    if (server_->kind == SmtpListener::ImplicitTls) return begin_implicit_tls();
    greet();
  }

  // listen.smtps (RFC 8314): the TLS handshake comes first, within smtp_command_timeout; the
  // greeting is the first thing said inside it.
  void begin_implicit_tls() {
    handshaking_ = true;
    update_deadline();
    std::weak_ptr<Connection> weak = weak_from_this();
    stream_->start_tls_server(runtime_->smtp_tls, [weak](const net::NetError& error) {
      auto self = weak.lock();
      if (!self || self->closing_) return;
      self->handshaking_ = false;
      if (error.kind != net::NetErrorKind::None) {
        log::info("smtp_tls_failed", {{"remote", self->remote_},
                                      {"listener", self->server_->name},
                                      {"error", error.detail}});
        self->closing_ = true;
        self->deadline_.clear();
        self->stream_->abort();
        return;
      }
      self->greet();
    });
  }

  void greet() {
    std::weak_ptr<Connection> weak = weak_from_this();
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

  // Work in flight that a stopping server waits for (up to shutdown_grace): a message being
  // received or delivered, or a transaction begun with MAIL FROM. Anything else is idle.
  bool busy() const { return session_->busy() || session_->in_transaction() || delivering_; }

  // Server stopping: idle sessions get 421 4.3.2 and close now; `force` closes busy ones too.
  // A connection already closing stops waiting for its client's EOF.
  void stop(bool force) {
    if (closing_) return stream_->close_promptly();
    if (handshaking_) {  // listen.smtps before its greeting: nothing to say in clear
      closing_ = true;
      deadline_.clear();
      return stream_->abort();
    }
    bool handshake = session_->state() == smtp::SessionState::StartTlsPending;  // ends, then stops
    if (!force && (busy() || delaying_ || handshake)) return;
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
    if (!session_->tls_active() && first_read_ && net::looks_like_tls_client_hello(bytes)) {
      return refuse_tls_on_plaintext();
    }
    first_read_ = false;
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
    stop_if_server_stopping();
    // Message data comes in whole chunks (the session finds the end marker and keeps any
    // STARTTLS that follows from taking effect); commands come line by line.
    smtp::SessionState state = session_->state();
    if (!closing_) {
      stream_->set_line_delivery(state != smtp::SessionState::Data &&
                                 state != smtp::SessionState::Chunk);
    }
  }

  // An implicit-TLS client (Laravel MAIL_ENCRYPTION=ssl, Nodemailer secure: true) pointed at
  // the plaintext listener: nothing SMTP can say reaches it, so say it in the log and close.
  void refuse_tls_on_plaintext() {
    log::warn("smtp_tls_on_plaintext",
              {{"remote", remote_},
               {"reason",
                "TLS ClientHello on a plaintext listener; use listen.smtps for "
                "implicit TLS (ssl), or STARTTLS (tls) on listen.smtp"}});
    closing_ = true;
    deadline_.clear();
    stream_->abort();
  }

  // A session that became idle (RSET, a refused transaction) while the server stops ends now.
  // Not in the middle of a STARTTLS handshake: its end checks again.
  void stop_if_server_stopping() {
    if (!server_->stopping || closing_ || delaying_ || busy()) return;
    if (session_->state() == smtp::SessionState::StartTlsPending) return;
    apply(session_->shutdown());
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
    for (const std::string& reason : out.limit_refusals) {
      record_refusal(submitter(), runtime_->config->smtp.service, reason);
    }
    if (out.auth_failed) {
      log::warn("smtp_auth_failed", {{"remote", remote_}, {"user", out.auth_user_tried}});
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
        self->stop_if_server_stopping();
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
        stream_->start_tls_server(runtime_->smtp_tls, [weak](const net::NetError& error) {
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
          self->stop_if_server_stopping();
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
        if (server_->stopping) {
          stream_->close_promptly();  // the stop must not wait for an idle client's EOF
        } else {
          stream_->close();
        }
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
    if (state == smtp::SessionState::Data || state == smtp::SessionState::DataDraining ||
        state == smtp::SessionState::Chunk) {
      if (wait_ != Wait::Data) {
        wait_ = Wait::Data;
        data_deadline_ = now + limits.smtp_command_timeout_ms;
        data_bytes_ = 0;
        data_carry_ = 0;
      }
      return deadline_.set(data_deadline_);
    }
    if (state == smtp::SessionState::StartTlsPending || handshaking_) {
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
    // WITH protocol types: RFC 3848 (ESMTPS, ESMTPA, ESMTPSA), RFC 6531 3.7.3 (UTF8SMTP...).
    std::string_view protocol = "SMTP";
    if (session_->esmtp()) {
      static constexpr std::string_view kEsmtp[2][2][2] = {
          {{"ESMTP", "ESMTPA"}, {"ESMTPS", "ESMTPSA"}},
          {{"UTF8SMTP", "UTF8SMTPA"}, {"UTF8SMTPS", "UTF8SMTPSA"}}};
      protocol =
          kEsmtp[submission.utf8_requested][session_->tls_active()][session_->authenticated()];
    }
    NormalizeInput input;
    const ServiceConfig* service = rt.config->find_service(service_name);
    if (service != nullptr && !service->from_email.empty()) {
      input.default_from = Mailbox{service->from_email, service->from_name};
    }
    input.received_header = make_received_header(session_->helo(), net::host_of(remote_),
                                                 rt.hostname, protocol, trace_id, now_unix);
    input.hostname = rt.hostname;
    input.now_unix = now_unix;
    input.known = submission.known_text;
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
    std::string_view refusal;
    if (!normalized.ok()) {
      refusal = normalized.error().message;
    } else if (const auto& key = normalized.value().idempotency_key;
               key && !valid_idempotency_key(*key)) {
      refusal = "invalid Idempotency-Key header (1 to 255 visible ASCII characters)";
    }
    if (!refusal.empty()) {
      record_invalid_message(submission.submitter, submission.service, trace_id, submitted_size,
                             data.recipients.size(), refusal);
      return finish_delivery({554, "5.6.0", "Message refused: " + std::string(refusal)});
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
    if (!message.idempotency_key) return submit_now(std::move(rt), std::move(submission), now, {});
    deliver_once(std::move(rt), std::move(submission), *message.idempotency_key, now);
  }

  // SPEC §10.3: a message with an Idempotency-Key is accepted once per role within the TTL; a
  // repeat is answered 250 and not sent. The key says nothing about the message's content (a
  // resent message differs in Date or Message-ID), so every message of a key is "the same".
  void deliver_once(std::shared_ptr<Runtime> rt, Submission submission, const std::string& key,
                    uint64_t now) {
    auto held = std::make_shared<Submission>(std::move(submission));
    Submitter who = held->submitter;
    std::weak_ptr<Connection> weak = weak_from_this();
    begin_idempotent(
        *rt, who, held->service, key, crypto::Sha256Digest{}, now,
        [weak, rt, held, now](IdempotencyOutcome out, IdempotencyClaim claim) {
          auto self = weak.lock();
          if (!self) return;  // the client left: the claim is released, nothing is sent
          switch (out.verdict) {
            case IdempotencyVerdict::Fresh:
              return self->submit_now(rt, std::move(*held), now, std::move(claim));
            case IdempotencyVerdict::Replay:
              return self->finish_delivery(
                  {250, "2.0.0", "Already accepted as " + out.response.body});
            case IdempotencyVerdict::InFlight:
              return self->finish_delivery(
                  {451, "4.3.0",
                   "A message with this Idempotency-Key is still being sent; try later"});
            default:
              return self->finish_delivery(
                  {451, "4.3.0", "Idempotency keys cannot be kept now; try again later"});
          }
        });
  }

  // Submits; an accepted message (250) is kept under `claim`, anything else releases it.
  void submit_now(std::shared_ptr<Runtime> rt, Submission submission, uint64_t now,
                  IdempotencyClaim claim) {
    std::weak_ptr<Connection> weak = weak_from_this();
    // A message without an Idempotency-Key holds no claim and allocates none.
    auto held = claim ? std::make_shared<IdempotencyClaim>(std::move(claim)) : nullptr;
    submit(std::move(rt), std::move(submission), now, [weak, held, now](SubmissionResult result) {
      smtp::FinalReply reply = smtp::reply_for_submission(result);
      auto finish = [weak, reply] {
        if (auto self = weak.lock()) self->finish_delivery(reply);
      };
      if (!held) return finish();  // nothing to keep: the reply goes out at once
      std::optional<IdempotentResponse> keep;
      if (reply.code == 250) keep = IdempotentResponse{250, result.id};
      held->complete(std::move(keep), now, std::move(finish));
    });
  }

  void finish_delivery(const smtp::FinalReply& reply) {
    delivering_ = false;
    if (closing_) return;
    touch();
    apply(session_->delivery_finished(reply.code, reply.enhanced, reply.text));
    if (closing_) return;
    if (server_->stopping && !busy()) {
      apply(session_->shutdown());
      return;
    }
    // Reading goes on while stopping too: the client may finish its transaction (RSET, QUIT).
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
  bool handshaking_ = false;  // listen.smtps: before the greeting
  bool first_read_ = true;    // a TLS ClientHello is recognised in the first bytes only
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
  metrics::connection_opened(name);
  log::debug("smtp_connect", {{"remote", stream->peer_address()}});
  connection->begin();
}

void SmtpServer::Impl::closed(Connection* connection) {
  auto it = connections.find(connection);
  if (it == connections.end()) return;
  // The stream's close callback holds its own reference while it runs.
  per_client.remove(connection);
  connections.erase(it);
  metrics::connection_closed(name);
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
    metrics::connection_closed(impl_->name);
  }
  impl_->connections.clear();
}

Result<std::unique_ptr<SmtpServer>> SmtpServer::start(uv_loop_t* loop, const ListenAddress& address,
                                                      RuntimeSource runtime, SmtpListener kind) {
  auto impl = std::make_unique<Impl>();
  impl->loop = loop;
  impl->runtime = std::move(runtime);
  impl->kind = kind;
  impl->name = kind == SmtpListener::ImplicitTls ? "smtps" : "smtp";
  std::shared_ptr<Runtime> rt = impl->runtime ? impl->runtime() : nullptr;
  if (!rt || !rt->config) return make_error("smtp: no runtime configuration");
  if (kind == SmtpListener::ImplicitTls && !rt->smtp_tls) {
    return make_error("listen.smtps needs smtp.tls_cert and smtp.tls_key");
  }
  Impl* raw = impl.get();
  auto listener =
      net::Listener::open(loop, address, [raw](net::StreamPtr stream) { raw->accept(stream); });
  if (!listener.ok()) {
    return make_error(std::string("listen.") + impl->name + " " + listener.error().message);
  }
  impl->listener = std::move(listener.value());
  log::info("smtp_listening", {{"listener", impl->name},
                               {"address", address.text},
                               {"port", impl->listener->port()},
                               {"tls", kind == SmtpListener::ImplicitTls ? "implicit"
                                       : rt->smtp_tls                    ? "starttls"
                                                                         : "none"},
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
