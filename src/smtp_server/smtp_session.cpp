#include "smtp_server/smtp_session.hpp"

#include <algorithm>
#include <chrono>
#include <new>
#include <utility>

#include "mailcar/clock.hpp"
#include "mailcar/scan.hpp"
#include "mailcar/text.hpp"
#include "smtp_server/delivery_reply.hpp"

namespace mailcar::smtp {
namespace {

constexpr std::string_view kCrlf = "\r\n";
// Spare room at the end of a message buffer for the header fields normalization adds, so
// that they are written in place (see normalize_message).
constexpr size_t kHeaderRoom = 4 * 1024;

// Envelope address syntax when the glue supplies nothing better: local@domain, no controls,
// no unquoted spaces, RFC 5321 length limits. UTF-8 bytes pass (SMTPUTF8 is checked apart).
bool basic_address_check(std::string_view address) {
  if (address.size() > 254) return false;
  size_t at = address.rfind('@');
  if (at == std::string_view::npos || at == 0 || at + 1 == address.size()) return false;
  if (at > 64) return false;
  bool quoted = false;
  for (size_t i = 0; i < address.size(); ++i) {
    auto c = static_cast<unsigned char>(address[i]);
    if (c < 0x20 || c == 0x7f) return false;
    if (c == '"' && i < at) quoted = !quoted;
    if (!quoted && (c == ' ' || c == '<' || c == '>' || c == ',')) return false;
  }
  if (quoted) return false;
  std::string_view domain = address.substr(at + 1);
  if (domain.front() == '.' || domain.back() == '.' || domain.find("..") != std::string_view::npos)
    return false;
  return true;
}

bool same_address(std::string_view a, std::string_view b) {
  size_t at_a = a.rfind('@');
  size_t at_b = b.rfind('@');
  if (at_a != at_b || at_a == std::string_view::npos) return a == b;
  return a.substr(0, at_a) == b.substr(0, at_b) &&
         text::iequals_ascii(a.substr(at_a), b.substr(at_b));
}

// Reply text must stay on one line whatever an upstream put into it.
std::string one_line(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    auto u = static_cast<unsigned char>(c);
    out.push_back(u < 0x20 || u == 0x7f ? ' ' : c);
  }
  return out;
}

std::optional<uint64_t> parse_decimal(std::string_view s) {
  if (s.empty() || s.size() > 19) return std::nullopt;
  uint64_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return std::nullopt;
    v = v * 10 + static_cast<uint64_t>(c - '0');
  }
  return v;
}

// "<path> params" after "FROM:" / "TO:". Strips an RFC 5321 source route (@a,@b:user@d).
// `MAIL FROM:addr` / `RCPT TO:addr` without angle brackets, as Postfix accepts by default
// (strict_rfc821_envelopes = no): the address runs to the first space, parameters follow.
constexpr size_t kMaxLoggedUserName = 256;  // of an AUTH that failed: the log names it

bool parse_bare_path(std::string_view rest, std::string_view& address, std::string_view& params) {
  size_t sp = rest.find(' ');
  address = rest.substr(0, sp);
  if (address.find_first_of("<>") != std::string_view::npos) return false;
  params = sp == std::string_view::npos ? std::string_view() : text::trim(rest.substr(sp + 1));
  return true;
}

bool parse_path(std::string_view rest, std::string_view& address, std::string_view& params) {
  rest = text::trim(rest);
  if (rest.empty()) return false;
  if (rest.front() != '<') return parse_bare_path(rest, address, params);
  size_t close = rest.find('>');
  if (close == std::string_view::npos) return false;
  address = rest.substr(1, close - 1);
  params = text::trim(rest.substr(close + 1));
  if (!params.empty() && rest[close + 1] != ' ') return false;
  if (!address.empty() && address.front() == '@') {
    size_t colon = address.find(':');
    if (colon == std::string_view::npos) return false;
    address = address.substr(colon + 1);
  }
  return true;
}

std::vector<std::string_view> split_params(std::string_view params) {
  std::vector<std::string_view> out;
  while (!params.empty()) {
    size_t sp = params.find(' ');
    std::string_view p = params.substr(0, sp);
    if (!p.empty()) out.push_back(p);
    if (sp == std::string_view::npos) break;
    params.remove_prefix(sp + 1);
  }
  return out;
}

}  // namespace

SmtpServerSession::SmtpServerSession(SessionOptions options, const CredentialStore* credentials,
                                     const Policy* policy)
    : options_(std::move(options)),
      credentials_(credentials),
      policy_(policy),
      tls_active_(options_.implicit_tls) {}

SessionOutput SmtpServerSession::start() {
  SessionOutput out;
  state_ = SessionState::Greeting;
  reply(out, 220, "", options_.hostname + " ESMTP mailcar");
  return out;
}

