#include "mailcar/normalize.hpp"

#include <string>
#include <vector>

#include "mailcar/address.hpp"
#include "mailcar/mime.hpp"
#include "mailcar/scan.hpp"
#include "mailcar/text.hpp"
#include "message/line_ends.hpp"
#include "message/long_lines.hpp"
#include "message/transfer_encoding.hpp"

namespace mailcar {
namespace {

struct HeaderField {
  size_t begin = 0;  // byte range in the normalized text, CRLFs included
  size_t end = 0;
  std::string name;
  std::string value;  // unfolded, for inspection only
};

// "Name:" with an RFC 5322 field name (printable ASCII but ':'), obsolete WSP before ':' allowed.
bool field_name(std::string_view line, std::string& name) {
  size_t colon = line.find(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  std::string_view n = line.substr(0, colon);
  while (!n.empty() && (n.back() == ' ' || n.back() == '\t')) n.remove_suffix(1);
  if (n.empty()) return false;
  for (unsigned char c : n) {
    if (c < 33 || c > 126) return false;
  }
  name.assign(n);
  return true;
}

std::string extract_message_id(std::string_view value) {
  value = text::trim(value);
  size_t open = value.find('<');
  if (open != std::string_view::npos) {
    size_t close = value.find('>', open);
    if (close != std::string_view::npos)
      return std::string(value.substr(open + 1, close - open - 1));
  }
  return std::string(value);
}

std::string safe_token(std::string_view s, std::string_view fallback) {
  std::string out;
  for (unsigned char c : s) {
    if (out.size() >= 255) break;
    if (c < 33 || c > 126) continue;
    switch (c) {
      case '(':
      case ')':
      case '[':
      case ']':
      case '\\':
      case '"':
      case ';':
        continue;
      default:
        out.push_back(static_cast<char>(c));
    }
  }
  return out.empty() ? std::string(fallback) : out;
}

}  // namespace

Result<NormalizedMessage> normalize_message(const NormalizeInput& input) {
  return normalize_message(input, std::string(input.raw));
}

Result<NormalizedMessage> normalize_message(const NormalizeInput& input, std::string&& raw) {
  // One pass over the bytes tells what the rest needs (the SMTP door has made every line end
  // CRLF already, so usually the message stays in its own buffer).
  const text::TextSummary sum = text::summarize_text(raw);
  if (sum.nul) return make_error("NUL byte in message");
  std::string text = sum.bare_line_end ? normalize_line_ends(raw) : std::move(raw);
  std::string().swap(raw);
  if (!text.empty() && !text.ends_with("\r\n")) text += "\r\n";

  // Header block: up to the empty line, or up to the first line that is neither a field nor
  // a continuation (then the rest is body), or the whole message.
  std::vector<HeaderField> fields;
  size_t body_start = text.size();
  bool separator = false;
  for (size_t pos = 0; pos < text.size();) {
    size_t eol = text.find("\r\n", pos);  // always found: text ends with CRLF
    std::string_view line(text.data() + pos, eol - pos);
    if (line.empty()) {
      separator = true;
      body_start = eol + 2;
      break;
    }
    std::string name;
    if (line.front() == ' ' || line.front() == '\t') {
      if (fields.empty()) {
        body_start = pos;
        break;
      }
      fields.back().value.append(line);
    } else if (field_name(line, name)) {
      HeaderField f;
      f.begin = pos;
      f.name = std::move(name);
      f.value.assign(line.substr(line.find(':') + 1));
      fields.push_back(std::move(f));
    } else {
      body_start = pos;
      break;
    }
    fields.back().end = eol + 2;
    pos = eol + 2;
  }

  NormalizedMessage out;
  const HeaderField* from_field = nullptr;
  bool has_date = false;
  std::string headers;
  for (const auto& f : fields) {
    if (text::iequals_ascii(f.name, "Bcc") || text::iequals_ascii(f.name, "Resent-Bcc")) continue;
    if (text::iequals_ascii(f.name, "Idempotency-Key")) {  // SPEC §10.3
      if (!out.idempotency_key) out.idempotency_key.emplace(text::trim(f.value));
      continue;
    }
    if (text::iequals_ascii(f.name, "From")) {
      if (from_field) return make_error("more than one From header");
      from_field = &f;
    } else if (text::iequals_ascii(f.name, "Date")) {
      has_date = true;
    } else if (text::iequals_ascii(f.name, "Message-ID")) {
      if (!out.message_id.empty()) continue;  // a second Message-ID is dropped
      out.message_id = extract_message_id(f.value);
      if (out.message_id.empty()) continue;  // empty: replaced by a new one below
    }
    headers.append(text, f.begin, f.end - f.begin);
  }

  if (from_field) {
    auto list = parse_address_list(from_field->value);
    if (!list) return make_error("invalid From header: " + list.error().message);
    if (list->empty()) return make_error("From header has no address");
    out.from = std::move(*list);
  } else {
    if (!input.default_from) return make_error("message has no From header and no default sender");
    auto addr = validate_address(input.default_from->address);
    if (!addr) return make_error("default sender: " + addr.error().message);
    const std::string& name = input.default_from->name;
    if (name.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos ||
        !is_valid_utf8(name)) {
      return make_error("default sender: invalid display name");
    }
    Mailbox from{std::move(*addr), name};
    headers += fold_header("From", format_mailbox(from));
    out.from.push_back(std::move(from));
  }
  if (!has_date) headers += "Date: " + format_rfc5322_date(input.now_unix) + "\r\n";
  if (out.message_id.empty()) {
    out.message_id = make_message_id(input.hostname, input.now_unix);
    headers += "Message-ID: <" + out.message_id + ">\r\n";
  }

  // The new header block replaces the old one in front of the body, in the same buffer.
  std::string head;
  head.reserve(input.received_header.size() + headers.size() + 4);
  if (!input.received_header.empty()) {
    head += input.received_header;
    if (!head.ends_with("\r\n")) head += "\r\n";
  }
  head += headers;
  if (separator || body_start < text.size()) head += "\r\n";
  text.replace(0, body_start, head);
  out.data = std::move(text);
  if (sum.longest_line > kMaxLineOctets) {  // never relayed as it is (RFC 5322 2.1.1)
    auto fixed = fit_long_lines(out.data);
    if (!fixed) return fixed.error();
    out.data = std::move(*fixed);
  }
  out.eight_bit = sum.high_bytes > 0 && text::has_high_byte(out.data);  // Bcc may have held them
  return out;
}

std::string make_received_header(std::string_view helo, std::string_view peer_ip,
                                 std::string_view hostname, std::string_view protocol,
                                 std::string_view id, int64_t now_unix) {
  std::string ip = safe_token(peer_ip, "unknown");
  if (ip.find(':') != std::string::npos) ip = "IPv6:" + ip;
  return "Received: from " + safe_token(helo, "unknown") + " ([" + ip + "])\r\n\tby " +
         safe_token(hostname, "localhost") + " (mailcar) with " + safe_token(protocol, "ESMTP") +
         " id " + safe_token(id, "unknown") + ";\r\n\t" + format_rfc5322_date(now_unix) + "\r\n";
}

}  // namespace mailcar
