// Process-wide counters for GET /metrics (SPEC §8), Prometheus text exposition format.
// Loop-thread only; no locking.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "mailcar/message.hpp"

namespace mailcar::metrics {

// outcome: "sent" | "queued" | "rejected" | "failed" | "rate_limited"
void count_message(Ingress ingress, std::string_view role, std::string_view service,
                   std::string_view outcome);
void count_recipients(std::string_view service, std::string_view outcome, uint64_t n);
void count_rate_limited(std::string_view role);
void observe_upstream_seconds(double seconds);
void set_spool_messages(int64_t n);
// listener: "http" | "smtp"
void connection_opened(std::string_view listener);
void connection_closed(std::string_view listener);

std::string render_prometheus();
void reset_for_tests();

}  // namespace mailcar::metrics