void SmtpServerSession::greeting_sent() {
  if (state_ == SessionState::Greeting) state_ = SessionState::Command;
}

bool SmtpServerSession::busy() const {
  return state_ == SessionState::Data || state_ == SessionState::DataDraining ||
         state_ == SessionState::Chunk || state_ == SessionState::AwaitingDelivery;
}

SessionOutput SmtpServerSession::feed(std::string_view bytes) {
  SessionOutput out;
  switch (state_) {
    case SessionState::Greeting:
      // Talking before the greeting: a spam-bot or a client that does not wait for replies.
      close(out, 554, "5.5.0", "Protocol error: data sent before the greeting");
      return out;
    case SessionState::Closed:
    case SessionState::StartTlsPending:  // never interpret plaintext sent behind STARTTLS
      return out;
    case SessionState::AwaitingDelivery:
      if (input_.size() - pos_ + bytes.size() > options_.max_pending_input) {
        pending_overflow_ = true;
      } else {
        input_.append(bytes);
      }
      return out;
    default:
      break;
  }
  input_.append(bytes);
  run(out);
  return out;
}

void SmtpServerSession::tls_started() {
  tls_active_ = true;
  input_.clear();
  pos_ = 0;
  discarding_line_ = false;
  helo_.clear();
  esmtp_ = false;
  auth_user_.clear();
  role_.clear();
  pending_login_user_.clear();
  reset_transaction();
  if (state_ != SessionState::Closed) state_ = SessionState::Command;
}

SessionOutput SmtpServerSession::delivery_finished(int code, std::string_view enhanced,
                                                   std::string_view reply_text) {
  SessionOutput out;
  if (state_ != SessionState::AwaitingDelivery) return out;
  state_ = SessionState::Command;
  if (code >= 200 && code < 300) junk_ = 0;  // a message got through: the session does work
  reply(out, code, enhanced, one_line(reply_text));
  if (pending_overflow_) {
    close(out, 421, "4.7.0", "Too much pipelined input");
    return out;
  }
  run(out);
  return out;
}

SessionOutput SmtpServerSession::timeout(Timeout kind) {
  SessionOutput out;
  if (state_ == SessionState::Closed) return out;
  switch (kind) {
    case Timeout::Idle:
      close(out, 421, "4.4.2", "Idle timeout, closing connection");
      break;
    case Timeout::CommandLine:
      close(out, 421, "4.4.2", "Command line not received in time, closing connection");
      break;
    case Timeout::DataRate:
      close(out, 421, "4.4.2", "Message data too slow, closing connection");
      break;
  }
  return out;
}

bool SmtpServerSession::line_pending() const {
  bool line_state = state_ == SessionState::Command || state_ == SessionState::AuthPlainResponse ||
                    state_ == SessionState::AuthLoginUser || state_ == SessionState::AuthLoginPass;
  return line_state && (pos_ < input_.size() || discarding_line_);
}

SessionOutput SmtpServerSession::shutdown() {
  SessionOutput out;
  if (state_ != SessionState::Closed) close(out, 421, "4.3.2", "Service shutting down");
  return out;
}

// Processes buffered input until it runs out, an event needs the caller, or the session ends.
void SmtpServerSession::run(SessionOutput& out) {
  while (out.event == SessionEvent::None && pos_ < input_.size()) {
    if (state_ == SessionState::Data || state_ == SessionState::DataDraining) {
      consume_data(out);
      continue;
    }
    if (state_ == SessionState::Chunk) {  // BDAT octets (smtp_bdat.cpp)
      consume_chunk(out);
      continue;
    }
    if (state_ != SessionState::Command && state_ != SessionState::AuthPlainResponse &&
        state_ != SessionState::AuthLoginUser && state_ != SessionState::AuthLoginPass) {
      break;
    }
    std::string_view line;
    bool too_long = false;
    if (!take_line(line, too_long)) break;
    size_t reply_from = out.reply.size();
    junk_command_ = false;
    if (too_long) {
      if (state_ == SessionState::Command) {
        error(out, 500, "5.5.2", "Line too long");
      } else {
        state_ = SessionState::Command;
        pending_login_user_.clear();
        error(out, 501, "5.5.2", "Authentication line too long");
      }
    } else {
      command(line, out);
    }
    count_junk(junk_command_, reply_from, out);
  }
  if (state_ == SessionState::StartTlsPending || state_ == SessionState::Closed) {
    input_.clear();  // STARTTLS: what followed it in the same read is never executed
    pos_ = 0;
  } else if (pos_ >= input_.size()) {
    input_.clear();
    pos_ = 0;
  } else if (pos_ > 0) {
    input_.erase(0, pos_);
    pos_ = 0;
  }
}

