// The typed configuration (SPEC §3). Loaded and validated by src/config/; everything else
// only reads it. A Config is immutable once loaded; a reload builds a new one.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mailcar/result.hpp"

namespace mailcar {

namespace crypto {
class RsaKey;
}

// "N/second|minute|hour|day" (also s|m|h|d).
struct Rate {
  uint64_t count = 0;
  uint64_t period_ms = 0;
  std::string text;  // as written, for messages and headers
  bool operator==(const Rate&) const = default;
};

enum class Encryption { None, StartTls, Tls };  // none | tls (STARTTLS) | ssl (implicit TLS)
enum class ServiceDriver { Smtp, File };

// OAuth2 for upstream AUTH (issue 9, SPEC §9.1): where the access token comes from.
enum class OAuth2Grant { ClientCredentials, RefreshToken, TokenFile };
enum class OAuth2Mechanism { XOAuth2, OAuthBearer };

struct OAuth2Config {
  OAuth2Grant grant = OAuth2Grant::ClientCredentials;
  std::string token_url;  // https:// (client_credentials, refresh_token)
  std::string client_id;
  std::string client_secret;  // or client_secret_file
  std::string scope;          // optional
  std::string refresh_token;  // or refresh_token_file (grant refresh_token)
  std::string token_file;     // grant token_file: absolute path, re-read when it changes
  OAuth2Mechanism mechanism = OAuth2Mechanism::XOAuth2;
  // Where a rotated refresh token is kept: $STATE_DIRECTORY, else spool.path, else the
  // configuration file's folder (filled in by the loader).
  std::string state_dir;
};

struct ServiceConfig {
  std::string name;
  ServiceDriver driver = ServiceDriver::Smtp;
  // driver: smtp
  std::string host;
  uint16_t port = 587;  // default by encryption: none 25, tls 587, ssl 465
  Encryption encryption = Encryption::StartTls;
  std::string username;
  std::string password;
  bool tls_verify = true;
  std::string ca_file;  // empty: the system bundle /etc/ssl/certs/ca-certificates.crt
  unsigned connections = 2;
  uint64_t connect_timeout_ms = 30'000;
  uint64_t command_timeout_ms = 60'000;
  // OAuth2 (issue 9): AUTH XOAUTH2/OAUTHBEARER with a token instead of the password.
  std::optional<OAuth2Config> oauth2;
  // driver: file
  std::string path;  // absolute after loading
  // both
  std::string from_name;
  std::string from_email;
  std::string reply_to_name;
  std::string reply_to_email;
  std::optional<Rate> rate_limit;
  // Capture and mirror (issue 10, SPEC §10.4): added to the envelope of every relayed message.
  std::vector<std::string> mirror_to;
  // Failover and probes (issue 9, SPEC §9.2/§9.3). `fallback`: services tried in order, at
  // once, when this one cannot take a message (connection, TLS, AUTH, 4xx); no cycles.
  // `probe_interval_ms` (driver smtp): how often the upstream is probed; 0: never in the
  // background (deliveries and --check --probe still report).
  std::vector<std::string> fallback;
  uint64_t probe_interval_ms = 60'000;
};

struct RoleConfig {
  std::string name;
  std::optional<std::vector<std::string>> services;  // nullopt: all services
  std::optional<std::vector<std::string>> senders;   // nullopt: only the services' from_email
  std::vector<Rate> rate_limits;
  std::optional<unsigned> max_recipients;
  // Queue API (issue 8, SPEC §7.1), YAML `queue: all`: sees, retries and deletes every
  // spooled message; otherwise a role sees only the messages it submitted and may not change
  // them.
  bool queue_all = false;
  // Capture and mirror (issue 10, SPEC §10.4): `capture: SERVICE` (a driver: file service)
  // writes the role's messages there instead of relaying them; `mirror_to` adds envelope
  // recipients to every message it relays.
  std::optional<std::string> capture;
  std::vector<std::string> mirror_to;
};

struct CredentialConfig {
  std::string api_key;        // HTTP; empty when this is an SMTP credential
  std::string smtp_username;  // SMTP AUTH; empty when this is an API key
  std::string smtp_password;
  std::string role;
};

struct SmtpIngressConfig {
  std::string service;                        // required when listen.smtp is set
  std::optional<std::string> anonymous_role;  // nullopt: AUTH required
  std::string hostname;                       // default: the machine's host name
  std::string tls_cert;                       // STARTTLS offered when both are set
  std::string tls_key;
};

// Routing (issue 9, SPEC §9.2): `routes:` choose the service of SMTP-submitted mail. One of
// `role` / `sender` (a sender pattern of SPEC §3) is set; the first route that matches wins.
struct RouteConfig {
  std::optional<std::string> role;
  std::optional<std::string> sender;
  std::string service;
};

// spool.bounces: where delivery status notifications go (SPEC §7.1).
enum class SpoolBounces { Sender, None, Address };

struct SpoolConfig {
  std::string path;
  std::vector<uint64_t> retry_ms = {60'000, 300'000, 1'800'000, 7'200'000};
  uint64_t max_age_ms = 3ull * 24 * 3600 * 1000;
  // Spool mode (issue 8, SPEC §7.1): DSNs, failed messages, disk budget, drain on stop.
  SpoolBounces bounces = SpoolBounces::Sender;
  std::string bounce_address;            // when bounces == Address
  uint64_t keep_failed_ms = 86'400'000;  // failed messages stay visible this long
  std::optional<uint64_t> max_bytes;     // nullopt: only a full disk refuses
  bool drain = false;                    // on SIGTERM, deliver until empty or the grace ends
};

// Idempotency keys (issue 10, SPEC §10.3).
struct IdempotencyConfig {
  uint64_t ttl_ms = 24ull * 3600 * 1000;  // a kept answer is replayed this long
  uint64_t max_keys = 100'000;            // the store's bound (see mailcar/idempotency.hpp)
};

struct LimitsConfig {
  uint64_t max_message_bytes = 26'214'400;
  unsigned max_connections = 1000;
  uint64_t idle_timeout_ms = 60'000;
  uint64_t shutdown_grace_ms = 30'000;
  // Upstream deadlines (issue 7): one delivery through an SMTP service, from hand-over
  // (including the wait for a free connection) to the upstream's final reply. At least every
  // service's connect_timeout and command_timeout.
  uint64_t delivery_timeout_ms = 120'000;
  // Slow SMTP clients and per-client connections (issue 7): deadlines, not idle timers.
  uint64_t smtp_idle_timeout_ms = 300'000;    // from a reply to the next command's line end
  uint64_t smtp_command_timeout_ms = 60'000;  // a command line from its first byte; DATA stall
  uint64_t smtp_min_data_rate = 1024;         // bytes/s that DATA must average (past the stall)
  unsigned smtp_junk_command_limit = 100;     // commands without a message accepted, then 421
  unsigned max_connections_per_client = 100;  // per listener and peer IP address
  // Memory budgets (hostile input must not grow the process): HTTP bodies held before their
  // request is authenticated, all connections together; message data in flight, both doors.
  uint64_t unauthenticated_body_bytes = 8 * 1024 * 1024;
  uint64_t max_inflight_bytes = 256 * 1024 * 1024;
};

enum class LogFormat { Json, Text };
enum class LogLevel { Error = 0, Warn = 1, Info = 2, Debug = 3 };

struct LogConfig {
  LogFormat format = LogFormat::Json;
  LogLevel level = LogLevel::Info;
};

struct ListenAddress {
  std::string host;  // literal IP address ("127.0.0.1", "::1", "0.0.0.0")
  uint16_t port = 0;
  std::string text;  // as written
};

// ---- Message features (issue 10, SPEC §10.1, §10.2): named templates, DKIM, attachment URLs ----

// A named template (YAML `templates.<name>`). Bodies given as *_file are read when the
// configuration is loaded (start, SIGHUP, --check); a request's own fields win over these.
struct TemplateConfig {
  std::string name;
  std::optional<std::string> subject;
  std::optional<std::string> body_text;
  std::optional<std::string> body_html;
  std::string from_name, from_email, reply_to_name, reply_to_email;  // empty: not given
};

// One DKIM signing domain (YAML `dkim[]`). The key is parsed when the configuration is loaded
// (a bad key is a configuration error) and is never logged.
struct DkimConfig {
  std::string domain;  // lower-case
  std::string selector;
  std::string key_file;  // absolute
  bool subdomains = false;
  std::shared_ptr<crypto::RsaKey> key;
};

// YAML `attachment_fetch`: which `attachment` URLs of a request may be fetched (https only).
// Absent: fetching is off and every `attachment` URL is a 400.
struct AttachmentFetchConfig {
  std::vector<std::string> allow;  // URL prefixes, each https://host/...
  uint64_t max_bytes = 10 * 1024 * 1024;
  uint64_t timeout_ms = 30'000;
  std::string ca_file;  // PEM CAs the file servers are verified with; empty: the system bundle
};

// Shared state across replicas (issue 11, SPEC §11): role rate limits and service quotas
// counted in one Redis (or a server speaking its protocol) by every replica.
enum class SharedStateOnError { Local, Refuse };

struct SharedStateConfig {
  std::string redis;      // as written, without the password (for logs)
  std::string host;       // TCP: host name or literal address; empty for a unix socket
  uint16_t port = 6379;   // TCP
  std::string unix_path;  // unix:///path.sock
  unsigned db = 0;        // SELECT (redis://host:port/DB)
  std::string username;   // AUTH user (Redis 6 ACL); empty: the default user
  std::string password;   // AUTH: from the URL, `password` or `password_file`; never logged
  std::string key_prefix = "mailcar:";
  SharedStateOnError on_error = SharedStateOnError::Local;
  uint64_t timeout_ms = 1000;  // connect and every command; then the connection is dropped
};

struct Config {
  std::string file;  // where it came from ("<environment>" for the zero-file setup)
  std::optional<ListenAddress> listen_http;
  std::optional<ListenAddress> listen_smtp;
  // listen.smtps (issue 13): SMTP ingress with implicit TLS (RFC 8314), beside the STARTTLS
  // listener; needs smtp.tls_cert / smtp.tls_key.
  std::optional<ListenAddress> listen_smtps;
  std::vector<ServiceConfig> services;  // in file order
  std::vector<RoleConfig> roles;        // in file order
  std::vector<CredentialConfig> credentials;
  SmtpIngressConfig smtp;
  std::optional<SpoolConfig> spool;
  LimitsConfig limits;
  LogConfig log;
  // Message features (issue 10).
  std::map<std::string, TemplateConfig, std::less<>> templates;
  std::vector<DkimConfig> dkim;
  std::optional<AttachmentFetchConfig> attachment_fetch;
  std::optional<SharedStateConfig> shared_state;  // issue 11
  IdempotencyConfig idempotency;                  // issue 10
  std::vector<RouteConfig> routes;                // routing (issue 9), in file order

