#include "mailcar/spool_queue.hpp"

#include <algorithm>
#include <chrono>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <map>
#include <set>
#include <unordered_map>
#include <utility>

#include "mailcar/clock.hpp"
#include "mailcar/dsn.hpp"
#include "mailcar/failover.hpp"
#include "mailcar/log.hpp"
#include "mailcar/metrics.hpp"
#include "mailcar/net.hpp"
#include "mailcar/shared_state.hpp"
#include "mailcar/submission.hpp"
#include "mailcar/text.hpp"

namespace mailcar {
namespace {

// Shared state (issue 11): with shared_state a held message asks the shared quota (a grant
// Redis gave); when Redis is unusable, on_error local counts here alone and refuse holds it.
QuotaVerdict paced_quota(Runtime& rt, std::string_view service, size_t n, uint64_t now) {
  std::optional<PolicyWindow> window =
      rt.shared_state ? rt.policy->quota_window(service) : std::nullopt;
  if (!window) return rt.policy->take_quota(service, n, now);
  Policy& policy = *rt.policy;
  bool local = rt.shared_state->config().on_error == SharedStateOnError::Local;
  return rt.shared_state->pace(*window, n, [&]() -> QuotaVerdict {
    if (local) return policy.take_quota(service, n, now);
    return {false, 1000};  // held; asked again in a second
  });
}

constexpr uint64_t kGaugeRefreshMs = 1000;
constexpr std::string_view kDsnIdentity = "dsn";
// Messages whose records recovery reads at a time (a few MB at most).
constexpr size_t kRecoverBatch = 4096;

SchedulerOptions scheduler_options(const Config& config) {
  SchedulerOptions o;
  o.retry_ms = config.spool->retry_ms;
  o.max_age_ms = config.spool->max_age_ms;
  for (const ServiceConfig& s : config.services)
    o.connections[s.name] = std::max(1u, s.connections);
  return o;
}

// What one attempt did to each recipient that was tried (the pending ones, in order).
std::vector<RecipientAttempt> attempts_from(const DeliveryResult& r, const SpoolRecord& record,
                                            const std::vector<size_t>& tried,
                                            const SpoolState& state) {
  if (r.status != DeliveryStatus::Sent) {
    // A whole-message failure. Only a 5xx reply (or a refusal that can never pass, such as
    // SMTPUTF8 missing upstream) is final; connection, TLS and AUTH trouble are temporary.
    int code = r.smtp_code.value_or(0);
    if (!r.smtp_code && r.status == DeliveryStatus::Rejected && !r.retryable) code = 554;
    return attempts_for_pending(state, code, r.smtp_code ? r.smtp_reply : r.message);
  }
  std::vector<RecipientAttempt> out;
  for (size_t index : tried) {
    const std::string& address = record.recipients[index].address;
    RecipientAttempt a{index, 0, "no reply for this recipient"};
    if (std::find(r.accepted.begin(), r.accepted.end(), address) != r.accepted.end()) {
      a.smtp_code = 250;
      a.smtp_reply.clear();
    }
    for (const RecipientOutcome& rejected : r.rejected) {
      if (rejected.address == address) a = {index, rejected.smtp_code, rejected.smtp_reply};
    }
    out.push_back(std::move(a));
  }
  return out;
}

const char* attempt_result(const std::vector<RecipientAttempt>& attempts) {
  bool any_temporary = false;
  for (const RecipientAttempt& a : attempts) {
    if (a.smtp_code / 100 == 2) return "sent";
    if (a.smtp_code / 100 != 5) any_temporary = true;
  }
  return any_temporary ? "deferred" : "failed";
}

SpoolRecord record_of(const Submission& s, std::string id, uint64_t now) {
  SpoolRecord r;
  r.id = std::move(id);
  r.service = s.service;
  r.role = s.submitter.role;
  r.identity = s.submitter.identity;
  r.ingress = s.submitter.ingress;
  r.remote = s.submitter.remote;
  r.envelope_from = s.message.envelope_from;
  for (size_t i = 0; i < s.message.envelope_rcpts.size(); ++i) {
    DsnRecipientRequest asked = s.dsn.recipient(i);
    r.recipients.push_back({s.message.envelope_rcpts[i], asked.notify, std::move(asked.orcpt)});
  }
  r.ret = s.dsn.ret;
  r.envid = s.dsn.envid;
  r.smtputf8 = s.message.smtputf8;
  r.eight_bit = s.message.eight_bit;
  r.queued_at_ms = now;
  r.data_size = s.message.data.size();  // the queue API's `size` (put() sets its own copy)
  return r;
}

}  // namespace

struct SpoolQueue::Impl : std::enable_shared_from_this<SpoolQueue::Impl> {
  // What stays in memory per spooled message: a summary for the queue API and the gauges.
  // Delivery and DSNs read the whole record back from disk with the data (read_data).
  struct Entry {
    uint64_t queued_at_ms = 0;
    uint64_t data_size = 0;
    uint32_t recipients = 0;
    uint32_t service = 0;  // index into `names`
    uint32_t role = 0;     // index into `names`
    Ingress ingress = Ingress::Http;
    std::unique_ptr<SpoolState> failed;  // set once it failed for good (kept for keep_failed)
  };

