// YAML → Config (SPEC §3). The loader walks only the keys it knows, so an alias that makes
// the YAML graph cyclic cannot make it loop; every problem is collected as
// "FILE:LINE:COL: KEY: what is wrong" and the lines are returned together.
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <set>
#include <span>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "config/config_internal.hpp"
#include "mailcar/config.hpp"
#include "mailcar/crypto.hpp"
#include "mailcar/text.hpp"

namespace mailcar {
namespace {

using config_detail::check_address;
using config_detail::check_hostname;
using config_detail::check_name;
using config_detail::check_sender_pattern;

constexpr size_t kMaxErrors = 100;

// One key of a YAML map (or one item of a sequence, then `key` is empty).
struct Entry {
  std::string key;
  std::string path;  // e.g. "services.email.port", "roles.web.senders[1]"
  YAML::Node key_node;
  YAML::Node value;
};

// A YAML map after its keys have been checked for shape and duplicates.
struct Section {
  std::string path;
  YAML::Mark mark;
  std::vector<Entry> entries;

  const Entry* get(std::string_view key) const {
    for (const auto& entry : entries) {
      if (entry.key == key) return &entry;
    }
    return nullptr;
  }
};

// A secret given either inline (`password`) or through its `password_file` twin.
struct Secret {
  const Entry* entry = nullptr;  // the key that was used; null when neither was given
  std::string value;
};

std::string join_path(std::string_view parent, std::string_view key) {
  if (parent.empty()) return std::string(key);
  return std::string(parent) + "." + std::string(key);
}

const char* type_name(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar:
      return "a single value";
    case YAML::NodeType::Null:
      return "nothing";
    case YAML::NodeType::Undefined:
      break;
  }
  return "nothing";
}

// One pass of the event parser over the text: where a second YAML document starts (YAML::LoadAll
// is not used because yaml-cpp 0.7 can loop forever in it on some malformed input; two bounded
// parser steps cannot), and where each quoted scalar starts. A syntax error ends the pass; what
// was seen before it is kept.
class DocumentScan : public YAML::EventHandler {
 public:
  void OnDocumentStart(const YAML::Mark& mark) override {
    if (++documents_ == 2) second_ = mark;
  }
  void OnDocumentEnd() override {}
  void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
  void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
  void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t,
                const std::string&) override {
    if (tag == "!") quoted_.push_back(mark);  // yaml-cpp's tag for a quoted (non-plain) scalar
  }
  void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                       YAML::EmitterStyle::value) override {}
  void OnSequenceEnd() override {}
  void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  YAML::EmitterStyle::value) override {}
  void OnMapEnd() override {}

  std::optional<YAML::Mark> second() const { return second_; }
  const std::vector<YAML::Mark>& quoted() const { return quoted_; }

 private:
  int documents_ = 0;
  std::optional<YAML::Mark> second_;
  std::vector<YAML::Mark> quoted_;
};

DocumentScan scan_document(const std::string& text) {
  DocumentScan scan;
  try {
    std::istringstream in(text);
    YAML::Parser parser(in);
    if (parser.HandleNextDocument(scan)) parser.HandleNextDocument(scan);
  } catch (const YAML::Exception&) {
    // Reported by YAML::Load with its position.
  }
  return scan;
}

// ---- unterminated quotes ---------------------------------------------------------------------
// yaml-cpp 0.7 accepts a quoted scalar that runs to the end of the file, so a missing closing
// quote silently swallows every key after it. A quoted scalar may span lines, but not lines
// shaped like "key:" (what a missing quote swallows), and it must end before the file does.

constexpr std::string_view kUtf8Bom = "\xEF\xBB\xBF";

// Offset just past the closing quote of the scalar whose opening quote is at `open`, or npos.
size_t quoted_scalar_end(std::string_view text, size_t open) {
  const char quote = text[open];
  for (size_t i = open + 1; i < text.size(); ++i) {
    if (quote == '"' && text[i] == '\\') {
      ++i;  // an escape: the next character is not the end
    } else if (text[i] == quote) {
      if (quote == '\'' && i + 1 < text.size() && text[i + 1] == '\'') {
        ++i;  // '' is a quote inside a single-quoted scalar
        continue;
      }
      return i + 1;
    }
  }
  return std::string_view::npos;
}

// "  key:", "- key: x", "key:" at the end of the line: what a line of YAML mapping looks like.
bool looks_like_key_line(std::string_view line) {
  size_t i = line.find_first_not_of(" \t");
  if (i == std::string_view::npos) return false;
  if (line[i] == '-' && i + 1 < line.size() && (line[i + 1] == ' ' || line[i + 1] == '\t')) {
    i = line.find_first_not_of(" \t", i + 1);
    if (i == std::string_view::npos) return false;
  }
  size_t start = i;
  auto key_char = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-' || c == '.';
  };
  while (i < line.size() && key_char(line[i])) ++i;
  if (i == start || i >= line.size() || line[i] != ':') return false;
  return i + 1 == line.size() || line[i + 1] == ' ' || line[i + 1] == '\t' || line[i + 1] == '\r';
}

// Byte offset of the opening quote of the scalar at `mark` (which points at its anchor or tag
// when it has one), or npos when it cannot be found on that line.
size_t opening_quote(std::string_view text, const YAML::Mark& mark, size_t bom) {
  size_t i = static_cast<size_t>(mark.pos) + bom;
  while (i < text.size() && text[i] != '\n') {
    char c = text[i];
    if (c == '"' || c == '\'') return i;
    if (c == '&' || c == '!') {  // a property: skip it
      while (i < text.size() && text[i] != ' ' && text[i] != '\t' && text[i] != '\n') ++i;
    } else if (c == ' ' || c == '\t') {
      ++i;
    } else {
      return std::string_view::npos;
    }
  }
  return std::string_view::npos;
}

class Loader {
 public:
  Loader(std::string file, EnvLookup env) : file_(std::move(file)), env_(env) {
    std::error_code ec;
    std::filesystem::path absolute = std::filesystem::absolute(file_, ec);
    if (ec) absolute = std::filesystem::path("/") / file_;
    base_dir_ = absolute.lexically_normal().parent_path();
  }

  Result<Config> load(const std::string& text) {
    if (size_t bad = text::invalid_utf8_offset(text); bad != std::string::npos) {
      error_at(mark_at(text, bad), "", "invalid UTF-8 (the file must be UTF-8 encoded)");
      return finish();
    }
    DocumentScan scan = scan_document(text);
    if (check_quotes(text, scan.quoted()); !errors_.empty()) return finish();
    YAML::Node root;
    try {
      root = YAML::Load(text);
      if (auto second = scan.second()) {
        error_at(*second, "", "only one YAML document is allowed");
        return finish();
      }
    } catch (const YAML::Exception& e) {
      error_at(e.mark, "", "YAML syntax error: " + e.msg);
      return finish();
    }
    try {
      load_root(root);
    } catch (const YAML::Exception& e) {
      error_at(e.mark, "", std::string("unexpected YAML structure: ") + e.msg);
    }
    return finish();
  }

 private:
  Result<Config> finish() {
    if (errors_.empty()) {
      config_.file = file_;
      return std::move(config_);
    }
    std::string message;
    for (const auto& line : errors_) {
      if (!message.empty()) message += '\n';
      message += line;
    }
    if (errors_.size() >= kMaxErrors) message += "\n(further errors not shown)";
    return make_error(std::move(message));
  }

