#include "http/api_handler.hpp"

#include <simdjson.h>

#include <algorithm>
#include <chrono>
#include <utility>
#include <vector>

#include "http/attachment_fetch.hpp"
#include "http/message_features.hpp"
#include "http/queue_api.hpp"
#include "mailcar/address.hpp"
#include "mailcar/crypto.hpp"
#include "mailcar/idempotency.hpp"
#include "mailcar/log.hpp"
#include "mailcar/metrics.hpp"
#include "mailcar/mime.hpp"
#include "mailcar/submission.hpp"
#include "mailcar/text.hpp"

namespace mailcar::http {
namespace {

using simdjson::dom::array;
using simdjson::dom::element;
using simdjson::dom::element_type;
using simdjson::dom::object;

constexpr std::string_view kApiPrefix = "/api/v2/";
// A parser that grew past this for one big body is dropped afterwards, so an idle
// keep-alive connection does not hold a large buffer.
constexpr size_t kKeepJsonCapacity = 1 << 20;
// Retry-After when the spool is full: space returns when deliveries leave the spool.
constexpr int kSpoolFullRetrySeconds = 30;

// A 400 that names the field at fault.
struct FieldError {
  std::string field;
  std::string message;
};

using StringMap = std::map<std::string, std::string, std::less<>>;

// The request's fields after type checks, before defaults and templates.
struct SendFields {
  std::vector<Mailbox> to, cc, bcc;
  std::string subject, body_text, body_html;
  std::string from_name, from_email, reply_to_name, reply_to_email;
  std::vector<Attachment> attachments;
  StringMap template_data;
  StringMap top_level_strings;  // template fallback, but for the string fields above
  FeatureFields features;       // issue 10: template, template_id, attachment, import_url
  // The string fields above that the request sent as strings (bit i: kStringFields[i]) and,
  // of those, the ones it sent empty: they are template values too, read from the members
  // rather than copied; an empty one stays empty for templates even when a named template
  // fills the member later.
  unsigned strings_given = 0;
  unsigned strings_empty = 0;
};

// The top-level string fields read into SendFields members.
constexpr std::pair<std::string_view, std::string SendFields::*> kStringFields[] = {
    {"subject", &SendFields::subject},
    {"body_text", &SendFields::body_text},
    {"body_html", &SendFields::body_html},
    {"from_name", &SendFields::from_name},
    {"from_email", &SendFields::from_email},
    {"reply_to_name", &SendFields::reply_to_name},
    {"reply_to_email", &SendFields::reply_to_email}};

// The index in kStringFields of `key`, or -1.
int string_field_index(std::string_view key) {
  for (size_t i = 0; i < std::size(kStringFields); ++i) {
    if (kStringFields[i].first == key) return static_cast<int>(i);
  }
  return -1;
}

// The string of an element whose type was already checked.
std::string_view string_of(element e) {
  std::string_view s;
  if (e.get_string().get(s) != simdjson::SUCCESS) return {};
  return s;
}

bool has_cr_or_lf(std::string_view s) {
  return s.find_first_of("\r\n") != std::string_view::npos;
}

std::string type_error(std::string_view field, std::string_view expected) {
  return std::string(field) + ": must be " + std::string(expected);
}

std::optional<FieldError> read_string(element value, std::string_view field, std::string& out) {
  if (value.type() == element_type::NULL_VALUE) return std::nullopt;
  std::string_view s;
  if (value.get_string().get(s) != simdjson::SUCCESS) {
    return FieldError{std::string(field), type_error(field, "a string")};
  }
  out.assign(s);
  return std::nullopt;
}

std::optional<FieldError> read_mailbox(element value, std::string_view field,
                                       std::vector<Mailbox>& out) {
  Mailbox mailbox;
  if (value.type() == element_type::STRING) {
    mailbox.address.assign(string_of(value));
  } else if (object obj; value.get_object().get(obj) == simdjson::SUCCESS) {
    element email;
    if (obj.at_key("email").get(email) != simdjson::SUCCESS ||
        email.type() != element_type::STRING) {
      return FieldError{std::string(field), std::string(field) + ": email must be a string"};
    }
    mailbox.address.assign(string_of(email));
    element name;
    if (obj.at_key("name").get(name) == simdjson::SUCCESS) {
      if (auto e = read_string(name, std::string(field) + ".name", mailbox.name)) {
        e->field = field;
        return e;
      }
    }
  } else {
    return FieldError{std::string(field),
                      type_error(field, "an address, an {email, name} object or an array of them")};
  }
  out.push_back(std::move(mailbox));
  return std::nullopt;
}

std::optional<FieldError> read_recipients(element value, std::string_view field,
                                          std::vector<Mailbox>& out) {
  switch (value.type()) {
    case element_type::NULL_VALUE:
      return std::nullopt;
    case element_type::ARRAY: {
      array items;
      if (value.get_array().get(items) != simdjson::SUCCESS) return std::nullopt;
      for (element item : items) {
        if (item.type() == element_type::ARRAY) {
          return FieldError{std::string(field), std::string(field) + ": nested arrays not allowed"};
        }
        if (auto e = read_mailbox(item, field, out)) return e;
      }
      return std::nullopt;
    }
    default:
      return read_mailbox(value, field, out);
  }
}

std::optional<FieldError> read_attachments(element value, std::vector<Attachment>& out) {
  if (value.type() == element_type::NULL_VALUE) return std::nullopt;
  array items;
  if (value.get_array().get(items) != simdjson::SUCCESS) {
    return FieldError{"attachments", type_error("attachments", "an array")};
  }
  size_t index = 0;
  for (element item : items) {
    std::string label = "attachments[" + std::to_string(index++) + "]";
    object obj;
    if (item.get_object().get(obj) != simdjson::SUCCESS) {
      return FieldError{"attachments", type_error(label, "an object")};
    }
    Attachment attachment;
    std::string_view content;  // base64, decoded straight from the document
    element e;
    if (obj.at_key("name").get(e) != simdjson::SUCCESS || e.type() != element_type::STRING) {
      return FieldError{"attachments", label + ".name: must be a string"};
    }
    attachment.filename.assign(string_of(e));
    if (obj.at_key("content").get(e) != simdjson::SUCCESS || e.type() != element_type::STRING) {
      return FieldError{"attachments", label + ".content: must be a base64 string"};
    }
    content = string_of(e);
    if (obj.at_key("content_type").get(e) == simdjson::SUCCESS) {
      if (auto err = read_string(e, label + ".content_type", attachment.content_type)) {
        err->field = "attachments";
        return err;
      }
    }
    if (attachment.content_type.empty()) attachment.content_type = "application/octet-stream";
    if (has_cr_or_lf(attachment.filename) || has_cr_or_lf(attachment.content_type)) {
      return FieldError{"attachments", label + " (" + attachment.filename +
                                           "): name and content_type must not contain CR or LF"};
    }
    auto decoded = text::base64_decode(content);
    if (!decoded) {
      return FieldError{"attachments",
                        label + " (" + attachment.filename + "): content is not valid base64"};
    }
    attachment.data = std::move(*decoded);
    out.push_back(std::move(attachment));
  }
  return std::nullopt;
}

std::optional<FieldError> read_template_data(element value, StringMap& out) {
  if (value.type() == element_type::NULL_VALUE) return std::nullopt;
  object obj;
  if (value.get_object().get(obj) != simdjson::SUCCESS) {
    return FieldError{"template_data", type_error("template_data", "an object")};
  }
  for (auto [key, item] : obj) {
    std::string text;
    switch (item.type()) {
      case element_type::STRING:
        text.assign(string_of(item));
        break;
      case element_type::INT64:
      case element_type::UINT64:
      case element_type::DOUBLE:
        text = simdjson::minify(item);
        break;
      case element_type::BOOL: {
        bool b = false;
        if (item.get_bool().get(b) != simdjson::SUCCESS) b = false;
        text = b ? "true" : "false";
        break;
      }
      case element_type::NULL_VALUE:
        break;
      default:
        return FieldError{"template_data", "template_data." + std::string(key) +
                                               ": must be a string, number or boolean"};
    }
    out.insert_or_assign(std::string(key), std::move(text));
  }
  return std::nullopt;
}

// Type-checks every known field; unknown fields are ignored (DreamFactory compatibility), except
// those DreamFactory reads and mailcar cannot honour (message_features.hpp).
std::optional<FieldError> read_fields(object root, SendFields& f) {
  for (auto [key, value] : root) {
    std::optional<FieldError> e;
    if (int i = string_field_index(key); i >= 0) {
      e = read_string(value, key, f.*kStringFields[i].second);
      if (!e && value.type() == element_type::STRING) f.strings_given |= 1u << i;
    } else if (key == "to") {
      e = read_recipients(value, key, f.to);
    } else if (key == "cc") {
      e = read_recipients(value, key, f.cc);
    } else if (key == "bcc") {
      e = read_recipients(value, key, f.bcc);
    } else if (key == "attachments") {
      e = read_attachments(value, f.attachments);
    } else if (key == "template_data") {
      e = read_template_data(value, f.template_data);
    } else if (key == "api_key") {
      std::string ignored;
      e = read_string(value, key, ignored);
    } else if (std::optional<FeatureError> fe; read_feature_field(key, value, f.features, fe)) {
      if (fe) e = FieldError{std::move(fe->field), std::move(fe->message)};
    }
    if (e) return e;
    // The key itself is never a template value (it would land in a message).
    if (key != "api_key" && value.type() == element_type::STRING && string_field_index(key) < 0) {
      f.top_level_strings.insert_or_assign(std::string(key), std::string(string_of(value)));
    }
  }
  for (size_t i = 0; i < std::size(kStringFields); ++i) {
    if ((f.*kStringFields[i].second).empty()) f.strings_empty |= 1u << i;
  }
  return std::nullopt;
}

// Subject and bodies when none holds a placeholder: the bodies are moved, not copied (a
// 100 KB body would be a 100 KB copy). Nothing else reads them afterwards.
bool take_plain_content(SendFields& f, size_t max_bytes, MessageContent& content) {
  if (f.subject.size() + f.body_text.size() + f.body_html.size() > max_bytes) return false;
  content.subject = f.subject;
  if (!f.body_text.empty()) content.body_text = std::move(f.body_text);
  if (!f.body_html.empty()) content.body_html = std::move(f.body_html);
  return true;
}

// Templates: template_data first, then top-level string fields; one pass. Subject and bodies
// together may hold `max_bytes` once expanded; false as soon as they would hold more.
bool expand_templates(SendFields& f, size_t max_bytes, MessageContent& content) {
  constexpr auto npos = std::string::npos;
  if (f.subject.find('{') == npos && f.body_text.find('{') == npos &&
      f.body_html.find('{') == npos) {
    return take_plain_content(f, max_bytes, content);
  }
  auto lookup = [&f](std::string_view k) -> const std::string* {
    if (auto it = f.template_data.find(k); it != f.template_data.end()) return &it->second;
    if (auto it = f.top_level_strings.find(k); it != f.top_level_strings.end()) {
      return &it->second;
    }
    static const std::string kEmpty;
    int i = string_field_index(k);
    if (i < 0 || (f.strings_given & (1u << i)) == 0) return nullptr;
    return (f.strings_empty & (1u << i)) != 0 ? &kEmpty : &(f.*kStringFields[i].second);
  };
  auto subject = expand_template(f.subject, lookup, max_bytes);
  if (!subject) return false;
  content.subject = std::move(*subject);
  max_bytes -= content.subject.size();
  for (auto [in, out] :
       {std::pair{&f.body_text, &content.body_text}, std::pair{&f.body_html, &content.body_html}}) {
    if (in->empty()) continue;
    auto body = expand_template(*in, lookup, max_bytes);
    if (!body) return false;
    max_bytes -= body->size();
    *out = std::move(*body);
  }
  return true;
}

// The credential whose API key is `key` (index counted from 1 for logs), or null. Every
// configured key is compared, match or not, so timing does not tell which matched.
const CredentialConfig* find_credential(const Config& config, std::string_view key, size_t& index) {
  const CredentialConfig* found = nullptr;
  for (size_t i = 0; i < config.credentials.size(); ++i) {
    const auto& c = config.credentials[i];
    bool equal = text::constant_time_equal(c.api_key, key);
    equal = equal && !c.api_key.empty();
    if (equal && found == nullptr) {
      found = &c;
      index = i + 1;
    }
  }
  return found;
}

// Parses `body`, in place when the request parser left room for simdjson's padding (no copy).
simdjson::error_code parse_json(simdjson::dom::parser& parser, const std::string& body,
                                element& root) {
  static_assert(kBodyPadding >= simdjson::SIMDJSON_PADDING);
  bool padded = body.capacity() - body.size() >= simdjson::SIMDJSON_PADDING;
  return parser.parse(body.data(), body.size(), !padded).get(root);
}

// A parser that grew past kKeepJsonCapacity for one big body is replaced by a fresh one, so
// neither the document nor an idle keep-alive connection holds a large buffer.
void drop_grown_parser(std::unique_ptr<simdjson::dom::parser>& parser) {
  if (parser->capacity() > kKeepJsonCapacity) parser = std::make_unique<simdjson::dom::parser>();
}

// Validates an address in place (trimmed form; a copy only when there was something to trim).
std::optional<FieldError> check_address_field(std::string& address, std::string_view field) {
  auto valid = check_address(address);
  if (!valid) {
    return FieldError{std::string(field),
                      "Invalid address in " + std::string(field) + ": " + valid.error().message};
  }
  if (valid->size() != address.size()) address = std::string(*valid);
  return std::nullopt;
}

// Validates each address in place (trimmed form) and refuses CR/LF in names.
std::optional<FieldError> check_mailboxes(std::vector<Mailbox>& list, std::string_view field) {
  for (auto& m : list) {
    if (has_cr_or_lf(m.name)) {
      return FieldError{std::string(field),
                        std::string(field) + ": name must not contain CR or LF"};
    }
    if (auto e = check_address_field(m.address, field)) return e;
  }
  return std::nullopt;
}

bool is_json_content_type(std::optional<std::string_view> content_type) {
  if (!content_type) return false;
  std::string_view media = content_type->substr(0, content_type->find(';'));
  return text::iequals_ascii(text::trim(media), "application/json");
}

uint64_t ceil_seconds(uint64_t ms) {
  return (ms + 999) / 1000;
}

const char* default_failure_message(DeliveryStatus s) {
  switch (s) {
    case DeliveryStatus::ConnectionRefused:
      return "Connection refused";
    case DeliveryStatus::ConnectionTimedOut:
      return "Connection timed out";
    case DeliveryStatus::CertificateError:
      return "Certificate error";
    case DeliveryStatus::AuthenticationFailed:
      return "Authentication failed";
    case DeliveryStatus::TlsUnavailable:
      return "STARTTLS not offered by the upstream";
    case DeliveryStatus::Rejected:
      return "Rejected by the upstream";
    case DeliveryStatus::ProtocolError:
      return "Upstream protocol error";
    case DeliveryStatus::ShuttingDown:
      return "Shutting down";
    case DeliveryStatus::Sent:
      break;
  }
  return "Delivery failed";
}

HttpResponse delivery_failure(const DeliveryResult& result) {
  std::string context = "{\"smtp_code\":";
  if (result.smtp_code) {
    context.append(std::to_string(*result.smtp_code));
    context.append(",\"smtp_reply\":");
    log::append_json_string(context, result.smtp_reply);
  } else {
    context.append("null,\"smtp_reply\":null");
  }
  context.append(",\"retryable\":");
  context.append(result.retryable ? "true" : "false");
  if (!result.oauth2_error.empty()) {  // issue 9: the token endpoint's error
    context.append(",\"oauth2_error\":");
    log::append_json_string(context, result.oauth2_error);
  }
  context.push_back('}');
  int status = result.status == DeliveryStatus::ShuttingDown ? 503 : 500;
  std::string_view message = result.message.empty()
                                 ? std::string_view(default_failure_message(result.status))
                                 : std::string_view(result.message);
  return error_response(status, message, context);
}

HttpResponse delivery_success(const DeliveryResult& result, const std::string& id, bool captured) {
  std::string body = "{\"count\":" + std::to_string(result.accepted.size()) + ",\"id\":";
  log::append_json_string(body, id);
  if (captured) body.append(",\"captured\":true");  // SPEC §10.4
  if (!result.delivered_via.empty()) {              // failover (issue 9): the service that took it
    body.append(",\"delivered_via\":");
    log::append_json_string(body, result.delivered_via);
  }
  if (!result.rejected.empty()) {
    body.append(",\"rejected\":[");
    bool first = true;
    for (const auto& r : result.rejected) {
      if (!first) body.push_back(',');
      first = false;
      body.append("{\"email\":");
      log::append_json_string(body, r.address);
      body.append(",\"smtp_code\":");
      body.append(std::to_string(r.smtp_code));
      body.append(",\"smtp_reply\":");
      log::append_json_string(body, r.smtp_reply);
      // As in a failure's context: a 4xx refusal may pass later, a 5xx will not (issue 13).
      body.append(",\"retryable\":");
      body.append(r.smtp_code >= 400 && r.smtp_code < 500 ? "true" : "false");
      body.push_back('}');
    }
    body.push_back(']');
  }
  body.push_back('}');
  return json_response(200, std::move(body));
}

HttpResponse rate_limited(const PolicyDecision& decision) {
  auto r = error_response(429, "API limit(s) exceeded.");
  r.headers.emplace_back(
      "Retry-After", std::to_string(std::max<uint64_t>(1, ceil_seconds(decision.retry_after_ms))));
  r.headers.emplace_back("X-RateLimit-Limit", std::to_string(decision.limit));
  r.headers.emplace_back("X-RateLimit-Remaining", std::to_string(decision.remaining));
  r.headers.emplace_back("X-RateLimit-Reset", std::to_string(ceil_seconds(decision.reset_ms)));
  return r;
}

// The HTTP face of a submission's answer (SPEC §4).
HttpResponse response_for(const SubmissionResult& result) {
  switch (result.status) {
    case SubmissionStatus::Sent:
      return delivery_success(result.delivery, result.id, result.captured);
    case SubmissionStatus::Queued: {
      std::string body = "{\"count\":" + std::to_string(result.recipients) + ",\"id\":";
      log::append_json_string(body, result.id);
      body.append(",\"queued\":true}");
      return json_response(202, std::move(body));
    }
    case SubmissionStatus::NoSpace: {
      auto r = error_response(503, "The spool cannot take the message now; try again later.",
                              "{\"retryable\":true}");
      r.headers.emplace_back("Retry-After", std::to_string(kSpoolFullRetrySeconds));
      return r;
    }
    case SubmissionStatus::Refused:
      return error_response(403,
                            result.decision.reason.empty() ? "Forbidden." : result.decision.reason);
    case SubmissionStatus::RateLimited:
      return rate_limited(result.decision);
    case SubmissionStatus::Unavailable:  // 503: the delivery says shutting down / not ready
    case SubmissionStatus::Failed:
    case SubmissionStatus::Rejected:
      break;
  }
  return delivery_failure(result.delivery);
}

}  // namespace

bool head_authenticates(const HttpRequest& request, const Config& config) {
  // Without a body key: the query or header key (which wins whatever the body says), else a
  // Bearer token (used only when the body has no key, but it proves the client holds one).
  return authenticate(request, config).credential != nullptr;
}

namespace {

// One left-to-right pass over a template: `emit` gets each piece of the output in order and
// returns false to stop (then so does the pass).
template <typename Emit>
bool walk_template(std::string_view text,
                   const std::function<const std::string*(std::string_view)>& lookup, Emit&& emit) {
  size_t i = 0;
  while (i < text.size()) {
    size_t open = text.find('{', i);
    if (open == std::string_view::npos) break;
    if (!emit(text.substr(i, open - i))) return false;
    size_t close = text.find('}', open + 1);
    if (close == std::string_view::npos) {
      i = open;
      break;
    }
    std::string_view key = text.substr(open + 1, close - open - 1);
    const std::string* value = key.find('{') == std::string_view::npos ? lookup(key) : nullptr;
    if (value != nullptr) {
      if (!emit(*value)) return false;
      i = close + 1;
    } else {
      // Not a known placeholder: keep the brace and rescan after it ("{{name}" works).
      if (!emit("{")) return false;
      i = open + 1;
    }
  }
  return emit(text.substr(i));
}

}  // namespace

std::optional<std::string> expand_template(
    std::string_view text, const std::function<const std::string*(std::string_view)>& lookup,
    size_t max_bytes) {
  // No placeholder: the text as it is.
  if (text.find('{') == std::string_view::npos) {
    if (text.size() > max_bytes) return std::nullopt;
    return std::string(text);
  }
  // Measured first, so nothing is allocated for an output over the limit and the output is
  // allocated once, at its size.
  size_t size = 0;
  bool fits = walk_template(text, lookup, [&size, max_bytes](std::string_view piece) {
    if (piece.size() > max_bytes - size) return false;
    size += piece.size();
    return true;
  });
  if (!fits) return std::nullopt;
  std::string out;
  out.reserve(size);
  walk_template(text, lookup, [&out](std::string_view piece) {
    out.append(piece);
    return true;
  });
  return out;
}

ApiCaller authenticate(const HttpRequest& request, const Config& config,
                       std::optional<std::string_view> body_key) {
  ApiCaller caller;
  if (auto q = request.query_param("api_key"); q && !q->empty()) {
    caller.key = q;
  } else if (auto h = request.header("x-dreamfactory-api-key"); h && !h->empty()) {
    caller.key = h;
  } else if (body_key && !body_key->empty()) {
    caller.key = body_key;
  } else if (auto a = request.header("authorization");
             a && text::istarts_with_ascii(*a, "bearer ")) {
    std::string_view bearer = text::trim(a->substr(7));
    if (!bearer.empty()) caller.key = bearer;
  }
  if (caller.key) caller.credential = find_credential(config, *caller.key, caller.index);
  return caller;
}

HttpResponse unauthorized(const ApiCaller& caller, const std::string& remote, std::string_view path,
                          std::string_view service) {
  const char* reason = caller.key ? "unknown API key" : "no API key";
  if (service.empty()) {
    log::warn("http_auth_failed", {{"remote", remote}, {"path", path}, {"reason", reason}});
  } else {
    log::warn("http_auth_failed", {{"remote", remote}, {"service", service}, {"reason", reason}});
  }
  return error_response(401, caller.key ? "Invalid API key." : "No API key provided.");
}

ApiHandler::ApiHandler(WallClock now_ms)
    : now_ms_(std::move(now_ms)), json_(std::make_unique<simdjson::dom::parser>()) {}

ApiHandler::~ApiHandler() = default;

void ApiHandler::handle(HttpRequest& request, std::shared_ptr<Runtime> runtime, Respond respond,
                        const std::string& remote) {
  std::string_view path = request.path;
  bool get = request.method == "GET";
  if (path == "/health") {
    respond(get ? json_response(200, "{\"status\":\"ok\"}") : method_not_allowed("GET"));
    return;
  }
  if (path == "/ready") {
    if (!get) {
      respond(method_not_allowed("GET"));
    } else if (runtime) {
      respond(json_response(200, "{\"status\":\"ready\"}"));
    } else {
      respond(error_response(503, "Not ready."));
    }
    return;
  }
  if (path == "/ready/upstream") {
    respond(get ? ready_upstream(runtime.get()) : method_not_allowed("GET"));
    return;
  }
  if (is_queue_path(path)) {
    handle_queue(request, runtime, std::move(respond), remote);
    return;
  }
  if (path == "/metrics") {
    if (!get) {
      respond(method_not_allowed("GET"));
      return;
    }
    HttpResponse r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = metrics::render_prometheus();
    respond(std::move(r));
    return;
  }
  if (path.substr(0, kApiPrefix.size()) == kApiPrefix) {
    std::string_view service = path.substr(kApiPrefix.size());
    if (!service.empty() && service.back() == '/') service.remove_suffix(1);
    if (service.empty() || service.find('/') != std::string_view::npos) {
      respond(error_response(404, "Resource not found."));
      return;
    }
    if (!runtime || !runtime->config) {
      respond(error_response(503, "Not ready."));
      return;
    }
    if (runtime->config->find_service(service) == nullptr) {
      respond(error_response(404, "Service '" + std::string(service) + "' not found."));
      return;
    }
    if (request.method != "POST") {
      respond(method_not_allowed("POST"));
      return;
    }
    handle_send(request, service, std::move(runtime), respond, remote);
    return;
  }
  respond(error_response(404, "Resource not found."));
}

namespace {

// The request body as JSON. Parsed before authentication because the key may be in the body;
// what a parse failure means is decided after 401 and 415.
struct ParsedBody {
  bool json_type = false;
  size_t size = 0;
  simdjson::error_code error = simdjson::UNINITIALIZED;
  object root;
  bool have_object = false;
};

// Parses the body, then frees it, or keeps its buffer in `spare` when it is small (a large
// one is not held by an idle keep-alive connection).
ParsedBody parse_body(HttpRequest& request, simdjson::dom::parser& parser, uint64_t body_limit,
                      std::string& spare) {
  ParsedBody b;
  b.json_type = is_json_content_type(request.header("content-type"));
  b.size = request.body.size();
  element root;
  if (b.json_type && b.size <= body_limit) {
    b.error = parse_json(parser, request.body, root);
    // The document holds copies of the strings it needs: the body is not needed any more.
    if (request.body.capacity() <= kKeepBodyCapacity &&
        request.body.capacity() > spare.capacity()) {
      request.body.clear();
      spare.swap(request.body);
    } else {
      std::string().swap(request.body);
    }
  }
  b.have_object =
      b.error == simdjson::SUCCESS && root.get_object().get(b.root) == simdjson::SUCCESS;
  return b;
}

using Answer = std::optional<HttpResponse>;  // set: the request is answered with it

// 413 / 401 / 415 / 413 / 400, in the SPEC's order, for what the head and the JSON say.
Answer check_caller_and_body(HttpRequest& request, const Config& config, const ParsedBody& body,
                             const std::string& remote, const ServiceConfig& service,
                             ApiCaller& caller) {
  std::optional<std::string_view> body_key;
  if (std::string_view k;
      body.have_object && body.root.at_key("api_key").get_string().get(k) == simdjson::SUCCESS) {
    body_key = k;
  }
  caller = authenticate(request, config, body_key);
  if (caller.credential == nullptr && request.body_over_limit && !caller.key) {
    // The key may be in the body that was never read: too large is all that is known.
    return error_response(413, "Request body too large.");
  }
  if (caller.credential == nullptr) return unauthorized(caller, remote, request.path, service.name);
  request.unauthenticated_lease.release();  // authenticated: the body is the caller's now
  if (!body.json_type) return error_response(415, "Content-Type must be application/json.");
  if (request.body_over_limit || body.size > body_limit_for(config.limits.max_message_bytes)) {
    return error_response(413, "Request body too large.");
  }
  if (body.error != simdjson::SUCCESS) {
    return error_response(400,
                          std::string("Malformed JSON: ") + simdjson::error_message(body.error));
  }
  if (!body.have_object) return error_response(400, "The request body must be a JSON object.");
  return std::nullopt;
}

// A 413 is a refusal like the others (issue 13): the same "message_refused" line and the
// `rejected` count. Before authentication the role is unknown (empty).
void record_if_too_large(const HttpResponse& response, const Submitter& submitter,
                         std::string_view service, uint64_t limit) {
  if (response.status != 413) return;
  record_refusal(submitter, service,
                 "message over max_message_bytes " + std::to_string(limit) + " (413)");
}

void record_if_too_large(const HttpResponse& response, const ApiCaller& caller,
                         const std::string& remote, std::string_view service, uint64_t limit) {
  if (response.status != 413) return;
  Submitter submitter{Ingress::Http, caller.credential ? caller.credential->role : "",
                      caller.credential ? caller.identity() : "unauthenticated", remote};
  record_if_too_large(response, submitter, service, limit);
}

HttpResponse bad_request(const FieldError& e) {
  return error_response(400, e.message, field_context(e.field));
}

// Issue 10 (SPEC §10.1): the named template fills what the request left empty; attachment
// references are judged against attachment_fetch.
Answer apply_message_features(const HttpRequest& request, const Config& config, SendFields& f) {
  TemplateChoice choice = choose_template(config, f.features, request.query_param("template"),
                                          request.query_param("template_id"));
  if (choice.error) return bad_request({choice.error->field, choice.error->message});
  if (choice.chosen != nullptr) {
    apply_template(*choice.chosen, {f.subject, f.body_text, f.body_html, f.from_name, f.from_email,
                                    f.reply_to_name, f.reply_to_email});
  }
  if (auto e = check_attachment_refs(config, f.features)) {
    return bad_request({e->field, e->message});
  }
  return std::nullopt;
}

// Subject and bodies with templates filled in. 413 ranks above 400: what the message must
// hold at least (bodies before templates, attachments as base64 without line breaks, which
// they always become) already over the limit is a 413 whatever else is wrong, and nothing is
// built for it.
Answer expand_content(SendFields& f, uint64_t limit, MessageContent& content) {
  uint64_t at_least = f.body_text.size() + f.body_html.size();
  for (const auto& attachment : f.attachments) at_least += (attachment.data.size() + 2) / 3 * 4;
  if (at_least > limit) {
    return error_response(413,
                          "Message too large: the limit is " + std::to_string(limit) + " bytes.");
  }
  if (!expand_templates(f, limit - at_least + f.body_text.size() + f.body_html.size(), content)) {
    return error_response(413, "Message too large after template expansion: the limit is " +
                                   std::to_string(limit) + " bytes.");
  }
  if (has_cr_or_lf(content.subject)) {
    return bad_request({"subject", "subject: must not contain CR or LF"});
  }
  if (f.to.empty() && f.cc.empty() && f.bcc.empty()) {
    return bad_request({"to", "No recipient: give at least one of to, cc or bcc."});
  }
  if (!content.body_text && !content.body_html) {
    return bad_request({"body_text", "Give body_text or body_html."});
  }
  return std::nullopt;
}

// Sender defaults, as DreamFactory: the service's pair fills in when the address is missing.
// Then every address is validated and names are checked for CR/LF.
Answer check_parties(SendFields& f, const ServiceConfig& service) {
  if (f.from_email.empty()) {
    f.from_email = service.from_email;
    if (f.from_name.empty()) f.from_name = service.from_name;
  }
  if (f.from_email.empty()) {
    return bad_request(
        {"from_email", "from_email: missing, and service " + service.name + " has no default."});
  }
  if (f.reply_to_email.empty()) {
    f.reply_to_email = service.reply_to_email;
    if (f.reply_to_name.empty()) f.reply_to_name = service.reply_to_name;
  }
  for (auto [value, field] :
       {std::pair{&f.from_name, "from_name"}, std::pair{&f.from_email, "from_email"},
        std::pair{&f.reply_to_name, "reply_to_name"},
        std::pair{&f.reply_to_email, "reply_to_email"}}) {
    if (has_cr_or_lf(*value)) {
      return bad_request({field, std::string(field) + ": must not contain CR or LF"});
    }
  }
  if (auto e = check_address_field(f.from_email, "from_email")) return bad_request(*e);
  if (!f.reply_to_email.empty()) {
    if (auto e = check_address_field(f.reply_to_email, "reply_to_email")) return bad_request(*e);
  }
  for (auto [list, field] :
       {std::pair{&f.to, "to"}, std::pair{&f.cc, "cc"}, std::pair{&f.bcc, "bcc"}}) {
    if (auto e = check_mailboxes(*list, field)) return bad_request(*e);
  }
  return std::nullopt;
}

// The wire form, holding the request's in-flight memory share from here on.
Answer build_outbound(MessageContent& content, const Runtime& runtime, uint64_t now,
                      MemoryLease& lease, uint64_t limit, OutboundMessage& out) {
  BuildOptions options;
  options.hostname = runtime.hostname;
  options.message_id = make_message_id(runtime.hostname, static_cast<int64_t>(now / 1000));
  options.date_unix = static_cast<int64_t>(now / 1000);
  options.addresses_checked = true;  // check_parties validated and trimmed every address
  auto built = build_message(content, options);
  if (!built) {
    const std::string& m = built.error().message;
    size_t colon = m.find(':');
    std::string field = colon == std::string::npos ? "" : m.substr(0, colon);
    return error_response(400, m, field.empty() ? "null" : field_context(field));
  }
  out = std::move(*built);
  // The parts are in the message now: only the envelope and header fields are needed further.
  std::vector<Attachment>().swap(content.attachments);
  content.body_text.reset();
  content.body_html.reset();
  out.memory = std::move(lease);  // travels with the message
  out.memory.resize(out.data.size());
  if (out.data.size() > limit) {
    return error_response(413, "Message too large: " + std::to_string(out.data.size()) +
                                   " bytes, the limit is " + std::to_string(limit) + ".");
  }
  return std::nullopt;
}

}  // namespace

namespace {

// ---- Idempotency keys (SPEC §10.3) ------------------------------------------------------------

// What a request is, for comparing a repeat with the first: the body and the query (but the
// API key: a role's clients may hold different keys). Only this hash is kept, never the body.
crypto::Sha256Digest request_hash(const HttpRequest& request) {
  crypto::Sha256 h;
  for (const auto& [name, value] : request.query) {
    if (name == "api_key") continue;
    h.update(name);
    h.update(std::string_view("\0", 1));
    h.update(value);
    h.update(std::string_view("\0", 1));
  }
  h.update("\n");
  h.update(request.body);
  return h.finish();
}

// 2xx and 4xx answers other than 429 are kept; 429 and 5xx are not (a retry may succeed).
bool kept_answer(int status) {
  return (status >= 200 && status < 300) || (status >= 400 && status < 500 && status != 429);
}

// Answers with `response`, keeping it under the claim first when it is kept (the persistent
// store answers once the answer is on disk).
void answer_claimed(IdempotencyClaim claim, HttpResponse response, uint64_t now_ms,
                    const Respond& respond) {
  if (!claim) return respond(std::move(response));
  if (!kept_answer(response.status)) {
    claim.complete(std::nullopt, now_ms, {});
    return respond(std::move(response));
  }
  IdempotentResponse kept{static_cast<uint16_t>(response.status), response.body};
  auto held = std::make_shared<HttpResponse>(std::move(response));
  claim.complete(std::move(kept), now_ms, [held, respond] { respond(std::move(*held)); });
}

HttpResponse idempotency_answer(const IdempotencyOutcome& out) {
  switch (out.verdict) {
    case IdempotencyVerdict::Replay: {
      HttpResponse r = json_response(out.response.status, out.response.body);
      r.headers.emplace_back("Idempotent-Replayed", "true");
      return r;
    }
    case IdempotencyVerdict::InFlight:
      return error_response(409, "A request with this Idempotency-Key is still in progress.");
    case IdempotencyVerdict::Mismatch:
      return error_response(422, "This Idempotency-Key was used with a different request.");
    case IdempotencyVerdict::Fresh:
    case IdempotencyVerdict::Full:
    case IdempotencyVerdict::Unavailable:
      break;
  }
  HttpResponse r = error_response(503, "Idempotency keys cannot be kept now; try again later.",
                                  "{\"retryable\":true}");
  r.headers.emplace_back("Retry-After", "5");
  return r;
}

// A request checked as far as it goes before delivery: its answer already, or its message.
// With attachment URLs (issue 10) the message is built once they are fetched: until then
// `content` and `lease` wait here.
struct Prepared {
  Answer answer;
  Submission submission;
  uint64_t now = 0;
  MessageContent content;
  MemoryLease lease;              // the request's in-flight memory share
  std::vector<std::string> urls;  // still to fetch
  std::string url_field;          // `attachment` or `import_url`
};

// Delivers a prepared request (or answers it) under `claim` (empty: no key).
void send_prepared(std::shared_ptr<Runtime> runtime, Prepared& p, IdempotencyClaim claim,
                   Respond respond) {
  if (p.answer) return answer_claimed(std::move(claim), std::move(*p.answer), p.now, respond);
  // The answer comes later, on the loop thread; the callback owns everything it needs. A
  // request without an Idempotency-Key holds no claim and allocates none.
  auto held = claim ? std::make_shared<IdempotencyClaim>(std::move(claim)) : nullptr;
  submit(std::move(runtime), std::move(p.submission), p.now,
         [held, now = p.now, respond = std::move(respond)](SubmissionResult result) {
           answer_claimed(held ? std::move(*held) : IdempotencyClaim(), response_for(result), now,
                          respond);
         });
}

// The wire form of a prepared request's message.
Answer build_prepared(const Runtime& runtime, Prepared& p) {
  const uint64_t limit = runtime.config->limits.max_message_bytes;
  if (Answer a = build_outbound(p.content, runtime, p.now, p.lease, limit, p.submission.message)) {
    return a;
  }
  p.submission.header_from = {p.content.from.address};
  return std::nullopt;
}

// Fields, templates, parties and the wire form of an authenticated request's JSON body (the
// wire form later when attachment URLs must be fetched first).
Answer prepare_message(HttpRequest& request, const ParsedBody& body, const ServiceConfig& service,
                       const Runtime& runtime, std::unique_ptr<simdjson::dom::parser>& json,
                       Prepared& p) {
  const uint64_t limit = runtime.config->limits.max_message_bytes;
  SendFields f;
  if (auto e = read_fields(body.root, f)) return bad_request(*e);
  drop_grown_parser(json);  // f holds what is needed; `body.root` must not be used from here on
  if (Answer a = apply_message_features(request, *runtime.config, f)) return a;
  MessageContent& content = p.content;
  if (Answer a = expand_content(f, limit, content)) return a;
  if (Answer a = check_parties(f, service)) return a;
  content.from = Mailbox{f.from_email, f.from_name};
  if (!f.reply_to_email.empty()) content.reply_to = Mailbox{f.reply_to_email, f.reply_to_name};
  content.to = std::move(f.to);
  content.cc = std::move(f.cc);
  content.bcc = std::move(f.bcc);
  content.attachments = std::move(f.attachments);
  p.lease = std::move(request.inflight_lease);
  for (AttachmentRef& ref : f.features.attachments) p.urls.push_back(std::move(ref.url));
  p.url_field = f.features.attachment_field;
  if (!p.urls.empty()) return std::nullopt;  // built once they are fetched (fetch_then_send)
  return build_prepared(runtime, p);
}

// Adds the fetched attachments to a prepared request's message and builds it.
Answer add_fetched(const Runtime& runtime, Prepared& p, std::vector<Attachment> fetched) {
  const uint64_t limit = runtime.config->limits.max_message_bytes;
  MessageContent& content = p.content;
  uint64_t at_least = (content.body_text ? content.body_text->size() : 0) +
                      (content.body_html ? content.body_html->size() : 0);
  for (Attachment& a : fetched) content.attachments.push_back(std::move(a));
  for (const auto& a : content.attachments) at_least += (a.data.size() + 2) / 3 * 4;
  if (at_least > limit) {  // not built at all: base64 alone is over the limit
    return error_response(413, "Message too large with the fetched attachments: the limit is " +
                                   std::to_string(limit) + " bytes.");
  }
  return build_prepared(runtime, p);
}

// Fetches a prepared request's attachment URLs first when it has any (issue 10), then delivers
// it (or answers with why the fetch failed: a 502, not kept under an Idempotency-Key).
void fetch_then_send(std::shared_ptr<Runtime> runtime, std::shared_ptr<Prepared> p,
                     IdempotencyClaim claim, Respond respond) {
  if (p->answer || p->urls.empty()) {
    return send_prepared(std::move(runtime), *p, std::move(claim), std::move(respond));
  }
  uv_loop_t* loop = runtime->loop;
  const AttachmentFetchConfig& config = *runtime->config->attachment_fetch;
  // The files count in the in-flight memory before they arrive: room for all of them, but
  // never more than a message may hold.
  const LimitsConfig& limits = runtime->config->limits;
  const uint64_t room =
      std::min<uint64_t>(p->urls.size() * config.max_bytes, limits.max_message_bytes);
  if (!p->lease.grow_to(p->lease.bytes() + room, limits.max_inflight_bytes)) {
    log::warn("http_body_refused", {{"reason", "max_inflight_bytes"}, {"field", p->url_field}});
    HttpResponse busy =
        error_response(503, "Too much mail in flight; try again later.", "{\"retryable\":true}");
    busy.headers.emplace_back("Retry-After", "5");
    p->answer = std::move(busy);
    return send_prepared(std::move(runtime), *p, std::move(claim), std::move(respond));
  }
  auto held = std::make_shared<IdempotencyClaim>(std::move(claim));
  fetch_attachments(
      loop, config, p->url_field, std::move(p->urls), room,
      [runtime, p, held, respond = std::move(respond)](
          std::vector<Attachment> fetched, std::optional<FetchFailure> failure) mutable {
        p->answer =
            failure ? error_response(failure->status, failure->message, field_context(p->url_field))
                    : add_fetched(*runtime, *p, std::move(fetched));
        // Files that took the message over the limit: refused like any other 413.
        if (p->answer) {
          record_if_too_large(*p->answer, p->submission.submitter, p->submission.service,
                              runtime->config->limits.max_message_bytes);
        }
        send_prepared(std::move(runtime), *p, std::move(*held), std::move(respond));
      });
}

}  // namespace

void ApiHandler::handle_send(HttpRequest& request, std::string_view service_name,
                             std::shared_ptr<Runtime> runtime, Respond& respond,
                             const std::string& remote) {
  const Config& config = *runtime->config;
  const ServiceConfig& service = *config.find_service(service_name);
  // The key and the request's hash, before parsing frees the body.
  std::optional<std::string> key;
  crypto::Sha256Digest hash{};
  if (auto k = request.header("idempotency-key")) {
    key.emplace(*k);
    hash = request_hash(request);
  }
  ParsedBody body =
      parse_body(request, *json_, body_limit_for(config.limits.max_message_bytes), spare_body_);
  struct ParserReset {  // drop a grown parser once this request is done with it
    std::unique_ptr<simdjson::dom::parser>& parser;
    ~ParserReset() { drop_grown_parser(parser); }
  } parser_reset{json_};

  ApiCaller caller;
  Answer early = check_caller_and_body(request, config, body, remote, service, caller);
  // Answers given before the caller is known or the body read are not kept (no scope, or a
  // body never seen whole), nor those to a request whose key is unusable.
  bool usable_key = key && valid_idempotency_key(*key);
  const uint64_t limit = config.limits.max_message_bytes;
  if (early && (!usable_key || caller.credential == nullptr || request.body_over_limit)) {
    record_if_too_large(*early, caller, remote, service.name, limit);
    return respond(std::move(*early));
  }
  if (key && !usable_key) {
    return respond(error_response(400,
                                  "Idempotency-Key: must be 1 to 255 visible ASCII characters.",
                                  field_context("Idempotency-Key")));
  }
  auto prepared = std::make_shared<Prepared>();
  prepared->now = now_ms_();
  Submission& submission = prepared->submission;
  submission.submitter = {Ingress::Http, caller.credential->role, caller.identity(), remote};
  submission.service = service.name;
  prepared->answer = early ? std::move(early)
                           : prepare_message(request, body, service, *runtime, json_, *prepared);
  if (prepared->answer) record_if_too_large(*prepared->answer, caller, remote, service.name, limit);
  if (!key) return fetch_then_send(std::move(runtime), prepared, {}, std::move(respond));
  Submitter submitter = submission.submitter;
  begin_idempotent(*runtime, submitter, service.name, *key, hash, prepared->now,
                   [runtime, prepared, respond = std::move(respond)](
                       IdempotencyOutcome out, IdempotencyClaim claim) mutable {
                     if (out.verdict != IdempotencyVerdict::Fresh)
                       return respond(idempotency_answer(out));
                     fetch_then_send(std::move(runtime), prepared, std::move(claim),
                                     std::move(respond));
                   });
}

}  // namespace mailcar::http
