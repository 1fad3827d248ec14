// Shared state (issue 11): the Redis connection on the loop (hiredis + its libuv adapter).
#include "mailcar/shared_state.hpp"

#include <arpa/inet.h>
#include <hiredis/adapters/libuv.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>

#include <algorithm>
#include <deque>
#include <map>
#include <utility>

#include "mailcar/log.hpp"
#include "mailcar/metrics.hpp"
#include "mailcar/net.hpp"

namespace mailcar {
namespace {

constexpr uint64_t kFirstBackoffMs = 100;
constexpr uint64_t kMaxBackoffMs = 5000;
// While the script for a held message is in flight, the scheduler asks again this soon.
constexpr uint64_t kPaceAskAgainMs = 2;

enum class Link { Stopped, Connecting, Ready, Down };

// One command whose reply (or failure) is still to come; replies arrive in command order.
// The scripts, loaded on every connection (their order is their index in `shas`).
enum ScriptId : size_t { kGcra = 0, kIdemClaim = 1, kIdemComplete = 2, kScripts = 3 };

std::string_view script_source(size_t id) {
  switch (id) {
    case kGcra:
      return shared_script::source();
    case kIdemClaim:
      return shared_idempotency::claim_source();
    default:
      return shared_idempotency::complete_source();
  }
}

// What a script call's caller does with the reply; null when the call failed.
using ReplyFn = std::function<void(const redisReply* reply, const char* error_reason)>;

struct Pending {
  enum class Kind { Auth, Select, Load, Script } kind = Kind::Script;
  uint64_t sent_at_ms = 0;  // loop clock, for the deadline
  uint64_t sent_ns = 0;     // hrtime, for the round-trip histogram
  size_t script = kGcra;
  std::vector<std::string> args;  // Script: to repeat with EVAL after NOSCRIPT
  bool retried = false;
  ReplyFn on_reply;
};

bool is_ip_literal(const std::string& host) {
  unsigned char buf[16];
  return inet_pton(AF_INET, host.c_str(), buf) == 1 || inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

}  // namespace

struct SharedState::Impl {
  struct Resolve {  // owned by libuv until its callback; `owner` cleared if we go first
    uv_getaddrinfo_t req{};
    Impl* owner = nullptr;
  };
  struct Pace {  // spool pacing per quota key
    uint64_t granted = 0;
    bool asking = false;
    bool use_fallback = false;   // the last ask failed: the next one is decided by the fallback
    uint64_t held_until_ms = 0;  // loop clock
  };

  uv_loop_t* loop;
  SharedStateConfig config;
  redisAsyncContext* ctx = nullptr;
  Link link = Link::Stopped;
  std::deque<Pending> pending;
  net::Deadline deadline;
  net::Timer retry_timer;
  uint64_t backoff_ms = kFirstBackoffMs;
  bool outage = false;  // logged once per outage
  bool ever_ready = false;
  std::vector<std::string> shas;  // one per ScriptId once loaded
  const char* drop_reason = "connection";
  Resolve* resolving = nullptr;
  std::map<std::string, Pace, std::less<>> paces;

  Impl(uv_loop_t* l, SharedStateConfig c)
      : loop(l), config(std::move(c)), deadline(l, [this] { timed_out(); }), retry_timer(l) {}

  ~Impl() { stop(); }

  uint64_t now_ms() const { return deadline.now(); }

  // ---- connection ----------------------------------------------------------------------

  void connect() {
    if (!config.unix_path.empty()) return open(redisAsyncConnectUnix(config.unix_path.c_str()));
    if (is_ip_literal(config.host)) {
      return open(redisAsyncConnect(config.host.c_str(), config.port));
    }
    auto* r = new Resolve;
    r->owner = this;
    r->req.data = r;
    addrinfo hints{};
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    int rc = uv_getaddrinfo(loop, &r->req, on_resolved, config.host.c_str(), nullptr, &hints);
    if (rc != 0) {
      delete r;
      return failed(std::string("resolve: ") + uv_strerror(rc));
    }
    resolving = r;
  }

