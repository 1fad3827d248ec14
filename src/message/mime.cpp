#include "mailcar/mime.hpp"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstring>
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

// What is wrong with a header field's input, or null: no line breaks or NUL (header
// injection), and valid UTF-8.
const char* header_text_problem(std::string_view value) {
  for (char c : value) {
    if (c == '\r' || c == '\n') return "contains CR or LF";
    if (c == '\0') return "contains NUL";
  }
  if (!is_valid_utf8(value)) return "invalid UTF-8";
  return nullptr;
}

Result<void> check_header_text(std::string_view field, std::string_view value) {
  if (const char* problem = header_text_problem(value)) {
    return make_error(std::string(field) + ": " + problem);
  }
  return {};
}

std::string hex_escape(char prefix, unsigned char c) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out(1, prefix);
  out.push_back(kHex[c >> 4]);
  out.push_back(kHex[c & 15]);
  return out;
}

// RFC 2047 B encoded words, space separated, each chunk ending on a UTF-8 boundary, appended.
void append_encoded_words(std::string& out, std::string_view s) {
  if (s.empty()) {
    out.append(
        "=?UTF-8?B?"
        "?=");  // split: "??=" is a trigraph
    return;
  }
  bool first = true;
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
    if (!first) out.push_back(' ');
    first = false;
    out.append("=?UTF-8?B?");
    text::base64_encode_append(out, s.substr(0, n));
    out.append("?=");
    s.remove_prefix(n);
  }
}

void append_quoted_string(std::string& out, std::string_view s) {
  out.push_back('"');
  for (char c : s) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('"');
}

