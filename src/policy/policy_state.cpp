#include "mailcar/policy_state.hpp"

#include <algorithm>
#include <charconv>
#include <vector>

#include "policy/config_policy.hpp"

namespace mailcar {
namespace {

constexpr std::string_view kHeader = "mailcar-policy-state 1";

// Names may hold any byte; escape the field and line separators (and '%' itself).
std::string escape_field(std::string_view s) {
  static const char* hex = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (c == '%' || c == '\t' || c == '\n' || c == '\r') {
      out.push_back('%');
      out.push_back(hex[c >> 4]);
      out.push_back(hex[c & 0xF]);
    } else {
      out.push_back(static_cast<char>(c));
    }
  }
  return out;
}

std::optional<std::string> unescape_field(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out.push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    unsigned value = 0;
    auto [end, ec] = std::from_chars(s.data() + i + 1, s.data() + i + 3, value, 16);
    if (ec != std::errc() || end != s.data() + i + 3) return std::nullopt;
    out.push_back(static_cast<char>(value));
    i += 2;
  }
  return out;
}

std::vector<std::string_view> split(std::string_view s, char sep) {
  std::vector<std::string_view> parts;
  size_t start = 0;
  while (true) {
    size_t pos = s.find(sep, start);
    parts.push_back(s.substr(start, pos == std::string_view::npos ? pos : pos - start));
    if (pos == std::string_view::npos) return parts;
    start = pos + 1;
  }
}

}  // namespace

std::string serialize_state(const Policy& policy, uint64_t now_ms) {
  std::vector<std::string> lines;
  if (const auto* p = dynamic_cast<const ConfigPolicy*>(&policy)) {
    p->for_each_limit(
        [&](ConfigPolicy::LimitKind kind, const std::string& owner, const RateWindow& w) {
          uint64_t tat = w.limiter.tat_ms();
          if (tat <= now_ms) return;  // fully replenished: nothing worth keeping
          std::string line = kind == ConfigPolicy::LimitKind::Role ? "role\t" : "service\t";
          line += escape_field(owner);
          line += '\t';
          line += escape_field(w.rate.text);
          line += '\t';
          line += std::to_string(tat);
          lines.push_back(std::move(line));
        });
  }
  std::sort(lines.begin(), lines.end());
  std::string out(kHeader);
  out += '\n';
  for (const std::string& line : lines) {
    out += line;
    out += '\n';
  }
  return out;
}

size_t restore_state(Policy& policy, std::string_view state) {
  auto* p = dynamic_cast<ConfigPolicy*>(&policy);
  if (p == nullptr) return 0;
  std::vector<std::string_view> lines = split(state, '\n');
  if (lines.empty() || lines.front() != kHeader) return 0;
  size_t restored = 0;
  for (size_t i = 1; i < lines.size(); ++i) {
    std::vector<std::string_view> fields = split(lines[i], '\t');
    if (fields.size() != 4) continue;
    ConfigPolicy::LimitKind kind;
    if (fields[0] == "role") {
      kind = ConfigPolicy::LimitKind::Role;
    } else if (fields[0] == "service") {
      kind = ConfigPolicy::LimitKind::Service;
    } else {
      continue;
    }
    auto owner = unescape_field(fields[1]);
    auto window_text = unescape_field(fields[2]);
    uint64_t tat = 0;
    auto [end, ec] = std::from_chars(fields[3].data(), fields[3].data() + fields[3].size(), tat);
    if (!owner || !window_text || ec != std::errc() || end != fields[3].data() + fields[3].size()) {
      continue;
    }
    if (RateWindow* w = p->find_limit(kind, *owner, *window_text)) {
      // Never loosen a limit that has already seen traffic since start.
      if (tat > w->limiter.tat_ms()) w->limiter.set_tat_ms(tat);
      ++restored;
    }
  }
  return restored;
}

}  // namespace mailcar
