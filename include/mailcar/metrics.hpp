// Process-wide counters for GET /metrics (SPEC §8), Prometheus text exposition format.
// Loop-thread only; no locking.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "mailcar/message.hpp"

namespace mailcar::metrics {

// outcome: "sent" | "queued" | "rejected" | "failed" | "rate_limited" | "captured" (a role's
// capture: service wrote it instead of relaying it, SPEC §10.4)
void count_message(Ingress ingress, std::string_view role, std::string_view service,
                   std::string_view outcome);
void count_recipients(std::string_view service, std::string_view outcome, uint64_t n);
void count_rate_limited(std::string_view role);
void observe_upstream_seconds(double seconds);
// Spool mode (SPEC §7.1): messages per state (queued, held, sending, deferred, failed), bytes
// on disk, age of the oldest message; each replaces the previous value.
void set_spool_messages(std::string_view state, int64_t n);
void set_spool_bytes(uint64_t bytes);
void set_spool_oldest_seconds(double seconds);
// fsync/fdatasync calls the spool made since start (files and the folder): with group commit,
// fewer than one per message under load.
void set_spool_fsyncs(uint64_t total);
// One delivery attempt from the spool; result: sent | deferred | failed (per message: any
// recipient sent counts as sent).
void count_delivery_attempt(std::string_view service, std::string_view result);
// Issue 10. Idempotency keys (SPEC §10.3): result is fresh | replayed | in_flight | mismatch |
// full | unavailable. Mirror recipients (SPEC §10.4) added to relayed messages, per service.
void count_idempotency(Ingress ingress, std::string_view result);
void count_mirrored(std::string_view service, uint64_t n);
// listener: "http" | "smtp"
void connection_opened(std::string_view listener);
void connection_closed(std::string_view listener);

// Shared state (issue 11): one Redis round trip (histogram mailcar_shared_state_seconds), and
// one failed command (mailcar_shared_state_errors_total{reason}; reason: connection |
// timeout | reply).
void observe_shared_state_seconds(double seconds);
void count_shared_state_error(std::string_view reason);

std::string render_prometheus();
void reset_for_tests();

}  // namespace mailcar::metrics
