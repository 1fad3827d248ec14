// TokenSource: the I/O half of OAuth2. Token endpoint over http_client; the persisted refresh
// token and token_file through libuv's thread pool, never a blocking call on the loop.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <utility>
#include <vector>

#include "mailcar/log.hpp"
#include "mailcar/net.hpp"
#include "mailcar/oauth2.hpp"
#include "mailcar/text.hpp"

namespace mailcar::oauth2 {
namespace {

constexpr size_t kMaxTokenFileBytes = 64 * 1024;
constexpr uint64_t kDefaultExpiresS = 3600;     // RFC 6749: expires_in is only RECOMMENDED
constexpr uint64_t kTokenFileRecheckMs = 1000;  // stat token_file at most this often

// A blocking job for the thread pool; `work` runs there, `after` on the loop.
struct PoolJob {
  uv_work_t req{};
  std::function<void()> work;
  std::function<void()> after;
};

void run_in_pool(uv_loop_t* loop, std::function<void()> work, std::function<void()> after) {
  auto* job = new PoolJob;
  job->req.data = job;
  job->work = std::move(work);
  job->after = std::move(after);
  uv_queue_work(
      loop, &job->req, [](uv_work_t* req) { static_cast<PoolJob*>(req->data)->work(); },
      [](uv_work_t* req, int) {
        std::unique_ptr<PoolJob> j(static_cast<PoolJob*>(req->data));
        j->after();
      });
}

// Reads at most `limit` bytes; "" with errno_out ENOENT for a missing file.
std::string read_file(const std::string& path, size_t limit, int& errno_out) {
  errno_out = 0;
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    errno_out = errno ? errno : EIO;
    return {};
  }
  std::string data(limit + 1, '\0');
  in.read(data.data(), static_cast<std::streamsize>(data.size()));
  data.resize(static_cast<size_t>(in.gcount()));
  if (data.size() > limit) errno_out = EFBIG;
  return data;
}

// Temp file (0600), fsync, rename: the old token stays readable until the new one is whole.
std::string write_private_file(const std::string& path, const std::string& data) {
  const std::string tmp = path + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return tmp + ": " + std::strerror(errno);
  ::fchmod(fd, 0600);  // an older temp file may have had another mode
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      ::close(fd);
      return tmp + ": " + std::strerror(e);
    }
    off += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) return tmp + ": " + std::strerror(errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return path + ": " + std::strerror(errno);
  return {};
}

std::string trim_token(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

DeliveryResult auth_failure(std::string oauth2_error, bool retryable) {
  DeliveryResult r =
      delivery_failure(DeliveryStatus::AuthenticationFailed, "Authentication failed", retryable);
  r.oauth2_error = std::move(oauth2_error);
  return r;
}

const char* grant_name(OAuth2Grant g) {
  switch (g) {
    case OAuth2Grant::ClientCredentials:
      return "client_credentials";
    case OAuth2Grant::RefreshToken:
      return "refresh_token";
    case OAuth2Grant::TokenFile:
      return "token_file";
  }
  return "unknown";
}

}  // namespace

struct TokenSource::Impl : std::enable_shared_from_this<TokenSource::Impl> {
  Impl(uv_loop_t* l, const ServiceConfig& s)
      : loop(l), service(s), config(*s.oauth2), defer_timer(l), renew_timer(l) {
    refresh_token = config.refresh_token;
  }

  uv_loop_t* loop;
  ServiceConfig service;
  OAuth2Config config;
  net::Timer defer_timer;
  net::Timer renew_timer;
  std::vector<std::function<void()>> deferred;
  bool destroyed = false;

  std::string token;
  uint64_t valid_until = 0;  // loop ms: 80 % of the lifetime
  bool used_since_fetch = false;
  bool busy = false;  // a fetch / read is running
  std::vector<TokenFn> waiters;
  std::unique_ptr<http_client::Cancel> request;
  uint64_t fetch_started = 0;  // loop ms

  std::string refresh_token;  // current (configured or rotated)
  bool state_loaded = false;

  // token_file
  struct FileSig {
    uint64_t ino = 0, size = 0;
    int64_t mtime_ns = 0;
    bool operator==(const FileSig&) const = default;
  };
  FileSig file_sig;
  uint64_t file_checked_at = 0;

  // ---- entry ----