  // ---- error reporting -------------------------------------------------------------------

  void error_at(const YAML::Mark& mark, std::string_view path, std::string_view what) {
    if (errors_.size() >= kMaxErrors) return;
    std::string line = file_;
    if (!mark.is_null() && mark.line >= 0) {
      line += ":" + std::to_string(mark.line + 1) + ":" + std::to_string(mark.column + 1);
    }
    line += ": ";
    if (!path.empty()) {
      line += path;
      line += ": ";
    }
    line += what;
    errors_.push_back(std::move(line));
  }

  // Line and column (0-based, in bytes, as yaml-cpp counts them) of byte `offset`.
  static YAML::Mark mark_at(std::string_view text, size_t offset) {
    YAML::Mark mark;
    size_t line_start = text.rfind('\n', offset == 0 ? 0 : offset - 1);
    line_start = (line_start == std::string_view::npos || offset == 0) ? 0 : line_start + 1;
    mark.pos = static_cast<int>(offset);
    mark.line = static_cast<int>(std::count(text.begin(), text.begin() + line_start, '\n'));
    mark.column = static_cast<int>(offset - line_start);
    return mark;
  }

  void check_quotes(std::string_view text, const std::vector<YAML::Mark>& quoted) {
    size_t bom = text.starts_with(kUtf8Bom) ? kUtf8Bom.size() : 0;
    for (const YAML::Mark& mark : quoted) {
      size_t open = opening_quote(text, mark, bom);
      if (open == std::string_view::npos) continue;
      YAML::Mark at = mark_at(text, open);
      size_t end = quoted_scalar_end(text, open);
      if (end == std::string_view::npos) {
        error_at(at, "",
                 std::string("unterminated quote: the value that starts here has no closing ") +
                     text[open] + " before the end of the file");
        continue;
      }
      // Every line the scalar runs on to, up to its closing quote.
      for (size_t nl = text.find('\n', open); nl != std::string_view::npos && nl < end;
           nl = text.find('\n', nl + 1)) {
        std::string_view line =
            text.substr(nl + 1, std::min(end, text.find('\n', nl + 1)) - nl - 1);
        if (!looks_like_key_line(line)) continue;
        error_at(at, "",
                 std::string("unterminated quote: the value that starts here runs on to line ") +
                     std::to_string(mark_at(text, nl + 1).line + 1) +
                     ", which looks like a key; is its closing " + text[open] + " missing?");
        break;
      }
    }
  }

  // Null values carry the position of whatever follows them; point at their key instead.
  static YAML::Mark mark_of(const Entry& entry) {
    if (entry.value.IsDefined() && !entry.value.IsNull() && !entry.value.Mark().is_null()) {
      return entry.value.Mark();
    }
    return entry.key_node.Mark();
  }

  void error(const Entry& entry, std::string_view what) {
    error_at(mark_of(entry), entry.path, what);
  }

  void error_key(const Entry& entry, std::string_view what) {
    error_at(entry.key_node.Mark(), entry.path, what);
  }

  // ---- structure -------------------------------------------------------------------------

  // Reads a map's entries: keys must be plain strings, each at most once. A null value is an
  // empty map (a section written with nothing under it).
  std::optional<Section> section(const YAML::Node& node, const YAML::Mark& fallback,
                                 const std::string& path) {
    Section result;
    result.path = path;
    result.mark = node.IsDefined() && !node.IsNull() ? node.Mark() : fallback;
    if (!node.IsDefined() || node.IsNull()) return result;
    if (!node.IsMap()) {
      error_at(result.mark, path, std::string("expected a map of keys, found ") + type_name(node));
      return std::nullopt;
    }
    std::set<std::string> seen;
    for (auto it = node.begin(); it != node.end(); ++it) {
      // Copies: the iterator's pair is a temporary proxy.
      YAML::Node key = it->first;
      YAML::Node value = it->second;
      if (!key.IsScalar()) {
        error_at(key.Mark(), path, "a key must be a plain string");
        continue;
      }
      Entry entry{key.Scalar(), join_path(path, key.Scalar()), key, value};
      if (!seen.insert(entry.key).second) {
        error_key(entry, "duplicate key");
        continue;
      }
      result.entries.push_back(std::move(entry));
    }
    return result;
  }

  std::optional<Section> section(const Entry& entry) {
    return section(entry.value, entry.key_node.Mark(), entry.path);
  }

  void allow_only(const Section& s, std::initializer_list<std::string_view> allowed) {
    allow_only(s, std::span<const std::string_view>(allowed.begin(), allowed.size()));
  }

  // The keys of `allowed` and of `more` (a section whose keys come in groups).
  void allow_only(const Section& s, std::span<const std::string_view> allowed,
                  std::span<const std::string_view> more = {}) {
    for (const auto& entry : s.entries) {
      bool known = false;
      for (auto key : allowed) known = known || entry.key == key;
      for (auto key : more) known = known || entry.key == key;
      if (!known) error_key(entry, "unknown key");
    }
  }

  std::optional<std::vector<Entry>> list(const Entry& entry) {
    if (!entry.value.IsSequence()) {
      error(entry, std::string("expected a list, found ") + type_name(entry.value));
      return std::nullopt;
    }
    std::vector<Entry> items;
    size_t index = 0;
    for (auto it = entry.value.begin(); it != entry.value.end(); ++it, ++index) {
      items.push_back(
          Entry{"", entry.path + "[" + std::to_string(index) + "]", entry.key_node, *it});
    }
    return items;
  }

  // ---- typed values ----------------------------------------------------------------------

  // A string scalar with ${VAR} expanded.
  std::optional<std::string> text(const Entry& entry) {
    if (!entry.value.IsScalar()) {
      if (entry.value.IsNull()) {
        error(entry, "has no value (give one or remove the key)");
      } else {
        error(entry, std::string("expected a single value, found ") + type_name(entry.value));
      }
      return std::nullopt;
    }
    auto expanded = config_detail::expand_env(entry.value.Scalar(), env_);
    if (!expanded) {
      error(entry, expanded.error().message);
      return std::nullopt;
    }
    return std::move(expanded).value();
  }

  std::optional<std::string> nonempty_text(const Entry& entry) {
    auto value = text(entry);
    if (value && value->empty()) {
      error(entry, "is empty");
      return std::nullopt;
    }
    return value;
  }

  // Free text that ends up in a header or the SMTP dialogue.
  std::optional<std::string> line_text(const Entry& entry) {
    auto value = text(entry);
    if (value && value->find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
      error(entry, "must not contain CR, LF or NUL");
      return std::nullopt;
    }
    return value;
  }

  std::optional<uint64_t> integer(const Entry& entry, uint64_t min, uint64_t max) {
    auto value = text(entry);
    if (!value) return std::nullopt;
    std::string_view digits = text::trim(*value);
    uint64_t number = 0;
    bool ok = !digits.empty() && digits.size() <= 19;
    for (char c : digits) {
      ok = ok && c >= '0' && c <= '9';
      if (ok) number = number * 10 + static_cast<uint64_t>(c - '0');
    }
    if (!ok || number < min || number > max) {
      error(entry,
            "must be a whole number from " + std::to_string(min) + " to " + std::to_string(max));
      return std::nullopt;
    }
    return number;
  }

