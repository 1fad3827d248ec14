#include "http/message_features.hpp"

#include "mailcar/text.hpp"

namespace mailcar::http {
namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

std::optional<FeatureError> read_template_name(std::string_view key, element value,
                                               FeatureFields& f) {
  std::string name;
  if (std::string_view s; value.get_string().get(s) == simdjson::SUCCESS) {
    name = std::string(s);
  } else if (int64_t n; value.get_int64().get(n) == simdjson::SUCCESS) {
    name = std::to_string(n);  // DreamFactory's template_id is a number; here it is a name
  } else if (!value.is_null()) {
    return FeatureError{std::string(key), std::string(key) + ": must be a template name"};
  }
  // `template` wins over `template_id`, as in DreamFactory.
  if (!name.empty() &&
      (!f.template_name || (key == "template" && f.template_field != "template"))) {
    f.template_name = std::move(name);
    f.template_field = std::string(key);
  }
  return std::nullopt;
}

// A string (DreamFactory splits it at commas), an array of strings and {service, path}
// objects, or one such object.
std::optional<FeatureError> read_attachment_item(std::string_view key, element item,
                                                 FeatureFields& f, bool allow_array) {
  if (std::string_view s; item.get_string().get(s) == simdjson::SUCCESS) {
    for (size_t at = 0; at <= s.size();) {
      size_t comma = s.find(',', at);
      std::string_view url = text::trim(s.substr(at, comma - at));
      if (!url.empty()) f.attachments.push_back(AttachmentRef{std::string(url), {}, {}, false});
      if (comma == std::string_view::npos) break;
      at = comma + 1;
    }
    return std::nullopt;
  }
  if (simdjson::dom::object o; item.get_object().get(o) == simdjson::SUCCESS) {
    AttachmentRef ref;
    ref.storage = true;
    std::string_view v;
    if (o["service"].get_string().get(v) == simdjson::SUCCESS) ref.service = std::string(v);
    if (o["path"].get_string().get(v) == simdjson::SUCCESS ||
        o["file_path"].get_string().get(v) == simdjson::SUCCESS) {
      ref.path = std::string(v);
    }
    f.attachments.push_back(std::move(ref));
    return std::nullopt;
  }
  if (simdjson::dom::array a; allow_array && item.get_array().get(a) == simdjson::SUCCESS) {
    for (element e : a) {
      if (auto err = read_attachment_item(key, e, f, false)) return err;
    }
    return std::nullopt;
  }
  if (item.is_null()) return std::nullopt;
  return FeatureError{std::string(key),
                      std::string(key) + ": must be a URL, a list of URLs or {service, path}"};
}

bool allowed_url(const AttachmentFetchConfig& fetch, std::string_view url) {
  if (!text::istarts_with_ascii(url, "https://")) return false;
  for (const std::string& prefix : fetch.allow) {
    // The scheme and host compare without case; the path as written.
    size_t host_end = prefix.find('/', 8);
    if (url.size() < prefix.size()) continue;
    if (text::iequals_ascii(url.substr(0, host_end),
                            std::string_view(prefix).substr(0, host_end)) &&
        url.substr(host_end, prefix.size() - host_end) ==
            std::string_view(prefix).substr(host_end)) {
      return true;
    }
  }
  return false;
}

}  // namespace

bool read_feature_field(std::string_view key, simdjson::dom::element value, FeatureFields& f,
                        std::optional<FeatureError>& error) {
  if (key == "template" || key == "template_id") {
    error = read_template_name(key, value, f);
  } else if (key == "attachment" || key == "import_url") {
    if (f.attachment_field.empty()) f.attachment_field = std::string(key);
    error = read_attachment_item(key, value, f, true);
  } else {
    return false;
  }
  return true;
}

TemplateChoice choose_template(const Config& config, const FeatureFields& f,
                               std::optional<std::string_view> query_template,
                               std::optional<std::string_view> query_template_id) {
  TemplateChoice choice;
  std::string name;
  std::string field;
  if (f.template_name) {
    name = *f.template_name;
    field = f.template_field;
  } else if (query_template && !query_template->empty()) {
    name = std::string(*query_template);
    field = "template";
  } else if (query_template_id && !query_template_id->empty()) {
    name = std::string(*query_template_id);
    field = "template_id";
  } else {
    return choice;
  }
  auto it = config.templates.find(name);
  if (it == config.templates.end()) {
    choice.error = FeatureError{field, "Unknown template \"" + name + "\"."};
  } else {
    choice.chosen = &it->second;
  }
  return choice;
}

void apply_template(const TemplateConfig& t, TemplateTargets fields) {
  auto fill = [](std::string& target, const std::string& value) {
    if (target.empty()) target = value;
  };
  if (t.subject) fill(fields.subject, *t.subject);
  if (t.body_text) fill(fields.body_text, *t.body_text);
  if (t.body_html) fill(fields.body_html, *t.body_html);
  fill(fields.from_name, t.from_name);
  fill(fields.from_email, t.from_email);
  fill(fields.reply_to_name, t.reply_to_name);
  fill(fields.reply_to_email, t.reply_to_email);
}

std::optional<FeatureError> check_attachment_refs(const Config& config, const FeatureFields& f) {
  if (f.attachments.empty()) return std::nullopt;
  const std::string& field = f.attachment_field;
  for (const AttachmentRef& ref : f.attachments) {
    if (ref.storage) {
      return FeatureError{field, field +
                                     ": file storage references ({service, path}) are not "
                                     "supported; send the file in `attachments`."};
    }
  }
  if (!config.attachment_fetch) {
    return FeatureError{field, field +
                                   ": fetching attachments from URLs is not enabled "
                                   "(attachment_fetch in the configuration)."};
  }
  if (f.attachments.size() > kMaxAttachmentUrls) {
    return FeatureError{
        field, field + ": at most " + std::to_string(kMaxAttachmentUrls) + " URLs per request."};
  }
  for (size_t i = 0; i < f.attachments.size(); ++i) {
    // The URL itself is not repeated: it may carry a token.
    if (!allowed_url(*config.attachment_fetch, f.attachments[i].url)) {
      return FeatureError{field, field + ": URL " + std::to_string(i + 1) +
                                     " is not https or not under a prefix that "
                                     "attachment_fetch.allow lists."};
    }
  }
  return std::nullopt;
}

}  // namespace mailcar::http