  uv_loop_t* loop = nullptr;
  RuntimeSource runtime;
  SpoolConfig config;
  std::unique_ptr<SpoolStore> store;
  std::unique_ptr<Scheduler> scheduler;
  std::map<std::string, Entry, std::less<>> entries;  // every message in the spool, by id
  std::vector<std::string> names;                     // service and role names, interned
  std::map<std::string, uint32_t, std::less<>> name_index;
  std::set<std::string, std::less<>> pending_ids;  // being put
  net::Timer wake_timer;
  net::Timer gauge_timer;
  struct Resume {  // counts while recovery's batches come in
    size_t resumed = 0;
    size_t failed = 0;
    std::vector<std::string> finished;
  } resume;
  bool ready = false;
  bool stopping = false;
  bool draining = false;
  size_t in_flight = 0;  // deliveries and their state writes under way
  std::function<void()> shutdown_done;

  Impl(uv_loop_t* l, RuntimeSource source, const Config& c)
      : loop(l), runtime(std::move(source)), config(*c.spool), wake_timer(l), gauge_timer(l) {
    SchedulerOptions options = scheduler_options(c);
    options.quota = [this](std::string_view service, size_t n, uint64_t now) -> QuotaDecision {
      std::shared_ptr<Runtime> rt = runtime ? runtime() : nullptr;
      if (!rt || !rt->policy) return {};
      QuotaVerdict v = paced_quota(*rt, service, n, now);
      return {v.allowed, v.retry_after_ms};
    };
    scheduler = std::make_unique<Scheduler>(std::move(options));
  }

  // ---- intake ----

  uint32_t intern(const std::string& name) {
    auto it = name_index.find(name);
    if (it != name_index.end()) return it->second;
    names.push_back(name);
    auto index = static_cast<uint32_t>(names.size() - 1);
    name_index.emplace(name, index);
    return index;
  }

  Entry summary_of(const SpoolRecord& record) {
    Entry e;
    e.queued_at_ms = record.queued_at_ms;
    e.data_size = record.data_size;
    e.recipients = static_cast<uint32_t>(record.recipients.size());
    e.service = intern(record.service);
    e.role = intern(record.role);
    e.ingress = record.ingress;
    return e;
  }

  // The summary as a QueuedMessage (no state yet).
  QueuedMessage queued_message(const std::string& id, const Entry& e) const {
    QueuedMessage m;
    m.record.id = id;
    m.record.service = names[e.service];
    m.record.role = names[e.role];
    m.record.ingress = e.ingress;
    m.record.queued_at_ms = e.queued_at_ms;
    m.record.data_size = e.data_size;
    m.recipient_count = e.recipients;
    return m;
  }

  // One batch of what the spool held, in arrival order.
  void recovered_batch(std::vector<SpoolEntry> found) {
    for (SpoolEntry& e : found) {
      std::string id = e.record.id;
      if (e.state.state == MessageState::Failed) {
        Entry& kept = entries[id] = summary_of(e.record);
        kept.failed = std::make_unique<SpoolState>(std::move(e.state));
        ++resume.failed;
      } else if (scheduler->add(e.record, std::move(e.state))) {
        entries[id] = summary_of(e.record);
        ++resume.resumed;
      } else {
        resume.finished.push_back(id);  // nothing pending: delivered just before the crash
      }
    }
  }