  std::optional<bool> boolean(const Entry& entry) {
    auto value = text(entry);
    if (!value) return std::nullopt;
    std::string lower = text::lower_ascii(text::trim(*value));
    if (lower == "true" || lower == "yes" || lower == "on") return true;
    if (lower == "false" || lower == "no" || lower == "off") return false;
    error(entry, "must be true or false");
    return std::nullopt;
  }

  std::optional<uint64_t> duration(const Entry& entry, bool allow_zero) {
    auto value = text(entry);
    if (!value) return std::nullopt;
    auto ms = parse_duration_ms(*value);
    if (!ms) {
      error(entry, "is not a duration: write a number with a unit, e.g. 250ms, 30s, 5m, 2h, 3d");
      return std::nullopt;
    }
    if (*ms == 0 && !allow_zero) {
      error(entry, "must be longer than zero");
      return std::nullopt;
    }
    return ms;
  }

  std::optional<uint64_t> size(const Entry& entry) {
    auto value = text(entry);
    if (!value) return std::nullopt;
    auto bytes = parse_size_bytes(*value);
    if (!bytes || *bytes == 0) {
      error(entry, "is not a size: write bytes (26214400) or e.g. 512KB, 25MB, 1GB (1024-based)");
      return std::nullopt;
    }
    return bytes;
  }

  std::optional<Rate> rate(const Entry& entry) {
    auto value = text(entry);
    if (!value) return std::nullopt;
    auto parsed = parse_rate(*value);
    if (!parsed) {
      error(entry, "is not a rate: write N/second, N/minute, N/hour or N/day (N >= 1)");
      return std::nullopt;
    }
    return parsed;
  }

  std::optional<std::string> path(const Entry& entry) {
    auto value = nonempty_text(entry);
    if (!value) return std::nullopt;
    std::filesystem::path p(*value);
    if (p.is_relative()) p = base_dir_ / p;
    p = p.lexically_normal();
    if (!p.has_filename() && p != p.root_path()) p = p.parent_path();  // "dir/" → "dir"
    return p.string();
  }

  std::optional<std::string> address(const Entry& entry) {
    auto value = text(entry);
    if (!value) return std::nullopt;
    if (auto problem = check_address(*value)) {
      error(entry, "is not a valid address: it " + *problem);
      return std::nullopt;
    }
    return value;
  }

  std::optional<ListenAddress> listen_address(const Entry& entry) {
    auto value = text(entry);
    if (!value) return std::nullopt;
    auto parsed = config_detail::parse_listen_address_explained(*value);
    if (!parsed) {
      error(entry, parsed.error().message);
      return std::nullopt;
    }
    return std::move(parsed).value();
  }

  // `key` or `key_file`, not both. The file loses one trailing newline.
  Secret secret(const Section& s, std::string_view key) {
    const Entry* inline_entry = s.get(key);
    const Entry* file_entry = s.get(std::string(key) + "_file");
    Secret result;
    if (inline_entry != nullptr && file_entry != nullptr) {
      error_key(*file_entry,
                "give either " + std::string(key) + " or " + std::string(key) + "_file, not both");
      return result;
    }
    if (inline_entry != nullptr) {
      if (auto value = text(*inline_entry)) {
        result.entry = inline_entry;
        result.value = std::move(*value);
      }
    } else if (file_entry != nullptr) {
      if (auto file = path(*file_entry)) {
        auto content = config_detail::read_small_file(*file, config_detail::kMaxSecretFileBytes);
        if (!content) {
          error(*file_entry, content.error().message);
        } else {
          std::string value = std::move(content).value();
          if (value.ends_with("\r\n")) {
            value.resize(value.size() - 2);
          } else if (value.ends_with('\n')) {
            value.pop_back();
          }
          result.entry = file_entry;
          result.value = std::move(value);
        }
      }
    }
    return result;
  }

  // ---- sections --------------------------------------------------------------------------

  void load_root(const YAML::Node& root) {
    YAML::Mark start;  // 1:1 for an empty document
    auto top = section(root, start, "");
    if (!top) return;
    allow_only(*top,
               {"listen", "services", "roles", "credentials", "smtp", "spool", "limits", "log",
                "templates", "dkim", "attachment_fetch", "shared_state", "idempotency", "routes"});

    if (const Entry* e = top->get("listen")) {
      load_listen(*e);
    } else {
      config_.listen_http = parse_listen_address("127.0.0.1:2580");
    }
    if (const Entry* e = top->get("services")) load_services(*e);
    if (config_.services.empty() && errors_.empty()) {
      error_at(top->mark, "services", "at least one service is required");
    }
    if (const Entry* e = top->get("roles")) load_roles(*e);
    if (const Entry* e = top->get("credentials")) load_credentials(*e);
    load_smtp(top->get("smtp"), top->mark);
    if (const Entry* e = top->get("spool")) load_spool(*e);
    if (const Entry* e = top->get("limits")) load_limits(*e);
    if (const Entry* e = top->get("log")) load_log(*e);
    if (const Entry* e = top->get("shared_state")) load_shared_state(*e);  // issue 11
    if (const Entry* e = top->get("idempotency")) load_idempotency(*e);    // issue 10
    if (const Entry* e = top->get("routes")) load_routes(*e);
    check_delivery_timeout(top->get("limits"), top->mark);
    load_message_features(*top);
    assign_oauth2_state_dir();
  }

  // ---- OAuth2 for upstream AUTH (issue 9, SPEC §9.1) ---------------------------------------

  void load_oauth2(const Entry& entry, const Section& service_section, ServiceConfig& service) {
    auto s = section(entry);
    if (!s) return;
    allow_only(*s, {"token_url", "grant", "client_id", "client_secret", "client_secret_file",
                    "scope", "refresh_token", "refresh_token_file", "token_file", "mechanism"});
    OAuth2Config o;
    if (const Entry* e = s->get("grant")) {
      const std::string g = text(*e).value_or("");
      if (g == "client_credentials") {
        o.grant = OAuth2Grant::ClientCredentials;
      } else if (g == "refresh_token") {
        o.grant = OAuth2Grant::RefreshToken;
      } else if (g == "token_file") {
        o.grant = OAuth2Grant::TokenFile;
      } else {
        error(*e, "must be client_credentials, refresh_token or token_file");
      }
    }
    if (const Entry* e = s->get("mechanism")) {
      const std::string m = text::lower_ascii(text(*e).value_or(""));
      if (m == "xoauth2") {
        o.mechanism = OAuth2Mechanism::XOAuth2;
      } else if (m == "oauthbearer") {
        o.mechanism = OAuth2Mechanism::OAuthBearer;
      } else {
        error(*e, "must be xoauth2 or oauthbearer");
      }
    }
    if (const Entry* e = s->get("token_url")) o.token_url = nonempty_text(*e).value_or("");
    if (const Entry* e = s->get("client_id")) o.client_id = line_text(*e).value_or("");
    if (const Entry* e = s->get("scope")) o.scope = line_text(*e).value_or("");
    if (const Entry* e = s->get("token_file")) o.token_file = path(*e).value_or("");
    o.client_secret = secret(*s, "client_secret").value;
    o.refresh_token = secret(*s, "refresh_token").value;
    check_oauth2(*s, o);
    if (service_section.get("username") == nullptr) {
      error_key(entry, "needs the service's username (the mailbox the token is for)");
    }
    if (service_section.get("password") != nullptr ||
        service_section.get("password_file") != nullptr) {
      error_key(entry, "give either a password or oauth2, not both");
    }
    service.oauth2 = std::move(o);
  }

