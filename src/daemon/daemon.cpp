// The daemon: command line, configuration, runtime snapshots, listeners, signals, reload and
// graceful shutdown. Everything protocol-shaped lives in the layers; this file only wires them.
#include "mailcar/daemon.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <uv.h>

#include "daemon/check_probe.hpp"
#include "daemon/state_file.hpp"
#include "mailcar/clock.hpp"
#include "mailcar/config.hpp"
#include "mailcar/http_server.hpp"
#include "mailcar/idempotency.hpp"
#include "mailcar/log.hpp"
#include "mailcar/net.hpp"
#include "mailcar/policy.hpp"
#include "mailcar/policy_state.hpp"
#include "mailcar/probe.hpp"
#include "mailcar/relay.hpp"
#include "mailcar/runtime.hpp"
#include "mailcar/sendmail.hpp"
#include "mailcar/shared_state.hpp"
#include "mailcar/smtp_server.hpp"
#include "mailcar/spool_queue.hpp"
#include "submission/idempotency_journal_file.hpp"
#include "submission/redis_idempotency.hpp"

#ifndef MAILCAR_VERSION
#define MAILCAR_VERSION "0.1.0"
#endif

namespace mailcar {
namespace {

constexpr const char* kUsage =
    "Usage:\n"
    "  mailcar [-c FILE | --config FILE]   run (default FILE: conf/mailcar.yaml, then\n"
    "                                      /etc/mailcar/mailcar.yaml, then MAIL_* variables)\n"
    "  mailcar --check [-c FILE]           validate the configuration, print problems, exit 0/1\n"
    "  mailcar --health-check [-c FILE]    GET /health on the configured listener, exit 0/1\n"
    "  mailcar [-c FILE] sendmail [-t] [-i] [-f SENDER] [-F NAME] [RCPT...] < MESSAGE\n"
    "                                      submit a message to the SMTP listener (sendmail)\n"
    "  mailcar --check --probe [-c FILE]   also connect to every upstream and say what works\n"
    "  mailcar --version | --help\n"
    "\n"
    "Signals: SIGTERM/SIGINT stop gracefully; SIGHUP reloads the configuration.\n";

struct Options {
  std::string config_path;  // empty: the default search
  bool check = false;
  bool health_check = false;  // --health-check (SPEC §13)
  bool probe = false;         // --check --probe (issue 9)
  bool version = false;
  bool help = false;
  std::string error;
};

Options parse_args(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "-c" || a == "--config") {
      if (i + 1 >= argc) {
        o.error = a + " needs a file name";
        return o;
      }
      o.config_path = argv[++i];
    } else if (a.rfind("--config=", 0) == 0) {
      o.config_path = a.substr(9);
    } else if (a == "--check") {
      o.check = true;
    } else if (a == "--health-check") {
      o.health_check = true;
    } else if (a == "--probe") {
      o.probe = true;
    } else if (a == "--version" || a == "-V") {
      o.version = true;
    } else if (a == "--help" || a == "-h") {
      o.help = true;
    } else {
      o.error = "unknown argument: " + a;
      return o;
    }
  }
  if (o.probe && !o.check) o.error = "--probe goes with --check";
  return o;
}

// Where the configuration comes from: an explicit file, the first default file that exists,
// or the environment (the zero-file container setup).
struct ConfigSource {
  std::string file;  // empty: environment
};

ConfigSource choose_source(const Options& o) {
  if (!o.config_path.empty()) return {o.config_path};
  for (const char* candidate : {"conf/mailcar.yaml", "/etc/mailcar/mailcar.yaml"}) {
    std::error_code ec;
    if (std::filesystem::exists(candidate, ec)) return {candidate};
  }
  return {};
}

// Files the configuration names but only the TLS code opens later: a missing, unparsable or
// mismatched certificate should fail --check and the start, not the first message.
Result<void> check_referenced_files(const Config& cfg) {
  std::string problems;
  auto add = [&](const std::string& prefix, const Result<void>& r) {
    if (r.ok()) return;
    std::string_view lines = r.error().message;
    while (!lines.empty()) {  // "FILE: KEY ..." on every line
      size_t end = std::min(lines.find('\n'), lines.size());
      if (!problems.empty()) problems += '\n';
      problems += cfg.file + ": " + prefix + std::string(lines.substr(0, end));
      lines.remove_prefix(std::min(end + 1, lines.size()));
    }
  };
  for (const ServiceConfig& s : cfg.services) {
    if (!s.ca_file.empty()) add("services." + s.name + ".", net::check_ca_file(s.ca_file));
  }
  if (!cfg.smtp.tls_cert.empty() && !cfg.smtp.tls_key.empty()) {
    add("smtp.", net::check_server_credentials(cfg.smtp.tls_cert, cfg.smtp.tls_key));
  }
  if (!problems.empty()) return make_error(problems);
  return {};
}