  void recovered_all() {
    uint64_t now = wall_clock_ms();
    for (const std::string& id : resume.finished) {
      ++in_flight;
      store->remove(id, [weak = weak_from_this()](SpoolStatus) {
        if (auto self = weak.lock()) self->finished_one();
      });
    }
    log::info("spool_resumed", {{"path", store->path()},
                                {"messages", static_cast<uint64_t>(resume.resumed)},
                                {"failed", static_cast<uint64_t>(resume.failed)},
                                {"finished", static_cast<uint64_t>(resume.finished.size())}});
    resume = {};
    ready = true;
    refresh_gauges(now);
    arm(now);
  }

  bool id_taken(const std::string& id) const {
    return entries.contains(id) || pending_ids.contains(id);
  }

  // The message's own id when it is a safe file name not in use; client-made ids may repeat
  // or hold other characters, and then the spool id is one of ours.
  std::string spool_id_for(const std::string& message_id) const {
    std::string id = message_id;
    while (!is_safe_spool_id(id) || id_taken(id)) id = text::random_token(24);
    return id;
  }

  void put(SpoolRecord record, std::string data, EnqueueDone done) {
    std::weak_ptr<Impl> weak = weak_from_this();
    SpoolRecord kept = record;
    pending_ids.insert(kept.id);
    ++in_flight;
    store->put(std::move(record), std::move(data),
               [weak, kept = std::move(kept), done = std::move(done)](SpoolStatus status) mutable {
                 auto self = weak.lock();
                 std::string id = kept.id;
                 if (self) {
                   self->pending_ids.erase(id);
                   if (status.ok()) self->accepted(std::move(kept));
                 }
                 done(std::move(status), id);
                 if (self) self->finished_one();
               });
  }

  void accepted(SpoolRecord record) {
    std::string id = record.id;
    SpoolState state = fresh_spool_state(record);
    if (!scheduler->add(record, state)) return;
    entries[id] = summary_of(record);
    if (!stopping || draining) arm(wall_clock_ms());
  }

  // The summary and the current state; see SpoolQueue::find().
  std::optional<QueuedMessage> find(std::string_view id) const {
    auto it = entries.find(id);
    if (it == entries.end()) return std::nullopt;
    QueuedMessage m = queued_message(it->first, it->second);
    if (it->second.failed) {
      m.state = *it->second.failed;
      m.shown = MessageState::Failed;
      return m;
    }
    std::optional<SpoolState> state = scheduler->state(id);
    if (!state) return std::nullopt;
    m.state = std::move(*state);
    m.shown = scheduler->state_of(id, wall_clock_ms()).value_or(m.state.state);
    return m;
  }

  // ---- sending ----

  void arm(uint64_t now) {
    if (!ready || (stopping && !draining)) return;
    std::optional<uint64_t> at = scheduler->next_wake(now);
    if (!at) return;
    uint64_t delay = *at > now ? *at - now : 0;
    std::weak_ptr<Impl> weak = weak_from_this();
    wake_timer.start(delay, [weak] {
      if (auto self = weak.lock()) self->wake();
    });
  }

  void wake() {
    uint64_t now = wall_clock_ms();
    Scheduler::Due due = scheduler->due(now);
    for (Scheduler::Expired& expired : due.expired) expire(std::move(expired), now);
    for (const std::string& id : due.send) send(id);
    arm(now);
  }

  void send(const std::string& id) {
    ++in_flight;
    std::weak_ptr<Impl> weak = weak_from_this();
    store->read_data(id, [weak, id](SpoolStatus status, SpoolMessage message) {
      auto self = weak.lock();
      if (!self) return;
      if (!status.ok()) return self->unreadable(id, status);
      self->deliver(id, std::move(message));
    });
  }

  void unreadable(const std::string& id, const SpoolStatus& status) {
    log::error("spool_unreadable",
               {{"id", id}, {"error", spool_errc_name(status.code)}, {"detail", status.detail}});
    scheduler->forget(id);
    entries.erase(id);
    finished_one();
  }

