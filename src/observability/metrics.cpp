#include "mailcar/metrics.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <map>
#include <vector>

#include "mailcar/memory_budget.hpp"

namespace mailcar::metrics {
namespace {

using Labels = std::vector<std::string>;  // label values, in the family's label-name order

// Orders label values as std::vector<std::string>'s operator< does, and also compares them
// with an array of string_views, so counting a sample looks it up without building a key.
struct LabelsLess {
  using is_transparent = void;
  template <class A, class B>
  bool operator()(const A& a, const B& b) const {
    return std::lexicographical_compare(
        a.begin(), a.end(), b.begin(), b.end(),
        [](std::string_view x, std::string_view y) { return x < y; });
  }
};

// One family's samples by label values, and the few it counted last: a message's labels are
// mostly those of the message before, and an equality test is cheaper than a tree walk.
template <class V>
struct Family : std::map<Labels, V, LabelsLess> {
  using Base = std::map<Labels, V, LabelsLess>;
  using Base::Base;
  Family(const Family&) = delete;  // `recent` points into this map
  Family& operator=(const Family&) = delete;
  Family(Family&&) = default;
  Family& operator=(Family&&) = default;

  static constexpr size_t kRecent = 4;
  std::array<typename Base::value_type*, kRecent> recent{};
  size_t next_recent = 0;
};

template <size_t N>
bool same_labels(const Labels& labels, const std::array<std::string_view, N>& key) {
  for (size_t i = 0; i < N; ++i) {
    if (labels[i].size() != key[i].size() ||
        std::char_traits<char>::compare(labels[i].data(), key[i].data(), key[i].size()) != 0) {
      return false;
    }
  }
  return true;
}

// The sample of `family` with label values `key`, made (zero) the first time.
template <class V, size_t N>
V& sample(Family<V>& family, const std::array<std::string_view, N>& key) {
  for (auto* hit : family.recent) {
    if (hit != nullptr && same_labels(hit->first, key)) return hit->second;
  }
  auto it = family.find(key);
  if (it == family.end()) {
    Labels labels;
    labels.reserve(N);
    for (std::string_view v : key) labels.emplace_back(v);
    it = family.emplace(std::move(labels), V{}).first;
  }
  family.recent[family.next_recent] = &*it;
  family.next_recent = (family.next_recent + 1) % Family<V>::kRecent;
  return it->second;
}

// Upper bounds of mailcar_upstream_seconds, seconds.
constexpr std::array<double, 12> kBuckets = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                                             0.5,   1,    2.5,   5,    10,  30};

// Shared state (issue 11): upper bounds of mailcar_shared_state_seconds (a local Redis answers
// in well under a millisecond).
constexpr std::array<double, 11> kSharedBuckets = {0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                                                   0.05,   0.1,   0.25,   0.5,   1};

struct SharedStateMetrics {
  std::array<uint64_t, kSharedBuckets.size()> bucket_counts{};  // not cumulative
  uint64_t count = 0;
  double sum = 0;
  Family<uint64_t> errors;  // reason
};

struct State {
  Family<uint64_t> messages;                              // ingress, role, service, outcome
  Family<uint64_t> recipients;                            // service, outcome
  Family<uint64_t> rate_limited;                          // role
  std::array<uint64_t, kBuckets.size()> bucket_counts{};  // not cumulative; summed on render
  uint64_t upstream_count = 0;
  double upstream_sum = 0;
  Family<int64_t> spool_messages{{{"queued"}, 0},
                                 {{"held"}, 0},
                                 {{"sending"}, 0},
                                 {{"deferred"}, 0},
                                 {{"failed"}, 0}};  // state
  uint64_t spool_bytes = 0;
  double spool_oldest_seconds = 0;
  uint64_t spool_fsyncs = 0;
  Family<uint64_t> delivery_attempts;  // service, result
  std::map<std::string, int64_t, std::less<>> connections{{"http", 0}, {"smtp", 0}};
  SharedStateMetrics shared;  // issue 11
  // Issue 10: idempotency keys and mirror recipients.
  Family<uint64_t> idempotency;  // ingress, result
  Family<uint64_t> mirrored;     // service
};

State& state() {
  static State s;
  return s;
}

std::string format_double(double v) {
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  if (std::isnan(v)) return "NaN";
  char buf[32];
  auto [end, ec] = std::to_chars(buf, buf + sizeof buf, v);
  return ec == std::errc() ? std::string(buf, end) : std::string("0");
}

void append_escaped_label(std::string& out, std::string_view value) {
  for (char c : value) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out.push_back(c);
    }
  }
}