// The SMTP ingress certificate of `cfg`, or null when none is configured. Blocking file reads:
// at start, or on the thread pool for a reload (certificate rotation, issue 13).
Result<std::shared_ptr<net::TlsServerContext>> load_smtp_tls(const Config& cfg) {
  if (cfg.smtp.tls_cert.empty() || cfg.smtp.tls_key.empty()) {
    return std::shared_ptr<net::TlsServerContext>();
  }
  auto tls = net::TlsServerContext::load(cfg.smtp.tls_cert, cfg.smtp.tls_key);
  if (!tls.ok()) return make_error(cfg.file + ": smtp." + tls.error().message);
  return tls;
}

Result<Config> load(const ConfigSource& src) {
  Result<Config> cfg = src.file.empty() ? config_from_environment() : load_config_file(src.file);
  if (!cfg.ok()) return cfg;
  if (auto files = check_referenced_files(*cfg); !files.ok()) return files.error();
  return cfg;
}

// Where rate-limit state survives restarts: systemd's StateDirectory= when it is set (the
// configuration folder is often read-only there), else beside the configuration file.
std::string state_path_for(const Config& cfg) {
  namespace fs = std::filesystem;
  if (const char* dirs = std::getenv("STATE_DIRECTORY"); dirs && *dirs) {
    std::string first(dirs, std::strcspn(dirs, ":"));
    return (fs::path(first) / "mailcar.state").string();
  }
  if (cfg.file.empty() || cfg.file[0] == '<') return "mailcar.state";
  fs::path p = fs::absolute(cfg.file).parent_path() / "mailcar.state";
  return p.string();
}

class Daemon {
 public:
  Daemon(ConfigSource source, Config config) : source_(std::move(source)) {
    uv_loop_init(&loop_);
    config_ = std::make_shared<const Config>(std::move(config));
  }
  // Each handle is closed once, by its owner: the owners go first (a start that failed
  // leaves some of them set), then the loop runs the close callbacks. Closing handles behind
  // their owners' backs (uv_walk) and then destroying the owners closed them twice.
  ~Daemon() {
    release_handles();
    uv_run(&loop_, UV_RUN_NOWAIT);
    if (uv_loop_alive(&loop_)) close_orphan_handles();
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
  }