  void deliver(const std::string& id, SpoolMessage spooled) {
    std::optional<SpoolState> state = scheduler->state(id);
    if (!entries.contains(id) || !state) return finished_one();  // deleted meanwhile
    if (state->recipients.size() != spooled.record.recipients.size()) {
      return unreadable(id, {SpoolErrc::Corrupt, "recipient count changed on disk"});
    }
    auto record = std::make_shared<const SpoolRecord>(std::move(spooled.record));
    OutboundMessage message;
    message.id = id;
    message.envelope_from = record->envelope_from;
    message.smtputf8 = record->smtputf8;
    message.eight_bit = record->eight_bit;
    std::vector<size_t> tried;
    for (size_t i = 0; i < record->recipients.size(); ++i) {
      if (state->recipients[i].state != RecipientState::Pending) continue;
      tried.push_back(i);
      message.envelope_rcpts.push_back(record->recipients[i].address);
    }
    std::shared_ptr<Runtime> rt = runtime ? runtime() : nullptr;
    Transport* transport = rt ? rt->transport(record->service) : nullptr;
    if (transport == nullptr) {
      DeliveryResult none =
          delivery_failure(DeliveryStatus::ConnectionRefused,
                           "service " + record->service + " not configured", true);
      return delivered(*record, std::move(tried), none);
    }
    message.data = std::move(spooled.data);
    std::weak_ptr<Impl> weak = weak_from_this();
    // Each attempt goes along the service's fallback list (issue 9): a retry may go out
    // through a fallback, and the first attempt already does when the service cannot take it.
    deliver_with_failover(rt, record->service, std::move(message),
                          [weak, rt, record, tried = std::move(tried)](DeliveryResult r) mutable {
                            auto self = weak.lock();
                            if (self) self->delivered(*record, std::move(tried), r);
                          });
  }

  // `record` as read from disk for this delivery.
  void delivered(const SpoolRecord& record, std::vector<size_t> tried, const DeliveryResult& r) {
    const std::string& id = record.id;
    std::optional<SpoolState> state = scheduler->state(id);
    if (!entries.contains(id) || !state) return finished_one();
    std::vector<RecipientAttempt> attempts = attempts_from(r, record, tried, *state);
    uint64_t now = wall_clock_ms();
    Scheduler::Settled settled = scheduler->on_result(id, attempts, now);
    const char* result = attempt_result(attempts);
    metrics::count_delivery_attempt(r.delivered_via.empty() ? record.service : r.delivered_via,
                                    result);
    log_attempt(record, settled.state, r, result);
    if (!settled.known) return finished_one();
    if (!settled.failed_now.empty()) bounce_from_disk(id, settled.state, settled.failed_now, now);
    persist(id, std::move(settled), now);
  }

  void persist(const std::string& id, Scheduler::Settled settled, uint64_t now) {
    bool any_failed =
        std::any_of(settled.state.recipients.begin(), settled.state.recipients.end(),
                    [](const RecipientStatus& s) { return s.state == RecipientState::Failed; });
    std::weak_ptr<Impl> weak = weak_from_this();
    auto after = [weak](SpoolStatus status) {
      auto self = weak.lock();
      if (!self) return;
      if (!status.ok()) {
        log::error("spool_write_failed",
                   {{"error", spool_errc_name(status.code)}, {"detail", status.detail}});
      }
      self->finished_one();
    };
    if (settled.finished && !any_failed) {
      entries.erase(id);
      store->remove(id, std::move(after));
      return;
    }
    if (settled.finished) {
      settled.state.state = MessageState::Failed;
      settled.state.failed_at_ms = now;
      if (auto it = entries.find(id); it != entries.end()) {
        it->second.failed = std::make_unique<SpoolState>(settled.state);
      }
    }
    store->update_state(id, std::move(settled.state), std::move(after));
  }

  void finished_one() {
    if (in_flight > 0) --in_flight;
    maybe_shutdown_done();
    if (!stopping || draining) arm(wall_clock_ms());
  }

  void log_attempt(const SpoolRecord& record, const SpoolState& state, const DeliveryResult& r,
                   const char* result) {
    log::Field code("upstream_code", r.smtp_code ? std::to_string(*r.smtp_code) : "null");
    code.quoted = false;
    log::info("delivery", {{"id", record.id},
                           {"service", record.service},
                           {"delivered_via", r.delivered_via},
                           {"role", record.role},
                           {"attempt", static_cast<uint64_t>(state.attempts)},
                           {"result", result},
                           {"state", message_state_name(state.state)},
                           {"status", delivery_status_name(r.status)},
                           code,
                           {"upstream_reply", r.smtp_code ? r.smtp_reply : r.message},
                           {"upstream_seconds", r.upstream_seconds}});
    for (const RecipientOutcome& rejected : r.rejected) {
      log::warn("recipient_rejected", {{"id", record.id},
                                       {"recipient", rejected.address},
                                       {"upstream_code", rejected.smtp_code},
                                       {"upstream_reply", rejected.smtp_reply}});
    }
  }

