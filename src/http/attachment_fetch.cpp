#include "http/attachment_fetch.hpp"

#include <algorithm>
#include <memory>
#include <utility>

#include "mailcar/http_client.hpp"
#include "mailcar/log.hpp"

namespace mailcar::http {
namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

bool has_control(std::string_view s) {
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    if (u < 0x20 || u == 0x7f) return true;
  }
  return false;
}

// The response's Content-Type when it is a plain header value, else application/octet-stream.
std::string content_type_of(const http_client::Response& response) {
  auto type = response.header("content-type");
  if (!type || type->empty() || has_control(*type)) return "application/octet-stream";
  return std::string(*type);
}

// One fetch after another; owns itself through the callback of the exchange in flight.
class Fetch : public std::enable_shared_from_this<Fetch> {
 public:
  Fetch(uv_loop_t* loop, const AttachmentFetchConfig& config, std::string field,
        std::vector<std::string> urls, uint64_t total_bytes, FetchedFn done)
      : loop_(loop),
        config_(config),
        field_(std::move(field)),
        urls_(std::move(urls)),
        done_(std::move(done)),
        total_bytes_(total_bytes),
        bytes_left_(total_bytes) {}

  void next() {
    if (attachments_.size() == urls_.size()) return done_(std::move(attachments_), std::nullopt);
    http_client::Request req;
    req.url = urls_[attachments_.size()];
    req.headers = {{"Accept", "*/*"}, {"User-Agent", "mailcar"}};
    req.ca_file = config_.ca_file;
    req.timeout_ms = config_.timeout_ms;
    req.max_response_bytes = std::min(config_.max_bytes, bytes_left_);
    request_ = http_client::fetch(
        loop_, std::move(req),
        [self = shared_from_this()](http_client::Result r) { self->fetched(std::move(r)); });
  }

 private:
  void fetched(http_client::Result r) {
    auto keep = std::move(request_);  // destroyed after this call returns
    const std::string& url = urls_[attachments_.size()];
    std::string which = field_ + ": URL " + std::to_string(attachments_.size() + 1);
    if (r.error != http_client::ErrorKind::None) return fail(r, which);
    if (r.response.status < 200 || r.response.status > 299) {
      log::warn("attachment_fetch", {{"field", field_},
                                     {"url_index", attachments_.size() + 1},
                                     {"status", r.response.status}});
      return done_({}, FetchFailure{502, which +
                                             " could not be fetched: the file server answered "
                                             "HTTP " +
                                             std::to_string(r.response.status) + "."});
    }
    Attachment a;
    a.filename = attachment_name(url);
    a.content_type = content_type_of(r.response);
    a.data = std::move(r.response.body);
    bytes_left_ -= std::min<uint64_t>(bytes_left_, a.data.size());
    attachments_.push_back(std::move(a));
    next();
  }

  void fail(const http_client::Result& r, const std::string& which) {
    log::warn("attachment_fetch", {{"field", field_},
                                   {"url_index", attachments_.size() + 1},
                                   {"error", http_client::error_kind_name(r.error)},
                                   {"detail", r.detail}});
    if (r.error == http_client::ErrorKind::TimedOut) {
      return done_({}, FetchFailure{502, which +
                                             " could not be fetched: no complete answer within "
                                             "attachment_fetch.timeout (" +
                                             std::to_string(config_.timeout_ms) + " ms)."});
    }
    std::string why = std::string(http_client::error_kind_name(r.error));
    if (r.detail.find("response body over") != std::string::npos) {
      if (bytes_left_ < config_.max_bytes) {  // the reservation ran out, not max_bytes
        return done_({}, FetchFailure{413, which +
                                               " makes the message too large: the files "
                                               "together pass the " +
                                               std::to_string(total_bytes_) +
                                               " bytes this request may hold."});
      }
      why = "the file is larger than attachment_fetch.max_bytes (" +
            std::to_string(config_.max_bytes) + " bytes)";
    }
    done_({}, FetchFailure{502, which + " could not be fetched: " + why + "."});
  }

  uv_loop_t* loop_;
  AttachmentFetchConfig config_;
  std::string field_;
  std::vector<std::string> urls_;
  FetchedFn done_;
  std::vector<Attachment> attachments_;
  std::unique_ptr<http_client::Cancel> request_;
  uint64_t total_bytes_;  // the memory the caller reserved for the files
  uint64_t bytes_left_;   // of it
};

}  // namespace

std::string attachment_name(std::string_view url) {
  size_t scheme = url.find("://");
  std::string_view rest = scheme == std::string_view::npos ? url : url.substr(scheme + 3);
  rest = rest.substr(0, rest.find_first_of("?#"));
  size_t slash = rest.rfind('/');
  std::string_view segment = slash == std::string_view::npos ? "" : rest.substr(slash + 1);
  std::string name;
  for (size_t i = 0; i < segment.size(); ++i) {
    int hi = 0, lo = 0;
    if (segment[i] == '%' && i + 2 < segment.size() && (hi = hex_value(segment[i + 1])) >= 0 &&
        (lo = hex_value(segment[i + 2])) >= 0) {
      name.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else {
      name.push_back(segment[i]);
    }
  }
  if (name.empty() || has_control(name) || name.find('/') != std::string::npos) {
    return "attachment";
  }
  return name;
}

void fetch_attachments(uv_loop_t* loop, const AttachmentFetchConfig& config, std::string field,
                       std::vector<std::string> urls, uint64_t total_bytes, FetchedFn done) {
  std::make_shared<Fetch>(loop, config, std::move(field), std::move(urls), total_bytes,
                          std::move(done))
      ->next();
}

}  // namespace mailcar::http