void append_header(std::string& out, std::string_view name, std::string_view type,
                   std::string_view help) {
  out += "# HELP ";
  out += name;
  out += ' ';
  out += help;
  out += "\n# TYPE ";
  out += name;
  out += ' ';
  out += type;
  out += '\n';
}

void append_sample(std::string& out, std::string_view name,
                   const std::vector<std::string_view>& label_names, const Labels& values,
                   std::string_view value) {
  out += name;
  if (!label_names.empty()) {
    out += '{';
    for (size_t i = 0; i < label_names.size(); ++i) {
      if (i > 0) out += ',';
      out += label_names[i];
      out += "=\"";
      append_escaped_label(out, values[i]);
      out += '"';
    }
    out += '}';
  }
  out += ' ';
  out += value;
  out += '\n';
}

void append_counter_family(std::string& out, std::string_view name, std::string_view help,
                           const std::vector<std::string_view>& label_names,
                           const std::map<Labels, uint64_t, LabelsLess>& samples) {
  append_header(out, name, "counter", help);
  for (const auto& [labels, value] : samples) {
    append_sample(out, name, label_names, labels, std::to_string(value));
  }
}

}  // namespace

void count_message(Ingress ingress, std::string_view role, std::string_view service,
                   std::string_view outcome) {
  ++sample<uint64_t, 4>(state().messages,
                        {std::string_view(ingress_name(ingress)), role, service, outcome});
}

void count_idempotency(Ingress ingress, std::string_view result) {
  ++sample<uint64_t, 2>(state().idempotency, {std::string_view(ingress_name(ingress)), result});
}

void count_mirrored(std::string_view service, uint64_t n) {
  sample<uint64_t, 1>(state().mirrored, {service}) += n;
}

void count_recipients(std::string_view service, std::string_view outcome, uint64_t n) {
  sample<uint64_t, 2>(state().recipients, {service, outcome}) += n;
}

void count_rate_limited(std::string_view role) {
  ++sample<uint64_t, 1>(state().rate_limited, {role});
}

void observe_upstream_seconds(double seconds) {
  if (std::isnan(seconds)) return;
  if (seconds < 0) seconds = 0;
  State& s = state();
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    if (seconds <= kBuckets[i]) {
      ++s.bucket_counts[i];
      break;
    }
  }
  ++s.upstream_count;
  s.upstream_sum += seconds;
}

void set_spool_messages(std::string_view spool_state, int64_t n) {
  sample<int64_t, 1>(state().spool_messages, {spool_state}) = n;
}

void set_spool_bytes(uint64_t bytes) {
  state().spool_bytes = bytes;
}

void set_spool_oldest_seconds(double seconds) {
  state().spool_oldest_seconds = seconds < 0 ? 0 : seconds;
}

void set_spool_fsyncs(uint64_t total) {
  state().spool_fsyncs = total;
}

void count_delivery_attempt(std::string_view service, std::string_view result) {
  ++sample<uint64_t, 2>(state().delivery_attempts, {service, result});
}

void connection_opened(std::string_view listener) {
  auto& connections = state().connections;
  auto it = connections.find(listener);
  if (it == connections.end()) it = connections.emplace(std::string(listener), 0).first;
  ++it->second;
}

void connection_closed(std::string_view listener) {
  auto& connections = state().connections;
  auto it = connections.find(listener);
  if (it != connections.end() && it->second > 0) --it->second;
}

// ---- shared state (issue 11) -----------------------------------------------------------------

void observe_shared_state_seconds(double seconds) {
  if (std::isnan(seconds)) return;
  if (seconds < 0) seconds = 0;
  SharedStateMetrics& m = state().shared;
  for (size_t i = 0; i < kSharedBuckets.size(); ++i) {
    if (seconds <= kSharedBuckets[i]) {
      ++m.bucket_counts[i];
      break;
    }
  }
  ++m.count;
  m.sum += seconds;
}

void count_shared_state_error(std::string_view reason) {
  ++sample<uint64_t, 1>(state().shared.errors, {reason});
}