  int run() {
    if (config_->spool) {
      auto spool = SpoolQueue::open(&loop_, *config_, [this] { return runtime_; });
      if (!spool.ok()) {
        log::error("spool_failed",
                   {{"path", config_->spool->path}, {"error", spool.error().message}});
        return 1;
      }
      spool_ = std::move(spool.value());
      // Until the spool is read back, submissions get 503 / 451 (not ready).
      spool_->start([](SpoolStatus status) {
        if (!status.ok()) log::error("spool_recover_failed", {{"error", status.detail}});
      });
    }
    if (config_->shared_state) {  // issue 11: one Redis link for the process
      shared_ = std::make_shared<SharedState>(&loop_, *config_->shared_state);
      shared_->start();
    }
    if (!open_idempotency_store()) return 1;
    auto smtp_tls = load_smtp_tls(*config_);
    if (!smtp_tls.ok()) {
      log::error("tls_failed", {{"error", smtp_tls.error().message}});
      return 1;
    }
    runtime_ = build_runtime(*config_, nullptr, std::move(smtp_tls.value()));
    state_path_ = state_path_for(*config_);
    if (auto saved = read_state_file(state_path_); !saved.ok()) {
      log::warn("state_not_restored", {{"error", saved.error().message}});
    } else if (!saved->empty()) {
      restore_state(*runtime_->policy, *saved);
      log::info("state_restored", {{"path", state_path_}});
    }

    RuntimeSource source = [this] { return runtime_; };
    if (config_->listen_http) {
      auto server = HttpServer::start(&loop_, *config_->listen_http, source);
      if (!server.ok()) {
        log::error("listen_failed", {{"listener", "http"}, {"error", server.error().message}});
        return 1;
      }
      http_ = std::move(server.value());
    }
    if (config_->listen_smtp) {
      auto server = SmtpServer::start(&loop_, *config_->listen_smtp, source);
      if (!server.ok()) {
        log::error("listen_failed", {{"listener", "smtp"}, {"error", server.error().message}});
        return 1;
      }
      smtp_ = std::move(server.value());
    }
    if (config_->listen_smtps) {  // implicit TLS (issue 13)
      auto server =
          SmtpServer::start(&loop_, *config_->listen_smtps, source, SmtpListener::ImplicitTls);
      if (!server.ok()) {
        log::error("listen_failed", {{"listener", "smtps"}, {"error", server.error().message}});
        return 1;
      }
      smtps_ = std::move(server.value());
    }

    signal(SIGPIPE, SIG_IGN);
    watch_signal(sigterm_, SIGTERM);
    watch_signal(sigint_, SIGINT);
    watch_signal(sighup_, SIGHUP);
    state_timer_ = std::make_unique<net::Timer>(&loop_);
    state_timer_->start(
        kStateSaveMs, [this] { save_state(); }, kStateSaveMs);

    log::info("started",
              {{"version", MAILCAR_VERSION},
               {"config", config_->file},
               {"http", config_->listen_http ? config_->listen_http->text : std::string("off")},
               {"smtp", config_->listen_smtp ? config_->listen_smtp->text : std::string("off")},
               {"smtps", config_->listen_smtps ? config_->listen_smtps->text : std::string("off")},
               {"services", static_cast<uint64_t>(config_->services.size())},
               {"state_file", state_path_}});
    uv_run(&loop_, UV_RUN_DEFAULT);
    log::info("stopped", {});
    return 0;
  }

 private:
  static constexpr uint64_t kStateSaveMs = 10'000;
  static constexpr uint64_t kForceExtraMs = 2'000;

  // Idempotency keys (issue 10): in memory, and in spool mode also in the spool's journal,
  // read back here (before anything is served).
  bool open_idempotency_store() {
    const IdempotencyConfig& c = config_->idempotency;
    idempotency_ =
        std::make_shared<MemoryIdempotencyStore>(IdempotencyLimits{c.ttl_ms, c.max_keys});
    if (!config_->spool) return true;
    std::string path =
        (std::filesystem::path(config_->spool->path) / "idempotency.journal").string();
    auto journal = IdempotencyJournalFile::open(&loop_, path, idempotency_, wall_clock_ms());
    if (!journal.ok()) {
      log::error("idempotency_journal_failed",
                 {{"path", path}, {"error", journal.error().message}});
      return false;
    }
    idempotency_journal_ = std::move(journal.value());
    return true;
  }

  std::shared_ptr<Runtime> build_runtime(const Config& cfg, const Runtime* previous,
                                         std::shared_ptr<net::TlsServerContext> smtp_tls) {
    auto rt = std::make_shared<Runtime>();
    rt->smtp_tls = std::move(smtp_tls);
    rt->loop = &loop_;
    rt->config = std::make_shared<const Config>(cfg);
    rt->hostname = cfg.smtp.hostname;
    rt->policy = make_policy(cfg, previous ? previous->policy.get() : nullptr);
    rt->spool = spool_;
    rt->shared_state = shared_;
    // Idempotency keys (issue 10): one store for the process, its limits from each config.
    IdempotencyLimits limits{cfg.idempotency.ttl_ms, cfg.idempotency.max_keys};
    if (!idempotency_) {
      idempotency_ = std::make_shared<MemoryIdempotencyStore>(limits);
    } else {
      idempotency_->set_limits(limits, wall_clock_ms());
    }
    rt->idempotency = idempotency_;
    if (shared_) {  // issue 11: keys in Redis, the memory store as on_error local's fallback
      if (!redis_idempotency_) {
        redis_idempotency_ = std::make_shared<RedisIdempotencyStore>(
            shared_, idempotency_, cfg.idempotency.ttl_ms, idempotency_inflight_ttl_ms(cfg));
      } else {
        redis_idempotency_->set_ttls(cfg.idempotency.ttl_ms, idempotency_inflight_ttl_ms(cfg));
      }
      rt->idempotency = redis_idempotency_;
    }
    for (const ServiceConfig& s : cfg.services) {
      rt->transports.emplace(
          s.name, make_transport(&loop_, s, rt->hostname, cfg.limits.delivery_timeout_ms));
    }
    start_probes(cfg);
    return rt;
  }