  // ---- failures for good ----

  void expire(Scheduler::Expired expired, uint64_t now) {
    auto it = entries.find(expired.id);
    if (it == entries.end()) return;
    log::warn("spool_expired", {{"id", expired.id},
                                {"service", names[it->second.service]},
                                {"recipients", static_cast<uint64_t>(expired.failed_now.size())}});
    bounce_from_disk(expired.id, expired.state, expired.failed_now, now);
    Scheduler::Settled settled;
    settled.known = true;
    settled.finished = true;
    settled.state = std::move(expired.state);
    ++in_flight;
    persist(expired.id, std::move(settled), now);
  }

  // The DSN needs the original's headers (or all of it): read back from the spool, where a
  // failed message stays for keep_failed.
  void bounce_from_disk(const std::string& id, SpoolState state, std::vector<size_t> failed,
                        uint64_t now) {
    if (config.bounces == SpoolBounces::None) return;
    ++in_flight;
    std::weak_ptr<Impl> weak = weak_from_this();
    store->read_data(id, [weak, id, state = std::move(state), failed = std::move(failed), now](
                             SpoolStatus status, SpoolMessage message) {
      auto self = weak.lock();
      if (!self) return;
      if (status.ok() && self->entries.contains(id)) {
        self->bounce(message.record, state, failed, message.data, now);
      } else if (!status.ok()) {
        log::error("dsn_failed", {{"original", id}, {"error", spool_errc_name(status.code)}});
      }
      self->finished_one();
    });
  }

  // Spools a DSN for the recipients that failed for good, when one is wanted (SPEC §7.1).
  void bounce(const SpoolRecord& record, const SpoolState& state, const std::vector<size_t>& failed,
              const std::string& original, uint64_t now) {
    if (config.bounces == SpoolBounces::None || record.envelope_from.empty()) return;
    if (record.identity == kDsnIdentity) return;  // a DSN is never bounced
    DsnInput in;
    std::shared_ptr<Runtime> rt = runtime ? runtime() : nullptr;
    in.reporting_mta = rt ? rt->hostname : std::string("localhost");
    in.from = Mailbox{"MAILER-DAEMON@" + in.reporting_mta, "Mail Delivery System"};
    in.to = config.bounces == SpoolBounces::Address ? config.bounce_address : record.envelope_from;
    in.envid = record.envid;
    in.arrival_unix = static_cast<int64_t>(record.queued_at_ms / 1000);
    in.now_unix = static_cast<int64_t>(now / 1000);
    in.ret = record.ret;
    in.original = original;
    for (size_t index : failed) {
      const SpoolRecipient& rcpt = record.recipients[index];
      if (!dsn_wanted_for_failure(record.envelope_from, rcpt.notify)) continue;
      const RecipientStatus& status = state.recipients[index];
      in.recipients.push_back(
          {rcpt.address, rcpt.orcpt, status.smtp_code, status.smtp_reply, {}, {}});
    }
    if (in.recipients.empty()) return;
    Result<OutboundMessage> dsn = build_dsn(in);
    if (!dsn.ok()) {
      log::error("dsn_failed", {{"id", record.id}, {"error", dsn.error().message}});
      return;
    }
    Submission s;
    s.submitter = {record.ingress, record.role, std::string(kDsnIdentity), ""};
    s.service = record.service;
    s.message = std::move(dsn.value());
    std::string original_id = record.id;
    enqueue(std::move(s), [original_id](SpoolStatus status, const std::string& dsn_id) {
      if (status.ok()) {
        log::info("dsn_queued", {{"id", dsn_id}, {"original", original_id}});
      } else {
        log::error(
            "dsn_failed",
            {{"id", dsn_id}, {"original", original_id}, {"error", spool_errc_name(status.code)}});
      }
    });
  }

