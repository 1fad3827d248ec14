#include "mailcar/metrics.hpp"

#include <gtest/gtest.h>

#include <map>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

namespace mailcar {
namespace {

// A strict reader of the Prometheus text format 0.0.4, enough to check our own output.
struct Sample {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;  // unescaped values
  std::string value;
};

struct Exposition {
  std::map<std::string, std::string> help, type;
  std::vector<Sample> samples;
  std::vector<std::string> errors;

  double value(const std::string& name,
               const std::vector<std::pair<std::string, std::string>>& labels) const {
    for (const Sample& s : samples) {
      if (s.name == name && s.labels == labels) return std::stod(s.value);
    }
    return -1;
  }
};

// Parses `name{a="x",b="y"} value`; returns false on any deviation from the grammar.
bool parse_sample(const std::string& line, Sample& out) {
  static const std::regex name_re("^[a-zA-Z_:][a-zA-Z0-9_:]*");
  std::smatch m;
  if (!std::regex_search(line, m, name_re)) return false;
  out.name = m.str();
  size_t i = out.name.size();
  if (i < line.size() && line[i] == '{') {
    ++i;
    while (i < line.size() && line[i] != '}') {
      size_t eq = line.find('=', i);
      if (eq == std::string::npos || eq + 1 >= line.size() || line[eq + 1] != '"') return false;
      std::string label = line.substr(i, eq - i);
      if (!std::regex_match(label, std::regex("[a-zA-Z_][a-zA-Z0-9_]*"))) return false;
      std::string value;
      size_t j = eq + 2;
      for (; j < line.size() && line[j] != '"'; ++j) {
        if (line[j] == '\\') {
          if (++j >= line.size()) return false;
          if (line[j] == 'n') {
            value.push_back('\n');
          } else if (line[j] == '\\' || line[j] == '"') {
            value.push_back(line[j]);
          } else {
            return false;
          }
        } else if (line[j] == '\n') {
          return false;
        } else {
          value.push_back(line[j]);
        }
      }
      if (j >= line.size()) return false;
      out.labels.emplace_back(label, value);
      i = j + 1;
      if (i < line.size() && line[i] == ',') ++i;
    }
    if (i >= line.size()) return false;
    ++i;  // '}'
  }
  if (i >= line.size() || line[i] != ' ') return false;
  out.value = line.substr(i + 1);
  static const std::regex value_re(R"(^([+-]?Inf|NaN|[+-]?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?)$)");
  return std::regex_match(out.value, value_re);
}

Exposition parse(const std::string& text) {
  Exposition e;
  if (text.empty() || text.back() != '\n') e.errors.push_back("no final newline");
  std::istringstream in(text);
  std::string line;
  std::string current_family;
  while (std::getline(in, line)) {
    if (line.rfind("# HELP ", 0) == 0 || line.rfind("# TYPE ", 0) == 0) {
      std::string rest = line.substr(7);
      size_t sp = rest.find(' ');
      if (sp == std::string::npos) {
        e.errors.push_back("bad comment: " + line);
        continue;
      }
      std::string name = rest.substr(0, sp);
      auto& map = line[2] == 'H' ? e.help : e.type;
      if (map.count(name)) e.errors.push_back("duplicate: " + line);
      map[name] = rest.substr(sp + 1);
      current_family = name;
      continue;
    }
    Sample s;
    if (!parse_sample(line, s)) {
      e.errors.push_back("bad sample: " + line);
      continue;
    }
    // A sample belongs to the family declared just before it.
    std::string family = s.name;
    for (const char* suffix : {"_bucket", "_sum", "_count"}) {
      std::string sfx(suffix);
      if (family.size() > sfx.size() && family.ends_with(sfx) && !e.type.count(family)) {
        family.resize(family.size() - sfx.size());
        break;
      }
    }
    if (family != current_family) e.errors.push_back("sample outside its family: " + line);
    e.samples.push_back(std::move(s));
  }
  return e;
}

class Metrics : public ::testing::Test {
 protected:
  void SetUp() override { metrics::reset_for_tests(); }
  void TearDown() override { metrics::reset_for_tests(); }
};

TEST_F(Metrics, EmptyRenderIsValidAndDeclaresEveryFamily) {
  Exposition e = parse(metrics::render_prometheus());
  EXPECT_TRUE(e.errors.empty()) << e.errors.front();
  std::map<std::string, std::string> expected = {{"mailcar_messages_total", "counter"},
                                                 {"mailcar_recipients_total", "counter"},
                                                 {"mailcar_rate_limited_total", "counter"},
                                                 {"mailcar_upstream_seconds", "histogram"},
                                                 {"mailcar_spool_messages", "gauge"},
                                                 {"mailcar_connections", "gauge"},
                                                 {"mailcar_spool_bytes", "gauge"},
                                                 {"mailcar_spool_oldest_seconds", "gauge"},
                                                 {"mailcar_delivery_attempts_total", "counter"},
                                                 {"mailcar_spool_fsyncs_total", "counter"},
                                                 {"mailcar_memory_budget_used_bytes", "gauge"},
                                                 // shared state (issue 11)
                                                 {"mailcar_shared_state_seconds", "histogram"},
                                                 {"mailcar_shared_state_errors_total", "counter"},
                                                 // idempotency keys and mirror (issue 10)
                                                 {"mailcar_idempotency_total", "counter"},
                                                 {"mailcar_mirrored_recipients_total", "counter"}};
  EXPECT_EQ(e.type, expected);
  for (const auto& [name, type] : expected) EXPECT_FALSE(e.help[name].empty()) << name;
  EXPECT_EQ(e.value("mailcar_upstream_seconds_count", {}), 0);
  EXPECT_EQ(e.value("mailcar_spool_messages", {{"state", "held"}}), 0);
  EXPECT_EQ(e.value("mailcar_spool_bytes", {}), 0);
  EXPECT_EQ(e.value("mailcar_connections", {{"listener", "http"}}), 0);
}

TEST_F(Metrics, SharedStateRoundTripsAndErrors) {
  metrics::observe_shared_state_seconds(0.0004);
  metrics::observe_shared_state_seconds(0.003);
  metrics::observe_shared_state_seconds(2);
  metrics::count_shared_state_error("timeout");
  metrics::count_shared_state_error("timeout");
  metrics::count_shared_state_error("connection");
  Exposition e = parse(metrics::render_prometheus());
  EXPECT_TRUE(e.errors.empty()) << e.errors.front();
  EXPECT_EQ(e.value("mailcar_shared_state_seconds_bucket", {{"le", "5e-04"}}), 1);
  EXPECT_EQ(e.value("mailcar_shared_state_seconds_bucket", {{"le", "0.005"}}), 2);
  EXPECT_EQ(e.value("mailcar_shared_state_seconds_bucket", {{"le", "1"}}), 2);
  EXPECT_EQ(e.value("mailcar_shared_state_seconds_bucket", {{"le", "+Inf"}}), 3);
  EXPECT_EQ(e.value("mailcar_shared_state_seconds_count", {}), 3);
  EXPECT_EQ(e.value("mailcar_shared_state_errors_total", {{"reason", "timeout"}}), 2);
  EXPECT_EQ(e.value("mailcar_shared_state_errors_total", {{"reason", "connection"}}), 1);
}

TEST_F(Metrics, CountersByLabels) {
  metrics::count_message(Ingress::Http, "webapp", "email", "sent");
  metrics::count_message(Ingress::Http, "webapp", "email", "sent");
  metrics::count_message(Ingress::Smtp, "legacy", "email", "rate_limited");
  metrics::count_recipients("email", "sent", 5);
  metrics::count_recipients("email", "sent", 2);
  metrics::count_recipients("email", "rejected", 1);
  metrics::count_rate_limited("legacy");
  metrics::set_spool_messages("held", 17);
  metrics::set_spool_messages("deferred", 3);
  metrics::set_spool_messages("deferred", 2);  // a gauge: the last value
  metrics::set_spool_bytes(4096);
  metrics::set_spool_oldest_seconds(12.5);
  metrics::count_delivery_attempt("email", "deferred");
  metrics::count_delivery_attempt("email", "deferred");
  metrics::connection_opened("http");
  metrics::connection_opened("http");
  metrics::connection_opened("smtp");
  metrics::connection_closed("http");
  metrics::connection_closed("smtp");
  metrics::connection_closed("smtp");  // never below zero

  Exposition e = parse(metrics::render_prometheus());
  ASSERT_TRUE(e.errors.empty()) << e.errors.front();
  EXPECT_EQ(
      e.value("mailcar_messages_total",
              {{"ingress", "http"}, {"role", "webapp"}, {"service", "email"}, {"outcome", "sent"}}),
      2);
  EXPECT_EQ(e.value("mailcar_messages_total", {{"ingress", "smtp"},
                                               {"role", "legacy"},
                                               {"service", "email"},
                                               {"outcome", "rate_limited"}}),
            1);
  EXPECT_EQ(e.value("mailcar_recipients_total", {{"service", "email"}, {"outcome", "sent"}}), 7);
  EXPECT_EQ(e.value("mailcar_recipients_total", {{"service", "email"}, {"outcome", "rejected"}}),
            1);
  EXPECT_EQ(e.value("mailcar_rate_limited_total", {{"role", "legacy"}}), 1);
  EXPECT_EQ(e.value("mailcar_spool_messages", {{"state", "held"}}), 17);
  EXPECT_EQ(e.value("mailcar_spool_messages", {{"state", "deferred"}}), 2);
  EXPECT_EQ(e.value("mailcar_spool_messages", {{"state", "queued"}}), 0);
  EXPECT_EQ(e.value("mailcar_spool_bytes", {}), 4096);
  EXPECT_EQ(e.value("mailcar_spool_oldest_seconds", {}), 12.5);
  EXPECT_EQ(
      e.value("mailcar_delivery_attempts_total", {{"service", "email"}, {"result", "deferred"}}),
      2);
  EXPECT_EQ(e.value("mailcar_connections", {{"listener", "http"}}), 1);
  EXPECT_EQ(e.value("mailcar_connections", {{"listener", "smtp"}}), 0);
}

TEST_F(Metrics, HistogramIsCumulativeAndInfEqualsCount) {
  for (double s : {0.001, 0.005, 0.007, 0.3, 0.3, 2.0, 29.9, 31.0, 1000.0, -1.0}) {
    metrics::observe_upstream_seconds(s);
  }
  Exposition e = parse(metrics::render_prometheus());
  ASSERT_TRUE(e.errors.empty()) << e.errors.front();
  std::vector<std::pair<std::string, double>> buckets;
  for (const Sample& s : e.samples) {
    if (s.name != "mailcar_upstream_seconds_bucket") continue;
    ASSERT_EQ(s.labels.size(), 1u);
    ASSERT_EQ(s.labels[0].first, "le");
    buckets.emplace_back(s.labels[0].second, std::stod(s.value));
  }
  ASSERT_EQ(buckets.size(), 13u);
  EXPECT_EQ(buckets.front().first, "0.005");
  EXPECT_EQ(buckets[11].first, "30");
  EXPECT_EQ(buckets.back().first, "+Inf");
  double previous_le = -1;
  double previous_count = 0;
  for (size_t i = 0; i + 1 < buckets.size(); ++i) {
    double le = std::stod(buckets[i].first);
    EXPECT_GT(le, previous_le);
    EXPECT_GE(buckets[i].second, previous_count);
    previous_le = le;
    previous_count = buckets[i].second;
  }
  double count = e.value("mailcar_upstream_seconds_count", {});
  EXPECT_EQ(count, 10);
  EXPECT_EQ(buckets.back().second, count);
  EXPECT_EQ(buckets[0].second, 3);   // -1 (as 0), 0.001, 0.005 (le is inclusive)
  EXPECT_EQ(buckets[1].second, 4);   // + 0.007
  EXPECT_EQ(buckets[5].second, 4);   // le 0.25: none more
  EXPECT_EQ(buckets[6].second, 6);   // le 0.5: + 0.3 twice
  EXPECT_EQ(buckets[11].second, 8);  // + 2.0, 29.9
  EXPECT_NEAR(e.value("mailcar_upstream_seconds_sum", {}),
              0.001 + 0.005 + 0.007 + 0.3 + 0.3 + 2.0 + 29.9 + 31.0 + 1000.0, 1e-9);
}

TEST_F(Metrics, EscapesLabelValues) {
  std::string nasty = "we\"ird\\role\nx";
  metrics::count_rate_limited(nasty);
  std::string text = metrics::render_prometheus();
  EXPECT_NE(text.find(R"(mailcar_rate_limited_total{role="we\"ird\\role\nx"} 1)"),
            std::string::npos)
      << text;
  Exposition e = parse(text);
  ASSERT_TRUE(e.errors.empty()) << e.errors.front();
  EXPECT_EQ(e.value("mailcar_rate_limited_total", {{"role", nasty}}), 1);
}

// Counting looks the last few label sets up first: many sets counted in random order, with
// labels that share prefixes and lengths, must still land on their own samples, also after a
// reset.
TEST_F(Metrics, ManyLabelSetsInRandomOrder) {
  const std::vector<std::string> roles = {"a", "ab", "b", "ba", "webapp", "webapp2"};
  const std::vector<std::string> outcomes = {"sent", "rejected", "failed"};
  std::mt19937 rng(5);
  for (int pass = 0; pass < 2; ++pass) {
    metrics::reset_for_tests();
    std::map<std::pair<std::string, std::string>, uint64_t> want;
    for (int i = 0; i < 3000; ++i) {
      const std::string& role = roles[rng() % roles.size()];
      const std::string& outcome = outcomes[rng() % outcomes.size()];
      const uint64_t n = rng() % 5;
      // Fresh strings each time, as a message's labels are.
      metrics::count_message(Ingress::Smtp, std::string(role), "email", std::string(outcome));
      metrics::count_recipients(std::string(role), std::string(outcome), n);
      ++want[{role, outcome}];
      want[{role + "/r", outcome}] += n;
    }
    Exposition e = parse(metrics::render_prometheus());
    ASSERT_TRUE(e.errors.empty()) << e.errors.front();
    for (const auto& [key, count] : want) {
      if (key.first.ends_with("/r")) {
        std::string role = key.first.substr(0, key.first.size() - 2);
        EXPECT_EQ(e.value("mailcar_recipients_total", {{"service", role}, {"outcome", key.second}}),
                  static_cast<double>(count));
      } else {
        EXPECT_EQ(e.value("mailcar_messages_total", {{"ingress", "smtp"},
                                                     {"role", key.first},
                                                     {"service", "email"},
                                                     {"outcome", key.second}}),
                  static_cast<double>(count));
      }
    }
  }
}

TEST_F(Metrics, DeterministicOrder) {
  metrics::count_rate_limited("b");
  metrics::count_rate_limited("a");
  metrics::count_rate_limited("c");
  std::string first = metrics::render_prometheus();
  EXPECT_EQ(first, metrics::render_prometheus());
  size_t a = first.find("role=\"a\"");
  size_t b = first.find("role=\"b\"");
  size_t c = first.find("role=\"c\"");
  EXPECT_LT(a, b);
  EXPECT_LT(b, c);
}

}  // namespace
}  // namespace mailcar
