// The DreamFactory request fields of issue 10 (SPEC §10.1, §4): named templates (`template`,
// `template_id`, `?template=`), attachments by URL or storage reference (`attachment`,
// `import_url`, which DreamFactory reads from the request as attachment URLs too): what mailcar
// cannot honour is a 400 that names the field rather than silence. (DreamFactory's `file` is a
// multipart upload, never a JSON field, so a JSON `file` stays an ordinary field.)
#pragma once

#include <simdjson.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/config.hpp"

namespace mailcar::http {

struct FeatureError {
  std::string field;
  std::string message;
};

// One `attachment` item: a URL, or a `{service, path}` reference to DreamFactory file storage.
struct AttachmentRef {
  std::string url;
  std::string service, path;
  bool storage = false;
};

// What a request asked of these fields, read while its JSON is read.
struct FeatureFields {
  std::optional<std::string> template_name;  // `template`, else `template_id` (a name)
  std::string template_field;                // which of them named it
  std::vector<AttachmentRef> attachments;    // from `attachment` and `import_url`
  std::string attachment_field;              // the first of them given
};

// Reads `key` when it is one of these fields: true when it was (then `error` may be set), false
// for any other key.
bool read_feature_field(std::string_view key, simdjson::dom::element value, FeatureFields& f,
                        std::optional<FeatureError>& error);

// The named template a request chose: the body's `template`/`template_id`, else the query's
// `template` (or `template_id`). Null with no template asked for; an error for an unknown one.
struct TemplateChoice {
  const TemplateConfig* chosen = nullptr;
  std::optional<FeatureError> error;
};
TemplateChoice choose_template(const Config& config, const FeatureFields& f,
                               std::optional<std::string_view> query_template,
                               std::optional<std::string_view> query_template_id);

// The request's text fields a template may fill: each empty one takes the template's value.
struct TemplateTargets {
  std::string& subject;
  std::string& body_text;
  std::string& body_html;
  std::string& from_name;
  std::string& from_email;
  std::string& reply_to_name;
  std::string& reply_to_email;
};
void apply_template(const TemplateConfig& t, TemplateTargets fields);

// At most this many attachment URLs per request (they are fetched one after another).
inline constexpr size_t kMaxAttachmentUrls = 10;

// Judges a request's attachment references against `attachment_fetch`: off, a storage
// reference, more than kMaxAttachmentUrls, a URL outside every allowed prefix (or not https) is
// a 400 naming the field; nullopt: every URL may be fetched (http/attachment_fetch.hpp).
std::optional<FeatureError> check_attachment_refs(const Config& config, const FeatureFields& f);

}  // namespace mailcar::http
