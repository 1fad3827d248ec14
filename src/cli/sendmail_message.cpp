// The message side of the sendmail command: framing of standard input, recipient extraction
// from the header section, and the exit status for a submission's outcome.
#include <algorithm>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/address.hpp"
#include "mailcar/mime.hpp"
#include "mailcar/sendmail.hpp"
#include "mailcar/text.hpp"
#include "message/line_ends.hpp"

namespace mailcar::sendmail {
namespace {

bool is_lone_dot(std::string_view line) {
  return line == "." || line == ".\r";
}

struct Field {
  size_t begin = 0;  // byte range in the message, the final CRLF included
  size_t end = 0;
  std::string_view name;
  std::string_view value;  // after the colon, folding kept, final CRLF excluded
};

// "Name:" with an RFC 5322 field name (printable ASCII but ':').
std::string_view field_name(std::string_view line) {
  size_t colon = line.find(':');
  if (colon == std::string_view::npos || colon == 0) return {};
  std::string_view name = line.substr(0, colon);
  while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.remove_suffix(1);
  for (unsigned char c : name) {
    if (c < 33 || c > 126) return {};
  }
  return name;
}

// The header section's fields: up to the first empty line, or the first line that is neither
// a field nor a continuation. Empty when the first line is not a field.
std::vector<Field> header_fields(std::string_view data) {
  std::vector<Field> fields;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t eol = data.find("\r\n", pos);
    size_t next = eol == std::string_view::npos ? data.size() : eol + 2;
    std::string_view line =
        data.substr(pos, (eol == std::string_view::npos ? data.size() : eol) - pos);
    if (line.empty()) break;
    if (line[0] == ' ' || line[0] == '\t') {
      if (fields.empty()) break;
      fields.back().end = next;
    } else {
      std::string_view name = field_name(line);
      if (name.empty()) break;
      fields.push_back({pos, next, name, {}});
    }
    pos = next;
  }
  for (Field& f : fields) {
    std::string_view whole = data.substr(f.begin, f.end - f.begin);
    if (whole.size() >= 2 && whole.substr(whole.size() - 2) == "\r\n") whole.remove_suffix(2);
    f.value = whole.substr(whole.find(':') + 1);
  }
  return fields;
}

Result<std::vector<Mailbox>> addresses_of(const Field& f) {
  if (text::trim(f.value).empty()) return std::vector<Mailbox>{};
  auto list = parse_address_list(f.value);
  if (!list) return make_error(std::string(f.name) + ": " + list.error().message);
  return list;
}

bool has_eight_bit(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return static_cast<unsigned char>(c) >= 0x80; });
}

// Drops a leading mbox "From sender date" line, which is not a header field.
void drop_unix_from(std::string& data) {
  if (data.rfind("From ", 0) != 0) return;
  size_t eol = data.find("\r\n");
  data.erase(0, eol == std::string::npos ? data.size() : eol + 2);
}

// The envelope recipients: operands, then with -t To, Cc and Bcc; duplicates dropped
// (local part exact, domain case-insensitive).
Result<std::vector<std::string>> recipients(const std::vector<Field>& fields, const Options& o) {
  std::vector<std::string> all = o.recipients;
  if (o.extract_recipients) {
    for (const Field& f : fields) {
      if (!text::iequals_ascii(f.name, "To") && !text::iequals_ascii(f.name, "Cc") &&
          !text::iequals_ascii(f.name, "Bcc")) {
        continue;
      }
      auto list = addresses_of(f);
      if (!list) return list.error();
      for (Mailbox& m : *list) all.push_back(std::move(m.address));
    }
  }
  std::vector<std::string> unique;
  std::set<std::string> seen;
  for (std::string& a : all) {
    std::string key = std::string(address_local(a)) + "@" + text::lower_ascii(address_domain(a));
    if (seen.insert(key).second) unique.push_back(std::move(a));
  }
  return unique;
}

}  // namespace

MessageCollector::MessageCollector(bool ignore_dots, size_t max_bytes)
    : ignore_dots_(ignore_dots), max_bytes_(max_bytes) {}

