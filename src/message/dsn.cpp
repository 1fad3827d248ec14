// RFC 3464 delivery status notifications; see mailcar/dsn.hpp.
#include "mailcar/dsn.hpp"

#include <cstddef>
#include <utility>

#include "mailcar/mime.hpp"
#include "mailcar/text.hpp"

namespace mailcar {

namespace {

bool is_digit(char c) {
  return c >= '0' && c <= '9';
}

// "d.ddd.ddd" at the start of `s` (RFC 3463 syntax: class 2/4/5, up to 3 digits each after).
size_t enhanced_status_length(std::string_view s) {
  if (s.size() < 5 || (s[0] != '2' && s[0] != '4' && s[0] != '5') || s[1] != '.') return 0;
  size_t i = 2;
  for (int part = 0; part < 2; ++part) {
    size_t start = i;
    while (i < s.size() && is_digit(s[i]) && i - start < 3) ++i;
    if (i == start) return 0;
    if (part == 0) {
      if (i >= s.size() || s[i] != '.') return 0;
      ++i;
    }
  }
  if (i < s.size() && s[i] != ' ' && s[i] != '\n' && s[i] != '\r') return 0;
  return i;
}

// One line of printable text: CR, LF, TAB and other controls become single spaces.
std::string one_line(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    bool control = u < 0x20 || u == 0x7f;
    if (control) {
      if (!out.empty() && out.back() != ' ') out.push_back(' ');
    } else {
      out.push_back(c);
    }
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return out;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;  // RFC 3461 §4: upper-case hex only
}

bool printable_ascii(std::string_view s) {
  for (char c : s) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

// An RFC 5322 atom (atext only), e.g. "rfc822".
bool is_atom(std::string_view s) {
  if (s.empty()) return false;
  for (char c : s) {
    bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || is_digit(c);
    if (!alnum && std::string_view("!#$%&'*+-/=?^_`{|}~").find(c) == std::string_view::npos) {
      return false;
    }
  }
  return true;
}

// NEVER, or a comma list of SUCCESS, FAILURE, DELAY (RFC 3461 §4.1); 0: bad syntax.
uint8_t parse_notify(std::string_view value) {
  if (text::iequals_ascii(value, "NEVER")) return dsn_notify::kNever;
  uint8_t bits = 0;
  while (true) {
    size_t comma = value.find(',');
    std::string_view word = value.substr(0, comma);
    if (text::iequals_ascii(word, "SUCCESS")) {
      bits |= dsn_notify::kSuccess;
    } else if (text::iequals_ascii(word, "FAILURE")) {
      bits |= dsn_notify::kFailure;
    } else if (text::iequals_ascii(word, "DELAY")) {
      bits |= dsn_notify::kDelay;
    } else {
      return 0;
    }
    if (comma == std::string_view::npos) return bits;
    value.remove_prefix(comma + 1);
  }
}

std::string with_crlf(std::string_view s) {
  std::string out(s);
  if (!out.empty() && !out.ends_with("\r\n")) out += "\r\n";
  return out;
}

// The reply on one line, cut so that no line of the report passes RFC 5322's 998 octets.
std::string reply_with_code(const DsnFailedRecipient& r) {
  constexpr size_t kMaxReply = 900;
  std::string reply = one_line(r.smtp_reply);
  if (reply.size() > kMaxReply) reply.resize(kMaxReply);
  if (r.smtp_code == 0) return reply;
  std::string code = std::to_string(r.smtp_code);
  if (reply.starts_with(code)) return reply;
  return reply.empty() ? code : code + " " + reply;
}

std::string human_part(const DsnInput& in) {
  std::string t = "This is the mail system at host " + in.reporting_mta + ".\r\n\r\n";
  t += "Your message could not be delivered to one or more recipients.\r\n";
  t += "It has been returned";
  t += in.ret == DsnRet::Full ? " in full" : " with its header";
  t += " below.\r\n";
  if (!in.note.empty()) t += "\r\n" + one_line(in.note) + "\r\n";
  t += "\r\n";
  for (const auto& r : in.recipients) {
    std::string reply = reply_with_code(r);
    t += "<" + r.address + ">: " + (reply.empty() ? "delivery failed" : reply) + "\r\n";
  }
  return t;
}

std::string status_part(const DsnInput& in) {
  std::string s = "Reporting-MTA: dns; " + in.reporting_mta + "\r\n";
  if (!in.envid.empty()) s += "Original-Envelope-Id: " + one_line(in.envid) + "\r\n";
  s += "Arrival-Date: " + format_rfc5322_date(in.arrival_unix) + "\r\n";
  for (const auto& r : in.recipients) {
    s += "\r\n";
    if (!r.orcpt.empty()) s += "Original-Recipient: " + one_line(r.orcpt) + "\r\n";
    s += "Final-Recipient: rfc822; " + one_line(r.address) + "\r\n";
    s += "Action: failed\r\n";
    std::string status = r.status.empty() ? dsn_status_for(r.smtp_code, r.smtp_reply) : r.status;
    s += "Status: " + status + "\r\n";
    if (!r.remote_mta.empty()) s += "Remote-MTA: dns; " + one_line(r.remote_mta) + "\r\n";
    if (r.smtp_code != 0) s += fold_header("Diagnostic-Code", "smtp; " + reply_with_code(r));
  }
  return s;
}

std::string part_header(std::string_view boundary, std::string_view content_type) {
  return "--" + std::string(boundary) + "\r\nContent-Type: " + std::string(content_type) +
         "\r\n\r\n";
}

}  // namespace

std::optional<std::string> xtext_decode(std::string_view xtext) {
  std::string out;
  out.reserve(xtext.size());
  for (size_t i = 0; i < xtext.size(); ++i) {
    char c = xtext[i];
    if (c == '+') {
      int hi = i + 2 < xtext.size() ? hex_value(xtext[i + 1]) : -1;
      int lo = hi < 0 ? -1 : hex_value(xtext[i + 2]);
      if (lo < 0) return std::nullopt;
      out.push_back(static_cast<char>(hi * 16 + lo));
      i += 2;
    } else if (c < '!' || c > '~' || c == '=') {
      return std::nullopt;
    } else {
      out.push_back(c);
    }
  }
  return out;
}

DsnParamResult parse_dsn_mail_param(std::string_view key, std::string_view value,
                                    DsnRequest& request) {
  if (text::iequals_ascii(key, "RET")) {
    if (request.ret != DsnRet::Unspecified) return DsnParamResult::Bad;
    if (text::iequals_ascii(value, "FULL")) {
      request.ret = DsnRet::Full;
    } else if (text::iequals_ascii(value, "HDRS")) {
      request.ret = DsnRet::Headers;
    } else {
      return DsnParamResult::Bad;
    }
    return DsnParamResult::Ok;
  }
  if (!text::iequals_ascii(key, "ENVID")) return DsnParamResult::NotDsn;
  if (!request.envid.empty() || value.size() > 100) return DsnParamResult::Bad;
  std::optional<std::string> envid = xtext_decode(value);
  if (!envid || envid->empty() || !printable_ascii(*envid)) return DsnParamResult::Bad;
  request.envid = std::move(*envid);
  return DsnParamResult::Ok;
}

DsnParamResult parse_dsn_rcpt_param(std::string_view key, std::string_view value,
                                    DsnRecipientRequest& request) {
  if (text::iequals_ascii(key, "NOTIFY")) {
    if (request.notify != 0) return DsnParamResult::Bad;
    request.notify = parse_notify(value);
    return request.notify != 0 ? DsnParamResult::Ok : DsnParamResult::Bad;
  }
  if (!text::iequals_ascii(key, "ORCPT")) return DsnParamResult::NotDsn;
  size_t semi = value.find(';');
  if (!request.orcpt.empty() || value.size() > 500 || semi == std::string_view::npos ||
      !is_atom(value.substr(0, semi))) {
    return DsnParamResult::Bad;
  }
  std::optional<std::string> address = xtext_decode(value.substr(semi + 1));
  if (!address || address->empty() || !printable_ascii(*address)) return DsnParamResult::Bad;
  request.orcpt = std::string(value.substr(0, semi)) + ";" + *address;
  return DsnParamResult::Ok;
}

std::string_view dsn_header_block(std::string_view message) {
  if (message.starts_with("\r\n")) return {};
  size_t end = message.find("\r\n\r\n");
  return end == std::string_view::npos ? message : message.substr(0, end + 2);
}

bool dsn_wanted_for_failure(std::string_view envelope_from, uint8_t notify) {
  if (envelope_from.empty()) return false;
  if (notify == 0) return true;
  if ((notify & dsn_notify::kNever) != 0) return false;
  return (notify & dsn_notify::kFailure) != 0;
}

std::string dsn_status_for(int smtp_code, std::string_view smtp_reply) {
  std::string_view r = smtp_reply;
  if (r.size() >= 4 && is_digit(r[0]) && is_digit(r[1]) && is_digit(r[2]) &&
      (r[3] == ' ' || r[3] == '-')) {
    r.remove_prefix(4);
  }
  if (size_t n = enhanced_status_length(r); n > 0) {
    // The enhanced code must agree with the reply's class; a 550 with "4.x.x" is garbled.
    if (smtp_code == 0 || r[0] == static_cast<char>('0' + smtp_code / 100)) {
      return std::string(r.substr(0, n));
    }
  }
  if (smtp_code >= 500) return "5.0.0";
  if (smtp_code >= 400) return "4.0.0";
  return "4.4.7";
}

Result<OutboundMessage> build_dsn(const DsnInput& in) {
  if (in.recipients.empty()) return make_error("a DSN needs at least one failed recipient");
  if (in.to.empty()) return make_error("a DSN needs a recipient");
  std::string boundary = in.boundary.empty()
                             ? in.reporting_mta.substr(0, 20) + "/" + text::random_token(24)
                             : in.boundary;
  OutboundMessage out;
  out.id = in.message_id.empty() ? make_message_id(in.reporting_mta) : in.message_id;
  out.envelope_rcpts = {in.to};  // envelope_from stays empty: the null sender
  std::string& d = out.data;
  d += "From: " + format_mailbox(in.from) + "\r\n";
  d += "To: " + in.to + "\r\n";
  d += "Subject: Undelivered Mail Returned to Sender\r\n";
  d += "Date: " + format_rfc5322_date(in.now_unix) + "\r\n";
  d += "Message-ID: <" + out.id + ">\r\n";
  d += "Auto-Submitted: auto-replied\r\n";
  d += "MIME-Version: 1.0\r\n";
  d += "Content-Type: multipart/report; report-type=delivery-status;\r\n boundary=\"" + boundary +
       "\"\r\n\r\n";
  d += "This is a MIME-encapsulated message.\r\n\r\n";
  std::string human = human_part(in);
  d += part_header(boundary, text::is_ascii(human) ? "text/plain; charset=us-ascii"
                                                   : "text/plain; charset=utf-8");
  d += human;
  d += "\r\n" + part_header(boundary, "message/delivery-status");
  d += status_part(in);
  if (in.ret == DsnRet::Full) {
    d += "\r\n" + part_header(boundary, "message/rfc822");
    d += with_crlf(in.original);
  } else {
    d += "\r\n" + part_header(boundary, "text/rfc822-headers");
    d += with_crlf(dsn_header_block(in.original));
  }
  d += "\r\n--" + boundary + "--\r\n";
  out.eight_bit = !text::is_ascii(d);
  out.smtputf8 = !text::is_ascii(in.to);
  return out;
}

}  // namespace mailcar