  static void on_resolved(uv_getaddrinfo_t* req, int status, addrinfo* result) noexcept {
    auto* r = static_cast<Resolve*>(req->data);
    Impl* self = r->owner;
    std::string ip;
    if (status == 0 && result != nullptr) {
      char buf[64] = {};
      if (result->ai_family == AF_INET6) {
        uv_ip6_name(reinterpret_cast<const sockaddr_in6*>(result->ai_addr), buf, sizeof buf);
      } else {
        uv_ip4_name(reinterpret_cast<const sockaddr_in*>(result->ai_addr), buf, sizeof buf);
      }
      ip = buf;
    }
    uv_freeaddrinfo(result);
    delete r;
    if (self == nullptr) return;
    self->resolving = nullptr;
    if (ip.empty()) {
      return self->failed(std::string("resolve ") + self->config.host + ": " +
                          (status != 0 ? uv_strerror(status) : "no address"));
    }
    self->open(redisAsyncConnect(ip.c_str(), self->config.port));
  }

  void open(redisAsyncContext* c) {
    if (c == nullptr || c->err != 0) {
      std::string why = c != nullptr ? c->errstr : "out of memory";
      if (c != nullptr) redisAsyncFree(c);
      return failed("connect: " + why);
    }
    bound_reply_arrays(c->c.reader);  // a huge announced array is refused, not allocated
    if (redisLibuvAttach(c, loop) != REDIS_OK) {
      redisAsyncFree(c);
      return failed("connect: cannot attach to the loop");
    }
    c->data = this;
    redisAsyncSetConnectCallback(c, on_connect);
    redisAsyncSetDisconnectCallback(c, on_disconnect);
    ctx = c;
    link = Link::Connecting;
    // Queued now, written once connected; the first command's deadline bounds the connect.
    if (!config.password.empty()) {
      if (config.username.empty()) {
        send(Pending::Kind::Auth, {"AUTH", config.password}, {});
      } else {
        send(Pending::Kind::Auth, {"AUTH", config.username, config.password}, {});
      }
    }
    if (config.db != 0) send(Pending::Kind::Select, {"SELECT", std::to_string(config.db)}, {});
    shas.clear();
    for (size_t id = 0; id < kScripts; ++id) {
      send(Pending::Kind::Load, {"SCRIPT", "LOAD", std::string(script_source(id))}, {});
    }
  }

  static void on_connect(const redisAsyncContext* c, int status) noexcept {
    auto* self = static_cast<Impl*>(c->data);
    if (self == nullptr || status == REDIS_OK || c != self->ctx) return;
    // hiredis frees the context after this callback and fails the queued commands.
    self->ctx = nullptr;
    self->failed(std::string("connect: ") + c->errstr);
  }

  static void on_disconnect(const redisAsyncContext* c, int status) noexcept {
    auto* self = static_cast<Impl*>(c->data);
    if (self == nullptr || c != self->ctx) return;  // dropped by us: handled there
    self->ctx = nullptr;
    self->failed(status == REDIS_OK ? std::string("connection closed")
                                    : std::string("connection lost: ") + c->errstr);
  }

  // The link is gone (or never came): log once per outage, try again later.
  void failed(const std::string& why) {
    if (link == Link::Stopped) return;
    link = Link::Down;
    shas.clear();
    if (!outage) {
      outage = true;
      log::warn("shared_state_unavailable", {{"redis", config.redis}, {"error", why}});
    }
    retry_timer.start(backoff_ms, [this] {
      if (link == Link::Down) connect();
    });
    backoff_ms = std::min(backoff_ms * 2, kMaxBackoffMs);
  }

  // Drops the connection ourselves: every command in flight fails (hiredis calls each back
  // with no reply), then we reconnect.
  void drop(const std::string& why, const char* reason) {
    redisAsyncContext* c = ctx;
    ctx = nullptr;
    if (link != Link::Stopped) link = Link::Down;
    drop_reason = reason;
    if (c != nullptr) redisAsyncFree(c);
    drop_reason = "connection";
    if (link != Link::Stopped) failed(why);
  }

  void timed_out() {
    if (pending.empty()) return;
    if (now_ms() < pending.front().sent_at_ms + config.timeout_ms) return arm_deadline();
    drop("no reply within " + std::to_string(config.timeout_ms) + " ms", "timeout");
  }

  void arm_deadline() {
    if (pending.empty()) return deadline.clear();
    deadline.set(pending.front().sent_at_ms + config.timeout_ms);
  }

  void stop() {
    link = Link::Stopped;
    retry_timer.stop();
    deadline.clear();
    if (resolving != nullptr) {
      resolving->owner = nullptr;
      resolving = nullptr;
    }
    if (ctx != nullptr) {
      redisAsyncContext* c = ctx;
      ctx = nullptr;
      c->data = nullptr;  // no callback reaches us any more, except the replies below
      redisAsyncFree(c);
    }
  }

