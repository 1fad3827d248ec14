// The spool-mode journal of kept idempotent answers: format and parser (pure, no I/O).
#include <charconv>
#include <optional>

#include "mailcar/idempotency.hpp"

namespace mailcar {
namespace {

constexpr size_t kMaxHeadLine = 160;           // "K" and five numbers/hex fields
constexpr size_t kMaxScopeBytes = 1024;        // door, role, service and a 255-byte key
constexpr size_t kMaxBodyBytes = 1024 * 1024;  // an answer's JSON (rejected lists included)

// The next space-separated field of `line`, consumed.
std::string_view next_field(std::string_view& line) {
  size_t space = line.find(' ');
  std::string_view field = line.substr(0, space);
  line = space == std::string_view::npos ? std::string_view() : line.substr(space + 1);
  return field;
}

template <typename T>
std::optional<T> number(std::string_view s) {
  T value{};
  if (s.empty() || s.size() > 20) return std::nullopt;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

std::optional<crypto::Sha256Digest> digest(std::string_view hex) {
  crypto::Sha256Digest d{};
  if (hex.size() != d.size() * 2) return std::nullopt;
  for (size_t i = 0; i < d.size(); ++i) {
    int hi = hex_digit(hex[2 * i]);
    int lo = hex_digit(hex[2 * i + 1]);
    if (hi < 0 || lo < 0) return std::nullopt;
    d[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return d;
}

// One record at the front of `bytes`; its size in `used`. nullopt: cut short or malformed.
std::optional<IdempotencyRecord> parse_record(std::string_view bytes, size_t& used) {
  size_t eol = bytes.substr(0, kMaxHeadLine).find('\n');
  if (eol == std::string_view::npos) return std::nullopt;
  std::string_view line = bytes.substr(0, eol);
  if (next_field(line) != "K") return std::nullopt;
  auto expires = number<uint64_t>(next_field(line));
  auto hash = digest(next_field(line));
  auto status = number<uint16_t>(next_field(line));
  auto scope_len = number<size_t>(next_field(line));
  auto body_len = number<size_t>(next_field(line));
  if (!expires || !hash || !status || !scope_len || !body_len || !line.empty()) return std::nullopt;
  if (*scope_len == 0 || *scope_len > kMaxScopeBytes || *body_len > kMaxBodyBytes) {
    return std::nullopt;
  }
  std::string_view rest = bytes.substr(eol + 1);
  if (rest.size() < *scope_len + *body_len + 1 || rest[*scope_len + *body_len] != '\n') {
    return std::nullopt;
  }
  IdempotencyRecord r;
  r.scope.assign(rest.substr(0, *scope_len));
  r.hash = *hash;
  r.expires_ms = *expires;
  r.response.status = *status;
  r.response.body.assign(rest.substr(*scope_len, *body_len));
  used = eol + 1 + *scope_len + *body_len + 1;
  return r;
}

}  // namespace

std::string format_idempotency_record(const IdempotencyRecord& record) {
  std::string out = "K " + std::to_string(record.expires_ms) + " " + crypto::hex(record.hash) +
                    " " + std::to_string(record.response.status) + " " +
                    std::to_string(record.scope.size()) + " " +
                    std::to_string(record.response.body.size()) + "\n";
  out += record.scope;
  out += record.response.body;
  out += '\n';
  return out;
}

IdempotencyJournal parse_idempotency_journal(std::string_view bytes) {
  IdempotencyJournal journal;
  while (journal.good_bytes < bytes.size()) {
    size_t used = 0;
    auto record = parse_record(bytes.substr(journal.good_bytes), used);
    if (!record) {
      journal.truncated = true;
      break;
    }
    journal.records.push_back(std::move(*record));
    journal.good_bytes += used;
  }
  return journal;
}

}  // namespace mailcar