  // Which keys each grant needs, and which make no sense with it.
  void check_oauth2(const Section& s, const OAuth2Config& o) {
    auto need = [&](std::string_view key, bool present) {
      if (!present) error_at(s.mark, s.path, std::string(key) + " is required with this grant");
    };
    auto refuse = [&](std::string_view key) {
      if (const Entry* e = s.get(key)) error_key(*e, "not used with this grant");
    };
    if (o.grant == OAuth2Grant::TokenFile) {
      need("token_file", s.get("token_file") != nullptr);
      for (auto key : {"token_url", "client_id", "client_secret", "client_secret_file", "scope",
                       "refresh_token", "refresh_token_file"}) {
        refuse(key);
      }
      return;
    }
    refuse("token_file");
    need("token_url", s.get("token_url") != nullptr);
    need("client_id", s.get("client_id") != nullptr);
    if (const Entry* e = s.get("token_url"); e != nullptr && !o.token_url.empty() &&
                                             !text::istarts_with_ascii(o.token_url, "https://")) {
      error(*e, "must be an https:// URL");
    }
    if (o.grant == OAuth2Grant::ClientCredentials) {
      need("client_secret (or client_secret_file)",
           s.get("client_secret") != nullptr || s.get("client_secret_file") != nullptr);
      refuse("refresh_token");
      refuse("refresh_token_file");
    } else {
      need("refresh_token (or refresh_token_file)",
           s.get("refresh_token") != nullptr || s.get("refresh_token_file") != nullptr);
    }
  }

  // SPEC §9.1: $STATE_DIRECTORY (its first entry), else spool.path, else the file's folder.
  void assign_oauth2_state_dir() {
    std::string dir = base_dir_.string();
    if (config_.spool && !config_.spool->path.empty()) dir = config_.spool->path;
    if (auto dirs = env_ ? env_("STATE_DIRECTORY") : std::nullopt; dirs && !dirs->empty()) {
      dir = dirs->substr(0, dirs->find(':'));
    }
    for (auto& service : config_.services) {
      if (service.oauth2) service.oauth2->state_dir = dir;
    }
  }

  void load_listen(const Entry& entry) {
    auto s = section(entry);
    if (!s) return;
    allow_only(*s, {"http", "smtp", "smtps"});
    if (const Entry* e = s->get("http")) config_.listen_http = listen_address(*e);
    if (const Entry* e = s->get("smtp")) config_.listen_smtp = listen_address(*e);
    if (config_.listen_http && config_.listen_smtp &&
        config_.listen_http->host == config_.listen_smtp->host &&
        config_.listen_http->port == config_.listen_smtp->port) {
      error(*s->get("smtp"), "is the same address as listen.http");
    }
    load_listen_smtps(*s);
  }

  // listen.smtps (issue 13): implicit TLS beside listen.smtp; the certificate is checked in
  // load_smtp (smtp.tls_cert / smtp.tls_key are required with it).
  void load_listen_smtps(const Section& s) {
    const Entry* e = s.get("smtps");
    if (e == nullptr) return;
    config_.listen_smtps = listen_address(*e);
    if (!config_.listen_smtps) return;
    for (const auto* other : {&config_.listen_http, &config_.listen_smtp}) {
      if (*other && (*other)->host == config_.listen_smtps->host &&
          (*other)->port == config_.listen_smtps->port) {
        error(*e, other == &config_.listen_http ? "is the same address as listen.http"
                                                : "is the same address as listen.smtp");
      }
    }
  }

  void load_services(const Entry& entry) {
    auto s = section(entry);
    if (!s) return;
    for (const auto& e : s->entries) {
      if (auto problem = check_name(e.key)) error_key(e, "service name " + *problem);
      config_.services.push_back(load_service(e));
    }
    check_fallbacks();
  }

  // A service: the keys every driver has, then those of its driver.
  ServiceConfig load_service(const Entry& entry) {
    ServiceConfig service;
    service.name = entry.key;
    auto s = section(entry);
    if (!s) return service;
    allow_only(*s, kServiceKeys, kSmtpOnly);
    if (const Entry* e = s->get("mirror_to")) service.mirror_to = address_list(*e);  // issue 10
    if (const Entry* e = s->get("fallback")) load_fallback(*e, service);             // issue 9

    if (const Entry* e = s->get("driver")) {
      if (auto value = text(*e)) {
        if (*value == "smtp") {
          service.driver = ServiceDriver::Smtp;
        } else if (*value == "file") {
          service.driver = ServiceDriver::File;
        } else {
          error(*e, "must be smtp or file");
        }
      }
    }
    if (const Entry* e = s->get("from_name")) service.from_name = line_text(*e).value_or("");
    if (const Entry* e = s->get("from_email")) service.from_email = address(*e).value_or("");
    if (const Entry* e = s->get("reply_to_name")) {
      service.reply_to_name = line_text(*e).value_or("");
    }
    if (const Entry* e = s->get("reply_to_email")) {
      service.reply_to_email = address(*e).value_or("");
    }
    if (const Entry* e = s->get("rate_limit")) service.rate_limit = rate(*e);

    if (service.driver == ServiceDriver::File) {
      load_file_service(*s, service);
    } else {
      load_smtp_service(*s, service);
    }
    return service;
  }

  // Keys of every service, then those of driver: smtp only.
  static constexpr std::string_view kServiceKeys[] = {
      "driver",         "path",       "from_name", "from_email", "reply_to_name",
      "reply_to_email", "rate_limit", "mirror_to", "fallback"};
  static constexpr std::string_view kSmtpOnly[] = {"host",
                                                   "port",
                                                   "encryption",
                                                   "username",
                                                   "password",
                                                   "password_file",
                                                   "tls_verify",
                                                   "ca_file",
                                                   "connections",
                                                   "connect_timeout",
                                                   "command_timeout",
                                                   "oauth2",
                                                   "probe_interval"};

  void load_file_service(const Section& s, ServiceConfig& service) {
    for (auto key : kSmtpOnly) {
      if (const Entry* e = s.get(key)) error_key(*e, "not allowed with driver: file");
    }
    if (const Entry* e = s.get("path")) {
      service.path = path(*e).value_or("");
    } else {
      error_at(s.mark, s.path, "driver: file needs a path (the directory to write to)");
    }
  }

  void load_smtp_service(const Section& s, ServiceConfig& service) {
    if (const Entry* e = s.get("path")) error_key(*e, "only allowed with driver: file");
    if (const Entry* e = s.get("host")) {
      service.host = nonempty_text(*e).value_or("");
    } else {
      error_at(s.mark, s.path, "host is required (the upstream SMTP server)");
    }
    load_encryption(s, service);
    if (const Entry* e = s.get("username")) service.username = line_text(*e).value_or("");
    Secret password = secret(s, "password");
    service.password = password.value;
    if (password.entry != nullptr && s.get("username") == nullptr) {
      error_key(*password.entry, "a password needs a username");
    }
    if (const Entry* e = s.get("oauth2")) load_oauth2(*e, s, service);  // issue 9
    if (const Entry* e = s.get("username");
        e != nullptr && password.entry == nullptr && s.get("password") == nullptr &&
        s.get("password_file") == nullptr && s.get("oauth2") == nullptr) {
      error_key(*e, "a username needs a password (password or password_file)");
    }
    if (const Entry* e = s.get("tls_verify")) service.tls_verify = boolean(*e).value_or(true);
    if (const Entry* e = s.get("ca_file")) service.ca_file = path(*e).value_or("");
    if (const Entry* e = s.get("connections")) {
      service.connections = static_cast<unsigned>(integer(*e, 1, 1000).value_or(1));
    }
    if (const Entry* e = s.get("connect_timeout")) {
      service.connect_timeout_ms = duration(*e, false).value_or(service.connect_timeout_ms);
    }
    if (const Entry* e = s.get("command_timeout")) {
      service.command_timeout_ms = duration(*e, false).value_or(service.command_timeout_ms);
    }
    if (const Entry* e = s.get("probe_interval")) {  // issue 9; a bare 0 means "never"
      auto v = e->value.IsScalar() ? text::trim(e->value.Scalar()) : std::string_view();
      service.probe_interval_ms =
          v == "0" ? 0 : duration(*e, true).value_or(service.probe_interval_ms);
    }
  }

