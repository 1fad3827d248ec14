// HTTP/1.1 responses through llhttp (response mode). The parser pauses at the end of the
// first final response, so bytes after it are never interpreted.
#include <llhttp.h>

#include "mailcar/http_client.hpp"
#include "mailcar/text.hpp"

namespace mailcar::http_client {

std::optional<std::string_view> Response::header(std::string_view lower_name) const {
  for (const auto& [name, value] : headers) {
    if (name == lower_name) return std::string_view(value);
  }
  return std::nullopt;
}

struct ResponseParser::Llhttp {
  llhttp_t parser{};
  llhttp_settings_t settings{};

  static ResponseParser& owner(llhttp_t* p) { return *static_cast<ResponseParser*>(p->data); }

  // Counts head bytes (status line and header spans) against the head limit.
  static int count_head(ResponseParser& r, size_t length) {
    r.head_bytes_ += length;
    if (r.head_bytes_ > kMaxHeadBytes) {
      r.error_ = "response head over " + std::to_string(kMaxHeadBytes) + " bytes";
      return -1;
    }
    return 0;
  }

  static void finish_header(ResponseParser& r) {
    if (!r.in_value_) return;
    if (!r.interim_) {
      r.response_.headers.emplace_back(text::lower_ascii(r.field_),
                                       std::string(text::trim(r.value_)));
    }
    r.field_.clear();
    r.value_.clear();
    r.in_value_ = false;
  }

  static int on_message_begin(llhttp_t* p) {
    ResponseParser& r = owner(p);
    r.response_ = Response{};
    r.field_.clear();
    r.value_.clear();
    r.in_value_ = false;
    r.head_bytes_ = 0;
    return 0;
  }

  static int on_status(llhttp_t* p, const char*, size_t length) {
    return count_head(owner(p), length);
  }

  static int on_header_field(llhttp_t* p, const char* at, size_t length) {
    ResponseParser& r = owner(p);
    if (count_head(r, length) != 0) return -1;
    finish_header(r);
    r.field_.append(at, length);
    return 0;
  }

  static int on_header_value(llhttp_t* p, const char* at, size_t length) {
    ResponseParser& r = owner(p);
    if (count_head(r, length) != 0) return -1;
    r.in_value_ = true;
    r.value_.append(at, length);
    return 0;
  }

  static int on_headers_complete(llhttp_t* p) {
    ResponseParser& r = owner(p);
    finish_header(r);
    r.interim_ = p->status_code < 200;
    r.response_.status = p->status_code;
    if (r.interim_) return 0;
    if (p->content_length > r.max_body_bytes_ && (p->flags & F_CONTENT_LENGTH) != 0 &&
        !r.head_only_) {
      r.error_ = "response body over " + std::to_string(r.max_body_bytes_) + " bytes";
      return -1;
    }
    return r.head_only_ ? 1 : 0;  // 1: no body follows (CONNECT, HEAD)
  }

  static int on_body(llhttp_t* p, const char* at, size_t length) {
    ResponseParser& r = owner(p);
    if (r.response_.body.size() + length > r.max_body_bytes_) {
      r.error_ = "response body over " + std::to_string(r.max_body_bytes_) + " bytes";
      return -1;
    }
    r.response_.body.append(at, length);
    return 0;
  }

  static int on_message_complete(llhttp_t* p) {
    ResponseParser& r = owner(p);
    if (r.interim_) {
      r.interim_ = false;
      return 0;  // 100 Continue and friends: the real answer follows
    }
    r.status_ = Status::Done;
    return HPE_PAUSED;
  }
};

ResponseParser::ResponseParser(size_t max_body_bytes, bool head_only)
    : ll_(std::make_unique<Llhttp>()), max_body_bytes_(max_body_bytes), head_only_(head_only) {
  llhttp_settings_init(&ll_->settings);
  ll_->settings.on_message_begin = &Llhttp::on_message_begin;
  ll_->settings.on_status = &Llhttp::on_status;
  ll_->settings.on_header_field = &Llhttp::on_header_field;
  ll_->settings.on_header_value = &Llhttp::on_header_value;
  ll_->settings.on_headers_complete = &Llhttp::on_headers_complete;
  ll_->settings.on_body = &Llhttp::on_body;
  ll_->settings.on_message_complete = &Llhttp::on_message_complete;
  llhttp_init(&ll_->parser, HTTP_RESPONSE, &ll_->settings);
  ll_->parser.data = this;
}

ResponseParser::~ResponseParser() = default;

ResponseParser::Status ResponseParser::fail(std::string why) {
  status_ = Status::Error;
  if (error_.empty()) error_ = std::move(why);
  return status_;
}

ResponseParser::Status ResponseParser::feed(std::string_view bytes) {
  if (status_ != Status::NeedMore || bytes.empty()) return status_;
  llhttp_errno_t err = llhttp_execute(&ll_->parser, bytes.data(), bytes.size());
  if (status_ == Status::Done) return status_;  // paused at the end of the response
  if (err != HPE_OK) return fail(std::string("malformed response: ") + llhttp_errno_name(err));
  return status_;
}

ResponseParser::Status ResponseParser::finish() {
  if (status_ != Status::NeedMore) return status_;
  llhttp_errno_t err = llhttp_finish(&ll_->parser);
  if (status_ == Status::Done) return status_;
  if (err != HPE_OK) return fail(std::string("response cut short: ") + llhttp_errno_name(err));
  return fail("connection closed before a complete response");
}

}  // namespace mailcar::http_client