std::string quote_string(std::string_view s) {
  std::string out;
  append_quoted_string(out, s);
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
void append_unstructured(std::string& out, std::string_view s) {
  bool raw = is_printable_ascii(s) && s.find("=?") == std::string_view::npos &&
             (s.empty() || (s.front() != ' ' && s.back() != ' ')) && longest_word(s) <= kMaxRawWord;
  if (raw) {
    out.append(s);
  } else {
    append_encoded_words(out, s);
  }
}

void append_display_name(std::string& out, std::string_view name) {
  // "=?" would be taken for an encoded word by readers, so such names are encoded themselves.
  bool looks_encoded = name.find("=?") != std::string_view::npos;
  if (!looks_encoded && is_atom_phrase(name) && longest_word(name) <= kMaxRawWord) {
    out.append(name);
  } else if (!looks_encoded && is_printable_ascii(name) && name.size() <= 70 && !name.empty() &&
             name.front() != ' ' && name.back() != ' ') {
    append_quoted_string(out, name);
  } else {
    append_encoded_words(out, name);
  }
}

void append_mailbox(std::string& out, std::string_view address, std::string_view name) {
  if (name.empty()) {
    out.append(address);
    return;
  }
  append_display_name(out, name);
  out.append(" <", 2);
  out.append(address);
  out.push_back('>');
}

// Folds the header line `line` ("Name: value", no CRLF) into `out`, CRLF-terminated; the
// name is `name_len` bytes. Fold before the last WSP of a run, so no line is all WSP; the
// space after the colon is a place to fold too ("Subject:" alone on the first line), when
// the first word is long.
void fold_line_into(std::string& out, std::string_view line, size_t name_len) {
  if (line.size() <= kFoldAt) {  // nothing to fold: the line as it is
    out.append(line);
    out.append("\r\n", 2);
    return;
  }
  size_t line_len = 0;
  size_t seg_start = 0;
  auto emit = [&](size_t end) {
    size_t seg_len = end - seg_start;
    if (line_len > 0 && line_len + seg_len > kFoldAt) {
      out.append("\r\n", 2);
      line_len = 0;
    }
    out.append(line.substr(seg_start, seg_len));
    line_len += seg_len;
    seg_start = end;
  };
  for (size_t i = name_len + 1; i + 1 < line.size(); ++i) {
    bool wsp = line[i] == ' ' || line[i] == '\t';
    bool next_wsp = line[i + 1] == ' ' || line[i + 1] == '\t';
    if (wsp && !next_wsp) emit(i);
  }
  emit(line.size());
  out.append("\r\n", 2);
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

// A MIME entity before it is written. Large content is not copied into it: an attachment
// refers to its bytes (base64_of) and a multipart to its children, and everything is written
// once, into the message's final buffer, by render_into.
struct Entity {
  std::string headers;         // CRLF-terminated header lines (multipart, attachment)
  std::string_view base64_of;  // the body is these bytes in base64 lines (they must outlive e)
  std::string boundary;        // multipart: the children, each behind the boundary
  std::vector<Entity> children;
  // A text part (text_entity): its header lines are constants, its body is encoded when it
  // is written. The text is `text` (which must outlive e), or `normalized` when its line ends
  // had to be rewritten.
  bool is_text = false;
  bool html = false;
  bool add_crlf = false;  // the text does not end with CRLF: one is added
  bool use_normalized = false;
  TextEncoding encoding = TextEncoding::SevenBit;
  std::string_view text;
  std::string normalized;

  std::string_view text_source() const { return use_normalized ? normalized : text; }
};

std::string_view text_headers(const Entity& e) {
  static constexpr std::string_view kHeaders[2][3] = {
      {"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n",
       "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n",
       "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"},
      {"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n",
       "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n",
       "Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: base64\r\n"}};
  return kHeaders[e.html ? 1 : 0][static_cast<int>(e.encoding)];
}

// The size of a text part's body; for quoted-printable an estimate (a reservation hint).
size_t text_body_size(const Entity& e) {
  size_t size = e.text_source().size() + (e.add_crlf ? 2 : 0);
  switch (e.encoding) {
    case TextEncoding::SevenBit:
      return size;
    case TextEncoding::Base64:
      return base64_lines_size(size);
    case TextEncoding::QuotedPrintable:
      break;
  }
  return size + size / 16 + 16;
}

void render_text(std::string& out, const Entity& e) {
  std::string_view src = e.text_source();
  switch (e.encoding) {
    case TextEncoding::SevenBit:
      out.append(src);
      break;
    case TextEncoding::Base64:
      if (e.add_crlf) {  // the CRLF is part of the encoded text
        std::string text;
        text.reserve(src.size() + 2);
        text.append(src);
        text.append("\r\n", 2);
        return append_base64_lines(out, text);
      }
      return append_base64_lines(out, src);
    case TextEncoding::QuotedPrintable:
      // The last line is encoded alike with or without its CRLF, so it is added after.
      append_quoted_printable(out, src);
      break;
  }
  if (e.add_crlf) out.append("\r\n", 2);
}

size_t rendered_size(const Entity& e) {
  if (e.is_text) return text_headers(e).size() + 2 + text_body_size(e);
  size_t size = e.headers.size() + 2;
  if (!e.base64_of.empty()) return size + base64_lines_size(e.base64_of.size());
  if (e.children.empty()) return size;
  for (const auto& c : e.children) size += 2 + e.boundary.size() + 2 + rendered_size(c) + 2;
  return size + 2 + e.boundary.size() + 4;
}

void render_into(std::string& out, const Entity& e) {
  out.append(e.is_text ? text_headers(e) : std::string_view(e.headers));
  out.append("\r\n", 2);
  if (e.is_text) return render_text(out, e);
  if (!e.base64_of.empty()) return append_base64_lines(out, e.base64_of);
  for (const auto& c : e.children) {
    out.append("--", 2);
    out.append(e.boundary);
    out.append("\r\n", 2);
    render_into(out, c);
    out.append("\r\n", 2);
  }
  if (e.children.empty()) return;
  out.append("--", 2);
  out.append(e.boundary);
  out.append("--\r\n", 4);
}

// A text part of `content` (which must outlive it): the encoding is chosen now, the body
// written with the message.
Entity text_entity(bool html, std::string_view content) {
  // One pass tells everything the choice needs; line ends do not change line lengths. The
  // content is copied only when its line ends need rewriting.
  text::TextSummary sum = text::summarize_text(content);
  Entity e;
  e.is_text = true;
  e.html = html;
  e.text = content;
  if (sum.bare_line_end) {
    e.normalized = normalize_line_ends(content);
    e.use_normalized = true;
  }
  std::string_view src = e.text_source();
  e.add_crlf = !src.empty() && !src.ends_with("\r\n");
  e.encoding = choose_text_encoding(sum, src.size() + (e.add_crlf ? 2 : 0));
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

Error too_long_for_a_line(std::string_view field) {
  return make_error(std::string(field) + ": too long for a header line (a word of more than " +
                    std::to_string(kMaxLine) + " octets cannot be folded)");
}

// Appends the header field "name: value", folded (fold_header), where `write_value` appends
// the value; an error naming `field` when what it holds cannot be folded within 998 octets a
// line (a token or an address has no place to fold). The field is written in place and only
// a line longer than kFoldAt is folded, from a copy.
template <typename WriteValue>
Result<void> append_header_field(std::string& out, std::string_view field, std::string_view name,
                                 WriteValue&& write_value) {
  size_t start = out.size();
  out.append(name);
  out.append(": ", 2);
  write_value(out);
  if (out.size() - start <= kFoldAt) {
    out.append("\r\n", 2);
    return {};
  }
  std::string line(out, start);
  out.resize(start);
  fold_line_into(out, line, name.size());
  if (longest_line(std::string_view(out).substr(start)) > kMaxLine)
    return too_long_for_a_line(field);
  return {};
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
  Entity e;
  auto value_of = [](const std::string& v) { return [&v](std::string& o) { o.append(v); }; };
  if (auto r = append_header_field(e.headers, field + ".content_type", "Content-Type",
                                   value_of(type_value));
      !r) {
    return r.error();
  }
  if (auto r = append_header_field(e.headers, field + ".filename", "Content-Disposition",
                                   value_of(disposition));
      !r) {
    return r.error();
  }
  e.headers.append("Content-Transfer-Encoding: base64\r\n");
  e.base64_of = a.data;  // encoded when the message is written, straight into it
  return e;
}

bool entity_contains(const Entity& e, std::string_view s) {
  // Base64 content cannot hold a boundary: "=_mc_" has '_', which is not in its alphabet; nor
  // can quoted-printable, where every '=' is followed by a hex digit or CR. A text part's
  // header lines are constants without "=_".
  if (e.is_text) {
    return e.encoding == TextEncoding::SevenBit &&
           e.text_source().find(s) != std::string_view::npos;
  }
  if (e.headers.find(s) != std::string::npos) return true;
  for (const auto& c : e.children) {
    if (entity_contains(c, s)) return true;
  }
  return false;
}

// Random boundary that none of the parts contains (content is checked, not assumed).
std::string make_boundary(const std::vector<Entity>& parts) {
  while (true) {
    std::string b = "=_mc_";
    text::append_random_token(b, 30);
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

// A mailbox whose address is valid (the trimmed form, a view into the content) and whose name
// may go into a header.
struct CheckedMailbox {
  std::string_view address;
  std::string_view name;
};

// `field`, or `field[index]` for a list's element: built only for an error message.
std::string field_name(std::string_view field, size_t index) {
  std::string out(field);
  if (index != std::string::npos) out += "[" + std::to_string(index) + "]";
  return out;
}

Result<CheckedMailbox> check_mailbox(std::string_view field, size_t index, const Mailbox& m,
                                     bool address_checked) {
  if (const char* problem = header_text_problem(m.name)) {
    return make_error(field_name(field, index) + ".name: " + problem);
  }
  if (address_checked) return CheckedMailbox{m.address, m.name};
  auto addr = check_address(m.address);
  if (!addr) {
    return make_error(field_name(field, index) + ": invalid address: " + addr.error().message);
  }
  return CheckedMailbox{*addr, m.name};
}

Result<std::vector<CheckedMailbox>> check_list(std::string_view field,
                                               const std::vector<Mailbox>& list,
                                               bool addresses_checked) {
  std::vector<CheckedMailbox> out;
  out.reserve(list.size());
  for (size_t i = 0; i < list.size(); ++i) {
    auto m = check_mailbox(field, i, list[i], addresses_checked);
    if (!m) return m.error();
    out.push_back(*m);
  }
  return out;
}

void append_mailbox_list(std::string& out, const std::vector<CheckedMailbox>& list) {
  for (size_t i = 0; i < list.size(); ++i) {
    if (i > 0) out.append(", ", 2);
    append_mailbox(out, list[i].address, list[i].name);
  }
}

// From, To, Cc and Reply-To, folded, appended to `out`; names are encoded so that only an
// address could make a line too long.
Result<void> append_address_headers(std::string& out, const CheckedMailbox& from,
                                    const std::optional<CheckedMailbox>& reply_to,
                                    const std::vector<CheckedMailbox>& to,
                                    const std::vector<CheckedMailbox>& cc) {
  auto mailbox = [](const CheckedMailbox& m) {
    return [&m](std::string& o) { append_mailbox(o, m.address, m.name); };
  };
  auto list = [](const std::vector<CheckedMailbox>& l) {
    return [&l](std::string& o) { append_mailbox_list(o, l); };
  };
  if (auto r = append_header_field(out, "from", "From", mailbox(from)); !r) return r;
  if (!to.empty()) {
    if (auto r = append_header_field(out, "to", "To", list(to)); !r) return r;
  } else if (cc.empty()) {
    out.append("To: undisclosed-recipients:;\r\n");
  }
  if (!cc.empty()) {
    if (auto r = append_header_field(out, "cc", "Cc", list(cc)); !r) return r;
  }
  if (reply_to) {
    if (auto r = append_header_field(out, "reply_to", "Reply-To", mailbox(*reply_to)); !r) return r;
  }
  return {};
}

// The same recipient for the envelope: local part exact, domain case-insensitive.
bool same_recipient(std::string_view a, std::string_view b) {
  return address_local(a) == address_local(b) &&
         text::iequals_ascii(address_domain(a), address_domain(b));
}

// to + cc + bcc in order, duplicates dropped (same_recipient).
std::vector<std::string> envelope_recipients(
    std::initializer_list<const std::vector<CheckedMailbox>*> lists) {
  constexpr size_t kLinearUpTo = 16;  // beyond this a hash set beats comparing each pair
  size_t total = 0;
  for (const auto* l : lists) total += l->size();
  std::vector<std::string> out;
  out.reserve(total);
  std::unordered_set<std::string> seen;
  for (const auto* l : lists) {
    for (const auto& m : *l) {
      bool fresh = true;
      if (total <= kLinearUpTo) {
        for (const auto& r : out) fresh = fresh && !same_recipient(r, m.address);
      } else {
        std::string key = std::string(address_local(m.address)) + "@" +
                          text::lower_ascii(address_domain(m.address));
        fresh = seen.insert(std::move(key)).second;
      }
      if (fresh) out.emplace_back(m.address);
    }
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
  std::string out;
  append_display_name(out, name);
  return out;
}

std::string format_mailbox(const Mailbox& mailbox) {
  std::string out;
  append_mailbox(out, mailbox.address, mailbox.name);
  return out;
}

namespace {

void append_two_digits(char* o, int64_t v) {
  o[0] = static_cast<char>('0' + v / 10);
  o[1] = static_cast<char>('0' + v % 10);
}

constexpr size_t kDateBuffer = 64;  // "Thu, 01 Jan " + any int64 year + " 00:00:00 +0000"

// The date written into `buf` (kDateBuffer bytes); returns its length.
size_t write_rfc5322_date(char* buf, int64_t t) {
  static constexpr char kDays[] = "ThuFriSatSunMonTueWed";
  static constexpr char kMonths[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
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
  char* o = buf;
  std::memcpy(o, kDays + weekday * 3, 3);
  o[3] = ',';
  o[4] = ' ';
  append_two_digits(o + 5, d);
  o[7] = ' ';
  std::memcpy(o + 8, kMonths + (m - 1) * 3, 3);
  o[11] = ' ';
  o += 12;
  o = std::to_chars(o, buf + kDateBuffer, y).ptr;
  *o++ = ' ';
  append_two_digits(o, secs / 3600);
  o[2] = ':';
  append_two_digits(o + 3, secs / 60 % 60);
  o[5] = ':';
  append_two_digits(o + 6, secs % 60);
  std::memcpy(o + 8, " +0000", 6);
  return static_cast<size_t>(o + 14 - buf);
}

// The formatted date of the last second asked for: every message in a second has the same.
std::string_view cached_rfc5322_date(int64_t t) {
  struct Cache {
    int64_t t = 0;
    size_t len = 0;
    char buf[kDateBuffer];
  };
  thread_local Cache cache;
  if (cache.len == 0 || cache.t != t) {
    cache.len = write_rfc5322_date(cache.buf, t);
    cache.t = t;
  }
  return {cache.buf, cache.len};
}

}  // namespace

std::string fold_header(std::string_view name, std::string_view value) {
  std::string line;
  line.reserve(name.size() + 2 + value.size());
  line.append(name);
  line.append(": ", 2);
  line.append(value);
  std::string out;
  out.reserve(line.size() + 16);
  fold_line_into(out, line, name.size());
  return out;
}

std::string format_rfc5322_date(int64_t t) {
  return std::string(cached_rfc5322_date(t));
}

void append_rfc5322_date(std::string& out, int64_t t) {
  out.append(cached_rfc5322_date(t));
}

namespace {

// The host part of a message id: the name's [A-Za-z0-9._-] without leading or trailing dots,
// "localhost" when nothing is left. The last one is kept (per thread): it rarely changes.
std::string_view message_id_host(std::string_view hostname) {
  struct Cache {
    bool set = false;
    std::string name, host;
  };
  thread_local Cache cache;
  if (cache.set && cache.name == hostname) return cache.host;
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
  cache = Cache{true, std::string(hostname), std::move(host)};
  return cache.host;
}

}  // namespace

std::string make_message_id(std::string_view hostname, int64_t unix_seconds) {
  std::string_view host = message_id_host(hostname);
  std::string out;
  out.reserve(20 + 1 + 20 + 1 + host.size());
  text::append_random_token(out, 20);
  out.push_back('.');
  char digits[24];
  out.append(digits, std::to_chars(digits, digits + sizeof digits, unix_seconds).ptr);
  out.push_back('@');
  out.append(host);
  return out;
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

namespace {

// What the header block takes at most, roughly (a reservation hint): the addresses and names
// (encoded words grow a name by a half), the subject and the fixed fields.
size_t header_estimate(const MessageContent& content, const BuildOptions& options) {
  size_t size = 256 + options.hostname.size() + content.subject.size() * 3 / 2;
  auto add = [&size](const Mailbox& m) { size += 4 + m.address.size() + m.name.size() * 3 / 2; };
  add(content.from);
  if (content.reply_to) add(*content.reply_to);
  for (const auto* list : {&content.to, &content.cc}) {
    for (const auto& m : *list) add(m);
  }
  return size;
}

// A rough size of the body for the first reservation; render_into reserves exactly after.
size_t body_estimate(const MessageContent& content) {
  size_t size = 512;
  if (content.body_text) size += content.body_text->size() + content.body_text->size() / 16;
  if (content.body_html) size += content.body_html->size() + content.body_html->size() / 16;
  for (const auto& a : content.attachments) size += base64_lines_size(a.data.size()) + 256;
  return size;
}

Result<Entity> body_entity(const MessageContent& content) {
  if (!(content.body_text && content.body_html) && content.attachments.empty()) {
    // One text part, the usual message: no list of parts to build.
    if (content.body_html) return text_entity(true, *content.body_html);
    return text_entity(false, content.body_text ? std::string_view(*content.body_text) : "");
  }
  std::vector<Entity> body_parts;
  if (content.body_text) body_parts.push_back(text_entity(false, *content.body_text));
  if (content.body_html) body_parts.push_back(text_entity(true, *content.body_html));
  if (body_parts.empty()) body_parts.push_back(text_entity(false, ""));
  Entity body = body_parts.size() == 1 ? std::move(body_parts[0])
                                       : multipart_entity("alternative", std::move(body_parts));
  if (content.attachments.empty()) return body;
  std::vector<Entity> parts;
  parts.reserve(1 + content.attachments.size());
  parts.push_back(std::move(body));
  for (size_t i = 0; i < content.attachments.size(); ++i) {
    auto a = attachment_entity(content.attachments[i], i);
    if (!a) return a.error();
    parts.push_back(std::move(*a));
  }
  return multipart_entity("mixed", std::move(parts));
}

}  // namespace

Result<OutboundMessage> build_message(const MessageContent& content, const BuildOptions& options) {
  const bool checked = options.addresses_checked;
  auto from = check_mailbox("from", std::string::npos, content.from, checked);
  if (!from) return from.error();
  std::optional<CheckedMailbox> reply_to;
  if (content.reply_to) {
    auto r = check_mailbox("reply_to", std::string::npos, *content.reply_to, checked);
    if (!r) return r.error();
    reply_to = *r;
  }
  auto to = check_list("to", content.to, checked);
  if (!to) return to.error();
  auto cc = check_list("cc", content.cc, checked);
  if (!cc) return cc.error();
  auto bcc = check_list("bcc", content.bcc, checked);
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
  msg.envelope_rcpts = envelope_recipients({&*to, &*cc, &*bcc});
  msg.smtputf8 =
      !address_is_ascii(msg.envelope_from) || (reply_to && !address_is_ascii(reply_to->address));
  for (const auto& r : msg.envelope_rcpts) msg.smtputf8 = msg.smtputf8 || !address_is_ascii(r);

  // Headers and body go into one buffer, reserved once for the usual message.
  std::string& d = msg.data;
  d.reserve(header_estimate(content, options) + body_estimate(content));
  if (auto r = append_address_headers(d, *from, reply_to, *to, *cc); !r) return r.error();
  if (content.subject.empty()) {
    d.append("Subject:\r\n");
  } else {
    auto subject = append_header_field(d, "subject", "Subject", [&content](std::string& o) {
      append_unstructured(o, content.subject);
    });
    if (!subject) return subject.error();
  }
  d.append("Date: ");
  append_rfc5322_date(d, options.date_unix > 0 ? options.date_unix : now_unix());
  d.append("\r\nMessage-ID: <");
  d.append(msg.id);
  d.append(">\r\nMIME-Version: 1.0\r\n");
  // Only a header can hold a raw 8-bit byte (a UTF-8 address): every body is 7bit, QP or base64.
  msg.eight_bit = text::has_high_byte(d);

  auto body = body_entity(content);
  if (!body) return body.error();
  d.reserve(d.size() + rendered_size(*body));  // no-op unless the estimate fell short
  render_into(d, *body);
  return msg;
}

}  // namespace mailcar