  void get(const std::string& rejected, TokenFn fn) {
    const uint64_t now = uv_now(loop);
    if (!rejected.empty() && rejected == token) {
      token.clear();
      valid_until = 0;
      file_checked_at = 0;
      file_sig = {};  // re-read even when unchanged: the owner asked once more
    }
    used_since_fetch = true;
    const bool cached = !token.empty() && (config.grant == OAuth2Grant::TokenFile
                                               ? now < file_checked_at + kTokenFileRecheckMs
                                               : now < valid_until);
    if (cached && !(busy && token.empty())) {
      TokenResult r{true, token, false, {}};
      defer([fn = std::move(fn), r] { fn(r); });
      return;
    }
    waiters.push_back(std::move(fn));
    if (!busy) start();
  }

  void start() {
    busy = true;
    if (config.grant == OAuth2Grant::TokenFile) return read_token_file();
    if (config.grant == OAuth2Grant::RefreshToken && !state_loaded) return load_state();
    fetch();
  }

  // ---- completion ----

  void complete(const TokenResult& r) {
    busy = false;
    auto batch = std::move(waiters);
    waiters.clear();
    for (auto& fn : batch) {
      if (destroyed) return;
      fn(r);
    }
  }

  void defer(std::function<void()> fn) {
    deferred.push_back(std::move(fn));
    if (defer_timer.active()) return;
    defer_timer.start(0, [weak = weak_from_this()] {
      auto self = weak.lock();
      if (!self) return;
      auto batch = std::move(self->deferred);
      self->deferred.clear();
      for (auto& f : batch) {
        if (self->destroyed) return;
        f();
      }
    });
  }

  // ---- the persisted refresh token ----

  void load_state() {
    auto text = std::make_shared<std::string>();
    auto err = std::make_shared<int>(0);
    run_in_pool(
        loop,
        [path = refresh_state_path(service), text, err] {
          *text = read_file(path, kMaxTokenFileBytes, *err);
        },
        [weak = weak_from_this(), text, err] {
          auto self = weak.lock();
          if (!self || self->destroyed) return;
          self->state_loaded = true;
          if (*err == 0) {
            if (auto saved = decode_refresh_state(*text, self->config.refresh_token)) {
              self->refresh_token = std::move(*saved);
              log::info(
                  "oauth2_refresh_token_loaded",
                  {{"service", self->service.name}, {"file", refresh_state_path(self->service)}});
            }
          }
          self->fetch();
        });
  }

  void save_state() {
    std::string path = refresh_state_path(service);
    std::string data = encode_refresh_state(config.refresh_token, refresh_token);
    auto error = std::make_shared<std::string>();
    run_in_pool(
        loop, [path, data = std::move(data), error] { *error = write_private_file(path, data); },
        [name = service.name, path, error] {
          if (error->empty()) {
            log::info("oauth2_refresh_token_saved", {{"service", name}, {"file", path}});
          } else {
            log::error("oauth2_refresh_token_save_failed", {{"service", name}, {"error", *error}});
          }
        });
  }

  // ---- token_file ----