  // Upstream probes (issue 9): through the current runtime's relays; a new schedule per
  // configuration.
  void start_probes(const Config& cfg) {
    probes_.reset();
    probes_ = std::make_unique<ProbeScheduler>(
        &loop_, cfg, [this](const std::string& name, ProbeCallback done) {
          auto* relay = runtime_ ? dynamic_cast<SmtpRelay*>(runtime_->transport(name)) : nullptr;
          if (relay != nullptr) return relay->probe(std::move(done));
          ProbeReport none;
          none.service = name;
          done(std::move(none));
        });
  }

  void watch_signal(uv_signal_t& handle, int signum) {
    uv_signal_init(&loop_, &handle);
    handle.data = this;
    uv_signal_start(
        &handle,
        [](uv_signal_t* h, int sig) {
          auto* self = static_cast<Daemon*>(h->data);
          if (sig == SIGHUP) {
            self->reload();
          } else {
            self->shutdown(sig);
          }
        },
        signum);
  }

  // SIGHUP: the file is read and validated on libuv's thread pool (file reads must not block
  // the loop); the new runtime is swapped in on the loop, between events.
  void reload() {
    if (stopping_) return;
    if (source_.file.empty()) {
      log::warn("reload_ignored", {{"reason", "configuration comes from the environment"}});
      return;
    }
    if (reload_job_) {
      reload_again_ = true;  // a signal during a reload: read the file once more afterwards
      return;
    }
    reload_job_ = std::make_unique<ReloadJob>();
    reload_job_->req.data = this;
    reload_job_->source = source_;
    int rc = uv_queue_work(
        &loop_, &reload_job_->req,
        [](uv_work_t* req) {
          auto* self = static_cast<Daemon*>(req->data);
          ReloadJob& job = *self->reload_job_;
          job.result = load(job.source);
          if (!job.result->ok()) return;
          // The certificate is read again too (rotation); a bad one fails the whole reload.
          auto tls = load_smtp_tls(job.result->value());
          if (tls.ok()) {
            job.smtp_tls = std::move(tls.value());
          } else {
            job.result = tls.error();
          }
        },
        [](uv_work_t* req, int status) {
          auto* self = static_cast<Daemon*>(req->data);
          std::unique_ptr<ReloadJob> job = std::move(self->reload_job_);
          if (status == 0 && job->result) {
            self->apply_reload(std::move(*job->result), std::move(job->smtp_tls));
          }
          if (self->reload_again_ && !self->stopping_) {
            self->reload_again_ = false;
            self->reload();
          }
        });
    if (rc != 0) {
      reload_job_.reset();
      log::error("reload_failed", {{"config", source_.file}, {"error", uv_strerror(rc)}});
    }
  }

  void apply_reload(Result<Config> next, std::shared_ptr<net::TlsServerContext> smtp_tls) {
    if (stopping_) return;
    if (!next.ok()) {
      log::error("reload_failed", {{"config", source_.file}, {"error", next.error().message}});
      return;
    }
    const Config& cfg = next.value();
    auto listen_text = [](const std::optional<ListenAddress>& a) {
      return a ? a->text : std::string("off");
    };
    if (listen_text(cfg.listen_http) != listen_text(config_->listen_http) ||
        listen_text(cfg.listen_smtp) != listen_text(config_->listen_smtp) ||
        listen_text(cfg.listen_smtps) != listen_text(config_->listen_smtps)) {
      log::warn("reload_listen_unchanged", {{"reason", "listen addresses change only on restart"}});
    }
    if (static_cast<bool>(cfg.spool) != static_cast<bool>(config_->spool) ||
        (cfg.spool && cfg.spool->path != config_->spool->path)) {
      log::warn("reload_spool_unchanged",
                {{"reason", "spool mode and spool.path change only on restart"}});
    }
    if (shared_state_changed(cfg)) {
      log::warn("reload_shared_state_unchanged",
                {{"reason", "shared_state changes only on restart"}});
    }
    auto old = runtime_;
    if (smtps_ && !smtp_tls) {
      log::error("reload_failed", {{"config", source_.file},
                                   {"error", "listen.smtps needs smtp.tls_cert and smtp.tls_key"}});
      return;
    }
    runtime_ = build_runtime(cfg, old.get(), std::move(smtp_tls));
    config_ = runtime_->config;
    net::forget_ca_files();  // new upstream connections read every ca_file again (rotation)
    log::configure(cfg.log.format, cfg.log.level);
    // In-flight submissions keep the old snapshot alive; its transports drain and close.
    for (auto& [name, transport] : old->transports) {
      transport->shutdown([keep = old] {});
    }
    log::info("reloaded", {{"config", source_.file}});
  }