MessageCollector::Status MessageCollector::feed(std::string_view chunk) {
  data_.append(chunk);
  if (!ignore_dots_) {
    for (size_t nl = data_.find('\n', line_start_); nl != std::string::npos;
         nl = data_.find('\n', line_start_)) {
      if (is_lone_dot(std::string_view(data_).substr(line_start_, nl - line_start_))) {
        data_.resize(line_start_);
        return Status::Done;
      }
      line_start_ = nl + 1;
    }
  }
  return data_.size() > max_bytes_ ? Status::TooLarge : Status::More;
}

MessageCollector::Status MessageCollector::finish() {
  if (!ignore_dots_ && is_lone_dot(std::string_view(data_).substr(line_start_))) {
    data_.resize(line_start_);
  }
  return Status::Done;
}

Result<OutboundMessage> prepare_message(std::string raw, const Options& options) {
  if (raw.find_first_not_of(" \t\r\n") == std::string::npos) {
    return make_error("the message is empty");
  }
  OutboundMessage msg;
  msg.data = normalize_line_ends(raw);
  drop_unix_from(msg.data);
  std::vector<Field> fields = header_fields(msg.data);
  if (fields.empty()) {
    return make_error("the message has no header section (its first line is not a header field)");
  }
  auto rcpts = recipients(fields, options);
  if (!rcpts) return rcpts.error();
  if (rcpts->empty()) {
    return make_error("no recipient: give addresses as arguments, or -t with To, Cc or Bcc");
  }
  auto from = std::find_if(fields.begin(), fields.end(),
                           [](const Field& f) { return text::iequals_ascii(f.name, "From"); });
  if (options.sender) {
    msg.envelope_from = *options.sender;
  } else if (from != fields.end()) {
    auto list = addresses_of(*from);
    if (!list) return list.error();
    if (!list->empty()) msg.envelope_from = list->front().address;
  }
  if (!options.sender && msg.envelope_from.empty()) {
    return make_error("no sender: give -f or a From header field with an address");
  }
  msg.envelope_rcpts = std::move(rcpts).value();
  // Bcc must not travel; mailcar's SMTP door would drop it too, but the copy sent never holds it.
  for (auto f = fields.rbegin(); f != fields.rend(); ++f) {
    if (text::iequals_ascii(f->name, "Bcc") || text::iequals_ascii(f->name, "Resent-Bcc")) {
      msg.data.erase(f->begin, f->end - f->begin);
    }
  }
  if (from == fields.end() && !msg.envelope_from.empty()) {
    msg.data.insert(0, fold_header("From", format_mailbox({msg.envelope_from, options.full_name})));
  }
  msg.smtputf8 = !address_is_ascii(msg.envelope_from);
  for (const auto& r : msg.envelope_rcpts) msg.smtputf8 = msg.smtputf8 || !address_is_ascii(r);
  msg.eight_bit = has_eight_bit(msg.data);
  return msg;
}

Exit exit_for(const DeliveryResult& result, bool connected) {
  auto by_code = [](int code) {
    return code >= 400 && code < 500 ? Exit::TempFail : Exit::NoPermission;
  };
  switch (result.status) {
    case DeliveryStatus::Sent: {
      if (result.rejected.empty()) return Exit::Ok;
      bool permanent = std::any_of(result.rejected.begin(), result.rejected.end(),
                                   [](const RecipientOutcome& r) { return r.smtp_code >= 500; });
      return permanent ? Exit::NoPermission : Exit::TempFail;
    }
    case DeliveryStatus::Rejected:
    case DeliveryStatus::AuthenticationFailed:
      return by_code(result.smtp_code.value_or(550));
    case DeliveryStatus::ConnectionTimedOut:
    case DeliveryStatus::ProtocolError:
      return connected && result.retryable ? Exit::TempFail : Exit::Unavailable;
    case DeliveryStatus::ShuttingDown:
      return Exit::TempFail;
    case DeliveryStatus::ConnectionRefused:
    case DeliveryStatus::CertificateError:
    case DeliveryStatus::TlsUnavailable:
      return Exit::Unavailable;
  }
  return Exit::Unavailable;
}

}  // namespace mailcar::sendmail