  void enqueue(Submission s, EnqueueDone done) {
    if (!ready) return done({SpoolErrc::NotReady, "spool not recovered yet"}, "");
    uint64_t now = wall_clock_ms();
    SpoolRecord record = record_of(s, spool_id_for(s.message.id), now);
    put(std::move(record), std::move(s.message.data), std::move(done));
  }

  // ---- upkeep ----

  void refresh_gauges(uint64_t now) {
    std::map<MessageState, size_t> counts = scheduler->counts(now);
    size_t failed = 0;
    uint64_t oldest = now;
    for (const auto& [id, entry] : entries) {
      if (entry.failed) {
        ++failed;
      } else {
        oldest = std::min(oldest, entry.queued_at_ms);
      }
    }
    counts[MessageState::Failed] = failed;
    for (const auto& [state, n] : counts) {
      metrics::set_spool_messages(message_state_name(state), static_cast<int64_t>(n));
    }
    SpoolStats stats = store->stats();
    metrics::set_spool_bytes(stats.bytes);
    metrics::set_spool_fsyncs(stats.file_fsyncs + stats.dir_fsyncs);
    metrics::set_spool_oldest_seconds(static_cast<double>(now - oldest) / 1000.0);
    purge_failed(now);
  }

  void purge_failed(uint64_t now) {
    std::vector<std::string> old;
    for (const auto& [id, entry] : entries) {
      if (entry.failed && entry.failed->failed_at_ms + config.keep_failed_ms <= now) {
        old.push_back(id);
      }
    }
    for (const std::string& id : old) {
      entries.erase(id);
      ++in_flight;
      store->remove(id, [weak = weak_from_this()](SpoolStatus) {
        if (auto self = weak.lock()) self->finished_one();
      });
    }
  }

  void start_gauges() {
    std::weak_ptr<Impl> weak = weak_from_this();
    gauge_timer.start(
        kGaugeRefreshMs,
        [weak] {
          if (auto self = weak.lock()) self->refresh_gauges(wall_clock_ms());
        },
        kGaugeRefreshMs);
  }

  // ---- stop ----

  size_t waiting() const {
    size_t n = 0;
    for (const auto& [id, entry] : entries) n += entry.failed ? 0 : 1;
    return n;
  }

  void maybe_shutdown_done() {
    if (!stopping || !shutdown_done || in_flight > 0) return;
    if (draining && waiting() > 0) {
      uint64_t now = wall_clock_ms();
      std::optional<uint64_t> at = scheduler->next_wake(now);
      if (at && *at <= now) return;  // more to send right now
    }
    finish_shutdown();
  }