// One command line (CRLF or bare LF ended, CR stripped). false: no complete line yet.
bool SmtpServerSession::take_line(std::string_view& line, bool& too_long) {
  std::string_view rest = std::string_view(input_).substr(pos_);
  bool auth_state = state_ != SessionState::Command;
  size_t limit = auth_state || text::istarts_with_ascii(rest, "AUTH ") ? options_.max_auth_line
                                                                       : options_.max_command_line;
  size_t lf = rest.find('\n');
  if (discarding_line_) {
    if (lf == std::string_view::npos) {
      pos_ = input_.size();
      return false;
    }
    pos_ += lf + 1;
    discarding_line_ = false;
    too_long = true;
    return true;
  }
  if (lf == std::string_view::npos) {
    if (rest.size() >= limit) {  // cannot fit with its CRLF: skip to the end of the line
      discarding_line_ = true;
      pos_ = input_.size();
    }
    return false;
  }
  line = rest.substr(0, lf);
  pos_ += lf + 1;
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  too_long = line.size() + 2 > limit;
  return true;
}

// Streams message data: unstuffs dots, makes every line end CRLF, finds <CRLF>.<CRLF> across
// reads. A "." line counts as the end only when it and the line before it end in CRLF, so bare
// LF or CR variants (SMTP smuggling) stay message content.
void SmtpServerSession::consume_data(SessionOutput& out) {
  const char* p = input_.data() + pos_;
  const char* end = input_.data() + input_.size();
  while (p < end) {
    char c = *p;
    switch (scan_) {
      case DataScan::LineStart:
        if (c == '.') {
          scan_ = DataScan::AfterDot;  // the leading dot is stuffing: dropped
          ++p;
        } else {
          scan_ = DataScan::InLine;
        }
        break;
      case DataScan::AfterDot:
        if (c == '\r') {
          scan_ = DataScan::AfterDotCr;
          ++p;
        } else {
          scan_ = DataScan::InLine;
        }
        break;
      case DataScan::AfterDotCr:
        if (c == '\n') {
          ++p;
          if (previous_line_crlf_) {
            pos_ = static_cast<size_t>(p - input_.data());
            finish_data(out);
            return;
          }
          end_data_line(true);
        } else {
          end_data_line(false);  // ".<CR>x": bare CR ends the line
        }
        break;
      case DataScan::InLine: {
        p = consume_data_run(p, end);
        if (p < end) {
          if (*p == '\n') {
            end_data_line(false);
          } else {
            scan_ = DataScan::InLineCr;
          }
          ++p;
        }
        break;
      }
      case DataScan::InLineCr:
        if (c == '\n') {
          ++p;
          end_data_line(true);
        } else {
          end_data_line(false);
        }
        break;
    }
  }
  pos_ = input_.size();
}

// Inside a line: takes every following line that needs no decision (CRLF-ended, within
// max_data_line, the next one not starting with '.') as it is, stored in one piece, then the
// rest of the line up to its CR or LF through append_data. Returns where that CR or LF is.
const char* SmtpServerSession::consume_data_run(const char* p, const char* end) {
  // Lines over 998 octets go the slow way (append_data), which notes them for normalization.
  const size_t bulk_line = std::min(options_.max_data_line, kMaxLineOctets);
  const char* run = p;
  p = text::plain_crlf_lines(p, end, data_line_length_, bulk_line);
  for (;;) {
    const char* q = text::find_line_end(p, end);
    size_t length = (p == run ? data_line_length_ : 0) + static_cast<size_t>(q - p);
    bool plain = end - q >= 3 && q[0] == '\r' && q[1] == '\n' && q[2] != '.' && length <= bulk_line;
    if (!plain) {
      if (p > run) {  // whole lines, each ended by CRLF
        store_data(std::string_view(run, static_cast<size_t>(p - run)));
        data_line_length_ = 0;
        previous_line_crlf_ = true;
      }
      append_data(std::string_view(p, static_cast<size_t>(q - p)));
      return q;
    }
    p = q + 2;
  }
}

void SmtpServerSession::append_data(std::string_view bytes) {
  data_line_length_ += bytes.size();
  if (data_line_length_ > kMaxLineOctets) data_seen_.long_line = true;
  if (data_line_length_ > options_.max_data_line && !data_line_too_long_) {
    data_line_too_long_ = true;
    state_ = SessionState::DataDraining;
  }
  store_data(bytes);
}

