#include "mailcar/submission.hpp"

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <utility>

#include "mailcar/clock.hpp"
#include "mailcar/failover.hpp"
#include "mailcar/log.hpp"
#include "mailcar/metrics.hpp"
#include "mailcar/shared_state.hpp"
#include "mailcar/spool_queue.hpp"
#include "submission/dkim_signing.hpp"

namespace mailcar {
namespace {

bool temporary_reply(const DeliveryResult& r) {
  return r.smtp_code ? (*r.smtp_code >= 400 && *r.smtp_code < 500) : r.retryable;
}

// What a transport's answer means for the submitter. A "sent" that nobody took is decided by
// its first refusal, so both doors report it as the refusal it is.
SubmissionStatus classify(DeliveryResult& r) {
  switch (r.status) {
    case DeliveryStatus::Sent:
      if (!r.accepted.empty()) return SubmissionStatus::Sent;
      r.status = DeliveryStatus::Rejected;
      if (!r.rejected.empty()) {
        r.smtp_code = r.rejected.front().smtp_code;
        r.smtp_reply = r.rejected.front().smtp_reply;
        r.retryable = r.rejected.front().smtp_code / 100 == 4;
      }
      if (r.message.empty()) r.message = "All recipients were rejected";
      return temporary_reply(r) ? SubmissionStatus::Failed : SubmissionStatus::Rejected;
    case DeliveryStatus::Rejected:
      return temporary_reply(r) ? SubmissionStatus::Failed : SubmissionStatus::Rejected;
    case DeliveryStatus::ShuttingDown:
      return SubmissionStatus::Unavailable;
    default:
      return SubmissionStatus::Failed;
  }
}

const char* refusal_outcome(const PolicyDecision& d) {
  return d.verdict == Verdict::RateLimited ? "rate_limited" : "rejected";
}

// No recipient count: an SMTP client is refused at MAIL FROM, before it names any.
void log_refusal(const Submitter& s, std::string_view service, std::string_view outcome,
                 std::string_view reason, std::string_view limit) {
  log::info("message_refused", {{"ingress", ingress_name(s.ingress)},
                                {"role", s.role},
                                {"identity", s.identity},
                                {"remote", s.remote},
                                {"service", service},
                                {"outcome", outcome},
                                {"reason", reason},
                                {"limit", limit}});
}

void log_refusal(const Submitter& s, std::string_view service, const PolicyDecision& d) {
  log_refusal(s, service, refusal_outcome(d), d.reason, d.limit_text);
}

// What the log line and counters of a finished delivery need once the message itself has gone
// to the transport.
struct Delivered {
  Submitter submitter;
  std::string service;
  uint64_t recipients = 0;  // the client's; mirror recipients are not counted
  uint64_t size = 0;
  bool captured = false;            // written to the role's capture service (SPEC §10.4)
  std::vector<std::string> mirror;  // mirror recipients added to the envelope
};

// "captured" for a message the capture service took, else the status's label.
const char* result_outcome(const SubmissionResult& result) {
  return result.captured && result.status == SubmissionStatus::Sent ? "captured"
                                                                    : outcome_label(result.status);
}

// The "message" line of a finished delivery (SPEC §8).
void log_message_line(const Delivered& s, const SubmissionResult& result) {
  const DeliveryResult& r = result.delivery;
  // A number when the upstream answered, null (JSON) when it never did.
  log::Field code = r.smtp_code ? log::Field("upstream_code", *r.smtp_code)
                                : log::Field::raw("upstream_code", "null");
  log::info("message", {{"id", result.id},
                        {"ingress", ingress_name(s.submitter.ingress)},
                        {"role", s.submitter.role},
                        {"identity", s.submitter.identity},
                        {"remote", s.submitter.remote},
                        {"service", s.service},
                        {"delivered_via", r.delivered_via},
                        {"recipients", s.recipients},
                        {"size", s.size},
                        {"outcome", result_outcome(result)},
                        {"mirrored", static_cast<uint64_t>(s.mirror.size())},
                        {"status", delivery_status_name(r.status)},
                        code,
                        {"upstream_reply", r.smtp_reply},
                        {"upstream_seconds", r.upstream_seconds}});
}

// One "message" line per finished delivery, plus one "recipient_rejected" line per recipient
// the upstream refused. The fields are not even gathered when the level drops the line.
void log_delivery(const Delivered& s, const SubmissionResult& result) {
  if (log::enabled(LogLevel::Info)) log_message_line(s, result);
  for (const RecipientOutcome& rejected : result.delivery.rejected) {
    log::warn("recipient_rejected", {{"id", result.id},
                                     {"recipient", rejected.address},
                                     {"upstream_code", rejected.smtp_code},
                                     {"upstream_reply", rejected.smtp_reply}});
  }
}

// Labelled with the service that gave the answer (failover, issue 9: the one that delivered).
void count_delivery(const Delivered& s, const SubmissionResult& result) {
  const char* outcome = result_outcome(result);
  // Labelled with the service that took the message (failover), but a captured message keeps
  // the service it was sent to: its outcome already says where it went.
  const std::string& service = s.captured || result.delivery.delivered_via.empty()
                                   ? s.service
                                   : result.delivery.delivered_via;
  metrics::count_message(s.submitter.ingress, s.submitter.role, service, outcome);
  if (!s.mirror.empty()) metrics::count_mirrored(service, s.mirror.size());
  if (result.status == SubmissionStatus::Sent) {
    metrics::count_recipients(service, outcome, result.delivery.accepted.size());
    if (!result.delivery.rejected.empty()) {
      metrics::count_recipients(service, "rejected", result.delivery.rejected.size());
    }
  } else {
    metrics::count_recipients(service, outcome, s.recipients);
  }
}

// ---- Direct mode DSN ------------------------------------------------------------------------
// After a 250 at end of DATA mailcar owns the message (RFC 5321 §6.1): recipients the upstream
// refused are reported to the sender with a DSN, sent once through the same transport.

constexpr std::string_view kDirectNoRetryNote =
    "mailcar relays in direct mode and does not retry temporary failures (4xx); spool mode "
    "would retry them.";

// What a direct-mode DSN needs once the message itself has gone to the transport.
struct DirectDsn {
  std::string envelope_from;
  std::vector<std::string> rcpts;
  DsnRequest request;
  std::string original;  // the header block; the whole message for RET=FULL
  uint64_t arrival_ms = 0;
};

// Only for the SMTP door (the HTTP door lists refused recipients in its answer), a sender to
// report to, and at least one recipient that did not opt out with NOTIFY; `out` stays empty
// otherwise.
void direct_dsn_context(Submission& s, uint64_t now_ms, std::optional<DirectDsn>& out) {
  if (s.submitter.ingress != Ingress::Smtp || s.message.envelope_from.empty()) return;
  bool wanted = false;
  for (size_t i = 0; i < s.message.envelope_rcpts.size() && !wanted; ++i) {
    wanted = dsn_wanted_for_failure(s.message.envelope_from, s.dsn.recipient(i).notify);
  }
  if (!wanted) return;
  DirectDsn* ctx = &out.emplace();
  ctx->envelope_from = s.message.envelope_from;
  ctx->rcpts = s.message.envelope_rcpts;
  ctx->request = std::move(s.dsn);  // the transport takes only s.message
  ctx->original =
      s.dsn.ret == DsnRet::Full ? s.message.data : std::string(dsn_header_block(s.message.data));
  ctx->arrival_ms = now_ms;
}

// The report for the refused recipients that want one; nullopt when none does.
std::optional<DsnInput> direct_dsn_input(const Runtime& rt, const DirectDsn& ctx,
                                         const std::vector<RecipientOutcome>& refused,
                                         uint64_t now_ms) {
  DsnInput in;
  in.reporting_mta = rt.hostname.empty() ? std::string("localhost") : rt.hostname;
  in.from = Mailbox{"MAILER-DAEMON@" + in.reporting_mta, "Mail Delivery System"};
  in.to = ctx.envelope_from;
  in.envid = ctx.request.envid;
  in.arrival_unix = static_cast<int64_t>(ctx.arrival_ms / 1000);
  in.now_unix = static_cast<int64_t>(now_ms / 1000);
  in.ret = ctx.request.ret;
  in.original = ctx.original;
  bool temporary = false;
  for (const RecipientOutcome& r : refused) {
    auto it = std::find(ctx.rcpts.begin(), ctx.rcpts.end(), r.address);
    size_t index = static_cast<size_t>(it - ctx.rcpts.begin());
    DsnRecipientRequest asked = ctx.request.recipient(index);
    if (!dsn_wanted_for_failure(ctx.envelope_from, asked.notify)) continue;
    temporary = temporary || r.smtp_code / 100 == 4;
    in.recipients.push_back({r.address, asked.orcpt, r.smtp_code, r.smtp_reply, {}, {}});
  }
  if (in.recipients.empty()) return std::nullopt;
  if (temporary) in.note = std::string(kDirectNoRetryNote);
  return in;
}

// Builds and sends the DSN, once: logged as dsn_sent or dsn_failed, never retried. It counts
// against the service quota (the provider counts it), not against a role's limits.
void send_direct_dsn(std::shared_ptr<Runtime> runtime, const std::string& service,
                     const std::string& original_id, const DirectDsn& ctx,
                     const std::vector<RecipientOutcome>& refused) {
  uint64_t now = wall_clock_ms();
  std::optional<DsnInput> in = direct_dsn_input(*runtime, ctx, refused, now);
  if (!in) return;
  auto fail = [&](std::string_view why) {
    log::error("dsn_failed", {{"original", original_id}, {"service", service}, {"error", why}});
  };
  Result<OutboundMessage> dsn = build_dsn(*in);
  if (!dsn.ok()) return fail(dsn.error().message);
  Transport* transport = runtime->transport(service);
  if (transport == nullptr) return fail("no transport for the service");
  if (runtime->policy && !runtime->policy->take_quota(service, 1, now).allowed) {
    return fail("service quota exhausted");
  }
  std::string id = dsn.value().id;
  transport->deliver(std::move(dsn.value()), [runtime, service, original_id, id](DeliveryResult r) {
    SubmissionStatus status = classify(r);  // the same reading as for any message
    log::Field code("upstream_code", r.smtp_code ? std::to_string(*r.smtp_code) : "null");
    code.quoted = false;
    if (status == SubmissionStatus::Sent) {
      log::info("dsn_sent", {{"id", id}, {"original", original_id}, {"service", service}, code});
    } else {
      log::error("dsn_failed", {{"id", id},
                                {"original", original_id},
                                {"service", service},
                                code,
                                {"upstream_reply", r.smtp_code ? r.smtp_reply : r.message},
                                {"outcome", outcome_label(status)}});
    }
  });
}

SubmissionResult unavailable(std::string id, std::string why) {
  SubmissionResult r;
  r.status = SubmissionStatus::Unavailable;
  r.id = std::move(id);
  r.delivery = delivery_failure(DeliveryStatus::ShuttingDown, std::move(why), true);
  return r;
}

// Mirror recipients (SPEC §10.4) are the relay's, not the client's: whatever the upstream said
// about them is logged and left out of the answer, so they never count, never decide the
// outcome and never appear in a DSN.
void strip_mirror(DeliveryResult& r, const Delivered& context) {
  if (context.mirror.empty()) return;
  auto is_mirror = [&context](const std::string& a) {
    return std::find(context.mirror.begin(), context.mirror.end(), a) != context.mirror.end();
  };
  std::erase_if(r.accepted, is_mirror);
  std::erase_if(r.rejected, [&](const RecipientOutcome& o) {
    if (!is_mirror(o.address)) return false;
    log::warn("mirror_rejected", {{"service", context.service},
                                  {"recipient", o.address},
                                  {"upstream_code", o.smtp_code},
                                  {"upstream_reply", o.smtp_reply}});
    return true;
  });
}

// A direct delivery in flight: what its answer is counted, logged and reported with. One
// allocation, and the callback moves one pointer instead of each string.
struct DirectPending {
  std::shared_ptr<Runtime> runtime;
  Delivered context;
  std::string id;
  std::optional<DirectDsn> dsn;
  SubmissionDone done;
};

void direct_answer(DirectPending& p, DeliveryResult&& delivery) {
  SubmissionResult result;
  result.id = std::move(p.id);  // the callback runs once
  result.delivery = std::move(delivery);
  strip_mirror(result.delivery, p.context);
  result.status = classify(result.delivery);
  result.captured = p.context.captured;
  result.mirrored = p.context.mirror.size();
  count_delivery(p.context, result);
  log_delivery(p.context, result);
  // The client is told 250 (Sent): the refused recipients are reported to the sender.
  if (p.dsn && result.status == SubmissionStatus::Sent && !result.delivery.rejected.empty()) {
    send_direct_dsn(p.runtime, result.delivery.delivered_via, result.id, *p.dsn,
                    result.delivery.rejected);
  }
  p.done(std::move(result));
}

// The delivery mode: the service's transport (SMTP relay or file driver) then its fallbacks,
// or the role's capture service.
void deliver_direct(std::shared_ptr<Runtime> runtime, const std::string& via,
                    Submission&& submission, Delivered&& context, uint64_t now_ms,
                    SubmissionDone done) {
  auto pending = std::make_shared<DirectPending>();
  // A report names refused recipients of a message the upstream took (Sent): that needs two
  // recipients of the client's own at least (mirror recipients never count), so a message to
  // one recipient keeps no copy of its header for it.
  if (context.recipients >= 2) direct_dsn_context(submission, now_ms, pending->dsn);
  pending->runtime = runtime;
  pending->context = std::move(context);
  pending->context.submitter = std::move(submission.submitter);
  pending->id = submission.message.id;
  pending->done = std::move(done);
  deliver_with_failover(std::move(runtime), via, std::move(submission.message),
                        [pending = std::move(pending)](DeliveryResult delivery) {
                          direct_answer(*pending, std::move(delivery));
                        });
}

// Spool mode: acknowledged once on stable storage; delivery and its log lines come later.
void deliver_spooled(SpoolQueue& spool, std::shared_ptr<Runtime> runtime, Submission&& submission,
                     Delivered&& context, SubmissionDone done) {
  context.submitter = submission.submitter;
  spool.enqueue(
      std::move(submission), [runtime = std::move(runtime), context = std::move(context),
                              done = std::move(done)](SpoolStatus status, const std::string& id) {
        SubmissionResult result;
        result.id = id;
        result.recipients = context.recipients;
        result.mirrored = context.mirror.size();
        result.status = status.ok() ? SubmissionStatus::Queued : SubmissionStatus::NoSpace;
        const char* outcome = outcome_label(result.status);
        metrics::count_message(context.submitter.ingress, context.submitter.role, context.service,
                               outcome);
        metrics::count_recipients(context.service, outcome, context.recipients);
        if (status.ok() && !context.mirror.empty()) {
          metrics::count_mirrored(context.service, context.mirror.size());
        }
        log::info("message", {{"id", id},
                              {"ingress", ingress_name(context.submitter.ingress)},
                              {"role", context.submitter.role},
                              {"identity", context.submitter.identity},
                              {"remote", context.submitter.remote},
                              {"service", context.service},
                              {"recipients", context.recipients},
                              {"mirrored", static_cast<uint64_t>(context.mirror.size())},
                              {"size", context.size},
                              {"outcome", outcome},
                              {"reason", status.ok() ? "" : spool_errc_name(status.code)}});
        if (!status.ok()) log::error("spool_refused", {{"error", status.detail}});
        done(std::move(result));
      });
}

// The role's and the service's mirror_to addresses that the envelope does not hold yet, added
// to it; a DSN is never asked for them (NOTIFY=NEVER), so no report names them.
std::vector<std::string> add_mirror(const Config& config, const RoleConfig* role,
                                    Submission& submission) {
  std::vector<std::string> added;
  std::vector<std::string>& rcpts = submission.message.envelope_rcpts;
  const ServiceConfig* service = config.find_service(submission.service);
  for (const auto* list :
       {role ? &role->mirror_to : nullptr, service ? &service->mirror_to : nullptr}) {
    if (list == nullptr) continue;
    for (const std::string& a : *list) {
      if (std::find(rcpts.begin(), rcpts.end(), a) != rcpts.end()) continue;
      if (std::find(added.begin(), added.end(), a) != added.end()) continue;
      added.push_back(a);
    }
  }
  if (added.empty()) return added;
  std::vector<DsnRecipientRequest>& dsn = submission.dsn.recipients;
  dsn.resize(rcpts.size());
  for (const std::string& a : added) {
    rcpts.push_back(a);
    dsn.push_back(DsnRecipientRequest{dsn_notify::kNever, {}});
  }
  return added;
}

// The delivery mode of an admitted (and, where configured, signed) message: the role's capture
// service, the spool, or the service's transport; mirror recipients join relayed messages.
void deliver(std::shared_ptr<Runtime> runtime, Submission&& submission, uint64_t now_ms,
             SubmissionDone done) {
  const RoleConfig* role = runtime->config->find_role(submission.submitter.role);
  Delivered context;  // its submitter is filled in by the delivery mode
  context.service = submission.service;
  context.recipients = submission.message.envelope_rcpts.size();
  context.size = submission.message.data.size();
  context.captured = role != nullptr && role->capture.has_value();
  // Capture (SPEC §10.4): the role's file service takes the message, in either mode.
  const std::string& via = context.captured ? *role->capture : submission.service;
  if (!context.captured) context.mirror = add_mirror(*runtime->config, role, submission);
  if (SpoolQueue* spool = runtime->spool.get(); spool != nullptr && !context.captured) {
    return deliver_spooled(*spool, std::move(runtime), std::move(submission), std::move(context),
                           std::move(done));
  }
  Transport* transport = runtime->transport(via);
  if (transport == nullptr) {
    log::error("no_transport", {{"service", via}});
    metrics::count_message(submission.submitter.ingress, submission.submitter.role,
                           submission.service, "failed");
    return done(unavailable(submission.message.id, "Service " + via + " not available"));
  }
  deliver_direct(std::move(runtime), via, std::move(submission), std::move(context), now_ms,
                 std::move(done));
}

}  // namespace

const char* outcome_label(SubmissionStatus status) {
  switch (status) {
    case SubmissionStatus::Sent:
      return "sent";
    case SubmissionStatus::Queued:
      return "queued";
    case SubmissionStatus::Refused:
    case SubmissionStatus::Rejected:
      return "rejected";
    case SubmissionStatus::RateLimited:
      return "rate_limited";
    case SubmissionStatus::Failed:
    case SubmissionStatus::Unavailable:
    case SubmissionStatus::NoSpace:
      return "failed";
  }
  return "failed";
}

void record_policy_refusal(const Submitter& submitter, std::string_view service,
                           const PolicyDecision& decision, bool whole_message) {
  log_refusal(submitter, service, decision);
  if (decision.verdict == Verdict::RateLimited) metrics::count_rate_limited(submitter.role);
  if (whole_message) {
    metrics::count_message(submitter.ingress, submitter.role, service, refusal_outcome(decision));
  }
}

void record_refusal(const Submitter& submitter, std::string_view service, std::string_view reason) {
  log_refusal(submitter, service, "rejected", reason, "");
  metrics::count_message(submitter.ingress, submitter.role, service, "rejected");
}

void record_invalid_message(const Submitter& submitter, std::string_view service,
                            std::string_view id, uint64_t size, uint64_t recipients,
                            std::string_view reason) {
  log::info("message", {{"id", id},
                        {"ingress", ingress_name(submitter.ingress)},
                        {"role", submitter.role},
                        {"identity", submitter.identity},
                        {"remote", submitter.remote},
                        {"service", service},
                        {"recipients", recipients},
                        {"size", size},
                        {"outcome", "rejected"},
                        {"reason", reason}});
  metrics::count_message(submitter.ingress, submitter.role, service, "rejected");
}

namespace {

const char* idempotency_result(IdempotencyVerdict v) {
  switch (v) {
    case IdempotencyVerdict::Fresh:
      return "fresh";
    case IdempotencyVerdict::Replay:
      return "replayed";
    case IdempotencyVerdict::InFlight:
      return "in_flight";
    case IdempotencyVerdict::Mismatch:
      return "mismatch";
    case IdempotencyVerdict::Full:
      return "full";
    case IdempotencyVerdict::Unavailable:
      return "unavailable";
  }
  return "unavailable";
}

}  // namespace

void begin_idempotent(const Runtime& runtime, const Submitter& submitter, std::string_view service,
                      std::string_view key, const crypto::Sha256Digest& request_hash,
                      uint64_t now_ms, IdempotencyDone done) {
  std::shared_ptr<IdempotencyStore> store = runtime.idempotency;
  if (!store) {
    IdempotencyOutcome fresh;
    fresh.verdict = IdempotencyVerdict::Fresh;
    return done(std::move(fresh), IdempotencyClaim());
  }
  std::string scope = idempotency_scope(submitter.ingress, submitter.role, service, key);
  auto on_outcome = [store, scope, submitter, service = std::string(service),
                     key = std::string(key), done = std::move(done)](IdempotencyOutcome out) {
    metrics::count_idempotency(submitter.ingress, idempotency_result(out.verdict));
    if (out.verdict != IdempotencyVerdict::Fresh) {
      log::info("idempotency_key", {{"ingress", ingress_name(submitter.ingress)},
                                    {"role", submitter.role},
                                    {"identity", submitter.identity},
                                    {"remote", submitter.remote},
                                    {"service", service},
                                    {"key", key},
                                    {"result", idempotency_result(out.verdict)}});
    }
    IdempotencyClaim claim;
    if (out.verdict == IdempotencyVerdict::Fresh) claim = IdempotencyClaim(store, scope, out.claim);
    done(std::move(out), std::move(claim));
  };
  store->begin(scope, request_hash, now_ms, std::move(on_outcome));
}

namespace {

// What the policy judges of a submission. Its strings are moved in, not copied, and go back to
// the submission (give_back) once the policy has decided.
PolicyRequest take_request(Submission& s) {
  PolicyRequest r;
  r.role = std::move(s.submitter.role);
  r.service = std::move(s.service);
  r.envelope_from = std::move(s.message.envelope_from);
  r.header_from = std::move(s.header_from);
  r.recipients = s.message.envelope_rcpts.size();
  return r;
}

void give_back(PolicyRequest&& r, Submission& s) {
  s.submitter.role = std::move(r.role);
  s.service = std::move(r.service);
  s.message.envelope_from = std::move(r.envelope_from);
  s.header_from = std::move(r.header_from);
}

// After the policy: refuse, or hand the message to its delivery mode.
void proceed(std::shared_ptr<Runtime> runtime, Submission&& submission, PolicyDecision&& decision,
             uint64_t now_ms, SubmissionDone done) {
  if (!decision.allowed()) {
    record_policy_refusal(submission.submitter, submission.service, decision, true);
    SubmissionResult result;
    result.status = decision.verdict == Verdict::RateLimited ? SubmissionStatus::RateLimited
                                                             : SubmissionStatus::Refused;
    result.id = submission.message.id;
    result.decision = std::move(decision);
    return done(std::move(result));
  }
  // Issue 10 (SPEC §10.2): signed once admitted, before it is spooled or relayed.
  if (const DkimConfig* domain =
          runtime->config ? dkim_domain_for(runtime->config->dkim, submission) : nullptr) {
    uv_loop_t* loop = runtime->loop;
    std::shared_ptr<const Config> config = runtime->config;
    return dkim_sign_then(loop, std::move(config), *domain, std::move(submission), now_ms,
                          [runtime = std::move(runtime), now_ms,
                           done = std::move(done)](Submission signed_message) mutable {
                            deliver(std::move(runtime), std::move(signed_message), now_ms,
                                    std::move(done));
                          });
  }
  deliver(std::move(runtime), std::move(submission), now_ms, std::move(done));
}

// Shared state (issue 11): the windows are judged in Redis, one script per message. When
// Redis cannot answer, on_error decides: `local` counts this replica alone (the local
// limiter, as without shared_state), `refuse` answers 503 / 451.
void admit_shared(std::shared_ptr<Runtime> runtime, Submission&& submission,
                  PolicyRequest&& request, std::vector<PolicyWindow> windows, uint64_t now_ms,
                  SubmissionDone done) {
  SharedState& shared = *runtime->shared_state;
  auto held = std::make_shared<Submission>(std::move(submission));
  auto req = std::make_shared<PolicyRequest>(std::move(request));
  shared.judge(
      windows, req->recipients, false,
      [runtime, held, req, now_ms, done](SharedState::Outcome out) mutable {
        const bool refuse =
            !out.ok && runtime->shared_state->config().on_error != SharedStateOnError::Local;
        PolicyDecision decision;
        if (out.ok) {
          decision = runtime->policy->decide(*req, out.answer.judgements);
        } else if (!refuse) {
          decision = runtime->policy->admit(*req, wall_clock_ms());
        }
        give_back(std::move(*req), *held);
        if (refuse) {
          log::info("message_refused", {{"id", held->message.id},
                                        {"ingress", ingress_name(held->submitter.ingress)},
                                        {"role", held->submitter.role},
                                        {"service", held->service},
                                        {"outcome", "failed"},
                                        {"reason", "shared state unavailable: " + out.error}});
          metrics::count_message(held->submitter.ingress, held->submitter.role, held->service,
                                 "failed");
          return done(unavailable(held->message.id,
                                  "Rate limits cannot be checked (shared state "
                                  "unavailable)"));
        }
        proceed(std::move(runtime), std::move(*held), std::move(decision), now_ms, std::move(done));
      });
}

}  // namespace

void submit(std::shared_ptr<Runtime> runtime, Submission&& submission, uint64_t now_ms,
            SubmissionDone done) {
  if (!runtime || !runtime->policy) return done(unavailable(submission.message.id, "Not ready."));
  PolicyRequest request = take_request(submission);
  const RoleConfig* role = runtime->config->find_role(request.role);
  const bool captured = role != nullptr && role->capture.has_value();
  // The spool paces to the quota instead; a captured message never reaches the provider.
  request.service_quota = runtime->spool == nullptr && !captured;
  if (runtime->shared_state) {
    std::vector<PolicyWindow> windows;
    PolicyDecision rules = runtime->policy->check_rules(request, windows);
    if (rules.allowed() && !windows.empty()) {
      return admit_shared(std::move(runtime), std::move(submission), std::move(request),
                          std::move(windows), now_ms, std::move(done));
    }
  }
  PolicyDecision decision = runtime->policy->admit(request, now_ms);
  give_back(std::move(request), submission);
  proceed(std::move(runtime), std::move(submission), std::move(decision), now_ms, std::move(done));
}

}  // namespace mailcar