  // `encryption`, and the port it implies unless `port` says otherwise.
  void load_encryption(const Section& s, ServiceConfig& service) {
    if (const Entry* e = s.get("encryption")) {
      if (auto value = text(*e)) {
        std::string lower = text::lower_ascii(*value);
        if (lower == "tls" || lower == "starttls") {
          service.encryption = Encryption::StartTls;
        } else if (lower == "ssl") {
          service.encryption = Encryption::Tls;
        } else if (lower == "none") {
          service.encryption = Encryption::None;
        } else {
          error(*e, "must be tls (STARTTLS), ssl (implicit TLS) or none");
        }
      }
    }
    switch (service.encryption) {
      case Encryption::None:
        service.port = 25;
        break;
      case Encryption::StartTls:
        service.port = 587;
        break;
      case Encryption::Tls:
        service.port = 465;
        break;
    }
    if (const Entry* e = s.get("port")) {
      service.port = static_cast<uint16_t>(integer(*e, 1, 65535).value_or(service.port));
    }
  }

  // ---- failover and routing (issue 9, SPEC §9.2) -------------------------------------------

  void load_fallback(const Entry& entry, ServiceConfig& service) {
    for (const auto& item : list(entry).value_or(std::vector<Entry>{})) {
      auto name = text(item);
      if (!name) continue;
      if (*name == service.name) {
        error(item, "a service cannot fall back to itself");
        continue;
      }
      service.fallback.push_back(*name);
      fallback_items_.push_back({service.name, *name, item});
    }
  }

  // After all services are known: every name exists, and no list leads back to its service.
  void check_fallbacks() {
    for (const FallbackItem& f : fallback_items_) service_must_exist(f.entry, f.target);
    std::vector<std::string> cycle = find_fallback_cycle(config_.services);
    if (cycle.size() < 2) return;
    std::string text = cycle.front();
    for (size_t i = 1; i < cycle.size(); ++i) text += " -> " + cycle[i];
    for (const FallbackItem& f : fallback_items_) {
      if (f.service == cycle[cycle.size() - 2] && f.target == cycle.back()) {
        return error(f.entry, "fallback cycle: " + text);
      }
    }
  }

  void load_routes(const Entry& entry) {
    for (const auto& item : list(entry).value_or(std::vector<Entry>{})) {
      auto s = section(item.value, item.value.Mark(), item.path);
      if (!s) continue;
      allow_only(*s, {"role", "sender", "service"});
      RouteConfig route;
      const Entry* role = s->get("role");
      const Entry* sender = s->get("sender");
      if ((role == nullptr) == (sender == nullptr)) {
        error_at(s->mark, item.path, "a route needs exactly one of role or sender");
      }
      if (role != nullptr && (route.role = text(*role))) role_must_exist(*role, *route.role);
      if (sender != nullptr && (route.sender = text(*sender))) {
        if (auto problem = check_sender_pattern(*route.sender)) {
          error(*sender, "'" + *route.sender + "' " + *problem);
        }
      }
      if (const Entry* e = s->get("service")) {
        route.service = text(*e).value_or("");
        service_must_exist(*e, route.service);
      } else {
        error_at(s->mark, item.path, "a route needs a service");
      }
      config_.routes.push_back(std::move(route));
    }
  }

  void load_roles(const Entry& entry) {
    auto s = section(entry);
    if (!s) return;
    for (const auto& e : s->entries) {
      if (auto problem = check_name(e.key)) error_key(e, "role name " + *problem);
      config_.roles.push_back(load_role(e));
    }
  }

  RoleConfig load_role(const Entry& entry) {
    RoleConfig role;
    role.name = entry.key;
    auto s = section(entry);
    if (!s) return role;
    allow_only(*s, {"services", "senders", "rate_limits", "max_recipients", "queue", "capture",
                    "mirror_to"});
    load_capture_and_mirror(*s, role);  // issue 10
    if (const Entry* e = s->get("services")) {
      role.services.emplace();
      for (const auto& item : list(*e).value_or(std::vector<Entry>{})) {
        auto name = text(item);
        if (!name) continue;
        if (config_.find_service(*name) == nullptr) {
          error(item, "no service named '" + *name + "'");
        }
        role.services->push_back(std::move(*name));
      }
    }
    if (const Entry* e = s->get("senders")) {
      role.senders.emplace();
      for (const auto& item : list(*e).value_or(std::vector<Entry>{})) {
        auto pattern = text(item);
        if (!pattern) continue;
        if (auto problem = check_sender_pattern(*pattern)) {
          error(item, "'" + *pattern + "' " + *problem);
        }
        role.senders->push_back(std::move(*pattern));
      }
    }
    if (const Entry* e = s->get("rate_limits")) {
      for (const auto& item : list(*e).value_or(std::vector<Entry>{})) {
        if (auto r = rate(item)) role.rate_limits.push_back(std::move(*r));
      }
    }
    if (const Entry* e = s->get("max_recipients")) {
      if (auto n = integer(*e, 1, 100000)) role.max_recipients = static_cast<unsigned>(*n);
    }
    // Queue API (issue 8): `queue: all` manages every spooled message.
    if (const Entry* e = s->get("queue")) {
      if (auto v = text(*e)) {
        if (*v == "all") {
          role.queue_all = true;
        } else {
          error(*e, "must be 'all' (leave it out for a role that sees only its own messages)");
        }
      }
    }
    return role;
  }

  // ---- Capture and mirror (issue 10, SPEC §10.4) ----
  std::vector<std::string> address_list(const Entry& entry) {
    std::vector<std::string> out;
    for (const auto& item : list(entry).value_or(std::vector<Entry>{})) {
      if (auto a = address(item)) out.push_back(std::move(*a));
    }
    return out;
  }

  void load_capture_and_mirror(const Section& s, RoleConfig& role) {
    if (const Entry* e = s.get("capture")) {
      if (auto name = text(*e)) {
        const ServiceConfig* service = config_.find_service(*name);
        if (service == nullptr) {
          error(*e, "no service named '" + *name + "'");
        } else if (service->driver != ServiceDriver::File) {
          error(*e, "service '" + *name + "' must be a driver: file service");
        }
        role.capture = std::move(*name);
      }
    }
    if (const Entry* e = s.get("mirror_to")) role.mirror_to = address_list(*e);
  }

  // ---- Idempotency keys (issue 10, SPEC §10.3) ----
  void load_idempotency(const Entry& entry) {
    auto s = section(entry);
    if (!s) return;
    allow_only(*s, {"ttl", "max_keys"});
    IdempotencyConfig& idem = config_.idempotency;
    if (const Entry* e = s->get("ttl")) idem.ttl_ms = duration(*e, false).value_or(idem.ttl_ms);
    if (const Entry* e = s->get("max_keys")) {
      idem.max_keys = integer(*e, 1, 100'000'000).value_or(idem.max_keys);
    }
  }