// Message bytes into the buffer, within the size limit and the memory budget.
void SmtpServerSession::store_data(std::string_view bytes) {
  if (state_ != SessionState::Data) return;
  if (data_bytes_ + bytes.size() > options_.max_message_bytes) {
    data_too_big_ = true;
    state_ = SessionState::DataDraining;
    drop_data();
    return;
  }
  if (!make_room(bytes.size())) {
    state_ = SessionState::DataDraining;
    drop_data();
    return;
  }
  if (!data_seen_.high || !data_seen_.nul) {
    text::ByteFlags flags = text::byte_flags(bytes);
    data_seen_.high = data_seen_.high || flags.high;
    data_seen_.nul = data_seen_.nul || flags.nul;
  }
  if (data_seen_.high) message_.eight_bit = true;
  (blocks_.empty() ? message_.data : blocks_.back()).append(bytes);
  data_bytes_ += bytes.size();
}

// The buffer for a message announced with SIZE=: the data goes straight into it.
bool SmtpServerSession::reserve_declared(uint64_t declared) {
  if (declared == 0) return true;
  uint64_t capacity = declared + kHeaderRoom;
  if (options_.reserve_data && !options_.reserve_data(capacity)) {
    data_no_budget_ = true;
    return false;
  }
  try {
    message_.data.reserve(capacity);
  } catch (const std::bad_alloc&) {
    data_no_memory_ = true;
    return false;
  }
  return true;
}

// Room for `more` bytes, asked of the budget before it is allocated. Data that does not fit
// the declared buffer goes into blocks of growing size (64 KiB up to 1 MiB), never copied as
// they fill; join_blocks() makes them one buffer at the end. false: no room (data_no_budget_
// or data_no_memory_ set).
bool SmtpServerSession::make_room(size_t more) {
  constexpr size_t kFirstBlock = 64 * 1024;
  constexpr size_t kLargestBlock = 1024 * 1024;
  std::string& data = message_.data;
  if (blocks_.empty() && data.size() + more <= data.capacity()) return true;
  if (!blocks_.empty() && blocks_.back().size() + more <= blocks_.back().capacity()) return true;
  size_t last = blocks_.empty() ? 0 : blocks_.back().capacity();
  size_t block = std::max({more, std::min(last * 2, kLargestBlock), kFirstBlock});
  block = std::min(block, std::max<size_t>(more, options_.max_message_bytes));
  if (options_.reserve_data && !options_.reserve_data(data.capacity() + blocks_capacity_ + block)) {
    data_no_budget_ = true;
    return false;
  }
  try {
    std::string fresh;
    fresh.reserve(block);
    blocks_.push_back(std::move(fresh));
  } catch (const std::bad_alloc&) {
    data_no_memory_ = true;
    return false;
  }
  blocks_capacity_ += block;
  return true;
}

// The blocks become one buffer (with room for the header fields normalization adds), each
// freed as soon as it is copied: the message is held about once, plus one block.
bool SmtpServerSession::join_blocks() {
  if (blocks_.empty()) return true;
  std::string joined;
  try {
    joined.reserve(data_bytes_ + kHeaderRoom);
  } catch (const std::bad_alloc&) {
    data_no_memory_ = true;
    return false;
  }
  joined.append(message_.data);
  std::string().swap(message_.data);
  for (std::string& block : blocks_) {
    joined.append(block);
    std::string().swap(block);
  }
  blocks_.clear();
  blocks_capacity_ = 0;
  message_.data = std::move(joined);
  return true;
}

void SmtpServerSession::drop_data() {
  std::string().swap(message_.data);
  std::vector<std::string>().swap(blocks_);
  blocks_capacity_ = 0;
}

void SmtpServerSession::end_data_line(bool crlf) {
  data_line_length_ = 0;
  append_data(kCrlf);
  data_line_length_ = 0;
  previous_line_crlf_ = crlf;
  scan_ = DataScan::LineStart;
}

void SmtpServerSession::finish_data(SessionOutput& out) {
  if (data_line_too_long_) {
    state_ = SessionState::Command;
    reset_transaction();
    reply(out, 500, "5.5.2",
          "Message line too long (limit " + std::to_string(options_.max_data_line) + " bytes)");
    return;
  }
  if (data_too_big_) {
    state_ = SessionState::Command;
    reset_transaction();
    out.limit_refusals.push_back("message data" + over_limit());
    reply(out, 552, "5.3.4", too_big_text());
    return;
  }
  if (!data_no_budget_ && !data_no_memory_) join_blocks();
  if (data_no_budget_ || data_no_memory_) {
    state_ = SessionState::Command;
    reset_transaction();
    if (data_no_budget_) {
      reply(out, 451, "4.3.1", "Insufficient system storage, try again later");
    } else {
      reply(out, 451, "4.3.0", "Temporary local problem, try again later");
    }
    return;
  }
  state_ = SessionState::AwaitingDelivery;
  out.event = SessionEvent::Deliver;
  message_.known_text = data_seen_;
  out.submission = std::move(message_);
  reset_transaction();
}