  // Issue 11: the Redis link is the process's; a reload keeps it.
  bool shared_state_changed(const Config& cfg) const {
    const auto& a = cfg.shared_state;
    const auto& b = config_->shared_state;
    if (static_cast<bool>(a) != static_cast<bool>(b)) return true;
    return a &&
           (a->redis != b->redis || a->password != b->password || a->key_prefix != b->key_prefix ||
            a->on_error != b->on_error || a->timeout_ms != b->timeout_ms);
  }

  void shutdown(int sig) {
    if (stopping_) {
      log::warn("shutdown_in_progress", {{"signal", sig}});
      return;
    }
    stopping_ = true;
    log::info("stopping", {{"signal", sig}, {"grace_ms", config_->limits.shutdown_grace_ms}});
    uv_signal_stop(&sigterm_);
    uv_signal_stop(&sigint_);
    uv_signal_stop(&sighup_);
    state_timer_->stop();
    probes_.reset();
    uint64_t grace = config_->limits.shutdown_grace_ms;
    // Last resort: whatever has not finished a moment after the grace period is abandoned.
    // In direct mode nothing acknowledged is held in memory, so exiting loses no accepted mail.
    force_timer_ = std::make_unique<net::Timer>(&loop_);
    force_timer_->start(grace + kForceExtraMs, [this] {
      log::warn("shutdown_forced", {{"reason", "grace period over"}});
      if (runtime_ && runtime_->policy) {
        (void)write_state_file(state_path_, serialize_state(*runtime_->policy, wall_clock_ms()));
      }
      std::fflush(stdout);
      _exit(0);
    });
    pending_ = 1;  // released below, after every shutdown has been started
    if (http_) {
      ++pending_;
      http_->shutdown(grace, [this] { part_done(); });
    }
    if (smtp_) {
      ++pending_;
      smtp_->shutdown(grace, [this] { part_done(); });
    }
    if (smtps_) {
      ++pending_;
      smtps_->shutdown(grace, [this] { part_done(); });
    }
    part_done();
  }

  void part_done() {
    if (--pending_ > 0) return;
    // Ingresses are closed: nothing new is spooled. The spool finishes what it is sending
    // (with spool.drain, everything it can until the grace ends) and stays consistent.
    if (spool_ && !spool_stopped_) {
      spool_stopped_ = true;
      ++pending_;
      spool_grace_ = std::make_unique<net::Timer>(&loop_);
      spool_grace_->start(config_->limits.shutdown_grace_ms, [this] { spool_->stop_now(); });
      spool_->shutdown(config_->spool && config_->spool->drain, [this] {
        spool_grace_.reset();
        part_done();
      });
      return;
    }
    // Nothing new reaches the transports. Let them finish and QUIT.
    auto rt = runtime_;
    pending_ = 1;
    for (auto& [name, transport] : rt->transports) {
      ++pending_;
      transport->shutdown([this] { transports_done(); });
    }
    transports_done();
  }

  void transports_done() {
    if (--pending_ > 0) return;
    save_state(/*final_save=*/true);
    release_handles();
    uv_stop(&loop_);
  }

  // Last resort at exit: handles whose owners outlived the daemon's references (a stream
  // still flushing, say) are closed here so the loop can end; their owners are never
  // destroyed after this point, so nothing closes them again.
  void close_orphan_handles() {
    uv_walk(
        &loop_,
        [](uv_handle_t* h, void*) {
          if (!uv_is_closing(h)) uv_close(h, nullptr);
        },
        nullptr);
  }