  void read_token_file() {
    struct Read {
      FileSig sig;
      std::string text;
      int err = 0;
      bool changed = false;
    };
    auto result = std::make_shared<Read>();
    run_in_pool(
        loop,
        [path = config.token_file, known = file_sig, result] {
          struct stat st {};
          if (::stat(path.c_str(), &st) != 0) {
            result->err = errno;
            return;
          }
          result->sig = {
              static_cast<uint64_t>(st.st_ino), static_cast<uint64_t>(st.st_size),
              static_cast<int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
          if (result->sig == known) return;
          result->changed = true;
          result->text = read_file(path, kMaxTokenFileBytes, result->err);
        },
        [weak = weak_from_this(), result] {
          auto self = weak.lock();
          if (!self || self->destroyed) return;
          self->token_file_read(*result);
        });
  }

  template <class Read>
  void token_file_read(const Read& read) {
    file_checked_at = uv_now(loop);
    if (read.err != 0) {
      log::warn("oauth2_token_file_failed", {{"service", service.name},
                                             {"file", config.token_file},
                                             {"error", std::strerror(read.err)}});
      token.clear();
      return complete({false, {}, false, auth_failure("token_file_unreadable", true)});
    }
    if (read.changed) {
      file_sig = read.sig;
      token = trim_token(read.text);
      log::info("oauth2_token_file_read", {{"service", service.name}, {"file", config.token_file}});
    }
    if (token.empty()) {
      return complete({false, {}, false, auth_failure("token_file_empty", true)});
    }
    complete({true, token, read.changed, {}});
  }

  // ---- the token endpoint ----

  void fetch() {
    http_client::Request req;
    req.method = "POST";
    req.url = config.token_url;
    req.headers = {{"Content-Type", "application/x-www-form-urlencoded"},
                   {"Accept", "application/json"}};
    req.body = http_client::form_encode(token_request_fields(config, refresh_token));
    req.ca_file = service.ca_file;
    req.verify = service.tls_verify;
    req.timeout_ms = service.connect_timeout_ms;
    req.max_response_bytes = kMaxTokenResponseBytes;
    used_since_fetch = false;
    busy = true;
    fetch_started = uv_now(loop);
    request =
        http_client::fetch(loop, std::move(req), [weak = weak_from_this()](http_client::Result r) {
          auto self = weak.lock();
          if (!self || self->destroyed) return;
          self->fetched(std::move(r));
        });
  }

  void fetched(http_client::Result r) {
    auto keep = std::move(request);  // destroyed after this call returns
    if (r.error != http_client::ErrorKind::None) {
      log::warn("oauth2_token_failed", {{"service", service.name},
                                        {"error", http_client::error_kind_name(r.error)},
                                        {"detail", r.detail}});
      return fail_waiters(auth_failure(
          std::string("token_endpoint_") + http_client::error_kind_name(r.error), true));
    }
    const int status = r.response.status;
    auto parsed = parse_token_response(r.response.body);
    if (status >= 200 && status < 300 && parsed.ok() && !parsed->access_token.empty()) {
      return accept(std::move(parsed).value());
    }
    std::string error = parsed.ok() && !parsed->error.empty() ? parsed->error
                        : status >= 200 && status < 300       ? "invalid_token_response"
                                                              : "http_" + std::to_string(status);
    log::warn("oauth2_token_failed",
              {{"service", service.name},
               {"http_status", static_cast<int64_t>(status)},
               {"error", error},
               {"description", parsed.ok() ? parsed->error_description : parsed.error().message}});
    const bool retryable = status >= 500 || status == 429 || (status >= 200 && status < 300);
    fail_waiters(auth_failure(std::move(error), retryable));
  }

  void fail_waiters(DeliveryResult failure) {
    // A failed background renewal keeps a token that is still good.
    if (uv_now(loop) >= valid_until) {
      token.clear();
      valid_until = 0;
    }
    complete({false, {}, false, std::move(failure)});
  }

  void accept(TokenResponse t) {
    const uint64_t lifetime_ms = t.expires_in_s.value_or(kDefaultExpiresS) * 1000;
    token = std::move(t.access_token);
    // Counted from the request: the endpoint's clock started before its answer arrived.
    valid_until = fetch_started + lifetime_ms / 5 * 4;
    const bool rotated = !t.refresh_token.empty() && t.refresh_token != refresh_token;
    log::info("oauth2_token", {{"service", service.name},
                               {"grant", grant_name(config.grant)},
                               {"expires_in", t.expires_in_s.value_or(kDefaultExpiresS)},
                               {"refresh_token_rotated", rotated}});
    if (rotated && config.grant == OAuth2Grant::RefreshToken) {
      refresh_token = std::move(t.refresh_token);
      save_state();
    }
    const uint64_t renew_at = fetch_started + lifetime_ms / 4 * 3;
    const uint64_t now = uv_now(loop);
    // At least a second apart: an endpoint with a tiny expires_in is not hammered.
    schedule_renewal(std::max<uint64_t>(renew_at > now ? renew_at - now : 0, 1000));
    complete({true, token, true, {}});
  }

  // Renews in the background at 75 % of the lifetime when the token was used meanwhile, so
  // deliveries rarely wait for the endpoint.
  void schedule_renewal(uint64_t after_ms) {
    renew_timer.start(after_ms, [weak = weak_from_this()] {
      auto self = weak.lock();
      if (!self || self->destroyed || self->busy || !self->used_since_fetch) return;
      self->busy = true;
      self->fetch();
    });
  }
};

TokenSource::TokenSource(uv_loop_t* loop, const ServiceConfig& service)
    : impl_(std::make_shared<Impl>(loop, service)) {}

TokenSource::~TokenSource() {
  impl_->destroyed = true;
  impl_->request.reset();
  impl_->waiters.clear();
  impl_->deferred.clear();
  impl_->defer_timer.stop();
  impl_->renew_timer.stop();
}

void TokenSource::get(const std::string& rejected, TokenFn fn) {
  impl_->get(rejected, std::move(fn));
}

}  // namespace mailcar::oauth2
