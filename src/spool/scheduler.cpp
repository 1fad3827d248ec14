// The spool's delivery scheduler; see mailcar/spool.hpp. Pure: time comes in as arguments.
#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include "mailcar/spool.hpp"

namespace mailcar {

namespace {
constexpr std::string_view kExpiredReply = "delivery time expired (spool.max_age)";
}

struct Scheduler::Impl {
  enum class Where : uint8_t { Ready, Waiting, Sending };
  struct Entry;
  using Entries = std::map<std::string, Entry, std::less<>>;
  struct BySeq {
    bool operator()(const Entry* a, const Entry* b) const { return a->seq < b->seq; }
  };
  // One per message, the node of `entries` (stable address; the id is the map key, not a
  // second copy). A message never attempted has no SpoolState at all: 100,000 held messages
  // cost a map node and a ready-set node each (SpoolState.state follows `where`).
  struct Entry {
    uint32_t service = 0;
    uint32_t recipients = 0;
    Where where = Where::Ready;
    uint64_t seq = 0;
    uint64_t queued_at = 0;
    const std::string* id = nullptr;  // the key of this entry's node
    std::multimap<uint64_t, Entry*>::iterator wait_it;
    // Null while fresh. Its `recipients` stays empty while all of them are untouched.
    std::unique_ptr<SpoolState> state;
  };
  struct Service {
    std::string name;
    std::set<Entry*, BySeq> ready;  // by arrival
    unsigned in_flight = 0;
    unsigned limit = 1;
    uint64_t held_until = 0;  // the quota said no until then
  };

  SchedulerOptions opt;
  std::mt19937_64 rng{std::random_device{}()};
  Entries entries;
  Entries forgotten;  // deleted while sending
  std::vector<Service> services;
  std::map<std::string, size_t, std::less<>> service_index;
  std::multimap<uint64_t, Entry*> waiting;  // by next attempt
  uint64_t next_seq = 0;

  size_t service_of(const std::string& name) {
    auto it = service_index.find(name);
    if (it != service_index.end()) return it->second;
    Service s;
    s.name = name;
    auto c = opt.connections.find(name);
    s.limit = c == opt.connections.end() ? 1 : std::max(1u, c->second);
    services.push_back(std::move(s));
    service_index.emplace(name, services.size() - 1);
    return services.size() - 1;
  }

  uint64_t expiry(const Entry& e) const { return e.queued_at + opt.max_age_ms; }

  static MessageState state_of_where(Where w) {
    switch (w) {
      case Where::Waiting:
        return MessageState::Deferred;
      case Where::Sending:
        return MessageState::Sending;
      case Where::Ready:
        break;
    }
    return MessageState::Queued;
  }

  // The entry's state, made real (allocated, recipients filled in) for a change.
  static SpoolState& full_state(Entry& e) {
    if (!e.state) e.state = std::make_unique<SpoolState>();
    if (e.state->recipients.empty()) e.state->recipients.resize(e.recipients);
    e.state->state = state_of_where(e.where);
    return *e.state;
  }

  static SpoolState copy_state(const Entry& e) {
    SpoolState s = e.state ? *e.state : SpoolState{};
    if (s.recipients.empty()) s.recipients.resize(e.recipients);
    s.state = state_of_where(e.where);
    return s;
  }

  static size_t pending(const Entry& e) {
    if (!e.state || e.state->recipients.empty()) return e.recipients;
    return std::count_if(
        e.state->recipients.begin(), e.state->recipients.end(),
        [](const RecipientStatus& r) { return r.state == RecipientState::Pending; });
  }

  double random() {
    if (opt.random) return opt.random();
    return std::uniform_real_distribution<double>(0.0, 1.0)(rng);
  }