  void role_must_exist(const Entry& entry, const std::string& name) {
    if (config_.find_role(name) == nullptr) error(entry, "no role named '" + name + "'");
  }

  void service_must_exist(const Entry& entry, const std::string& name) {
    if (config_.find_service(name) == nullptr) error(entry, "no service named '" + name + "'");
  }

  void load_credentials(const Entry& entry) {
    auto items = list(entry);
    if (!items) return;
    std::vector<const Entry*> api_key_entries;  // parallel to config_.credentials
    for (const auto& item : *items) {
      auto s = section(item.value, item.value.Mark(), item.path);
      if (!s) continue;
      allow_only(*s, {"api_key", "api_key_file", "smtp_username", "smtp_password",
                      "smtp_password_file", "role"});
      CredentialConfig credential;
      Secret api_key = secret(*s, "api_key");
      const Entry* username = s->get("smtp_username");
      Secret password = secret(*s, "smtp_password");
      bool has_api_key = s->get("api_key") != nullptr || s->get("api_key_file") != nullptr;
      bool has_smtp = username != nullptr || s->get("smtp_password") != nullptr ||
                      s->get("smtp_password_file") != nullptr;
      if (has_api_key && has_smtp) {
        error_at(s->mark, s->path,
                 "give either api_key or smtp_username + smtp_password, not both");
      } else if (!has_api_key && !has_smtp) {
        error_at(s->mark, s->path, "needs api_key or smtp_username + smtp_password");
      } else if (has_api_key) {
        if (api_key.entry != nullptr) {
          if (api_key.value.empty()) {
            error(*api_key.entry, "is empty (is its environment variable set?)");
          }
          credential.api_key = std::move(api_key.value);
        }
      } else {
        if (username == nullptr) {
          error_at(s->mark, s->path, "smtp_password needs an smtp_username");
        } else {
          credential.smtp_username = nonempty_text(*username).value_or("");
        }
        if (password.entry != nullptr) {
          if (password.value.empty()) error(*password.entry, "is empty");
          credential.smtp_password = std::move(password.value);
        } else if (s->get("smtp_password") == nullptr && s->get("smtp_password_file") == nullptr) {
          error_at(s->mark, s->path, "smtp_username needs an smtp_password");
        }
      }
      if (const Entry* e = s->get("role")) {
        if (auto name = text(*e)) {
          role_must_exist(*e, *name);
          credential.role = std::move(*name);
        }
      } else {
        error_at(s->mark, s->path, "role is required");
      }
      // Duplicates: name the earlier entry, never the key itself.
      for (size_t i = 0; i < config_.credentials.size(); ++i) {
        const auto& other = config_.credentials[i];
        if (!credential.api_key.empty() &&
            text::constant_time_equal(other.api_key, credential.api_key)) {
          error(*api_key.entry,
                "the same key is already given by credentials[" + std::to_string(i) + "]");
        }
        if (!credential.smtp_username.empty() && other.smtp_username == credential.smtp_username) {
          error(*username,
                "the same user name is already given by credentials[" + std::to_string(i) + "]");
        }
      }
      config_.credentials.push_back(std::move(credential));
    }
  }

  void load_smtp(const Entry* entry, const YAML::Mark& root_mark) {
    std::optional<Section> s;
    if (entry != nullptr) {
      s = section(*entry);
      if (!s) return;
      allow_only(*s, {"service", "anonymous_role", "hostname", "tls_cert", "tls_key"});
    } else {
      s = Section{"smtp", root_mark, {}};
    }
    if (const Entry* e = s->get("service")) {
      if (auto name = text(*e)) {
        service_must_exist(*e, *name);
        config_.smtp.service = std::move(*name);
      }
    } else if (config_.listen_smtp || config_.listen_smtps) {
      if (config_.services.size() == 1) {
        config_.smtp.service = config_.services.front().name;
      } else if (config_.services.size() > 1) {
        error_at(s->mark, "smtp.service",
                 "is required when listen.smtp is set and there is more than one service");
      }
    }
    if (const Entry* e = s->get("anonymous_role")) {
      if (auto name = text(*e)) {
        role_must_exist(*e, *name);
        config_.smtp.anonymous_role = std::move(*name);
      }
    }
    if (const Entry* e = s->get("hostname")) {
      if (auto name = text(*e)) {
        if (auto problem = check_hostname(*name)) error(*e, *problem);
        config_.smtp.hostname = std::move(*name);
      }
    } else {
      config_.smtp.hostname = config_detail::machine_hostname();
    }
    const Entry* cert = s->get("tls_cert");
    const Entry* key = s->get("tls_key");
    if (cert != nullptr) config_.smtp.tls_cert = path(*cert).value_or("");
    if (key != nullptr) config_.smtp.tls_key = path(*key).value_or("");
    if ((cert == nullptr) != (key == nullptr)) {
      error_key(cert != nullptr ? *cert : *key, "tls_cert and tls_key go together: give both");
    }
    // listen.smtps (issue 13): implicit TLS has nothing to offer without a certificate.
    if (config_.listen_smtps && (cert == nullptr || key == nullptr)) {
      error_at(s->mark, "smtp.tls_cert",
               "and smtp.tls_key are required when listen.smtps is set (implicit TLS)");
    }
  }

  void load_spool(const Entry& entry) {
    auto s = section(entry);
    if (!s) return;
    allow_only(*s, {"path", "retry", "max_age", "bounces", "keep_failed", "max_bytes", "drain"});
    SpoolConfig spool;
    if (const Entry* e = s->get("path")) {
      spool.path = path(*e).value_or("");
    } else {
      error_at(s->mark, s->path + ".path", "is required (the spool directory)");
    }
    if (const Entry* e = s->get("retry")) {
      spool.retry_ms.clear();
      for (const auto& item : list(*e).value_or(std::vector<Entry>{})) {
        if (auto ms = duration(item, false)) spool.retry_ms.push_back(*ms);
      }
      if (spool.retry_ms.empty() && e->value.IsSequence()) error(*e, "needs at least one delay");
    }
    if (const Entry* e = s->get("max_age")) {
      spool.max_age_ms = duration(*e, false).value_or(spool.max_age_ms);
    }
    load_spool_delivery(*s, spool);
    config_.spool = std::move(spool);
  }

  // Spool mode (issue 8, SPEC §7.1): bounces, keep_failed, max_bytes, drain.
  void load_spool_delivery(const Section& s, SpoolConfig& spool) {
    if (const Entry* e = s.get("bounces")) {
      if (auto value = text(*e)) {
        if (*value == "sender") {
          spool.bounces = SpoolBounces::Sender;
        } else if (*value == "none") {
          spool.bounces = SpoolBounces::None;
        } else if (auto problem = check_address(*value)) {
          error(*e, "must be sender, none or an address (it " + *problem + ")");
        } else {
          spool.bounces = SpoolBounces::Address;
          spool.bounce_address = std::move(*value);
        }
      }
    }
    if (const Entry* e = s.get("keep_failed")) {
      spool.keep_failed_ms = duration(*e, true).value_or(spool.keep_failed_ms);
    }
    if (const Entry* e = s.get("max_bytes")) {
      auto value = text(*e);
      if (value && *value != "none") spool.max_bytes = size(*e);
    }
    if (const Entry* e = s.get("drain")) spool.drain = boolean(*e).value_or(spool.drain);
  }