  // ---- commands ------------------------------------------------------------------------

  bool send(Pending::Kind kind, const std::vector<std::string>& argv, ReplyFn on_reply,
            size_t script = kGcra, std::vector<std::string> args = {}, bool retried = false) {
    std::vector<const char*> ptrs;
    std::vector<size_t> lens;
    ptrs.reserve(argv.size());
    lens.reserve(argv.size());
    for (const std::string& a : argv) {
      ptrs.push_back(a.data());
      lens.push_back(a.size());
    }
    if (ctx == nullptr ||
        redisAsyncCommandArgv(ctx, on_reply_cb, this, static_cast<int>(argv.size()), ptrs.data(),
                              lens.data()) != REDIS_OK) {
      return false;
    }
    Pending p;
    p.kind = kind;
    p.sent_at_ms = now_ms();
    p.sent_ns = uv_hrtime();
    p.script = script;
    p.args = std::move(args);
    p.retried = retried;
    p.on_reply = std::move(on_reply);
    pending.push_back(std::move(p));
    if (pending.size() == 1) arm_deadline();
    return true;
  }

  static void on_reply_cb(redisAsyncContext* /*c*/, void* r, void* privdata) noexcept {
    auto* self = static_cast<Impl*>(privdata);
    if (self->pending.empty()) return;
    Pending p = std::move(self->pending.front());
    self->pending.pop_front();
    self->arm_deadline();
    self->handle(p, static_cast<const redisReply*>(r));
  }

  void handle(Pending& p, const redisReply* reply) {
    if (p.kind == Pending::Kind::Script) return script_reply(p, reply);
    if (reply == nullptr) return;  // the connection went: failed() reports it
    if (reply->type == REDIS_REPLY_ERROR) {
      std::string what = p.kind == Pending::Kind::Auth     ? "AUTH"
                         : p.kind == Pending::Kind::Select ? "SELECT"
                                                           : "SCRIPT LOAD";
      // The server's words; AUTH never echoes the password.
      return drop(what + " refused: " + std::string(reply->str, reply->len), "reply");
    }
    if (p.kind != Pending::Kind::Load) return;
    if (reply->type != REDIS_REPLY_STRING) return drop("SCRIPT LOAD: unexpected reply", "reply");
    shas.emplace_back(reply->str, reply->len);
    if (shas.size() < kScripts) return;
    link = Link::Ready;
    backoff_ms = kFirstBackoffMs;
    if (outage || !ever_ready) {
      log::info(outage ? "shared_state_recovered" : "shared_state_ready",
                {{"redis", config.redis}});
    }
    outage = false;
    ever_ready = true;
  }

  void script_reply(Pending& p, const redisReply* reply) {
    if (reply == nullptr) {
      metrics::count_shared_state_error(drop_reason);
      return p.on_reply(nullptr, drop_reason);
    }
    metrics::observe_shared_state_seconds(static_cast<double>(uv_hrtime() - p.sent_ns) / 1e9);
    if (shared_script::is_noscript(*reply) && !p.retried) {
      // Redis restarted or failed over: EVAL carries the script and caches it again.
      std::vector<std::string> argv{"EVAL", std::string(script_source(p.script))};
      argv.insert(argv.end(), p.args.begin(), p.args.end());
      if (send(Pending::Kind::Script, argv, p.on_reply, p.script, p.args, true)) return;
      metrics::count_shared_state_error("connection");
      return p.on_reply(nullptr, "connection");
    }
    p.on_reply(reply, nullptr);
  }

  // Sends one script call: EVALSHA with the loaded sha. `on_reply` runs exactly once; with a
  // null reply (counted as an error) when the store is not usable or the call failed.
  void call(size_t script, std::vector<std::string> args, ReplyFn on_reply) {
    if (link != Link::Ready) {
      metrics::count_shared_state_error("unavailable");
      return on_reply(nullptr, "unavailable");
    }
    std::vector<std::string> argv{"EVALSHA", shas[script]};
    argv.insert(argv.end(), args.begin(), args.end());
    if (!send(Pending::Kind::Script, argv, on_reply, script, std::move(args))) {
      metrics::count_shared_state_error("connection");
      on_reply(nullptr, "connection");
    }
  }

