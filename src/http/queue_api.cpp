#include "http/queue_api.hpp"

#include <optional>
#include <utility>
#include <vector>

#include "mailcar/log.hpp"
#include "mailcar/probe.hpp"
#include "mailcar/spool.hpp"

namespace mailcar::http {
namespace {

constexpr std::string_view kQueuePath = "/queue";
constexpr size_t kDefaultLimit = 100;
constexpr size_t kMaxLimit = 1000;

// What a queue path names: the list (no id), one message, or its retry.
struct QueueTarget {
  std::string id;
  bool retry = false;
  bool list() const { return id.empty(); }
  const char* allow() const {
    if (retry) return "POST";
    return list() ? "GET" : "GET, DELETE";
  }
};

// The path is already percent-decoded by the request parser; an id that is not a safe
// spool id can name no message (404).
std::optional<QueueTarget> parse_target(std::string_view path) {
  std::string_view rest = path.substr(kQueuePath.size());
  if (rest.empty() || rest == "/") return QueueTarget{};
  rest.remove_prefix(1);
  QueueTarget target;
  if (size_t slash = rest.find('/'); slash != std::string_view::npos) {
    if (rest.substr(slash) != "/retry") return std::nullopt;
    target.retry = true;
    rest = rest.substr(0, slash);
  }
  if (!is_safe_spool_id(rest)) return std::nullopt;
  target.id.assign(rest);
  return target;
}

// Who calls, and what they may see.
struct QueueCaller {
  ApiCaller api;
  std::string role;
  bool all = false;  // queue: all
  bool may_see(const QueuedMessage& m) const { return all || m.record.role == role; }
};

std::optional<MessageState> parse_state(std::string_view name) {
  for (MessageState s : {MessageState::Queued, MessageState::Held, MessageState::Sending,
                         MessageState::Deferred, MessageState::Failed}) {
    if (name == message_state_name(s)) return s;
  }
  return std::nullopt;
}

std::optional<size_t> parse_limit(std::string_view text) {
  if (text.empty() || text.size() > 4) return std::nullopt;
  size_t n = 0;
  for (char c : text) {
    if (c < '0' || c > '9') return std::nullopt;
    n = n * 10 + static_cast<size_t>(c - '0');
  }
  if (n < 1 || n > kMaxLimit) return std::nullopt;
  return n;
}

void append_time(std::string& out, uint64_t unix_ms) {
  if (unix_ms == 0) {
    out.append("null");
    return;
  }
  out.push_back('"');
  out.append(log::rfc3339_utc(unix_ms));
  out.push_back('"');
}

void append_field(std::string& out, const char* name, std::string_view value) {
  out.append(",\"");
  out.append(name);
  out.append("\":");
  log::append_json_string(out, value);
}

void append_recipients(std::string& out, const QueuedMessage& m) {
  out.append(",\"recipients\":[");
  for (size_t i = 0; i < m.record.recipients.size(); ++i) {
    RecipientStatus status;
    if (i < m.state.recipients.size()) status = m.state.recipients[i];
    if (i > 0) out.push_back(',');
    out.append("{\"email\":");
    log::append_json_string(out, m.record.recipients[i].address);
    append_field(out, "state", recipient_state_name(status.state));
    out.append(",\"smtp_code\":");
    out.append(status.smtp_code ? std::to_string(status.smtp_code) : "null");
    out.append(",\"smtp_reply\":");
    if (status.smtp_code || !status.smtp_reply.empty()) {
      log::append_json_string(out, status.smtp_reply);
    } else {
      out.append("null");
    }
    out.push_back('}');
  }
  out.push_back(']');
}

HttpResponse not_found(std::string_view id) {
  return error_response(404, "Message '" + std::string(id) + "' not found.");
}

HttpResponse forbidden(const QueueCaller& caller) {
  return error_response(403, "Role '" + caller.role +
                                 "' may only read its own messages: retry and delete need a "
                                 "role with 'queue: all'.");
}

void handle_list(const HttpRequest& request, SpoolQueue& spool, const QueueCaller& caller,
                 Respond& respond) {
  QueueQuery query;
  if (auto s = request.query_param("state"); s && !s->empty()) {
    query.state = parse_state(*s);
    if (!query.state) {
      respond(error_response(400, "state: must be one of queued, held, sending, deferred, failed.",
                             field_context("state")));
      return;
    }
  }
  if (auto l = request.query_param("limit"); l && !l->empty()) {
    auto limit = parse_limit(*l);
    if (!limit) {
      respond(error_response(400, "limit: must be a whole number from 1 to 1000.",
                             field_context("limit")));
      return;
    }
    query.limit = *limit;
  } else {
    query.limit = kDefaultLimit;
  }
  if (auto s = request.query_param("service")) query.service.assign(*s);
  if (auto a = request.query_param("after")) query.after.assign(*a);
  if (!caller.all) query.role = caller.role;
  std::string next;
  std::vector<QueuedMessage> messages = spool.list(query, &next);
  std::string body = "{\"messages\":[";
  for (size_t i = 0; i < messages.size(); ++i) {
    if (i > 0) body.push_back(',');
    body.append(queued_message_json(messages[i], false));
  }
  body.append("],\"next\":");
  if (next.empty()) {
    body.append("null");
  } else {
    log::append_json_string(body, next);
  }
  body.push_back('}');
  respond(json_response(200, std::move(body)));
}

// One message in full (its recipients are read back from the spool), answered later.
void respond_full(SpoolQueue& spool, const std::string& id, Respond respond) {
  spool.read(id, [id, respond = std::move(respond)](std::optional<QueuedMessage> m) {
    respond(m ? json_response(200, queued_message_json(*m, true)) : not_found(id));
  });
}

void handle_retry(SpoolQueue& spool, const QueuedMessage& m, const QueueCaller& caller,
                  const std::string& remote, Respond& respond) {
  const std::string& id = m.record.id;
  switch (spool.retry(id)) {
    case QueueOpResult::Done:
      break;
    case QueueOpResult::NotDeferred:
      respond(error_response(409, "Message '" + id + "' is " + message_state_name(m.shown) +
                                      ", not deferred: only a deferred message can be retried."));
      return;
    case QueueOpResult::NotFound:
    case QueueOpResult::Failed:
      respond(not_found(id));
      return;
  }
  log::info("queue_retry", {{"id", id},
                            {"service", m.record.service},
                            {"role", caller.role},
                            {"identity", caller.api.identity()},
                            {"remote", remote}});
  respond_full(spool, id, std::move(respond));
}

void handle_delete(SpoolQueue& spool, const QueuedMessage& m, const QueueCaller& caller,
                   const std::string& remote, Respond& respond) {
  spool.remove(m.record.id, [id = m.record.id, service = m.record.service, owner = m.record.role,
                             role = caller.role, identity = caller.api.identity(), remote,
                             respond = std::move(respond)](QueueOpResult result) {
    if (result == QueueOpResult::NotFound) return respond(not_found(id));
    if (result == QueueOpResult::Failed) {
      return respond(error_response(500, "Message '" + id + "' could not be removed."));
    }
    log::info("queue_delete", {{"id", id},
                               {"service", service},
                               {"message_role", owner},
                               {"role", role},
                               {"identity", identity},
                               {"remote", remote}});
    std::string body = "{\"id\":";
    log::append_json_string(body, id);
    body.append(",\"deleted\":true}");
    respond(json_response(200, std::move(body)));
  });
}

// One message: read, retry or delete.
void handle_message(const HttpRequest& request, SpoolQueue& spool, const QueueTarget& target,
                    const QueueCaller& caller, const std::string& remote, Respond& respond) {
  std::optional<QueuedMessage> m = spool.find(target.id);
  if (!m || !caller.may_see(*m)) return respond(not_found(target.id));
  if (request.method == "GET") return respond_full(spool, target.id, std::move(respond));
  if (!caller.all) return respond(forbidden(caller));
  if (target.retry) return handle_retry(spool, *m, caller, remote, respond);
  handle_delete(spool, *m, caller, remote, respond);
}

bool method_allowed(const QueueTarget& target, std::string_view method) {
  if (target.retry) return method == "POST";
  if (target.list()) return method == "GET";
  return method == "GET" || method == "DELETE";
}

}  // namespace

bool is_queue_path(std::string_view path) {
  return path == kQueuePath || path.starts_with("/queue/");
}

void handle_queue(const HttpRequest& request, const std::shared_ptr<Runtime>& runtime,
                  Respond respond, const std::string& remote) {
  if (!runtime || !runtime->config) return respond(error_response(503, "Not ready."));
  if (!runtime->spool) {
    return respond(error_response(404, "Resource not found: the queue API needs spool mode."));
  }
  std::optional<QueueTarget> target = parse_target(request.path);
  if (!target) return respond(error_response(404, "Resource not found."));
  if (!method_allowed(*target, request.method)) {
    return respond(method_not_allowed(target->allow()));
  }
  const Config& config = *runtime->config;
  QueueCaller caller{authenticate(request, config), {}, false};
  if (caller.api.credential == nullptr) {
    return respond(unauthorized(caller.api, remote, request.path, {}));
  }
  caller.role = caller.api.credential->role;
  const RoleConfig* role = config.find_role(caller.role);
  caller.all = role != nullptr && role->queue_all;
  // The spool outlives reloads; keep it alive for a DELETE answered later.
  std::shared_ptr<SpoolQueue> spool = runtime->spool;
  if (target->list()) return handle_list(request, *spool, caller, respond);
  handle_message(request, *spool, *target, caller, remote, respond);
}

namespace {

// Probes (issue 9, SPEC §9.3): the last check of every relayed service; false when one is
// not ok (or was never checked).
bool append_services(std::string& out, const Config& config) {
  bool all_ok = true;
  out.append("\"services\":{");
  bool first = true;
  for (const ServiceConfig& s : config.services) {
    if (s.driver != ServiceDriver::Smtp) continue;
    if (!first) out.push_back(',');
    first = false;
    std::optional<UpstreamCheck> check = upstream_health().last(s.name);
    all_ok = all_ok && check && check->ok;
    log::append_json_string(out, s.name);
    out.append(check && check->ok ? ":{\"ok\":true" : ":{\"ok\":false");
    out.append(",\"checked_at\":");
    append_time(out, check ? check->checked_at_ms : 0);
    out.append(",\"latency_ms\":");
    out.append(check ? std::to_string(check->latency_ms) : std::string("null"));
    out.append(",\"error\":");
    if (check && check->ok) {
      out.append("null");
    } else {
      log::append_json_string(out, check ? check->error : std::string("not checked yet"));
    }
    out.push_back('}');
  }
  out.push_back('}');
  return all_ok;
}

}  // namespace

HttpResponse ready_upstream(const Runtime* runtime) {
  if (runtime == nullptr || !runtime->config) return error_response(503, "Not ready.");
  const bool spool_full = runtime->spool && runtime->spool->full();
  std::string services;
  const bool services_ok = append_services(services, *runtime->config);
  const bool ok = !spool_full && services_ok;
  std::string body = ok ? "{\"status\":\"ready\"" : "{\"status\":\"not ready\"";
  if (runtime->spool) body.append(spool_full ? ",\"spool\":\"full\"" : ",\"spool\":\"ok\"");
  body.push_back(',');
  body.append(services);
  body.push_back('}');
  return json_response(ok ? 200 : 503, std::move(body));
}

std::string queued_message_json(const QueuedMessage& m, bool recipients) {
  const SpoolRecord& r = m.record;
  std::string out = "{\"id\":";
  log::append_json_string(out, r.id);
  append_field(out, "service", r.service);
  append_field(out, "role", r.role);
  append_field(out, "ingress", ingress_name(r.ingress));
  append_field(out, "state", message_state_name(m.shown));
  out.append(",\"size\":");
  out.append(std::to_string(r.data_size));
  out.append(",\"queued_at\":");
  append_time(out, r.queued_at_ms);
  out.append(",\"attempts\":");
  out.append(std::to_string(m.state.attempts));
  out.append(",\"next_attempt\":");
  append_time(out, m.shown == MessageState::Failed ? 0 : m.state.next_attempt_ms);
  out.append(",\"last_reply\":");
  if (m.state.last_reply.empty()) {
    out.append("null");
  } else {
    log::append_json_string(out, m.state.last_reply);
  }
  if (recipients) {
    append_recipients(out, m);
  } else {
    out.append(",\"recipient_count\":");
    out.append(std::to_string(m.recipient_count));
  }
  out.push_back('}');
  return out;
}

}  // namespace mailcar::http