  void finish_shutdown() {
    wake_timer.stop();
    gauge_timer.stop();
    size_t left = waiting();
    if (left > 0) {
      std::string ids;
      for (const auto& [id, entry] : entries) {
        if (entry.failed || ids.size() > 2000) continue;
        if (!ids.empty()) ids.push_back(',');
        ids += id;
      }
      log::info(draining ? "spool_left_lost_to_instance" : "spool_left",
                {{"messages", static_cast<uint64_t>(left)}, {"ids", ids}});
    }
    auto done = std::move(shutdown_done);
    shutdown_done = nullptr;
    if (done) done();
  }
};

Result<std::shared_ptr<SpoolQueue>> SpoolQueue::open(uv_loop_t* loop, const Config& config,
                                                     RuntimeSource runtime) {
  if (!config.spool) return make_error("spool: no spool section");
  auto store = SpoolStore::open(loop, config.spool->path, config.spool->max_bytes);
  if (!store.ok()) return store.error();
  auto impl = std::make_shared<Impl>(loop, std::move(runtime), config);
  impl->store = std::move(store.value());
  return std::shared_ptr<SpoolQueue>(new SpoolQueue(std::move(impl)));
}

SpoolQueue::SpoolQueue(std::shared_ptr<Impl> impl) : impl_(std::move(impl)) {}

SpoolQueue::~SpoolQueue() = default;

void SpoolQueue::start(std::function<void(SpoolStatus)> done) {
  std::weak_ptr<Impl> weak = impl_;
  ++impl_->in_flight;
  impl_->store->recover(
      kRecoverBatch,
      [weak](std::vector<SpoolEntry> batch) {
        if (auto self = weak.lock()) self->recovered_batch(std::move(batch));
      },
      [weak, done = std::move(done)](SpoolStatus status) mutable {
        auto self = weak.lock();
        if (!self) return;
        if (!status.ok()) {
          done(std::move(status));
        } else {
          self->recovered_all();
#ifdef __GLIBC__
          // Recovery read the records on pool threads (their own malloc arenas) and has
          // freed them: give those pages back rather than keep them as resident memory.
          ::malloc_trim(0);
#endif
          self->start_gauges();
          done({});
        }
        self->finished_one();
      });
}

void SpoolQueue::enqueue(Submission submission, EnqueueDone done) {
  impl_->enqueue(std::move(submission), std::move(done));
}

bool SpoolQueue::full() const {
  return impl_->store->full();
}

std::vector<QueuedMessage> SpoolQueue::list(const QueueQuery& query,
                                            std::string* next_cursor) const {
  const Impl& m = *impl_;
  std::vector<QueuedMessage> out;
  if (next_cursor) next_cursor->clear();
  auto it = query.after.empty() ? m.entries.begin() : m.entries.upper_bound(query.after);
  for (; it != m.entries.end(); ++it) {
    const Impl::Entry& e = it->second;
    if (!query.role.empty() && m.names[e.role] != query.role) continue;
    if (!query.service.empty() && m.names[e.service] != query.service) continue;
    std::optional<QueuedMessage> found = find(it->first);
    if (!found) continue;
    if (query.state && found->shown != *query.state) continue;
    if (out.size() == query.limit) {
      if (next_cursor && !out.empty()) *next_cursor = out.back().record.id;
      return out;
    }
    out.push_back(std::move(*found));
  }
  return out;
}

std::optional<QueuedMessage> SpoolQueue::find(std::string_view id) const {
  return impl_->find(id);
}

void SpoolQueue::read(std::string_view id,
                      std::function<void(std::optional<QueuedMessage>)> done) const {
  if (!impl_->entries.contains(id)) return done(std::nullopt);
  std::weak_ptr<const Impl> weak = impl_;
  impl_->store->read_record(
      std::string(id), [weak, done = std::move(done)](SpoolStatus status, SpoolMessage message) {
        auto self = weak.lock();
        if (!self) return;
        if (!status.ok()) return done(std::nullopt);
        // The state as it is now (a delivery may have ended while the file was
        // read).
        std::optional<QueuedMessage> now = self->find(message.record.id);
        if (now) {
          now->recipient_count = message.record.recipients.size();
          now->record = std::move(message.record);
        }
        done(std::move(now));
      });
}

QueueOpResult SpoolQueue::retry(std::string_view id) {
  std::optional<QueuedMessage> m = find(id);
  if (!m) return QueueOpResult::NotFound;
  if (m->shown != MessageState::Deferred || !impl_->scheduler->retry_now(id, wall_clock_ms())) {
    return QueueOpResult::NotDeferred;
  }
  impl_->arm(wall_clock_ms());
  return QueueOpResult::Done;
}

void SpoolQueue::remove(std::string_view id, std::function<void(QueueOpResult)> done) {
  auto it = impl_->entries.find(id);
  if (it == impl_->entries.end()) return done(QueueOpResult::NotFound);
  std::string key(id);
  impl_->scheduler->forget(key);
  impl_->entries.erase(it);
  impl_->store->remove(key, [key, done = std::move(done)](SpoolStatus status) {
    if (status.ok() || status.code == SpoolErrc::NotFound) return done(QueueOpResult::Done);
    log::error("spool_remove_failed", {{"id", key}, {"error", status.detail}});
    done(QueueOpResult::Failed);
  });
}

void SpoolQueue::shutdown(bool drain, std::function<void()> done) {
  impl_->stopping = true;
  impl_->draining = drain && impl_->ready;
  impl_->shutdown_done = std::move(done);
  if (impl_->draining) {
    // Deliver what can be delivered now: deferred messages get one more try.
    uint64_t now = wall_clock_ms();
    for (const auto& [id, entry] : impl_->entries) {
      if (!entry.failed) impl_->scheduler->retry_now(id, now);
    }
    impl_->arm(now);
  } else {
    impl_->wake_timer.stop();
  }
  impl_->maybe_shutdown_done();
}

void SpoolQueue::stop_now() {
  impl_->draining = false;
  impl_->wake_timer.stop();
  if (impl_->shutdown_done && impl_->in_flight == 0) impl_->finish_shutdown();
}

}  // namespace mailcar