  // ---- shared_state (issue 11, SPEC §11): rate limits and quotas counted in Redis ----------

  void load_shared_state(const Entry& entry) {
    auto s = section(entry);
    if (!s) return;
    allow_only(*s, {"redis", "password", "password_file", "key_prefix", "on_error", "timeout"});
    SharedStateConfig shared;
    if (const Entry* e = s->get("redis")) {
      if (auto url = text(*e)) {
        if (auto problem = config_detail::parse_redis_url(*url, shared)) error(*e, *problem);
      }
    } else {
      error_at(s->mark, s->path + ".redis", "is required (redis://host:port/db or unix:///path)");
    }
    Secret password = secret(*s, "password");
    if (password.entry != nullptr) {
      if (!shared.password.empty())
        error_key(*password.entry, "the redis URL has a password already");
      shared.password = std::move(password.value);
    }
    if (const Entry* e = s->get("key_prefix")) {
      if (auto prefix = text(*e)) {
        bool printable = std::all_of(prefix->begin(), prefix->end(), [](char c) {
          return c > ' ' && c < 0x7f && c != '{' && c != '}';
        });
        if (prefix->size() > 64 || !printable) {
          error(*e, "must be at most 64 printable characters without spaces, { or }");
        }
        shared.key_prefix = std::move(*prefix);
      }
    }
    if (const Entry* e = s->get("on_error")) {
      auto value = text(*e);
      if (value == "local") {
        shared.on_error = SharedStateOnError::Local;
      } else if (value == "refuse") {
        shared.on_error = SharedStateOnError::Refuse;
      } else if (value) {
        error(*e, "must be local or refuse");
      }
    }
    if (const Entry* e = s->get("timeout")) {
      shared.timeout_ms = duration(*e, false).value_or(shared.timeout_ms);
    }
    config_.shared_state = std::move(shared);
  }

  void load_limits(const Entry& entry) {
    auto s = section(entry);
    if (!s) return;
    allow_only(*s, {"max_message_bytes", "max_connections", "idle_timeout", "shutdown_grace",
                    "delivery_timeout",
                    // slow SMTP clients and per-client connections
                    "smtp_idle_timeout", "smtp_command_timeout", "smtp_min_data_rate",
                    "smtp_junk_command_limit", "max_connections_per_client",
                    // memory budgets
                    "unauthenticated_body_bytes", "max_inflight_bytes"});
    LimitsConfig& limits = config_.limits;
    if (const Entry* e = s->get("max_message_bytes")) {
      limits.max_message_bytes = size(*e).value_or(limits.max_message_bytes);
    }
    if (const Entry* e = s->get("max_connections")) {
      limits.max_connections =
          static_cast<unsigned>(integer(*e, 1, 1'000'000).value_or(limits.max_connections));
    }
    if (const Entry* e = s->get("idle_timeout")) {
      limits.idle_timeout_ms = duration(*e, false).value_or(limits.idle_timeout_ms);
    }
    if (const Entry* e = s->get("shutdown_grace")) {
      limits.shutdown_grace_ms = duration(*e, true).value_or(limits.shutdown_grace_ms);
    }
    // Upstream deadlines (issue 7).
    if (const Entry* e = s->get("delivery_timeout")) {
      if (auto ms = duration(*e, false)) {
        limits.delivery_timeout_ms = *ms;
        delivery_timeout_entry_ = *e;
      }
    }
    load_client_limits(*s);
    load_memory_budgets(*s);
  }

  // Upstream deadlines (issue 7): a delivery must be able to wait out at least one connect and
  // one reply, or every slow but healthy upstream would look timed out.
  void check_delivery_timeout(const Entry* limits_entry, const YAML::Mark& top_mark) {
    const uint64_t limit = config_.limits.delivery_timeout_ms;
    for (const ServiceConfig& service : config_.services) {
      if (service.driver != ServiceDriver::Smtp) continue;
      // Name the longer of the two: that is how long the delivery must at least be.
      const bool connect_longer = service.connect_timeout_ms > service.command_timeout_ms;
      const uint64_t needed =
          connect_longer ? service.connect_timeout_ms : service.command_timeout_ms;
      if (needed <= limit) continue;
      const std::string key = "services." + service.name +
                              (connect_longer ? ".connect_timeout (" : ".command_timeout (") +
                              duration_text(needed) + ")";
      if (delivery_timeout_entry_) {
        error(*delivery_timeout_entry_, "is shorter than " + key + "; make it at least that long");
      } else {
        error_at(limits_entry != nullptr ? mark_of(*limits_entry) : top_mark,
                 "limits.delivery_timeout",
                 "the default " + duration_text(limit) + " is shorter than " + key +
                     "; set limits.delivery_timeout to at least that");
      }
      return;  // one line says it; the fix is the same for every service
    }
  }

  static std::string duration_text(uint64_t ms) {
    if (ms % 3'600'000 == 0) return std::to_string(ms / 3'600'000) + "h";
    if (ms % 60'000 == 0) return std::to_string(ms / 60'000) + "m";
    if (ms % 1'000 == 0) return std::to_string(ms / 1'000) + "s";
    return std::to_string(ms) + "ms";
  }

  // Slow SMTP clients and per-client connections: deadlines instead of idle timers.
  void load_client_limits(const Section& s) {
    LimitsConfig& limits = config_.limits;
    if (const Entry* e = s.get("smtp_idle_timeout")) {
      limits.smtp_idle_timeout_ms = duration(*e, false).value_or(limits.smtp_idle_timeout_ms);
    }
    if (const Entry* e = s.get("smtp_command_timeout")) {
      limits.smtp_command_timeout_ms = duration(*e, false).value_or(limits.smtp_command_timeout_ms);
    }
    if (const Entry* e = s.get("smtp_min_data_rate")) {
      limits.smtp_min_data_rate = size(*e).value_or(limits.smtp_min_data_rate);
    }
    if (const Entry* e = s.get("smtp_junk_command_limit")) {
      limits.smtp_junk_command_limit =
          static_cast<unsigned>(integer(*e, 1, 1'000'000).value_or(limits.smtp_junk_command_limit));
    }
    if (const Entry* e = s.get("max_connections_per_client")) {
      limits.max_connections_per_client = static_cast<unsigned>(
          integer(*e, 1, 1'000'000).value_or(limits.max_connections_per_client));
    }
  }

  // Memory budgets: what unauthenticated bodies and message data in flight may hold.
  void load_memory_budgets(const Section& s) {
    LimitsConfig& limits = config_.limits;
    if (const Entry* e = s.get("unauthenticated_body_bytes")) {
      limits.unauthenticated_body_bytes = size(*e).value_or(limits.unauthenticated_body_bytes);
    }
    if (const Entry* e = s.get("max_inflight_bytes")) {
      limits.max_inflight_bytes = size(*e).value_or(limits.max_inflight_bytes);
    }
  }