  void judge(const std::vector<PolicyWindow>& windows, uint64_t cost, bool clamp, Done done) {
    const size_t count = windows.size();
    call(kGcra, shared_script::arguments(config.key_prefix, windows, cost, clamp),
         [count, done = std::move(done)](const redisReply* reply, const char* reason) {
           Outcome out;
           if (reply == nullptr) {
             out.error = std::string("shared state ") + reason;
             return done(std::move(out));
           }
           Result<shared_script::Answer> answer = shared_script::parse_reply(*reply, count);
           if (!answer.ok()) {
             metrics::count_shared_state_error("reply");
             log::warn("shared_state_bad_reply", {{"error", answer.error().message}});
             out.error = answer.error().message;
             return done(std::move(out));
           }
           out.ok = true;
           out.answer = std::move(answer).value();
           done(std::move(out));
         });
  }

  // Idempotency keys: the same call path, their own scripts and replies.
  template <class T, class Parse>
  void call_parsed(size_t script, std::vector<std::string> args, Parse parse,
                   std::function<void(Result<T>)> done) {
    call(script, std::move(args),
         [parse, done = std::move(done)](const redisReply* reply, const char* reason) {
           if (reply == nullptr) return done(Error{std::string("shared state ") + reason});
           Result<T> r = parse(*reply);
           if (!r.ok()) metrics::count_shared_state_error("reply");
           done(std::move(r));
         });
  }

  QuotaVerdict pace(const PolicyWindow& quota, uint64_t recipients,
                    const std::function<QuotaVerdict()>& fallback) {
    const uint64_t cost = std::min(recipients, quota.count);
    std::string key = shared_script::window_key(config.key_prefix, quota);
    Pace& p = paces[key];
    if (p.granted >= cost && cost > 0) {
      p.granted -= cost;
      return {};
    }
    if (p.use_fallback) {
      p.use_fallback = false;
      return fallback();
    }
    const uint64_t now = now_ms();
    if (p.asking) return {false, kPaceAskAgainMs};
    if (now < p.held_until_ms) return {false, p.held_until_ms - now};
    p.asking = true;
    judge({quota}, recipients, true, [this, key, cost](Outcome out) {
      Pace& q = paces[key];
      q.asking = false;
      if (!out.ok) {
        q.use_fallback = true;
      } else if (out.answer.allowed) {
        q.granted += cost;
      } else {
        const RateLimiter::Judgement& j = out.answer.judgements.front();
        q.held_until_ms = now_ms() + std::max<uint64_t>(1, j.retry_after_ms);
      }
    });
    // Answered synchronously (Redis unusable): decide now.
    if (p.use_fallback) {
      p.use_fallback = false;
      return fallback();
    }
    if (p.granted >= cost && cost > 0) {
      p.granted -= cost;
      return {};
    }
    return {false, kPaceAskAgainMs};
  }
};

void SharedState::idempotency_claim(std::string_view scope, std::string_view request_hash_hex,
                                    std::string_view token, uint64_t inflight_ttl_ms,
                                    ClaimDone done) {
  impl_->call_parsed<shared_idempotency::ClaimAnswer>(
      kIdemClaim,
      shared_idempotency::claim_arguments(impl_->config.key_prefix, scope, request_hash_hex, token,
                                          inflight_ttl_ms),
      shared_idempotency::parse_claim_reply, std::move(done));
}

void SharedState::idempotency_complete(std::string_view scope, std::string_view token,
                                       const std::optional<shared_idempotency::Kept>& keep,
                                       uint64_t ttl_ms, CompleteDone done) {
  impl_->call_parsed<bool>(
      kIdemComplete,
      shared_idempotency::complete_arguments(impl_->config.key_prefix, scope, token, keep, ttl_ms),
      shared_idempotency::parse_complete_reply, std::move(done));
}

SharedState::SharedState(uv_loop_t* loop, SharedStateConfig config)
    : impl_(std::make_unique<Impl>(loop, std::move(config))) {}

SharedState::~SharedState() = default;

void SharedState::start() {
  if (impl_->link != Link::Stopped) return;
  impl_->link = Link::Connecting;
  impl_->connect();
}

void SharedState::stop() {
  impl_->stop();
}

void SharedState::judge(const std::vector<PolicyWindow>& windows, uint64_t cost, bool clamp,
                        Done done) {
  impl_->judge(windows, cost, clamp, std::move(done));
}

QuotaVerdict SharedState::pace(const PolicyWindow& quota, uint64_t recipients,
                               const std::function<QuotaVerdict()>& fallback) {
  return impl_->pace(quota, recipients, fallback);
}

bool SharedState::ready() const {
  return impl_->link == Link::Ready;
}

const SharedStateConfig& SharedState::config() const {
  return impl_->config;
}

}  // namespace mailcar