  const ServiceConfig* find_service(std::string_view name) const;
  const RoleConfig* find_role(std::string_view name) const;
};

// Environment lookup, injectable for tests. Returns nullopt when NAME is unset.
using EnvLookup = std::optional<std::string> (*)(const std::string& name);
std::optional<std::string> process_env(const std::string& name);

// Load and validate a YAML file. Errors read "FILE:LINE:COL: KEY: what is wrong", one per line.
Result<Config> load_config_file(const std::string& path, EnvLookup env = process_env);
// Same, from text already in memory; `file` names it in errors and anchors relative paths.
Result<Config> load_config_text(const std::string& text, const std::string& file,
                                EnvLookup env = process_env);
// The zero-file setup from MAIL_* / MAILCAR_* variables (SPEC §2).
Result<Config> config_from_environment(EnvLookup env = process_env);

// Failover (issue 9): the services a message for `service` is offered to, in order: the service
// itself, then its `fallback` list, each followed depth-first by its own fallbacks, every
// service at most once. Unknown names are skipped (the loader refuses them).
std::vector<std::string> fallback_chain(const Config& config, std::string_view service);
// A fallback cycle (["a", "b", "a"]: a falls back to b, which falls back to a), or empty.
std::vector<std::string> find_fallback_cycle(const std::vector<ServiceConfig>& services);

// Parsers for the value syntaxes, shared by the loader and its tests.
std::optional<Rate> parse_rate(std::string_view text);
std::optional<uint64_t> parse_duration_ms(std::string_view text);  // 250ms, 30s, 5m, 2h, 3d
std::optional<uint64_t> parse_size_bytes(std::string_view text);   // 1024, 10KB, 10MB, 1GB
std::optional<ListenAddress> parse_listen_address(std::string_view text);

}  // namespace mailcar