  void load_log(const Entry& entry) {
    auto s = section(entry);
    if (!s) return;
    allow_only(*s, {"format", "level"});
    if (const Entry* e = s->get("format")) {
      if (auto value = text(*e)) {
        if (*value == "json") {
          config_.log.format = LogFormat::Json;
        } else if (*value == "text") {
          config_.log.format = LogFormat::Text;
        } else {
          error(*e, "must be json or text");
        }
      }
    }
    if (const Entry* e = s->get("level")) {
      if (auto value = text(*e)) {
        if (*value == "error") {
          config_.log.level = LogLevel::Error;
        } else if (*value == "warn") {
          config_.log.level = LogLevel::Warn;
        } else if (*value == "info") {
          config_.log.level = LogLevel::Info;
        } else if (*value == "debug") {
          config_.log.level = LogLevel::Debug;
        } else {
          error(*e, "must be error, warn, info or debug");
        }
      }
    }
  }

  // ---- Message features (issue 10): templates, dkim, attachment_fetch ---------------------

  void load_message_features(const Section& top) {
    if (const Entry* e = top.get("templates")) load_templates(*e);
    if (const Entry* e = top.get("dkim")) load_dkim(*e);
    if (const Entry* e = top.get("attachment_fetch")) load_attachment_fetch(*e);
  }

  // `key` inline or `key_file` (read now, relative to the configuration file), not both.
  std::optional<std::string> template_text(const Section& s, const std::string& key) {
    const Entry* inline_entry = s.get(key);
    const Entry* file_entry = s.get(key + "_file");
    if (inline_entry != nullptr && file_entry != nullptr) {
      error_key(*file_entry, "give either " + key + " or " + key + "_file, not both");
      return std::nullopt;
    }
    if (inline_entry != nullptr) return text(*inline_entry);
    if (file_entry == nullptr) return std::nullopt;
    auto file = path(*file_entry);
    if (!file) return std::nullopt;
    auto content = config_detail::read_small_file(*file, config_detail::kMaxConfigFileBytes);
    if (!content) {
      error_key(*file_entry, content.error().message);
      return std::nullopt;
    }
    return std::move(content).value();
  }

  void load_templates(const Entry& entry) {
    auto s = section(entry);
    if (!s) return;
    for (const auto& e : s->entries) {
      if (auto problem = check_name(e.key)) error_key(e, "template name " + *problem);
      auto t = section(e);
      if (!t) continue;
      allow_only(*t, {"subject", "body_text", "body_text_file", "body_html", "body_html_file",
                      "from_name", "from_email", "reply_to_name", "reply_to_email"});
      TemplateConfig tpl;
      tpl.name = e.key;
      if (const Entry* v = t->get("subject")) tpl.subject = line_text(*v);
      tpl.body_text = template_text(*t, "body_text");
      tpl.body_html = template_text(*t, "body_html");
      if (const Entry* v = t->get("from_name")) tpl.from_name = line_text(*v).value_or("");
      if (const Entry* v = t->get("from_email")) tpl.from_email = address(*v).value_or("");
      if (const Entry* v = t->get("reply_to_name")) tpl.reply_to_name = line_text(*v).value_or("");
      if (const Entry* v = t->get("reply_to_email")) {
        tpl.reply_to_email = address(*v).value_or("");
      }
      config_.templates.insert_or_assign(tpl.name, std::move(tpl));
    }
  }

  void load_dkim(const Entry& entry) {
    for (const Entry& item : list(entry).value_or(std::vector<Entry>{})) {
      auto s = section(item);
      if (!s) continue;
      allow_only(*s, {"domain", "selector", "key_file", "subdomains"});
      DkimConfig d;
      if (const Entry* e = s->get("domain")) {
        d.domain = text::lower_ascii(nonempty_text(*e).value_or(""));
        if (d.domain.find_first_of(" \t;=@") != std::string::npos) error(*e, "is not a domain");
      } else {
        error_at(s->mark, s->path + ".domain", "is required");
      }
      if (const Entry* e = s->get("selector")) {
        d.selector = nonempty_text(*e).value_or("");
        if (d.selector.find_first_of(" \t;=@") != std::string::npos) {
          error(*e, "is not a selector");
        }
      } else {
        error_at(s->mark, s->path + ".selector", "is required");
      }
      if (const Entry* e = s->get("subdomains")) d.subdomains = boolean(*e).value_or(false);
      if (const Entry* e = s->get("key_file")) {
        d.key_file = path(*e).value_or("");
        if (!d.key_file.empty()) d.key = load_dkim_key(*e, d.key_file);
      } else {
        error_at(s->mark, s->path + ".key_file", "is required (a PEM RSA private key)");
      }
      config_.dkim.push_back(std::move(d));
    }
  }

  std::shared_ptr<crypto::RsaKey> load_dkim_key(const Entry& entry, const std::string& file) {
    auto pem = config_detail::read_small_file(file, config_detail::kMaxSecretFileBytes);
    if (!pem) {
      error_key(entry, pem.error().message);
      return nullptr;
    }
    auto key = crypto::RsaKey::load_pem(pem.value());
    std::fill(pem.value().begin(), pem.value().end(), '\0');
    if (!key) {
      error_key(entry, file + ": " + key.error().message);
      return nullptr;
    }
    return std::make_shared<crypto::RsaKey>(std::move(key).value());
  }

  void load_attachment_fetch(const Entry& entry) {
    auto s = section(entry);
    if (!s) return;
    allow_only(*s, {"allow", "max_bytes", "timeout", "ca_file"});
    AttachmentFetchConfig fetch;
    if (const Entry* e = s->get("allow")) {
      for (const Entry& item : list(*e).value_or(std::vector<Entry>{})) {
        auto prefix = nonempty_text(item);
        if (!prefix) continue;
        // A prefix must end its host part, or "https://files.example.com" would allow
        // "https://files.example.com.evil.test/".
        size_t host_end = prefix->find('/', 8);
        if (!text::istarts_with_ascii(*prefix, "https://") || host_end == std::string::npos ||
            host_end == 8) {
          error(item, "must be an https:// URL prefix with a host and a path (at least \"/\")");
          continue;
        }
        fetch.allow.push_back(std::move(*prefix));
      }
    }
    if (fetch.allow.empty()) error_at(s->mark, s->path + ".allow", "needs at least one prefix");
    if (const Entry* e = s->get("max_bytes")) fetch.max_bytes = size(*e).value_or(fetch.max_bytes);
    if (const Entry* e = s->get("timeout")) {
      fetch.timeout_ms = duration(*e, false).value_or(fetch.timeout_ms);
    }
    if (const Entry* e = s->get("ca_file")) fetch.ca_file = path(*e).value_or("");
    config_.attachment_fetch = std::move(fetch);
  }

  std::string file_;
  std::filesystem::path base_dir_;
  EnvLookup env_;
  std::vector<std::string> errors_;
  Config config_;
  // Failover (issue 9): each fallback list item, to check once every service is known.
  struct FallbackItem {
    std::string service;
    std::string target;
    Entry entry;
  };
  std::vector<FallbackItem> fallback_items_;
  std::optional<Entry> delivery_timeout_entry_;  // issue 7: where limits.delivery_timeout is
};

}  // namespace

Result<Config> load_config_text(const std::string& text, const std::string& file, EnvLookup env) {
  try {
    Loader loader(file, env);
    return loader.load(text);
  } catch (const std::exception& e) {
    return make_error(file + ": cannot load the configuration: " + e.what());
  } catch (...) {
    return make_error(file + ": cannot load the configuration");
  }
}

Result<Config> load_config_file(const std::string& path, EnvLookup env) {
  auto content = config_detail::read_small_file(path, config_detail::kMaxConfigFileBytes);
  if (!content) return content.error();
  return load_config_text(content.value(), path, env);
}

}  // namespace mailcar
