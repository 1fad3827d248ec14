#include "http/request_parser.hpp"

#include <algorithm>

#include "mailcar/text.hpp"

namespace mailcar::http {
namespace {

HttpRequestParser* self(llhttp_t* p) {
  return static_cast<HttpRequestParser*>(p->data);
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

uint64_t body_limit_for(uint64_t max_message_bytes) {
  return (max_message_bytes + 2) / 3 * 4 + 64 * 1024;
}

std::optional<std::string_view> HttpRequest::header(std::string_view lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return std::string_view(value);
  }
  return std::nullopt;
}

std::optional<std::string_view> HttpRequest::query_param(std::string_view name) const {
  for (const auto& [key, value] : query) {
    if (key == name) return std::string_view(value);
  }
  return std::nullopt;
}

std::optional<std::string> percent_decode(std::string_view s, bool plus_is_space) {
  if (s.find('%') == std::string_view::npos &&
      (!plus_is_space || s.find('+') == std::string_view::npos)) {
    return std::string(s);  // the usual path: nothing to decode
  }
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '%') {
      if (i + 2 >= s.size()) return std::nullopt;
      int hi = hex_value(s[i + 1]);
      int lo = hex_value(s[i + 2]);
      if (hi < 0 || lo < 0) return std::nullopt;
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c == '+' && plus_is_space) {
      out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::optional<std::vector<std::pair<std::string, std::string>>> parse_query(std::string_view q) {
  std::vector<std::pair<std::string, std::string>> out;
  while (!q.empty()) {
    size_t amp = q.find('&');
    std::string_view part = q.substr(0, amp);
    q = amp == std::string_view::npos ? std::string_view() : q.substr(amp + 1);
    if (part.empty()) continue;
    size_t eq = part.find('=');
    auto key = percent_decode(part.substr(0, eq), true);
    auto value = percent_decode(
        eq == std::string_view::npos ? std::string_view() : part.substr(eq + 1), true);
    if (!key || !value) return std::nullopt;
    out.emplace_back(std::move(*key), std::move(*value));
  }
  return out;
}

HttpRequestParser::HttpRequestParser(uint64_t body_limit, BodyAdmission admit)
    : body_limit_(body_limit), admit_(std::move(admit)) {
  llhttp_settings_init(&settings_);
  settings_.on_message_begin = &HttpRequestParser::on_message_begin;
  settings_.on_url = &HttpRequestParser::on_url;
  settings_.on_header_field = &HttpRequestParser::on_header_field;
  settings_.on_header_value = &HttpRequestParser::on_header_value;
  // An empty value gets no on_header_value call: without this its field name ran into the
  // next one ("Idempotency-Key:" then "Content-Type" read as one field).
  settings_.on_header_value_complete = &HttpRequestParser::on_header_value_complete;
  settings_.on_headers_complete = &HttpRequestParser::on_headers_complete;
  settings_.on_body = &HttpRequestParser::on_body;
  settings_.on_message_complete = &HttpRequestParser::on_message_complete;
  llhttp_init(&parser_, HTTP_REQUEST, &settings_);
  parser_.data = this;
}

int HttpRequestParser::fail(int status, std::string reason) {
  error_status_ = status;
  error_reason_ = std::move(reason);
  return -1;
}

bool HttpRequestParser::head_over_limit(const char* span_end) {
  return head_bytes_before_ + static_cast<size_t>(span_end - exec_start_) > kMaxHeaderBytes;
}

// A header is written straight into the request's list as its pieces arrive: the name
// lower-cased, the value trimmed once it is complete (no per-header temporaries).
void HttpRequestParser::finish_header() {
  if (!in_value_) return;
  std::string& value = current_.headers.back().second;
  std::string_view trimmed = text::trim(value);
  if (trimmed.size() != value.size()) {
    value.erase(0, static_cast<size_t>(trimmed.data() - value.data()));
    value.resize(trimmed.size());
  }
  in_field_ = false;
  in_value_ = false;
}

std::pair<std::string, std::string>& HttpRequestParser::header_being_read() {
  if (!in_field_) {
    current_.headers.emplace_back();
    in_field_ = true;
  }
  return current_.headers.back();
}

int HttpRequestParser::on_message_begin(llhttp_t* p) {
  auto* s = self(p);
  s->state_ = State::Head;
  s->current_ = HttpRequest{};
  s->current_.headers.reserve(kExpectedHeaders);
  s->in_field_ = false;
  s->in_value_ = false;
  s->head_bytes_before_ = 0;
  return 0;
}

int HttpRequestParser::on_url(llhttp_t* p, const char* at, size_t length) {
  auto* s = self(p);
  if (s->current_.target.size() + length > kMaxUrlBytes) return s->fail(414, "URI too long");
  if (s->head_over_limit(at + length)) return s->fail(431, "header block too large");
  s->current_.target.append(at, length);
  return 0;
}

int HttpRequestParser::on_header_field(llhttp_t* p, const char* at, size_t length) {
  auto* s = self(p);
  if (s->head_over_limit(at + length)) return s->fail(431, "header block too large");
  s->finish_header();
  std::string& name = s->header_being_read().first;
  size_t from = name.size();
  name.resize(from + length);
  char* out = name.data() + from;
  for (size_t i = 0; i < length; ++i) out[i] = text::to_lower_ascii(at[i]);
  return 0;
}

int HttpRequestParser::on_header_value(llhttp_t* p, const char* at, size_t length) {
  auto* s = self(p);
  if (s->head_over_limit(at + length)) return s->fail(431, "header block too large");
  s->header_being_read().second.append(at, length);
  s->in_value_ = true;
  return 0;
}

int HttpRequestParser::on_header_value_complete(llhttp_t* p) {
  auto* s = self(p);
  s->header_being_read();
  s->in_value_ = true;
  s->finish_header();
  return 0;
}

int HttpRequestParser::on_headers_complete(llhttp_t* p) {
  auto* s = self(p);
  s->finish_header();
  HttpRequest& r = s->current_;
  r.method = llhttp_method_name(static_cast<llhttp_method_t>(p->method));
  r.keep_alive = llhttp_should_keep_alive(p) != 0;

  std::string_view target = r.target;
  size_t q = target.find('?');
  std::string_view raw_path = target.substr(0, q);
  if (raw_path.empty() || raw_path.front() != '/') {
    return s->fail(400, "request target is not an absolute path");
  }
  auto path = percent_decode(raw_path, false);
  if (!path) return s->fail(400, "malformed percent escape in path");
  r.path = std::move(*path);
  if (q != std::string_view::npos) {
    auto query = parse_query(target.substr(q + 1));
    if (!query) return s->fail(400, "malformed percent escape in query");
    r.query = std::move(*query);
  }

  // Refuse an oversized body from its announced length, before any of it is read.
  if ((p->flags & F_CONTENT_LENGTH) != 0 && p->content_length > s->body_limit_) {
    return s->fail(413, "Content-Length over the body limit");
  }
  bool body_expected =
      (p->flags & F_CHUNKED) != 0 || ((p->flags & F_CONTENT_LENGTH) != 0 && p->content_length > 0);
  auto expect = r.header("expect");
  if (expect && text::iequals_ascii(*expect, "100-continue")) {
    r.expect_continue = true;
    if (body_expected && s->out_ != nullptr) s->out_->continue_requested = true;
  }
  if (body_expected && (p->flags & F_CONTENT_LENGTH) != 0) {
    // Granted first, then reserved: the pages are touched only as the body arrives.
    if (int status = s->admit_body(p->content_length)) return status;
    if (s->spare_body_.capacity() >= p->content_length + kBodyPadding) r.body.swap(s->spare_body_);
    r.body.reserve(p->content_length + kBodyPadding);
  }
  s->state_ = State::Body;
  return 0;
}

int HttpRequestParser::admit_body(uint64_t total) {
  int status = admit_ ? admit_(current_, total) : 0;
  if (status == 0) return 0;
  return fail(status, status == 413 ? "body over what an unauthenticated request may hold"
                                    : "memory budget for request bodies spent");
}

// Room for `more` bytes: a body of unknown length (chunked) grows geometrically, each step
// granted before it is allocated.
int HttpRequestParser::grow_body(size_t more) {
  std::string& body = current_.body;
  size_t needed = body.size() + more + kBodyPadding;
  if (needed <= body.capacity()) return 0;
  constexpr size_t kFirstStep = 64 * 1024;
  size_t capacity = std::max({needed, body.capacity() * 2, kFirstStep});
  capacity = std::min<uint64_t>(capacity, std::max<uint64_t>(needed, body_limit_ + kBodyPadding));
  if (admit_body(capacity) != 0) return -1;
  body.reserve(capacity);
  return 0;
}

int HttpRequestParser::on_body(llhttp_t* p, const char* at, size_t length) {
  auto* s = self(p);
  if (s->current_.body.size() + length > s->body_limit_) {
    return s->fail(413, "body over the body limit");
  }
  if (s->grow_body(length) != 0) return -1;
  s->current_.body.append(at, length);
  return 0;
}

int HttpRequestParser::on_message_complete(llhttp_t* p) {
  auto* s = self(p);
  if (s->out_ != nullptr) s->out_->requests.push_back(std::move(s->current_));
  s->current_ = HttpRequest{};
  s->state_ = State::Idle;
  // Stop here so the next pipelined request starts a fresh execute (head accounting).
  return HPE_PAUSED;
}

HttpRequestParser::Output HttpRequestParser::feed(std::string_view bytes) {
  Output out;
  if (state_ == State::Failed) {
    out.error_status = error_status_;
    out.error_reason = error_reason_;
    return out;
  }
  out_ = &out;
  const char* data = bytes.data();
  const char* end = data + bytes.size();
  while (data < end) {
    exec_start_ = data;
    llhttp_errno_t err = llhttp_execute(&parser_, data, static_cast<size_t>(end - data));
    if (err == HPE_OK) {
      if (state_ == State::Head) head_bytes_before_ += static_cast<size_t>(end - exec_start_);
      if (head_bytes_before_ > kMaxHeaderBytes && state_ == State::Head) {
        fail(431, "header block too large");
        break;
      }
      data = end;
      continue;
    }
    if (err == HPE_PAUSED) {
      const char* pos = llhttp_get_error_pos(&parser_);
      llhttp_resume(&parser_);
      data = pos != nullptr && pos >= data && pos <= end ? pos : end;
      continue;
    }
    if (err == HPE_PAUSED_UPGRADE) {
      fail(400, "protocol upgrade not supported");
      break;
    }
    if (error_status_ == 0) {
      fail(400, llhttp_get_error_reason(&parser_) ? llhttp_get_error_reason(&parser_)
                                                  : llhttp_errno_name(err));
    }
    break;
  }
  out_ = nullptr;
  if (error_status_ != 0) {
    if (error_status_ == 413 && !current_.method.empty() && !current_.path.empty()) {
      HttpRequest head = std::move(current_);
      std::string().swap(head.body);  // what was read of it is never used
      head.inflight_lease.release();
      head.unauthenticated_lease.release();
      head.body_over_limit = true;
      head.keep_alive = false;  // the rest of the body is never read: the connection ends
      out.rejected_head = std::move(head);
    }
    current_ = HttpRequest{};  // a failed stream holds no partial body
    state_ = State::Failed;
    out.error_status = error_status_;
    out.error_reason = error_reason_;
  }
  return out;
}

}  // namespace mailcar::http