  // Drops every owner of a libuv handle; idempotent, so the shutdown path and the destructor
  // (also reached when a start fails half-way) can both call it.
  void release_handles() {
    http_.reset();
    smtp_.reset();
    smtps_.reset();
    state_timer_.reset();
    force_timer_.reset();
    probes_.reset();
    for (uv_signal_t* handle : {&sigterm_, &sigint_, &sighup_}) {
      auto* h = reinterpret_cast<uv_handle_t*>(handle);
      if (h->loop != nullptr && !uv_is_closing(h)) uv_close(h, nullptr);  // only if started
    }
    runtime_.reset();
    spool_grace_.reset();
    spool_.reset();
    redis_idempotency_.reset();  // holds shared_
    if (shared_) shared_->stop();
    shared_.reset();
  }

  // Periodic saves go to the thread pool; the final one is written directly because the
  // loop is about to end.
  void save_state(bool final_save = false) {
    if (!runtime_ || !runtime_->policy) return;
    std::string state = serialize_state(*runtime_->policy, wall_clock_ms());
    if (state == last_saved_state_) return;
    last_saved_state_ = state;
    if (final_save) {
      if (auto r = write_state_file(state_path_, state); !r.ok()) {
        log::warn("state_save_failed", {{"error", r.error().message}});
      }
    } else {
      write_state_file_async(&loop_, state_path_, std::move(state));
    }
  }

  struct ReloadJob {
    uv_work_t req{};
    ConfigSource source;
    std::optional<Result<Config>> result;
    std::shared_ptr<net::TlsServerContext> smtp_tls;  // loaded beside the configuration
  };

  ConfigSource source_;
  uv_loop_t loop_{};
  std::unique_ptr<ReloadJob> reload_job_;
  bool reload_again_ = false;
  std::shared_ptr<const Config> config_;
  std::shared_ptr<Runtime> runtime_;
  std::unique_ptr<HttpServer> http_;
  std::unique_ptr<SmtpServer> smtp_;
  std::unique_ptr<SmtpServer> smtps_;  // listen.smtps: implicit TLS
  std::unique_ptr<net::Timer> state_timer_;
  std::unique_ptr<net::Timer> force_timer_;
  std::unique_ptr<ProbeScheduler> probes_;  // issue 9
  std::shared_ptr<SpoolQueue> spool_;
  std::shared_ptr<SharedState> shared_;                  // issue 11; null without shared_state
  std::shared_ptr<MemoryIdempotencyStore> idempotency_;  // issue 10
  std::shared_ptr<IdempotencyJournalFile> idempotency_journal_;
  std::shared_ptr<RedisIdempotencyStore> redis_idempotency_;  // issue 11; with shared_ only
  std::unique_ptr<net::Timer> spool_grace_;
  bool spool_stopped_ = false;
  uv_signal_t sigterm_{}, sigint_{}, sighup_{};
  bool stopping_ = false;
  int pending_ = 0;
  std::string state_path_;
  std::string last_saved_state_;
};

}  // namespace

int daemon_main(int argc, char** argv) {
  Options opts = parse_args(argc, argv);
  if (!opts.error.empty()) {
    std::fprintf(stderr, "mailcar: %s\n\n%s", opts.error.c_str(), kUsage);
    return 2;
  }
  if (opts.help) {
    std::fputs(kUsage, stdout);
    return 0;
  }
  if (opts.version) {
    std::printf("mailcar %s\n", MAILCAR_VERSION);
    return 0;
  }
  ConfigSource source = choose_source(opts);
  if (opts.health_check) return health_check_main(source.file);
  Result<Config> cfg = load(source);
  if (!cfg.ok()) {
    std::fprintf(stderr, "%s\n", cfg.error().message.c_str());
    return 1;
  }
  if (opts.check) {
    std::printf("%s: configuration OK (%zu services, %zu roles, %zu credentials)\n",
                cfg->file.c_str(), cfg->services.size(), cfg->roles.size(),
                cfg->credentials.size());
    if (opts.probe) {
      std::fflush(stdout);
      return check_probe(*cfg, stdout);
    }
    return 0;
  }
  log::configure(cfg->log.format, cfg->log.level);
  Daemon daemon(source, std::move(cfg.value()));
  return daemon.run();
}

}  // namespace mailcar
