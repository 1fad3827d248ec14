#include "message/long_lines.hpp"

#include <optional>

#include "mailcar/scan.hpp"
#include "mailcar/text.hpp"
#include "message/transfer_encoding.hpp"

namespace mailcar {
namespace {

constexpr int kMaxDepth = 20;

struct Parts {
  std::string_view header;  // field lines, each CRLF-terminated
  std::string_view body;
  bool separator = false;  // the empty line between them is present
};

Parts split_entity(std::string_view e) {
  if (e.starts_with("\r\n")) return {{}, e.substr(2), true};
  size_t end = e.find("\r\n\r\n");
  if (end == std::string_view::npos) return {e, {}, false};
  return {e.substr(0, end + 2), e.substr(end + 4), true};
}

// Calls f(line) for each line of CRLF text, the CRLF not included (a last unterminated line
// too).
template <class F>
void for_each_line(std::string_view s, F f) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t crlf = s.find("\r\n", pos);
    size_t end = crlf == std::string_view::npos ? s.size() : crlf;
    f(s.substr(pos, end - pos), crlf != std::string_view::npos);
    pos = end + 2;
  }
}

bool is_field(std::string_view line, std::string_view name) {
  if (!text::istarts_with_ascii(line, name)) return false;
  std::string_view rest = text::trim(line.substr(name.size()));
  return rest.starts_with(':');
}

// The unfolded value of the first field called `name`, or nullopt.
std::optional<std::string> field_value(std::string_view header, std::string_view name) {
  std::optional<std::string> value;
  bool in_field = false;
  for_each_line(header, [&](std::string_view line, bool) {
    bool continuation = !line.empty() && (line[0] == ' ' || line[0] == '\t');
    if (in_field && continuation) {
      value->append(line);
      return;
    }
    in_field = !value && is_field(line, name);
    if (in_field) value = std::string(line.substr(line.find(':') + 1));
  });
  return value;
}

// The header block without the fields called `name` (continuation lines included).
std::string without_field(std::string_view header, std::string_view name) {
  std::string out;
  bool dropping = false;
  for_each_line(header, [&](std::string_view line, bool) {
    bool continuation = !line.empty() && (line[0] == ' ' || line[0] == '\t');
    if (!continuation) dropping = is_field(line, name);
    if (dropping) return;
    out.append(line);
    out += "\r\n";
  });
  return out;
}

// The value of parameter `attribute` (token or quoted-string) of a Content-Type value.
std::optional<std::string> parameter(std::string_view value, std::string_view attribute) {
  for (size_t semi = value.find(';'); semi != std::string_view::npos;
       semi = value.find(';', semi + 1)) {
    std::string_view rest = text::trim(value.substr(semi + 1));
    if (!text::istarts_with_ascii(rest, attribute)) continue;
    rest = text::trim(rest.substr(attribute.size()));
    if (!rest.starts_with('=')) continue;
    rest = text::trim(rest.substr(1));
    std::string out;
    if (rest.starts_with('"')) {
      for (size_t i = 1; i < rest.size() && rest[i] != '"'; ++i) {
        if (rest[i] == '\\' && i + 1 < rest.size()) ++i;
        out.push_back(rest[i]);
      }
    } else {
      out = rest.substr(0, rest.find_first_of("; \t"));
    }
    return out;
  }
  return std::nullopt;
}

// "type/subtype" in lower case; text/plain when there is no Content-Type (RFC 2045 5.2).
std::string media_type(const std::optional<std::string>& content_type) {
  if (!content_type) return "text/plain";
  std::string_view v = text::trim(*content_type);
  return text::lower_ascii(text::trim(v.substr(0, v.find(';'))));
}

// One header line, folded before spaces or tabs so that every piece is <= 998 octets.
Result<void> fold_line(std::string_view line, std::string& out) {
  size_t colon = line.find(':');
  while (line.size() > kMaxLineOctets) {
    size_t at = line.find_last_of(" \t", kMaxLineOctets);
    size_t min = colon == std::string_view::npos ? 0 : colon;  // never inside the name
    bool blank = line.substr(0, at == std::string_view::npos ? 0 : at).find_first_not_of(" \t") ==
                 std::string_view::npos;
    if (at == std::string_view::npos || at <= min || blank) {
      return make_error("header line longer than 998 octets with no space to fold it at");
    }
    out.append(line.substr(0, at));
    out += "\r\n";
    line.remove_prefix(at);
    colon = std::string_view::npos;
  }
  out.append(line);
  return {};
}