  uint64_t retry_delay(uint32_t attempts) {
    if (opt.retry_ms.empty()) opt.retry_ms = {60'000};
    size_t i = std::min<size_t>(attempts == 0 ? 0 : attempts - 1, opt.retry_ms.size() - 1);
    double factor = 1.0 + opt.jitter * (2.0 * random() - 1.0);
    long long ms = std::llround(static_cast<double>(opt.retry_ms[i]) * factor);
    return ms < 1 ? 1 : static_cast<uint64_t>(ms);
  }

  void make_ready(Entry& e) {
    e.where = Where::Ready;
    services[e.service].ready.insert(&e);
  }

  void make_waiting(Entry& e, uint64_t at) {
    e.where = Where::Waiting;
    full_state(e).next_attempt_ms = at;
    e.wait_it = waiting.emplace(at, &e);
  }

  void unlink(Entry& e) {
    if (e.where == Where::Ready) services[e.service].ready.erase(&e);
    if (e.where == Where::Waiting) waiting.erase(e.wait_it);
  }

  static void fail_pending(SpoolState& s, uint64_t now, std::vector<size_t>& failed_now) {
    for (size_t i = 0; i < s.recipients.size(); ++i) {
      RecipientStatus& r = s.recipients[i];
      if (r.state != RecipientState::Pending) continue;
      r.state = RecipientState::Failed;
      r.smtp_code = 0;
      r.smtp_reply = std::string(kExpiredReply);
      failed_now.push_back(i);
    }
    s.state = MessageState::Failed;
    s.failed_at_ms = now;
    s.last_reply = std::string(kExpiredReply);
  }

  // Expires the heads of a service's queue that are past max_age.
  void expire_heads(Service& s, uint64_t now, Due& out) {
    while (!s.ready.empty() && now >= expiry(**s.ready.begin())) {
      Entry* e = *s.ready.begin();
      s.ready.erase(s.ready.begin());
      Expired& x = out.expired.emplace_back(Expired{*e->id, copy_state(*e), {}});
      fail_pending(x.state, now, x.failed_now);
      entries.erase(entries.find(*e->id));
    }
  }

  void hand_out(Service& s, uint64_t now, Due& out) {
    while (s.in_flight < s.limit && !s.ready.empty() && now >= s.held_until) {
      Entry* e = *s.ready.begin();
      if (opt.quota) {
        QuotaDecision d = opt.quota(s.name, pending(*e), now);
        if (!d.allowed) {
          s.held_until = now + std::max<uint64_t>(1, d.retry_after_ms);
          return;
        }
      }
      s.ready.erase(s.ready.begin());
      e->where = Where::Sending;
      ++s.in_flight;
      out.send.push_back(*e->id);
    }
  }

  // A state as given to add() that says nothing a fresh message would not: no state kept.
  static bool is_fresh(const SpoolState& s) {
    return s.attempts == 0 && s.next_attempt_ms == 0 && s.last_reply.empty() &&
           s.failed_at_ms == 0 &&
           std::all_of(s.recipients.begin(), s.recipients.end(),
                       [](const RecipientStatus& r) { return r == RecipientStatus{}; });
  }

  // Applies one attempt's replies; returns whether any recipient is still pending.
  static bool apply_attempts(SpoolState& s, const std::vector<RecipientAttempt>& attempts,
                             std::vector<size_t>& failed_now) {
    std::string last;
    for (const RecipientAttempt& a : attempts) {
      if (a.index >= s.recipients.size()) continue;
      RecipientStatus& r = s.recipients[a.index];
      if (r.state != RecipientState::Pending) continue;
      r.smtp_code = a.smtp_code;
      r.smtp_reply = a.smtp_reply;
      bool ok = a.smtp_code >= 200 && a.smtp_code < 300;
      if (ok) {
        r.state = RecipientState::Sent;
      } else if (a.smtp_code >= 500 && a.smtp_code < 600) {
        r.state = RecipientState::Failed;
        failed_now.push_back(a.index);
      }
      if (last.empty() || !ok) {
        last = a.smtp_code == 0 ? a.smtp_reply : std::to_string(a.smtp_code) + " " + a.smtp_reply;
      }
    }
    if (!last.empty()) s.last_reply = std::move(last);
    return std::any_of(s.recipients.begin(), s.recipients.end(),
                       [](const RecipientStatus& r) { return r.state == RecipientState::Pending; });
  }
};

std::vector<RecipientAttempt> attempts_for_pending(const SpoolState& state, int smtp_code,
                                                   std::string_view smtp_reply) {
  std::vector<RecipientAttempt> out;
  for (size_t i = 0; i < state.recipients.size(); ++i) {
    if (state.recipients[i].state == RecipientState::Pending) {
      out.push_back({i, smtp_code, std::string(smtp_reply)});
    }
  }
  return out;
}

Scheduler::Scheduler(SchedulerOptions options) : impl_(std::make_unique<Impl>()) {
  impl_->opt = std::move(options);
}

Scheduler::~Scheduler() = default;

bool Scheduler::add(const SpoolRecord& record, SpoolState state) {
  Impl& m = *impl_;
  if (m.entries.count(record.id) != 0 || m.forgotten.count(record.id) != 0) return false;
  if (state.state == MessageState::Failed) return false;
  if (state.recipients.size() != record.recipients.size()) state = fresh_spool_state(record);
  bool pending =
      std::any_of(state.recipients.begin(), state.recipients.end(),
                  [](const RecipientStatus& r) { return r.state == RecipientState::Pending; });
  if (!pending) return false;
  auto it = m.entries.try_emplace(record.id).first;
  Impl::Entry& e = it->second;
  e.id = &it->first;
  e.service = static_cast<uint32_t>(m.service_of(record.service));
  e.seq = m.next_seq++;
  e.queued_at = record.queued_at_ms;
  e.recipients = static_cast<uint32_t>(record.recipients.size());
  bool deferred = state.next_attempt_ms > 0 && state.state == MessageState::Deferred;
  if (!Impl::is_fresh(state)) {
    bool untouched = std::all_of(state.recipients.begin(), state.recipients.end(),
                                 [](const RecipientStatus& r) { return r == RecipientStatus{}; });
    if (untouched) std::vector<RecipientStatus>().swap(state.recipients);  // frees it
    e.state = std::make_unique<SpoolState>(std::move(state));
  }
  if (deferred) {
    m.make_waiting(e, std::min(e.state->next_attempt_ms, m.expiry(e)));
  } else {
    m.make_ready(e);
  }
  return true;
}

Scheduler::Due Scheduler::due(uint64_t now_ms) {
  Impl& m = *impl_;
  Due out;
  while (!m.waiting.empty() && m.waiting.begin()->first <= now_ms) {
    Impl::Entry* e = m.waiting.begin()->second;
    m.waiting.erase(m.waiting.begin());
    m.make_ready(*e);
  }
  for (Impl::Service& s : m.services) {
    m.expire_heads(s, now_ms, out);
    m.hand_out(s, now_ms, out);
  }
  return out;
}

std::optional<uint64_t> Scheduler::next_wake(uint64_t now_ms) const {
  const Impl& m = *impl_;
  std::optional<uint64_t> best;
  auto consider = [&](uint64_t t) { best = best ? std::min(*best, t) : t; };
  if (!m.waiting.empty()) consider(m.waiting.begin()->first);
  for (const Impl::Service& s : m.services) {
    if (s.ready.empty()) continue;
    consider(m.expiry(**s.ready.begin()));
    if (s.in_flight < s.limit) consider(std::max(now_ms, s.held_until));
  }
  return best;
}

Scheduler::Settled Scheduler::on_result(std::string_view id,
                                        const std::vector<RecipientAttempt>& attempts,
                                        uint64_t now_ms) {
  Impl& m = *impl_;
  Settled out;
  auto it = m.entries.find(id);
  if (it == m.entries.end() || it->second.where != Impl::Where::Sending) {
    if (auto f = m.forgotten.find(id); f != m.forgotten.end()) {
      --m.services[f->second.service].in_flight;
      m.forgotten.erase(f);
    }
    return out;
  }
  Impl::Entry& e = it->second;
  --m.services[e.service].in_flight;
  out.known = true;
  SpoolState& state = Impl::full_state(e);
  ++state.attempts;
  bool pending = Impl::apply_attempts(state, attempts, out.failed_now);
  if (pending && now_ms >= m.expiry(e)) {
    Impl::fail_pending(state, now_ms, out.failed_now);
    pending = false;
  }
  if (!pending) {
    out.finished = true;
    bool failed =
        std::any_of(state.recipients.begin(), state.recipients.end(),
                    [](const RecipientStatus& r) { return r.state == RecipientState::Failed; });
    state.state = failed ? MessageState::Failed : MessageState::Queued;
    if (failed && state.failed_at_ms == 0) state.failed_at_ms = now_ms;
    out.state = std::move(state);
    m.entries.erase(it);
    return out;
  }
  uint64_t next = std::min(now_ms + m.retry_delay(state.attempts), m.expiry(e));
  m.make_waiting(e, next);
  out.state = Impl::copy_state(e);
  return out;
}

bool Scheduler::retry_now(std::string_view id, uint64_t now_ms) {
  Impl& m = *impl_;
  auto it = m.entries.find(id);
  if (it == m.entries.end()) return false;
  Impl::Entry& e = it->second;
  if (e.where == Impl::Where::Sending) return false;
  if (e.where == Impl::Where::Waiting) {
    m.waiting.erase(e.wait_it);
    Impl::full_state(e).next_attempt_ms = now_ms;
    m.make_ready(e);
  }
  return true;
}

void Scheduler::forget(std::string_view id) {
  Impl& m = *impl_;
  auto it = m.entries.find(id);
  if (it == m.entries.end()) return;
  if (it->second.where == Impl::Where::Sending) {
    m.forgotten.insert(m.entries.extract(it));  // the node moves, addresses stay
  } else {
    m.unlink(it->second);
    m.entries.erase(it);
  }
}

std::optional<MessageState> Scheduler::state_of(std::string_view id, uint64_t now_ms) const {
  const Impl& m = *impl_;
  auto it = m.entries.find(id);
  if (it == m.entries.end()) return std::nullopt;
  const Impl::Entry& e = it->second;
  if (e.where != Impl::Where::Ready) return Impl::state_of_where(e.where);
  return m.services[e.service].held_until > now_ms ? MessageState::Held : MessageState::Queued;
}

std::optional<SpoolState> Scheduler::state(std::string_view id) const {
  auto it = impl_->entries.find(id);
  if (it == impl_->entries.end()) return std::nullopt;
  return Impl::copy_state(it->second);
}

std::map<MessageState, size_t> Scheduler::counts(uint64_t now_ms) const {
  const Impl& m = *impl_;
  std::map<MessageState, size_t> out = {{MessageState::Queued, 0},
                                        {MessageState::Held, 0},
                                        {MessageState::Sending, 0},
                                        {MessageState::Deferred, m.waiting.size()}};
  size_t in_flight = 0;
  for (const Impl::Service& s : m.services) {
    out[s.held_until > now_ms ? MessageState::Held : MessageState::Queued] += s.ready.size();
    in_flight += s.in_flight;
  }
  out[MessageState::Sending] = in_flight - std::min(in_flight, m.forgotten.size());
  return out;
}

size_t Scheduler::size() const {
  return impl_->entries.size();
}

}  // namespace mailcar
