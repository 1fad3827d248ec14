#include "mailcar/mime.hpp"

#include <algorithm>
#include <chrono>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include "mailcar/address.hpp"
#include "mailcar/clock.hpp"
#include "mailcar/scan.hpp"
#include "mailcar/text.hpp"
#include "message/char_class.hpp"
#include "message/line_ends.hpp"
#include "message/transfer_encoding.hpp"

namespace mailcar {
namespace {

constexpr size_t kFoldAt = 78;
constexpr size_t kMaxLine = 998;
// Bytes per RFC 2047 B word: 42 bytes -> 56 base64 chars -> 68-char word, so even
// "Reply-To: " + word stays within 78 (and always within RFC 2047's 75 per word).
constexpr size_t kEncodedWordBytes = 42;
constexpr size_t kBase64LineChars = 76;
// Longest word written as it is in a header: a longer one cannot be folded onto a line of
// kFoldAt, so the text goes as encoded words (which fold) instead.
constexpr size_t kMaxRawWord = kFoldAt - 1;

bool is_continuation_byte(char c) {
  return (static_cast<unsigned char>(c) & 0xC0) == 0x80;
}

// RFC 2045 token character (type, subtype).
bool is_token_char(unsigned char c) {
  if (c <= 32 || c >= 127) return false;
  switch (c) {
    case '(':
    case ')':
    case '<':
    case '>':
    case '@':
    case ',':
    case ';':
    case ':':
    case '\\':
    case '"':
    case '/':
    case '[':
    case ']':
    case '?':
    case '=':
      return false;
    default:
      return true;
  }
}

// RFC 2231 attribute-char: sent unencoded in an extended parameter value.
bool is_attribute_char(unsigned char c) {
  return is_token_char(c) && c != '*' && c != '\'' && c != '%';
}

bool is_printable_ascii(std::string_view s) {
  for (unsigned char c : s) {
    if (c < 32 || c > 126) return false;
  }
  return true;
}

// A header field's input: no line breaks or NUL (header injection), and valid UTF-8.
Result<void> check_header_text(std::string_view field, std::string_view value) {
  for (char c : value) {
    if (c == '\r' || c == '\n') return make_error(std::string(field) + ": contains CR or LF");
    if (c == '\0') return make_error(std::string(field) + ": contains NUL");
  }
  if (!is_valid_utf8(value)) return make_error(std::string(field) + ": invalid UTF-8");
  return {};
}

std::string hex_escape(char prefix, unsigned char c) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out(1, prefix);
  out.push_back(kHex[c >> 4]);
  out.push_back(kHex[c & 15]);
  return out;
}

// RFC 2047 B encoded words, space separated, each chunk ending on a UTF-8 boundary.
std::string encoded_words(std::string_view s) {
  std::string out;
  if (s.empty())
    return "=?UTF-8?B?"
           "?=";  // split: "??=" is a trigraph
  while (!s.empty()) {
    size_t n = s.size() <= kEncodedWordBytes ? s.size() : kEncodedWordBytes;
    while (n < s.size() && n > 0 && is_continuation_byte(s[n])) --n;
    if (n == 0) n = s.size() < kEncodedWordBytes ? s.size() : kEncodedWordBytes;  // invalid input
    if (n < s.size()) {
      // Prefer to break before a space: some readers (Python's email) wrongly put a space
      // between adjacent encoded words in a phrase, which then lands between words.
      size_t space = s.substr(0, n).rfind(' ');
      if (space != std::string_view::npos && space >= n / 2) n = space;
    }
    if (!out.empty()) out.push_back(' ');
    out += "=?UTF-8?B?" + text::base64_encode(s.substr(0, n)) + "?=";
    s.remove_prefix(n);
  }
  return out;
}

std::string quote_string(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

bool is_atom_phrase(std::string_view s) {
  if (s.empty() || s.front() == ' ' || s.back() == ' ') return false;
  char prev = 0;
  for (char c : s) {
    if (c == ' ') {
      if (prev == ' ') return false;
    } else if (!is_atext_ascii(static_cast<unsigned char>(c))) {
      return false;
    }
    prev = c;
  }
  return true;
}

size_t longest_word(std::string_view s) {
  size_t best = 0, run = 0;
  for (char c : s) {
    run = (c == ' ' || c == '\t') ? 0 : run + 1;
    if (run > best) best = run;
  }
  return best;
}

// Unstructured text (Subject): raw when it is plain printable ASCII that a reader gets back
// unchanged; otherwise encoded words.
std::string encode_unstructured(std::string_view s) {
  bool raw = is_printable_ascii(s) && s.find("=?") == std::string_view::npos &&
             (s.empty() || (s.front() != ' ' && s.back() != ' ')) && longest_word(s) <= kMaxRawWord;
  return raw ? std::string(s) : encoded_words(s);
}

}  // namespace

std::string normalize_line_ends(std::string_view s) {
  std::string out;
  out.reserve(s.size() + s.size() / 32 + 2);
  append_normalized_line_ends(out, s);
  return out;
}

void append_normalized_line_ends(std::string& out, std::string_view s) {
  const char* p = s.data();
  const char* end = p + s.size();
  while (p < end) {  // copy the run up to each CR or LF, then write CRLF for it
    const char* eol = text::find_line_end(p, end);
    out.append(p, static_cast<size_t>(eol - p));
    if (eol == end) break;
    out += "\r\n";
    p = eol + 1;
    if (*eol == '\r' && p < end && *p == '\n') ++p;
  }
}

namespace {

size_t base64_lines_size(size_t bytes);

// Base64 in lines of kBase64LineChars, each CRLF-terminated, appended to `out` (sized once).
void append_base64_lines(std::string& out, std::string_view data) {
  constexpr size_t kLineBytes = kBase64LineChars / 4 * 3;
  size_t at = out.size();
  out.resize(at + base64_lines_size(data.size()));
  char* o = out.data() + at;
  for (size_t i = 0; i < data.size(); i += kLineBytes) {
    o += text::base64_encode_into(o, data.substr(i, kLineBytes));
    *o++ = '\r';
    *o++ = '\n';
  }
}

size_t base64_lines_size(size_t bytes) {
  size_t chars = (bytes + 2) / 3 * 4;
  return chars + (chars + kBase64LineChars - 1) / kBase64LineChars * 2;
}

std::string base64_lines(std::string_view data) {
  std::string out;
  out.reserve(base64_lines_size(data.size()));
  append_base64_lines(out, data);
  return out;
}

// A MIME entity before it is written. Large content is not copied into it: an attachment
// refers to its bytes (base64_of) and a multipart to its children, and everything is written
// once, into the message's final buffer, by render_into.
struct Entity {
  std::string headers;         // CRLF-terminated header lines
  std::string body;            // CRLF-terminated (or empty); unused when one of the below is set
  std::string_view base64_of;  // the body is these bytes in base64 lines (they must outlive e)
  std::string boundary;        // multipart: the children, each behind the boundary
  std::vector<Entity> children;
};

size_t rendered_size(const Entity& e) {
  size_t size = e.headers.size() + 2;
  if (!e.base64_of.empty()) return size + base64_lines_size(e.base64_of.size());
  if (e.children.empty()) return size + e.body.size();
  for (const auto& c : e.children) size += 2 + e.boundary.size() + 2 + rendered_size(c) + 2;
  return size + 2 + e.boundary.size() + 4;
}

void render_into(std::string& out, const Entity& e) {
  out += e.headers;
  out += "\r\n";
  if (!e.base64_of.empty()) return append_base64_lines(out, e.base64_of);
  if (e.children.empty()) {
    out += e.body;
    return;
  }
  for (const auto& c : e.children) {
    out += "--";
    out += e.boundary;
    out += "\r\n";
    render_into(out, c);
    out += "\r\n";
  }
  out += "--";
  out += e.boundary;
  out += "--\r\n";
}

Entity text_entity(std::string_view subtype, std::string_view content) {
  // One pass tells everything the choice needs; line ends do not change line lengths. The
  // content is copied only when its line ends need rewriting.
  text::TextSummary sum = text::summarize_text(content);
  std::string normalized;
  std::string_view src = content;
  if (sum.bare_line_end) {
    normalized = normalize_line_ends(content);
    src = normalized;
  }
  bool add_crlf = !src.empty() && !src.ends_with("\r\n");
  size_t size = src.size() + (add_crlf ? 2 : 0);
  Entity e;
  e.headers = "Content-Type: text/" + std::string(subtype) + "; charset=utf-8\r\n";
  switch (choose_text_encoding(sum, size)) {
    case TextEncoding::SevenBit:
      e.headers += "Content-Transfer-Encoding: 7bit\r\n";
      e.body.reserve(size);
      e.body.assign(src);
      if (add_crlf) e.body += "\r\n";
      break;
    case TextEncoding::Base64: {
      e.headers += "Content-Transfer-Encoding: base64\r\n";
      std::string text(src);
      if (add_crlf) text += "\r\n";
      e.body = base64_lines(text);
      break;
    }
    case TextEncoding::QuotedPrintable:
      // The last line is encoded alike with or without its CRLF, so it is added after.
      e.headers += "Content-Transfer-Encoding: quoted-printable\r\n";
      e.body = quoted_printable(src);
      if (add_crlf) e.body += "\r\n";
      break;
  }
  return e;
}

// RFC 2231 filename*0*=utf-8''...; filename*1*=... in chunks that never split a %XX.
std::string rfc2231_parameter(std::string_view attribute, std::string_view value) {
  std::vector<std::string> chunks(1);
  for (unsigned char c : value) {
    std::string piece =
        is_attribute_char(c) ? std::string(1, static_cast<char>(c)) : hex_escape('%', c);
    if (chunks.back().size() + piece.size() > 40) chunks.emplace_back();  // lines stay < 78
    chunks.back() += piece;
  }
  std::string out;
  for (size_t i = 0; i < chunks.size(); ++i) {
    if (i) out += "; ";
    out += std::string(attribute) + "*";
    if (chunks.size() > 1) out += std::to_string(i) + "*";
    out += "=";
    if (i == 0) out += "utf-8''";
    out += chunks[i];
  }
  return out;
}

// A parameter value: an RFC 2045 token or a quoted-string of printable ASCII.
bool is_parameter_value(std::string_view v) {
  if (v.size() >= 2 && v.front() == '"' && v.back() == '"') {
    for (size_t i = 1; i + 1 < v.size(); ++i) {
      auto c = static_cast<unsigned char>(v[i]);
      if (c < 0x20 || c >= 0x7f) return false;
      if (c == '\\' || c == '"') {
        if (c == '"' || i + 2 >= v.size()) return false;  // only escaped pairs inside
        ++i;
      }
    }
    return true;
  }
  if (v.empty()) return false;
  for (unsigned char c : v) {
    if (!is_token_char(c)) return false;
  }
  return true;
}

// "type/subtype" with optional "; attribute=value" parameters (charset and the like). A
// `name` parameter is dropped: the builder writes its own from the file name.
Result<std::string> check_content_type(std::string_view field, std::string_view ct) {
  for (char c : ct) {
    if (c == '\r' || c == '\n' || c == '\0')
      return make_error(std::string(field) + ": contains CR, LF or NUL");
  }
  ct = text::trim(ct);
  if (ct.empty()) return std::string("application/octet-stream");
  std::string_view media = text::trim(ct.substr(0, ct.find(';')));
  std::string_view params =
      ct.find(';') == std::string_view::npos ? std::string_view{} : ct.substr(ct.find(';') + 1);
  size_t slash = media.find('/');
  std::string_view type = media.substr(0, slash);
  std::string_view subtype =
      slash == std::string_view::npos ? std::string_view{} : media.substr(slash + 1);
  auto all_token = [](std::string_view s) {
    if (s.empty()) return false;
    for (unsigned char c : s) {
      if (!is_token_char(c)) return false;
    }
    return true;
  };
  if (!all_token(type) || !all_token(subtype)) {
    return make_error(std::string(field) + ": not a type/subtype content type");
  }
  std::string out = text::lower_ascii(media);
  if (out.starts_with("multipart/") || out.starts_with("message/")) {
    return make_error(std::string(field) +
                      ": multipart/* and message/* are not allowed for attachments");
  }
  while (!params.empty()) {
    size_t semi = params.find(';');
    std::string_view param = text::trim(params.substr(0, semi));
    params = semi == std::string_view::npos ? std::string_view{} : params.substr(semi + 1);
    if (param.empty()) continue;
    size_t eq = param.find('=');
    std::string_view attribute = text::trim(param.substr(0, eq));
    std::string_view value =
        eq == std::string_view::npos ? std::string_view{} : text::trim(param.substr(eq + 1));
    if (!all_token(attribute) || !is_parameter_value(value)) {
      return make_error(std::string(field) + ": bad parameter \"" + std::string(param) + "\"");
    }
    if (text::iequals_ascii(attribute, "name")) continue;
    out += "; " + text::lower_ascii(attribute) + "=" + std::string(value);
  }
  return out;
}

size_t longest_line(std::string_view text) {
  size_t longest = 0;
  while (!text.empty()) {
    size_t end = text.find("\r\n");
    if (end == std::string_view::npos) end = text.size();
    longest = std::max(longest, end);
    text.remove_prefix(std::min(end + 2, text.size()));
  }
  return longest;
}

// fold_header, or an error naming `field` when what it holds cannot be folded within 998
// octets a line (a token or an address has no place to fold).
Result<std::string> header_field(const std::string& field, std::string_view name,
                                 std::string_view value) {
  std::string folded = fold_header(name, value);
  if (longest_line(folded) > kMaxLine) {
    return make_error(field + ": too long for a header line (a word of more than " +
                      std::to_string(kMaxLine) + " octets cannot be folded)");
  }
  return folded;
}

Result<Entity> attachment_entity(const Attachment& a, size_t index) {
  std::string field = "attachments[" + std::to_string(index) + "]";
  if (auto r = check_header_text(field + ".filename", a.filename); !r) return r.error();
  auto ct = check_content_type(field + ".content_type", a.content_type);
  if (!ct) return ct.error();
  std::string type_value = *ct;
  std::string disposition = "attachment";
  if (!a.filename.empty()) {
    bool simple = is_printable_ascii(a.filename) && a.filename.size() <= 60 &&
                  a.filename.find("=?") == std::string::npos;
    if (simple) {
      type_value += "; name=" + quote_string(a.filename);
      disposition += "; filename=" + quote_string(a.filename);
    } else {
      // RFC 2231 (charset, continuations); RFC 2047 §5 forbids encoded words in a parameter.
      type_value += "; " + rfc2231_parameter("name", a.filename);
      disposition += "; " + rfc2231_parameter("filename", a.filename);
    }
  }
  auto type_header = header_field(field + ".content_type", "Content-Type", type_value);
  if (!type_header) return type_header.error();
  auto disposition_header = header_field(field + ".filename", "Content-Disposition", disposition);
  if (!disposition_header) return disposition_header.error();
  Entity e;
  e.headers = *type_header + *disposition_header + "Content-Transfer-Encoding: base64\r\n";
  e.base64_of = a.data;  // encoded when the message is written, straight into it
  return e;
}

bool entity_contains(const Entity& e, std::string_view s) {
  // Base64 content cannot hold a boundary: "=_mc_" has '_', which is not in its alphabet.
  if (e.headers.find(s) != std::string::npos || e.body.find(s) != std::string::npos) return true;
  for (const auto& c : e.children) {
    if (entity_contains(c, s)) return true;
  }
  return false;
}

// Random boundary that none of the parts contains (content is checked, not assumed).
std::string make_boundary(const std::vector<Entity>& parts) {
  while (true) {
    std::string b = "=_mc_" + text::random_token(30);
    bool clash = false;
    for (const auto& p : parts) clash = clash || entity_contains(p, b);
    if (!clash) return b;
  }
}

Entity multipart_entity(std::string_view subtype, std::vector<Entity> children) {
  Entity e;
  e.boundary = make_boundary(children);
  e.headers = fold_header(
      "Content-Type", "multipart/" + std::string(subtype) + "; boundary=\"" + e.boundary + "\"");
  e.children = std::move(children);
  return e;
}

struct CheckedMailbox {
  std::string address;
  std::string name;
};

Result<CheckedMailbox> check_mailbox(const std::string& field, const Mailbox& m) {
  if (auto r = check_header_text(field + ".name", m.name); !r) return r.error();
  auto addr = validate_address(m.address);
  if (!addr) return make_error(field + ": invalid address: " + addr.error().message);
  return CheckedMailbox{std::move(*addr), m.name};
}

Result<std::vector<CheckedMailbox>> check_list(const char* field,
                                               const std::vector<Mailbox>& list) {
  std::vector<CheckedMailbox> out;
  for (size_t i = 0; i < list.size(); ++i) {
    auto m = check_mailbox(std::string(field) + "[" + std::to_string(i) + "]", list[i]);
    if (!m) return m.error();
    out.push_back(std::move(*m));
  }
  return out;
}

std::string mailbox_list(const std::vector<CheckedMailbox>& list) {
  std::string out;
  for (const auto& m : list) {
    if (!out.empty()) out += ", ";
    out += format_mailbox(Mailbox{m.address, m.name});
  }
  return out;
}

// From, To, Cc and Reply-To, folded; names are encoded so that only an address could make a
// line too long.
Result<std::string> address_headers(const CheckedMailbox& from,
                                    const std::optional<CheckedMailbox>& reply_to,
                                    const std::vector<CheckedMailbox>& to,
                                    const std::vector<CheckedMailbox>& cc) {
  std::string out;
  auto add = [&out](const std::string& field, std::string_view name,
                    const std::string& value) -> Result<void> {
    auto line = header_field(field, name, value);
    if (!line) return line.error();
    out += *line;
    return {};
  };
  if (auto r = add("from", "From", format_mailbox(Mailbox{from.address, from.name})); !r) {
    return r.error();
  }
  if (!to.empty()) {
    if (auto r = add("to", "To", mailbox_list(to)); !r) return r.error();
  } else if (cc.empty()) {
    out += "To: undisclosed-recipients:;\r\n";
  }
  if (!cc.empty()) {
    if (auto r = add("cc", "Cc", mailbox_list(cc)); !r) return r.error();
  }
  if (reply_to) {
    auto value = format_mailbox(Mailbox{reply_to->address, reply_to->name});
    if (auto r = add("reply_to", "Reply-To", value); !r) return r.error();
  }
  return out;
}

bool valid_message_id(std::string_view id) {
  if (id.empty() || id.find('@') == std::string_view::npos) return false;
  for (unsigned char c : id) {
    if (c <= 32 || c >= 127) return false;
    switch (c) {
      case '<':
      case '>':
      case '(':
      case ')':
      case '[':
      case ']':
      case '\\':
      case '"':
      case ',':
      case ';':
      case ':':
        return false;
      default:
        break;
    }
  }
  return true;
}

int64_t now_unix() {
  return static_cast<int64_t>(wall_clock_ms() / 1000);
}

}  // namespace

std::string encode_display_name(std::string_view name) {
  // "=?" would be taken for an encoded word by readers, so such names are encoded themselves.
  bool looks_encoded = name.find("=?") != std::string_view::npos;
  if (!looks_encoded && is_atom_phrase(name) && longest_word(name) <= kMaxRawWord) {
    return std::string(name);
  }
  if (!looks_encoded && is_printable_ascii(name) && name.size() <= 70 && !name.empty() &&
      name.front() != ' ' && name.back() != ' ') {
    return quote_string(name);
  }
  return encoded_words(name);
}

std::string format_mailbox(const Mailbox& mailbox) {
  if (mailbox.name.empty()) return mailbox.address;
  return encode_display_name(mailbox.name) + " <" + mailbox.address + ">";
}

std::string fold_header(std::string_view name, std::string_view value) {
  std::string line = std::string(name) + ": " + std::string(value);
  std::string out;
  out.reserve(line.size() + 16);
  size_t line_len = 0;
  size_t seg_start = 0;
  auto emit = [&](size_t end) {
    size_t seg_len = end - seg_start;
    if (line_len > 0 && line_len + seg_len > kFoldAt) {
      out += "\r\n";
      line_len = 0;
    }
    out.append(line, seg_start, seg_len);
    line_len += seg_len;
    seg_start = end;
  };
  // Fold before the last WSP of a run, so no line is all WSP; the space after the colon is a
  // place to fold too ("Subject:" alone on the first line), when the first word is long.
  for (size_t i = name.size() + 1; i + 1 < line.size(); ++i) {
    bool wsp = line[i] == ' ' || line[i] == '\t';
    bool next_wsp = line[i + 1] == ' ' || line[i + 1] == '\t';
    if (wsp && !next_wsp) emit(i);
  }
  emit(line.size());
  out += "\r\n";
  return out;
}

std::string format_rfc5322_date(int64_t t) {
  static constexpr const char* kDays[] = {"Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"};
  static constexpr const char* kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                            "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  int64_t days = t / 86400;
  int64_t secs = t % 86400;
  if (secs < 0) {
    secs += 86400;
    --days;
  }
  int64_t weekday = days % 7;
  if (weekday < 0) weekday += 7;
  // Howard Hinnant's civil_from_days.
  int64_t z = days + 719468;
  int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  int64_t doe = z - era * 146097;
  int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  int64_t y = yoe + era * 400;
  int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  int64_t mp = (5 * doy + 2) / 153;
  int64_t d = doy - (153 * mp + 2) / 5 + 1;
  int64_t m = mp < 10 ? mp + 3 : mp - 9;
  if (m <= 2) ++y;
  auto two = [](int64_t v) { return (v < 10 ? "0" : "") + std::to_string(v); };
  return std::string(kDays[weekday]) + ", " + two(d) + " " + kMonths[m - 1] + " " +
         std::to_string(y) + " " + two(secs / 3600) + ":" + two(secs / 60 % 60) + ":" +
         two(secs % 60) + " +0000";
}

std::string make_message_id(std::string_view hostname, int64_t unix_seconds) {
  std::string host;
  for (char c : hostname) {
    auto u = static_cast<unsigned char>(c);
    if ((u >= 'a' && u <= 'z') || (u >= 'A' && u <= 'Z') || (u >= '0' && u <= '9') || c == '.' ||
        c == '-' || c == '_') {
      host.push_back(c);
    }
  }
  while (!host.empty() && host.front() == '.') host.erase(0, 1);
  while (!host.empty() && host.back() == '.') host.pop_back();
  if (host.empty()) host = "localhost";
  return text::random_token(20) + "." + std::to_string(unix_seconds) + "@" + host;
}

std::string make_message_id(std::string_view hostname) {
  return make_message_id(hostname, now_unix());
}

std::string dot_stuff(std::string_view data) {
  std::string out;
  out.reserve(data.size() + data.size() / 64 + 8);
  const char* p = data.data();
  const char* end = p + data.size();
  bool line_start = true;
  while (p < end) {  // a line at a time: its content in one copy, then CRLF
    if (line_start && *p == '.') out.push_back('.');
    const char* eol = text::find_line_end(p, end);
    out.append(p, static_cast<size_t>(eol - p));
    line_start = eol < end;
    if (eol == end) break;
    out += "\r\n";
    p = eol + 1;
    if (*eol == '\r' && p < end && *p == '\n') ++p;
  }
  if (!line_start) out += "\r\n";
  out += ".\r\n";
  return out;
}

Result<OutboundMessage> build_message(const MessageContent& content, const BuildOptions& options) {
  auto from = check_mailbox("from", content.from);
  if (!from) return from.error();
  std::optional<CheckedMailbox> reply_to;
  if (content.reply_to) {
    auto r = check_mailbox("reply_to", *content.reply_to);
    if (!r) return r.error();
    reply_to = std::move(*r);
  }
  auto to = check_list("to", content.to);
  if (!to) return to.error();
  auto cc = check_list("cc", content.cc);
  if (!cc) return cc.error();
  auto bcc = check_list("bcc", content.bcc);
  if (!bcc) return bcc.error();
  if (auto r = check_header_text("subject", content.subject); !r) return r.error();
  if (to->empty() && cc->empty() && bcc->empty()) return make_error("no recipient");

  OutboundMessage msg;
  if (options.message_id.empty()) {
    msg.id = make_message_id(options.hostname);
  } else if (valid_message_id(options.message_id)) {
    msg.id = options.message_id;
  } else {
    return make_error("message_id: invalid");
  }
  msg.envelope_from = from->address;
  std::unordered_set<std::string> seen;
  for (const auto* list : {&*to, &*cc, &*bcc}) {
    for (const auto& m : *list) {
      std::string key = std::string(address_local(m.address)) + "@" +
                        text::lower_ascii(address_domain(m.address));
      if (seen.insert(key).second) msg.envelope_rcpts.push_back(m.address);
    }
  }
  msg.smtputf8 =
      !address_is_ascii(msg.envelope_from) || (reply_to && !address_is_ascii(reply_to->address));
  for (const auto& r : msg.envelope_rcpts) msg.smtputf8 = msg.smtputf8 || !address_is_ascii(r);

  auto headers = address_headers(*from, reply_to, *to, *cc);
  if (!headers) return headers.error();
  std::string& d = msg.data;
  d = std::move(*headers);
  if (content.subject.empty()) {
    d += "Subject:\r\n";
  } else {
    auto subject = header_field("subject", "Subject", encode_unstructured(content.subject));
    if (!subject) return subject.error();
    d += *subject;
  }
  d += "Date: " + format_rfc5322_date(options.date_unix > 0 ? options.date_unix : now_unix()) +
       "\r\n";
  d += "Message-ID: <" + msg.id + ">\r\n";
  d += "MIME-Version: 1.0\r\n";

  std::vector<Entity> body_parts;
  if (content.body_text) body_parts.push_back(text_entity("plain", *content.body_text));
  if (content.body_html) body_parts.push_back(text_entity("html", *content.body_html));
  if (body_parts.empty()) body_parts.push_back(text_entity("plain", ""));
  Entity body = body_parts.size() == 1 ? std::move(body_parts[0])
                                       : multipart_entity("alternative", std::move(body_parts));
  if (!content.attachments.empty()) {
    std::vector<Entity> parts;
    parts.push_back(std::move(body));
    for (size_t i = 0; i < content.attachments.size(); ++i) {
      auto a = attachment_entity(content.attachments[i], i);
      if (!a) return a.error();
      parts.push_back(std::move(*a));
    }
    body = multipart_entity("mixed", std::move(parts));
  }
  d.reserve(d.size() + rendered_size(body));  // one allocation for the whole message
  render_into(d, body);
  msg.eight_bit = text::has_high_byte(d);
  return msg;
}

}  // namespace mailcar