void SmtpServerSession::command(std::string_view line, SessionOutput& out) {
  if (state_ != SessionState::Command) {
    auth_response(line, out);
    return;
  }
  size_t sp = line.find(' ');
  std::string_view verb = line.substr(0, sp);
  std::string_view arg = sp == std::string_view::npos ? std::string_view() : line.substr(sp + 1);
  arg = text::trim(arg);

  auto is = [&](std::string_view name) { return text::iequals_ascii(verb, name); };
  if (is("EHLO")) {
    cmd_helo(arg, true, out);
  } else if (is("HELO")) {
    cmd_helo(arg, false, out);
  } else if (is("MAIL")) {
    cmd_mail(arg, out);
  } else if (is("RCPT")) {
    cmd_rcpt(arg, out);
  } else if (is("DATA")) {
    cmd_data(arg, out);
  } else if (is("BDAT")) {
    cmd_bdat(arg, out);
  } else if (is("RSET")) {
    if (!arg.empty()) return error(out, 501, "5.5.4", "Syntax: RSET");
    junk_command_ = true;
    reset_transaction();
    reply(out, 250, "2.0.0", "Ok");
  } else if (is("NOOP")) {
    junk_command_ = true;
    reply(out, 250, "2.0.0", "Ok");
  } else if (is("QUIT")) {
    close(out, 221, "2.0.0", "Bye");
  } else if (is("VRFY")) {
    if (arg.empty()) return error(out, 501, "5.5.4", "Syntax: VRFY address");
    junk_command_ = true;
    reply(out, 252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery");
  } else if (is("HELP")) {
    junk_command_ = true;
    reply(out, 214, "2.0.0",
          options_.tls_available
              ? "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP AUTH STARTTLS"
              : "Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP AUTH");
  } else if (is("AUTH")) {
    cmd_auth(arg, out);
  } else if (is("STARTTLS")) {
    cmd_starttls(arg, out);
  } else {
    error(out, 500, "5.5.1", "Command unrecognized");
  }
}

void SmtpServerSession::cmd_helo(std::string_view arg, bool extended, SessionOutput& out) {
  if (arg.empty()) {
    return error(out, 501, "5.5.4", extended ? "Syntax: EHLO hostname" : "Syntax: HELO hostname");
  }
  junk_command_ = true;  // a client needs one or two; a loop of them holds the session
  reset_transaction();
  helo_ = std::string(arg.substr(0, arg.find(' ')));
  esmtp_ = extended;
  if (!extended) {
    out.reply += "250 " + options_.hostname + "\r\n";
    return;
  }
  std::vector<std::string> lines = {
      options_.hostname,    "PIPELINING", "SIZE " + std::to_string(options_.max_message_bytes),
      "8BITMIME",           "SMTPUTF8",   "CHUNKING",
      "ENHANCEDSTATUSCODES"};
  if (auth_offered()) lines.emplace_back("AUTH PLAIN LOGIN");
  if (options_.tls_available && !tls_active_) lines.emplace_back("STARTTLS");
  if (options_.dsn) lines.emplace_back("DSN");
  for (size_t i = 0; i < lines.size(); ++i) {
    out.reply += i + 1 < lines.size() ? "250-" : "250 ";
    out.reply += lines[i];
    out.reply += kCrlf;
  }
}

// 552 says the limit, as the HTTP 413 does (issue 13).
std::string SmtpServerSession::too_big_text() const {
  return "Message size exceeds fixed maximum message size: the limit is " +
         std::to_string(options_.max_message_bytes) + " bytes";
}

std::string SmtpServerSession::over_limit() const {
  return " over max_message_bytes " + std::to_string(options_.max_message_bytes) + " (552)";
}

void SmtpServerSession::cmd_mail(std::string_view arg, SessionOutput& out) {
  if (helo_.empty()) return error(out, 503, "5.5.1", "Send EHLO or HELO first");
  if (in_transaction_) return error(out, 503, "5.5.1", "Nested MAIL command");
  if (current_role().empty()) {
    out.limit_refusals.emplace_back("authentication required (530)");
    return error(out, 530, "5.7.0", "Authentication required");
  }
  std::string_view address, params;
  if (!text::istarts_with_ascii(arg, "FROM:") || !parse_path(arg.substr(5), address, params)) {
    return error(out, 501, "5.5.4", "Syntax: MAIL FROM:<address>");
  }
  bool eight_bit = false;
  bool smtputf8 = false;
  DsnRequest dsn;
  uint64_t declared = 0;
  for (std::string_view param : split_params(params)) {
    size_t eq = param.find('=');
    std::string_view key = param.substr(0, eq);
    std::string_view value =
        eq == std::string_view::npos ? std::string_view() : param.substr(eq + 1);
    if (text::iequals_ascii(key, "SIZE") && eq != std::string_view::npos) {
      auto size = parse_decimal(value);
      if (!size) return error(out, 501, "5.5.4", "Bad SIZE parameter");
      if (*size > options_.max_message_bytes) {
        out.limit_refusals.push_back("declared SIZE=" + std::to_string(*size) + over_limit());
        return reply(out, 552, "5.3.4", too_big_text());
      }
      declared = *size;
    } else if (text::iequals_ascii(key, "BODY") && eq != std::string_view::npos) {
      if (text::iequals_ascii(value, "8BITMIME")) {
        eight_bit = true;
      } else if (!text::iequals_ascii(value, "7BIT")) {
        return error(out, 501, "5.5.4", "Unsupported BODY type");
      }
    } else if (text::iequals_ascii(param, "SMTPUTF8")) {
      smtputf8 = true;
    } else if (text::iequals_ascii(key, "AUTH") && eq != std::string_view::npos) {
      // RFC 4954 5: the submitter's identity claim; we know who authenticated.
    } else {
      DsnParamResult r =
          options_.dsn ? parse_dsn_mail_param(key, value, dsn) : DsnParamResult::NotDsn;
      if (r == DsnParamResult::Bad) return error(out, 501, "5.5.4", "Bad DSN parameter");
      if (r == DsnParamResult::NotDsn) {
        return error(out, 555, "5.5.4", "Unsupported MAIL parameter");
      }
    }
  }
  if (!address.empty()) {
    if (!address_ok(address)) return error(out, 501, "5.1.7", "Bad sender address syntax");
    if (!text::is_ascii(address) && !smtputf8) {
      return reply(out, 553, "5.6.7", "Non-ASCII sender address requires SMTPUTF8");
    }
  }
  std::string from(address);
  if (auto decision = check_policy(from, 1)) {
    // Too many recipients is judged at RCPT, where the count is known.
    if (!decision->allowed() && decision->verdict != Verdict::TooManyRecipients) {
      FinalReply r = reply_for_policy(*decision);
      out.refusals.push_back({*decision, true});
      return reply(out, r.code, r.enhanced, r.text);
    }
  }
  in_transaction_ = true;
  smtputf8_param_ = smtputf8;
  declared_size_ = declared;
  message_ = Submission{};
  message_.utf8_requested = smtputf8;
  message_.envelope_from = std::move(from);
  message_.eight_bit = eight_bit;
  message_.smtputf8 = !text::is_ascii(address);
  message_.dsn = std::move(dsn);
  reply(out, 250, "2.1.0", "Ok");
}

void SmtpServerSession::cmd_rcpt(std::string_view arg, SessionOutput& out) {
  if (!in_transaction_) return error(out, 503, "5.5.1", "Need MAIL command");
  std::string_view address, params;
  if (!text::istarts_with_ascii(arg, "TO:") || !parse_path(arg.substr(3), address, params)) {
    return error(out, 501, "5.5.4", "Syntax: RCPT TO:<address>");
  }
  DsnRecipientRequest dsn;
  for (std::string_view param : split_params(params)) {
    size_t eq = param.find('=');
    std::string_view value =
        eq == std::string_view::npos ? std::string_view() : param.substr(eq + 1);
    DsnParamResult r = options_.dsn ? parse_dsn_rcpt_param(param.substr(0, eq), value, dsn)
                                    : DsnParamResult::NotDsn;
    if (r == DsnParamResult::Bad) return error(out, 501, "5.5.4", "Bad DSN parameter");
    if (r == DsnParamResult::NotDsn) return error(out, 555, "5.5.4", "Unsupported RCPT parameter");
  }
  if (address.empty() || !address_ok(address)) {
    return error(out, 501, "5.1.3", "Bad recipient address syntax");
  }
  if (!text::is_ascii(address) && !smtputf8_param_) {
    return reply(out, 553, "5.6.7", "Non-ASCII recipient address requires SMTPUTF8");
  }
  for (const auto& existing : message_.recipients) {
    if (same_address(existing, address)) {
      junk_command_ = true;
      return reply(out, 250, "2.1.5", "Ok");
    }
  }
  if (message_.recipients.size() >= options_.max_recipients) {
    return reply(out, 452, "4.5.3", "Too many recipients");
  }
  if (auto decision = check_policy(message_.envelope_from, message_.recipients.size() + 1)) {
    if (!decision->allowed()) {
      FinalReply r = reply_for_policy(*decision);
      out.refusals.push_back({*decision, false});
      return reply(out, r.code, r.enhanced, r.text);
    }
  }
  message_.recipients.emplace_back(address);
  if (options_.dsn) message_.dsn.recipients.push_back(std::move(dsn));
  if (!text::is_ascii(address)) message_.smtputf8 = true;
  reply(out, 250, "2.1.5", "Ok");
}

void SmtpServerSession::cmd_data(std::string_view arg, SessionOutput& out) {
  if (!arg.empty()) return error(out, 501, "5.5.4", "Syntax: DATA");
  if (!in_transaction_) return error(out, 503, "5.5.1", "Need MAIL command");
  if (message_.recipients.empty()) return error(out, 503, "5.5.1", "Need RCPT command");
  if (chunking_) return error(out, 503, "5.5.1", "DATA after BDAT: send the rest with BDAT");
  state_ = SessionState::Data;
  scan_ = DataScan::LineStart;
  previous_line_crlf_ = true;  // the DATA line's own CRLF
  data_line_length_ = 0;
  data_too_big_ = false;
  data_line_too_long_ = false;
  data_seen_ = KnownText{};
  data_no_budget_ = false;
  data_no_memory_ = false;
  data_bytes_ = 0;
  // SIZE= given: one buffer of that size, so the message is never copied as it arrives.
  if (!reserve_declared(declared_size_)) {
    state_ = SessionState::Command;
    bool budget = data_no_budget_;
    reset_transaction();
    return budget ? reply(out, 451, "4.3.1", "Insufficient system storage, try again later")
                  : reply(out, 451, "4.3.0", "Temporary local problem, try again later");
  }
  reply(out, 354, "", "End data with <CR><LF>.<CR><LF>");
}

void SmtpServerSession::cmd_starttls(std::string_view arg, SessionOutput& out) {
  if (!arg.empty()) return error(out, 501, "5.5.4", "Syntax: STARTTLS");
  if (!options_.tls_available) return error(out, 502, "5.5.1", "STARTTLS not available");
  if (tls_active_) return error(out, 503, "5.5.1", "TLS already active");
  reply(out, 220, "2.0.0", "Ready to start TLS");
  state_ = SessionState::StartTlsPending;
  out.event = SessionEvent::StartTls;
}

void SmtpServerSession::cmd_auth(std::string_view arg, SessionOutput& out) {
  if (!auth_offered()) {
    if (credentials_ != nullptr && !tls_active_) {
      return error(out, 538, "5.7.11",
                   "Encryption required for requested authentication mechanism");
    }
    return error(out, 502, "5.5.1", "AUTH not available");
  }
  if (helo_.empty()) return error(out, 503, "5.5.1", "Send EHLO first");
  if (authenticated()) return error(out, 503, "5.5.1", "Already authenticated");
  if (in_transaction_)
    return error(out, 503, "5.5.1", "AUTH not permitted during a mail transaction");
  size_t sp = arg.find(' ');
  std::string_view mechanism = arg.substr(0, sp);
  std::string_view initial =
      sp == std::string_view::npos ? std::string_view() : text::trim(arg.substr(sp + 1));
  bool has_initial = sp != std::string_view::npos && !initial.empty();
  if (text::iequals_ascii(mechanism, "PLAIN")) {
    if (!has_initial) {
      state_ = SessionState::AuthPlainResponse;
      out.reply += "334 \r\n";
      return;
    }
    return auth_plain(initial == "=" ? std::string_view() : initial, out);
  }
  if (text::iequals_ascii(mechanism, "LOGIN")) {
    if (!has_initial) {
      state_ = SessionState::AuthLoginUser;
      out.reply += "334 VXNlcm5hbWU6\r\n";  // "Username:"
      return;
    }
    auto user = text::base64_decode(initial == "=" ? std::string_view() : initial);
    if (!user) return error(out, 501, "5.5.2", "Cannot decode response");
    pending_login_user_ = std::move(*user);
    state_ = SessionState::AuthLoginPass;
    out.reply += "334 UGFzc3dvcmQ6\r\n";  // "Password:"
    return;
  }
  error(out, 504, "5.5.4", "Unrecognized authentication type");
}

void SmtpServerSession::auth_response(std::string_view line, SessionOutput& out) {
  SessionState was = state_;
  state_ = SessionState::Command;
  line = text::trim(line);
  if (line == "*") {
    pending_login_user_.clear();
    return error(out, 501, "5.0.0", "Authentication cancelled");
  }
  if (was == SessionState::AuthPlainResponse) return auth_plain(line, out);
  auto decoded = text::base64_decode(line);
  if (!decoded) {
    pending_login_user_.clear();
    return error(out, 501, "5.5.2", "Cannot decode response");
  }
  if (was == SessionState::AuthLoginUser) {
    pending_login_user_ = std::move(*decoded);
    state_ = SessionState::AuthLoginPass;
    out.reply += "334 UGFzc3dvcmQ6\r\n";
    return;
  }
  std::string user = std::move(pending_login_user_);
  pending_login_user_.clear();
  auth_check(user, *decoded, out);
}

void SmtpServerSession::auth_plain(std::string_view base64, SessionOutput& out) {
  auto decoded = text::base64_decode(base64);
  if (!decoded) return error(out, 501, "5.5.2", "Cannot decode response");
  // authzid NUL authcid NUL passwd
  std::string_view s = *decoded;
  size_t first = s.find('\0');
  size_t second = first == std::string_view::npos ? first : s.find('\0', first + 1);
  if (second == std::string_view::npos) return error(out, 501, "5.5.2", "Malformed PLAIN response");
  std::string_view authzid = s.substr(0, first);
  std::string_view user = s.substr(first + 1, second - first - 1);
  std::string_view password = s.substr(second + 1);
  if (!authzid.empty() && authzid != user) {
    // Acting as someone else is not supported; treat it like bad credentials.
    return auth_check({}, {}, out);
  }
  auth_check(user, password, out);
}

void SmtpServerSession::auth_check(std::string_view user, std::string_view password,
                                   SessionOutput& out) {
  std::optional<std::string> role;
  if (credentials_ != nullptr && !user.empty()) role = credentials_->authenticate(user, password);
  if (role) {
    auth_user_ = std::string(user);
    role_ = std::move(*role);
    reply(out, 235, "2.7.0", "Authentication successful");
    return;
  }
  ++auth_failures_;
  out.auth_failed = true;
  out.auth_user_tried = std::string(user.substr(0, kMaxLoggedUserName));
  reply(out, 535, "5.7.8", "Authentication credentials invalid");
  if (auth_failures_ >= options_.max_auth_failures) {
    close(out, 421, "4.7.0", "Too many authentication failures");
  }
}

// After each command line: junk (see SessionOptions::max_junk_commands) is counted, and the
// session ends when there has been too much of it since the last accepted message.
void SmtpServerSession::count_junk(bool junk, size_t reply_from, SessionOutput& out) {
  if (state_ == SessionState::Closed) return;
  bool refused = reply_from < out.reply.size() &&
                 (out.reply[reply_from] == '4' || out.reply[reply_from] == '5');
  if (!junk && !refused) return;
  if (++junk_ > options_.max_junk_commands) {
    close(out, 421, "4.7.0", "Too many commands without a message, closing connection");
  }
}

void SmtpServerSession::reply(SessionOutput& out, int code, std::string_view enhanced,
                              std::string_view reply_text) {
  out.reply += std::to_string(code);
  out.reply += ' ';
  if (!enhanced.empty()) {
    out.reply += enhanced;
    out.reply += ' ';
  }
  out.reply += reply_text;
  out.reply += kCrlf;
}

void SmtpServerSession::error(SessionOutput& out, int code, std::string_view enhanced,
                              std::string_view reply_text) {
  reply(out, code, enhanced, reply_text);
  if (++errors_ >= options_.max_errors) close(out, 421, "4.7.0", "Too many errors");
}

void SmtpServerSession::close(SessionOutput& out, int code, std::string_view enhanced,
                              std::string_view reply_text) {
  reply(out, code, enhanced, reply_text);
  state_ = SessionState::Closed;
  out.event = SessionEvent::Close;
  out.submission.reset();
}

bool SmtpServerSession::auth_offered() const {
  return credentials_ != nullptr && (tls_active_ || options_.auth_in_clear);
}

bool SmtpServerSession::address_ok(std::string_view address) const {
  return options_.validate_address ? options_.validate_address(address)
                                   : basic_address_check(address);
}

std::optional<PolicyDecision> SmtpServerSession::check_policy(const std::string& from,
                                                              uint64_t recipients) const {
  if (policy_ == nullptr) return std::nullopt;
  PolicyRequest& request = policy_request_;  // its strings keep their buffers between calls
  request.role = current_role();
  if (options_.route) {
    request.service = options_.route(request.role, from);
  } else {
    request.service = options_.service;
  }
  request.envelope_from = from;
  request.header_from.clear();
  request.recipients = recipients;
  request.service_quota = true;
  if (options_.shared_windows) {
    std::vector<PolicyWindow> windows;  // judged in Redis at the end of DATA
    return policy_->check_rules(request, windows);
  }
  uint64_t now = options_.now_ms ? options_.now_ms() : wall_clock_ms();
  return policy_->check(request, now);
}

void SmtpServerSession::reset_transaction() {
  in_transaction_ = false;
  chunking_ = false;
  smtputf8_param_ = false;
  declared_size_ = 0;
  message_ = Submission{};
  drop_data();
}

const std::string& SmtpServerSession::current_role() const {
  static const std::string kNone;
  if (authenticated()) return role_;
  return options_.anonymous_role ? *options_.anonymous_role : kNone;
}

}  // namespace mailcar::smtp
