// Where both doors meet (SPEC §6–§8). An ingress authenticates its client and builds a
// message; from then on one path serves every door:
//
//   policy (admit) -> delivery mode (direct transport | file | spool) -> metrics -> log -> done
//
// The doors only translate a SubmissionResult into their protocol's reply (HTTP status and
// JSON, SMTP reply line). Counting, labelling and logging happen here and nowhere else, so
// one event gets the same metric labels and the same log line whichever door it came through.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/delivery.hpp"
#include "mailcar/dsn.hpp"
#include "mailcar/idempotency.hpp"
#include "mailcar/message.hpp"
#include "mailcar/policy.hpp"
#include "mailcar/runtime.hpp"

namespace mailcar {

// A built message and who submitted it.
struct Submission {
  Submitter submitter;
  std::string service;
  std::vector<std::string> header_from;  // addresses of the From header, judged by the policy
  OutboundMessage message;
  // The SMTP client's DSN parameters (RFC 3461; the SMTP door in spool mode only);
  // dsn.recipients is empty or parallel to message.envelope_rcpts.
  DsnRequest dsn;
};

// The closed set of answers a submission can get.
enum class SubmissionStatus {
  Sent,         // the upstream (or the file driver) took >= 1 recipient; delivery.rejected
                // lists any it refused
  Queued,       // spool mode: on stable storage; `id` is its spool id
  NoSpace,      // spool mode: disk full, I/O error or spool.max_bytes; not acknowledged
  Refused,      // the policy refused: role, service, sender or recipient count
  RateLimited,  // a role rate limit or the service quota is exhausted now
  Failed,       // delivery failed and may succeed later: connection, TLS, AUTH, 4xx
  Rejected,     // the upstream refused for good (5xx; SMTPUTF8 missing)
  Unavailable,  // not ready, no transport for the service, or shutting down
};

struct SubmissionResult {
  SubmissionStatus status = SubmissionStatus::Sent;
  std::string id;           // Message-ID without brackets (spool mode: the spool id)
  uint64_t recipients = 0;  // Queued: how many
  PolicyDecision decision;  // Refused, RateLimited: what the policy said
  DeliveryResult delivery;  // Sent, Failed, Rejected, Unavailable: what the transport said;
                            // when nobody took the message, smtp_code/smtp_reply are those of
                            // the first refusal
  // Capture and mirror (issue 10, SPEC §10.4).
  bool captured = false;  // Sent: written to the role's capture service, not relayed
  uint64_t mirrored = 0;  // mirror recipients added to the envelope (not in any count)
};

// The metric and log label of a status (SPEC §8 outcome): sent | queued | rejected | failed
// | rate_limited. (A captured message is labelled "captured" instead of "sent".)
const char* outcome_label(SubmissionStatus status);

// Takes the result by rvalue reference: a callback that takes it by value gets it moved once.
using SubmissionDone = std::function<void(SubmissionResult&&)>;

// Judge, deliver (or spool, when the runtime has a spool), count and log one message. `done` is
// called exactly once on the loop thread: synchronously when the message is refused before
// delivery, otherwise when the delivery mode has an answer. The runtime snapshot stays alive until
// then. `now_ms` is the wall clock used by the policy.
// The submission is taken by reference and moved from once, where it goes (the transport or
// the spool).
void submit(std::shared_ptr<Runtime> runtime, Submission&& submission, uint64_t now_ms,
            SubmissionDone done);

// Idempotency keys (SPEC §10.3), the part both doors share: looks `key` up in the runtime's
// store under the submitter's role, the door and `service`, counts the result
// (mailcar_idempotency_total) and logs a replay, a conflict or a refusal. `done` gets the
// outcome and, on Fresh, the claim the door completes with its answer. Without a store every
// key is Fresh with an empty claim. The key must be valid (valid_idempotency_key).
using IdempotencyDone = std::function<void(IdempotencyOutcome, IdempotencyClaim)>;
void begin_idempotent(const Runtime& runtime, const Submitter& submitter, std::string_view service,
                      std::string_view key, const crypto::Sha256Digest& request_hash,
                      uint64_t now_ms, IdempotencyDone done);

// A policy refusal that an ingress decided before a message existed (SMTP MAIL FROM / RCPT
// TO checks): the same log line and counters as a refused submission. `whole_message` is
// false for a refused RCPT, which refuses one recipient of a transaction that may go on: it
// is logged and counted as a rate limit hit, not as a refused message.
void record_policy_refusal(const Submitter& submitter, std::string_view service,
                           const PolicyDecision& decision, bool whole_message);

// A refusal by a limit of the door itself (issue 13): over max_message_bytes (SMTP 552 at MAIL
// SIZE= or after DATA, HTTP 413), authentication required (SMTP 530). The same
// "message_refused" line and `rejected` counter as a policy refusal; `reason` says which limit,
// with its value.
void record_refusal(const Submitter& submitter, std::string_view service, std::string_view reason);

// A message an ingress could not turn into a valid message (SMTP: normalization refused it):
// one "message" line and the `rejected` counter.
void record_invalid_message(const Submitter& submitter, std::string_view service,
                            std::string_view id, uint64_t size, uint64_t recipients,
                            std::string_view reason);

}  // namespace mailcar