Result<void> fold_header(std::string_view header, std::string& out) {
  Result<void> result;
  for_each_line(header, [&](std::string_view line, bool crlf) {
    if (!result) return;
    result = fold_line(line, out);
    if (crlf) out += "\r\n";
  });
  return result;
}

Result<void> fit_entity(std::string_view entity, bool top, int depth, std::string& out);

bool is_delimiter(std::string_view line, std::string_view delimiter, bool& close) {
  if (!line.starts_with(delimiter)) return false;
  std::string_view rest = line.substr(delimiter.size());
  close = rest.starts_with("--");
  if (close) rest.remove_prefix(2);
  return text::trim(rest).empty();
}

// A multipart body: preamble and epilogue must fit already; each part is fitted on its own.
Result<void> fit_multipart(std::string_view body, std::string_view boundary, int depth,
                           std::string& out) {
  std::string delimiter = "--" + std::string(boundary);
  size_t part_start = 0;
  bool in_part = false, closed = false;
  Result<void> result;
  size_t pos = 0;
  while (pos < body.size() && result && !closed) {
    size_t crlf = body.find("\r\n", pos);
    size_t end = crlf == std::string_view::npos ? body.size() : crlf;
    size_t next = crlf == std::string_view::npos ? body.size() : crlf + 2;
    bool close = false;
    if (is_delimiter(body.substr(pos, end - pos), delimiter, close)) {
      // The CRLF before a delimiter is part of it (RFC 2046 5.1.1), unless it ended the
      // previous delimiter line.
      bool own_crlf = pos >= part_start + 2;
      std::string_view before = body.substr(part_start, own_crlf ? pos - 2 - part_start : 0);
      if (in_part) {
        result = fit_entity(before, false, depth + 1, out);
      } else if (text::summarize_text(before).longest_line > kMaxLineOctets) {
        result = make_error("line longer than 998 octets in a multipart preamble");
      } else {
        out.append(before);
      }
      if (own_crlf) out += "\r\n";
      out.append(body.substr(pos, next - pos));
      part_start = next;
      in_part = true;
      closed = close;
    }
    pos = next;
  }
  if (!result) return result;
  std::string_view rest = body.substr(part_start);
  if (in_part && !closed)
    return make_error("line longer than 998 octets in an unterminated multipart");
  if (text::summarize_text(rest).longest_line > kMaxLineOctets) {
    return make_error("line longer than 998 octets in a multipart epilogue");
  }
  out.append(rest);
  return {};
}

Result<void> fit_entity(std::string_view entity, bool top, int depth, std::string& out) {
  if (depth > kMaxDepth) return make_error("MIME parts nested too deep to re-encode long lines");
  Parts p = split_entity(entity);
  if (text::summarize_text(p.body).longest_line <= kMaxLineOctets) {
    auto folded = fold_header(p.header, out);
    if (!folded) return folded;
    if (p.separator) out += "\r\n";
    out.append(p.body);
    return {};
  }
  auto content_type = field_value(p.header, "Content-Type");
  std::string type = media_type(content_type);
  if (type.starts_with("multipart/")) {
    auto boundary = content_type ? parameter(*content_type, "boundary") : std::nullopt;
    if (!boundary || boundary->empty()) return make_error("multipart without boundary");
    auto folded = fold_header(p.header, out);
    if (!folded) return folded;
    out += "\r\n";
    return fit_multipart(p.body, *boundary, depth, out);
  }
  auto cte = field_value(p.header, "Content-Transfer-Encoding");
  std::string encoding = cte ? text::lower_ascii(text::trim(*cte)) : "7bit";
  if (!type.starts_with("text/") || (encoding != "7bit" && encoding != "8bit")) {
    return make_error("line longer than 998 octets in a " + type + " part in " + encoding +
                      " that cannot be re-encoded");
  }
  std::string header = without_field(p.header, "Content-Transfer-Encoding");
  if (top && !field_value(header, "MIME-Version")) header += "MIME-Version: 1.0\r\n";
  header += "Content-Transfer-Encoding: quoted-printable\r\n";
  auto folded = fold_header(header, out);
  if (!folded) return folded;
  out += "\r\n";
  append_quoted_printable(out, p.body);
  return {};
}

}  // namespace

Result<std::string> fit_long_lines(std::string_view message) {
  Parts p = split_entity(message);
  if (field_value(p.header, "DKIM-Signature")) {
    return make_error(
        "line longer than 998 octets in a DKIM-signed message (re-encoding it "
        "would break the signature)");
  }
  std::string out;
  out.reserve(message.size() + message.size() / 16 + 256);
  auto fitted = fit_entity(message, true, 0, out);
  if (!fitted) return fitted.error();
  return out;
}

}  // namespace mailcar
