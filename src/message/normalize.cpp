#include "mailcar/normalize.hpp"

#include <array>
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
  size_t value = 0;       // the first byte after ':'
  std::string_view name;  // in the text
};

// The header block: its fields, and where the body starts.
struct HeaderBlock {
  std::vector<HeaderField> fields;
  size_t body_start = 0;
  bool separator = false;  // an empty line ends the block
};

// "Name:" with an RFC 5322 field name (printable ASCII but ':'), obsolete WSP before ':' allowed.
bool field_name(std::string_view line, std::string_view& name) {
  size_t colon = line.find(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  std::string_view n = line.substr(0, colon);
  while (!n.empty() && (n.back() == ' ' || n.back() == '\t')) n.remove_suffix(1);
  if (n.empty()) return false;
  for (unsigned char c : n) {
    if (c < 33 || c > 126) return false;
  }
  name = n;
  return true;
}

// A field's value after ':', unfolded (its CRLFs removed), for inspection only.
std::string unfolded_value(std::string_view text, const HeaderField& f) {
  std::string_view raw = text.substr(f.value, f.end - 2 - f.value);
  std::string out;
  out.reserve(raw.size());
  for (size_t pos = 0; pos <= raw.size();) {
    size_t crlf = raw.find("\r\n", pos);
    if (crlf == std::string_view::npos) crlf = raw.size();
    out.append(raw, pos, crlf - pos);
    pos = crlf + 2;
  }
  return out;
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

// Bytes a Received clause keeps from client-supplied text: printable ASCII that cannot end or
// break out of a comment, a domain literal or the clause.
constexpr std::array<bool, 256> kSafeTokenByte = [] {
  std::array<bool, 256> safe{};
  for (int c = 33; c <= 126; ++c) safe[static_cast<size_t>(c)] = true;
  for (char c : std::string_view("()[]\\\";")) safe[static_cast<unsigned char>(c)] = false;
  return safe;
}();

// Appends `s` reduced to those bytes (at most 255 of them), or `fallback` when none is left.
void append_safe_token(std::string& out, std::string_view s, std::string_view fallback) {
  size_t kept = 0;
  for (size_t i = 0; i < s.size() && kept < 255;) {
    size_t run = i;
    while (run < s.size() && kept + (run - i) < 255 &&
           kSafeTokenByte[static_cast<unsigned char>(s[run])]) {
      ++run;
    }
    out.append(s, i, run - i);  // a run of safe bytes at once
    kept += run - i;
    i = run + 1;  // past the unsafe byte (or the end)
  }
  if (kept == 0) out.append(fallback);
}

// Line ends become CRLF (only when some are not: the SMTP door has made them so already,
// and then the message stays in its own buffer), and the text ends with one.
std::string crlf_text(std::string&& raw, const text::TextSummary& sum) {
  std::string text = sum.bare_line_end ? normalize_line_ends(raw) : std::move(raw);
  std::string().swap(raw);
  if (!text.empty() && !text.ends_with("\r\n")) text += "\r\n";
  return text;
}

// Header block: up to the empty line, or up to the first line that is neither a field nor
// a continuation (then the rest is body), or the whole message. `text` ends with CRLF.
HeaderBlock split_header_block(std::string_view text) {
  HeaderBlock block;
  block.body_start = text.size();
  for (size_t pos = 0; pos < text.size();) {
    size_t eol = text.find("\r\n", pos);  // always found: text ends with CRLF
    std::string_view line = text.substr(pos, eol - pos);
    if (line.empty()) {
      block.separator = true;
      block.body_start = eol + 2;
      break;
    }
    std::string_view name;
    if (line.front() == ' ' || line.front() == '\t') {
      if (block.fields.empty()) {
        block.body_start = pos;
        break;
      }
    } else if (field_name(line, name)) {
      block.fields.push_back({pos, 0, pos + line.find(':') + 1, name});
    } else {
      block.body_start = pos;
      break;
    }
    block.fields.back().end = eol + 2;
    pos = eol + 2;
  }
  return block;
}

// What the kept fields say that the rest of normalization needs.
struct KeptFields {
  const HeaderField* from = nullptr;
  bool has_date = false;
};

// Copies the fields that stay into `head`, in order, and notes the From, Date, Message-ID
// and Idempotency-Key fields (SPEC 5, §10.3).
Result<KeptFields> keep_fields(std::string_view text, const HeaderBlock& block, std::string& head,
                               NormalizedMessage& out) {
  KeptFields kept;
  for (const HeaderField& f : block.fields) {
    const std::string_view n = f.name;
    if (text::iequals_ascii(n, "Bcc") || text::iequals_ascii(n, "Resent-Bcc")) continue;
    if (text::iequals_ascii(n, "Idempotency-Key")) {  // SPEC §10.3
      if (!out.idempotency_key) out.idempotency_key.emplace(text::trim(unfolded_value(text, f)));
      continue;
    }
    if (text::iequals_ascii(n, "From")) {
      if (kept.from) return make_error("more than one From header");
      kept.from = &f;
    } else if (text::iequals_ascii(n, "Date")) {
      kept.has_date = true;
    } else if (text::iequals_ascii(n, "Message-ID")) {
      if (!out.message_id.empty()) continue;  // a second Message-ID is dropped
      out.message_id = extract_message_id(unfolded_value(text, f));
      if (out.message_id.empty()) continue;  // empty: replaced by a new one below
    }
    head.append(text, f.begin, f.end - f.begin);
  }
  return kept;
}

// The message's From addresses: those of its From field, or the default sender written as
// a new From field.
Result<void> take_from(const NormalizeInput& input, std::string_view text, const HeaderField* from,
                       std::string& head, NormalizedMessage& out) {
  if (from) {
    auto list = parse_address_list(unfolded_value(text, *from));
    if (!list) return make_error("invalid From header: " + list.error().message);
    if (list->empty()) return make_error("From header has no address");
    out.from = std::move(*list);
    return {};
  }
  if (!input.default_from) return make_error("message has no From header and no default sender");
  auto addr = validate_address(input.default_from->address);
  if (!addr) return make_error("default sender: " + addr.error().message);
  const std::string& name = input.default_from->name;
  if (name.find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos ||
      !is_valid_utf8(name)) {
    return make_error("default sender: invalid display name");
  }
  Mailbox mailbox{std::move(*addr), name};
  head += fold_header("From", format_mailbox(mailbox));
  out.from.push_back(std::move(mailbox));
  return {};
}

// The new header block: Received, the kept fields, then From, Date and Message-ID where
// missing, and the empty line when there is a body or there was one.
Result<std::string> new_header_block(const NormalizeInput& input, std::string_view text,
                                     const HeaderBlock& block, NormalizedMessage& out) {
  std::string head;
  head.reserve(input.received_header.size() + block.body_start + 160);
  if (!input.received_header.empty()) {
    head += input.received_header;
    if (!head.ends_with("\r\n")) head += "\r\n";
  }
  auto kept = keep_fields(text, block, head, out);
  if (!kept) return kept.error();
  if (auto from = take_from(input, text, kept->from, head, out); !from) return from.error();
  if (!kept->has_date) {
    head += "Date: ";
    append_rfc5322_date(head, input.now_unix);
    head += "\r\n";
  }
  if (out.message_id.empty()) {
    out.message_id = make_message_id(input.hostname, input.now_unix);
    head += "Message-ID: <";
    head += out.message_id;
    head += ">\r\n";
  }
  if (block.separator || block.body_start < text.size()) head += "\r\n";
  return head;
}

// What the rest needs to know of the text: from the caller, or from one pass over the bytes.
text::TextSummary summary_of(const NormalizeInput& input, std::string_view raw) {
  if (!input.known) return text::summarize_text(raw);
  text::TextSummary sum;
  sum.longest_line = input.known->long_line ? kMaxLineOctets + 1 : 0;  // a bound, not a length
  sum.high_bytes = input.known->high ? 1 : 0;
  sum.nul = input.known->nul;
  return sum;
}

}  // namespace

Result<NormalizedMessage> normalize_message(const NormalizeInput& input) {
  return normalize_message(input, std::string(input.raw));
}

Result<NormalizedMessage> normalize_message(const NormalizeInput& input, std::string&& raw) {
  const text::TextSummary sum = summary_of(input, raw);
  if (sum.nul) return make_error("NUL byte in message");
  std::string text = crlf_text(std::move(raw), sum);
  const HeaderBlock block = split_header_block(text);
  NormalizedMessage out;
  auto head = new_header_block(input, text, block, out);
  if (!head) return head.error();
  // The new header block replaces the old one in front of the body, in the same buffer.
  text.replace(0, block.body_start, *head);
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
  std::string out;
  out.reserve(160 + helo.size() + hostname.size() + id.size());
  out += "Received: from ";
  append_safe_token(out, helo, "unknown");
  out += " ([";
  if (peer_ip.find(':') != std::string_view::npos) out += "IPv6:";
  append_safe_token(out, peer_ip, "unknown");
  out += "])\r\n\tby ";
  append_safe_token(out, hostname, "localhost");
  out += " (mailcar) with ";
  append_safe_token(out, protocol, "ESMTP");
  out += " id ";
  append_safe_token(out, id, "unknown");
  out += ";\r\n\t";
  append_rfc5322_date(out, now_unix);
  out += "\r\n";
  return out;
}

}  // namespace mailcar
