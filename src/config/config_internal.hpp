// Helpers shared by the config loader, the environment setup and their tests. Each check
// returns nullopt when the input is fine, else a short description of what is wrong (never
// the value itself, which may be a secret).
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "mailcar/config.hpp"
#include "mailcar/result.hpp"

namespace mailcar::config_detail {

// Replaces ${NAME} and ${NAME:-default} (default also used when NAME is set but empty).
// Everything else, including "$$" and a lone "$", is copied as is. A null `env` has no
// variables. The error names the variable, never a value.
Result<std::string> expand_env(std::string_view text, EnvLookup env);

// Mailbox address as written in from_email / reply_to_email: exactly one '@' outside a
// quoted local part, non-empty local part and domain, no whitespace, CR, LF or angle brackets.
std::optional<std::string> check_address(std::string_view address);

// Sender patterns: "*", "*@domain", "*@*.domain" or an exact address without '*'.
std::optional<std::string> check_sender_pattern(std::string_view pattern);

// Service and role names: 1..64 of [A-Za-z0-9_.-] (they appear in URLs and metric labels).
std::optional<std::string> check_name(std::string_view name);

// A host name for the SMTP greeting: 1..253 printable ASCII characters without spaces.
std::optional<std::string> check_hostname(std::string_view name);

// Listen address with a reason when it is not one.
Result<ListenAddress> parse_listen_address_explained(std::string_view text);

// Reads a regular file of at most `max_bytes` (blocking; only used before the loop starts).
// The error names the file and the reason, never the content.
Result<std::string> read_small_file(const std::string& path, size_t max_bytes);

// gethostname(), or "localhost" when that fails.
std::string machine_hostname();

inline constexpr size_t kMaxConfigFileBytes = 1024 * 1024;
inline constexpr size_t kMaxSecretFileBytes = 64 * 1024;

}  // namespace mailcar::config_detail

namespace mailcar::config_detail {

// Shared state (issue 11): `redis://[[user]:password@]host[:port][/db]` or
// `unix:///path.sock[?db=N]` into `out` (host, port, unix_path, db, password; `redis` gets the
// URL without its password). Percent escapes in the password are decoded. Returns what is
// wrong, never the password.
std::optional<std::string> parse_redis_url(std::string_view url, SharedStateConfig& out);

}  // namespace mailcar::config_detail