namespace {

void append_shared_state(std::string& out, const SharedStateMetrics& m) {
  constexpr std::string_view kHist = "mailcar_shared_state_seconds";
  append_header(out, kHist, "histogram", "Round trips to the shared state (Redis), per command.");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < kSharedBuckets.size(); ++i) {
    cumulative += m.bucket_counts[i];
    append_sample(out, "mailcar_shared_state_seconds_bucket", {"le"},
                  {format_double(kSharedBuckets[i])}, std::to_string(cumulative));
  }
  append_sample(out, "mailcar_shared_state_seconds_bucket", {"le"}, {"+Inf"},
                std::to_string(m.count));
  append_sample(out, "mailcar_shared_state_seconds_sum", {}, {}, format_double(m.sum));
  append_sample(out, "mailcar_shared_state_seconds_count", {}, {}, std::to_string(m.count));
  append_counter_family(out, "mailcar_shared_state_errors_total",
                        "Shared state commands that failed (connection, timeout, error reply).",
                        {"reason"}, m.errors);
}

}  // namespace

std::string render_prometheus() {
  const State& s = state();
  std::string out;
  append_counter_family(out, "mailcar_messages_total", "Messages submitted, by outcome.",
                        {"ingress", "role", "service", "outcome"}, s.messages);
  append_counter_family(out, "mailcar_recipients_total", "Recipients of submitted messages.",
                        {"service", "outcome"}, s.recipients);
  append_counter_family(out, "mailcar_rate_limited_total",
                        "Messages refused by a rate limit or quota.", {"role"}, s.rate_limited);

  constexpr std::string_view kHist = "mailcar_upstream_seconds";
  append_header(out, kHist, "histogram", "Time for the upstream to accept a message.");
  uint64_t cumulative = 0;
  for (size_t i = 0; i < kBuckets.size(); ++i) {
    cumulative += s.bucket_counts[i];
    append_sample(out, "mailcar_upstream_seconds_bucket", {"le"}, {format_double(kBuckets[i])},
                  std::to_string(cumulative));
  }
  append_sample(out, "mailcar_upstream_seconds_bucket", {"le"}, {"+Inf"},
                std::to_string(s.upstream_count));
  append_sample(out, "mailcar_upstream_seconds_sum", {}, {}, format_double(s.upstream_sum));
  append_sample(out, "mailcar_upstream_seconds_count", {}, {}, std::to_string(s.upstream_count));

  append_header(out, "mailcar_spool_messages", "gauge", "Messages in the spool, by state.");
  for (const auto& [labels, n] : s.spool_messages) {
    append_sample(out, "mailcar_spool_messages", {"state"}, labels, std::to_string(n));
  }
  append_header(out, "mailcar_spool_bytes", "gauge", "Bytes of message and state files spooled.");
  append_sample(out, "mailcar_spool_bytes", {}, {}, std::to_string(s.spool_bytes));
  append_header(out, "mailcar_spool_oldest_seconds", "gauge",
                "Age of the oldest message in the spool.");
  append_sample(out, "mailcar_spool_oldest_seconds", {}, {}, format_double(s.spool_oldest_seconds));
  append_header(out, "mailcar_spool_fsyncs_total", "counter",
                "fsync calls of the spool (message files, state files and the folder).");
  append_sample(out, "mailcar_spool_fsyncs_total", {}, {}, std::to_string(s.spool_fsyncs));
  append_counter_family(out, "mailcar_delivery_attempts_total",
                        "Delivery attempts from the spool, by result.", {"service", "result"},
                        s.delivery_attempts);

  append_counter_family(out, "mailcar_idempotency_total",
                        "Requests that carried an idempotency key, by what the key meant.",
                        {"ingress", "result"}, s.idempotency);
  append_counter_family(out, "mailcar_mirrored_recipients_total",
                        "Mirror recipients (mirror_to) added to relayed messages.", {"service"},
                        s.mirrored);

  append_header(out, "mailcar_connections", "gauge", "Open client connections, by listener.");
  for (const auto& [listener, n] : s.connections) {
    append_sample(out, "mailcar_connections", {"listener"}, {listener}, std::to_string(n));
  }
  // Memory budgets (limits.max_inflight_bytes, limits.unauthenticated_body_bytes).
  append_header(out, "mailcar_memory_budget_used_bytes", "gauge",
                "Bytes held against each memory budget.");
  append_sample(out, "mailcar_memory_budget_used_bytes", {"budget"}, {"inflight"},
                std::to_string(inflight_budget().used()));
  append_sample(out, "mailcar_memory_budget_used_bytes", {"budget"}, {"unauthenticated"},
                std::to_string(unauthenticated_budget().used()));
  append_shared_state(out, s.shared);
  return out;
}

void reset_for_tests() {
  state() = State{};
}

}  // namespace mailcar::metrics
