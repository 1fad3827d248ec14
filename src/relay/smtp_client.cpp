#include "mailcar/smtp_client.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <utility>

#include "mailcar/scan.hpp"
#include "mailcar/text.hpp"

namespace mailcar {

namespace {

bool is_positive(int code) {
  return code >= 200 && code < 300;
}
bool is_temporary(int code) {
  return code >= 400 && code < 500;
}

DeliveryResult reply_result(DeliveryStatus status, const SmtpReply& reply, std::string message) {
  DeliveryResult r;
  r.status = status;
  r.smtp_code = reply.code;
  r.smtp_reply = reply.text();
  r.message = message.empty() ? r.smtp_reply : std::move(message);
  r.retryable = is_temporary(reply.code);
  return r;
}

DeliveryResult rejection(const SmtpReply& reply) {
  return reply_result(DeliveryStatus::Rejected, reply, {});
}

DeliveryResult protocol_error(std::string_view detail) {
  // A peer that does not speak SMTP will not start to on a retry.
  return delivery_failure(DeliveryStatus::ProtocolError,
                          "upstream protocol error: " + std::string(detail), false);
}

// Envelope addresses go into command lines verbatim: refuse anything that could end or
// restructure the line (command injection), even though ingresses validated them already.
constexpr std::array<bool, 256> kUnsafeInCommand = [] {
  std::array<bool, 256> unsafe{};
  for (unsigned c = 0; c < 0x20; ++c) unsafe[c] = true;
  unsafe[0x7f] = true;
  unsafe['<'] = true;
  unsafe['>'] = true;
  return unsafe;
}();

bool safe_for_command(std::string_view address) {
  for (char c : address) {
    if (kUnsafeInCommand[static_cast<unsigned char>(c)]) return false;
  }
  return true;
}

// Most outputs carry one event or the pair MessageDone + Ready: room for two at once.
SmtpClientEvent& emit(SmtpClientOutput& out, SmtpClientEvent::Kind kind) {
  if (out.events.capacity() == 0) out.events.reserve(2);
  SmtpClientEvent& event = out.events.emplace_back();
  event.kind = kind;
  return event;
}

void emit(SmtpClientOutput& out, SmtpClientEvent::Kind kind, DeliveryResult&& result,
          bool before_data) {
  SmtpClientEvent& event = emit(out, kind);
  event.result = std::move(result);
  event.before_data = before_data;
}

void append_decimal(std::string& out, uint64_t n) {
  char digits[24];
  auto [end, ec] = std::to_chars(digits, digits + sizeof digits, n);
  out.append(digits, static_cast<size_t>(end - digits));
}

// EHLO refusals after which HELO is worth a try (RFC 5321 §3.2).
bool helo_fallback_code(int code) {
  return code == 500 || code == 502 || code == 504 || code == 550;
}

}  // namespace

std::string SmtpReply::text() const {
  std::string out;
  for (size_t i = 0; i < lines.size(); ++i) {
    if (i) out += '\n';
    out += lines[i];
  }
  return out;
}

SmtpExtensions SmtpExtensions::parse(const SmtpReply& ehlo_reply) {
  SmtpExtensions ext;
  // The first line is the server's greeting name; keywords follow one per line.
  for (size_t i = 1; i < ehlo_reply.lines.size(); ++i) {
    std::string_view line = text::trim(ehlo_reply.lines[i]);
    ext.keywords.emplace_back(line);  // as sent, for --check --probe (issue 9)
    size_t space = line.find(' ');
    std::string keyword = text::lower_ascii(line.substr(0, space));
    std::string_view params = space == std::string_view::npos ? "" : line.substr(space + 1);
    if (keyword.rfind("auth=", 0) == 0) {  // old-style "AUTH=LOGIN PLAIN"
      params = line.substr(5);
      keyword = "auth";
    }
    if (keyword == "starttls") {
      ext.starttls = true;
    } else if (keyword == "pipelining") {
      ext.pipelining = true;
    } else if (keyword == "8bitmime") {
      ext.eight_bit_mime = true;
    } else if (keyword == "smtputf8") {
      ext.smtputf8 = true;
    } else if (keyword == "size") {
      params = text::trim(params);
      uint64_t n = 0;
      auto [end, ec] = std::from_chars(params.data(), params.data() + params.size(), n);
      if (ec == std::errc() && end == params.data() + params.size()) ext.size = n;
    } else if (keyword == "auth") {
      ext.auth = true;
      while (!params.empty()) {
        params = text::trim(params);
        size_t sp = params.find(' ');
        std::string_view mech = params.substr(0, sp);
        if (text::iequals_ascii(mech, "PLAIN")) ext.auth_plain = true;
        if (text::iequals_ascii(mech, "LOGIN")) ext.auth_login = true;
        if (text::iequals_ascii(mech, "XOAUTH2")) ext.auth_xoauth2 = true;
        if (text::iequals_ascii(mech, "OAUTHBEARER")) ext.auth_oauthbearer = true;
        params = sp == std::string_view::npos ? std::string_view() : params.substr(sp + 1);
      }
    }
  }
  return ext;
}

SmtpClientSession::SmtpClientSession(SmtpClientOptions options) : options_(std::move(options)) {
  pending_.push_back(Command::Greeting);
  // Implicit TLS: the owner finished the handshake before the greeting.
  tls_done_ = options_.encryption == Encryption::Tls;
}

SmtpClientOutput SmtpClientSession::feed(std::string_view bytes) {
  SmtpClientOutput out;
  feed(bytes, out);
  return out;
}

void SmtpClientSession::feed(std::string_view bytes, SmtpClientOutput& out) {
  if (terminal() || state_ == State::TlsHandshake) return;  // never read pre-TLS leftovers
  if (input_.empty()) {
    // The usual case, whole lines: parse them where they are and keep only an unfinished tail.
    const size_t consumed = parse_input(bytes, out);
    if (!discard_input_ && !terminal()) input_.assign(bytes.substr(consumed));
  } else {
    input_.append(bytes.data(), bytes.size());
    const size_t consumed = parse_input(input_, out);  // handle_reply() never touches input_
    if (!discard_input_ && !terminal()) input_.erase(0, consumed);
  }
  if (discard_input_ || terminal()) {
    input_.clear();
    discard_input_ = false;
  }
}

// Splits `input` into lines and lines into replies; returns how many bytes it used up.
size_t SmtpClientSession::parse_input(std::string_view input, SmtpClientOutput& out) {
  size_t consumed = 0;
  while (!terminal() && !discard_input_) {
    size_t nl = input.find('\n', consumed);
    if (nl == std::string_view::npos) {
      if (input.size() - consumed > options_.max_reply_line + 1) {
        fail(protocol_error("reply line too long"), out);
      }
      break;
    }
    std::string_view line(input.data() + consumed, nl - consumed);
    consumed = nl + 1;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.size() > options_.max_reply_line) {
      fail(protocol_error("reply line too long"), out);
      break;
    }
    bool digits = line.size() >= 3;
    for (size_t i = 0; digits && i < 3; ++i) digits = line[i] >= '0' && line[i] <= '9';
    if (!digits || (line.size() > 3 && line[3] != ' ' && line[3] != '-')) {
      fail(protocol_error("malformed reply line"), out);
      break;
    }
    int code = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');
    if (code < 200 || code > 599) {
      fail(protocol_error("reply code " + std::to_string(code) + " out of range"), out);
      break;
    }
    if (have_partial_ && code != partial_.code) {
      fail(protocol_error("reply code changed inside a multi-line reply"), out);
      break;
    }
    partial_bytes_ += line.size();
    if (partial_bytes_ > options_.max_reply_bytes) {
      fail(protocol_error("reply too long"), out);
      break;
    }
    partial_.code = code;
    // The line strings of earlier replies are reused: no allocation per reply.
    const std::string_view text = line.size() > 4 ? line.substr(4) : std::string_view();
    if (partial_lines_ < partial_.lines.size()) {
      std::string& kept = partial_.lines[partial_lines_];
      kept.clear();
      kept.append(text.data(), text.size());
    } else {
      partial_.lines.emplace_back(text);
    }
    ++partial_lines_;
    have_partial_ = true;
    if (line.size() > 3 && line[3] == '-') continue;
    if (partial_.lines.size() != partial_lines_) partial_.lines.resize(partial_lines_);  // shrinks
    partial_lines_ = 0;
    partial_bytes_ = 0;
    have_partial_ = false;
    ++replies_received_;
    handle_reply(partial_, out);
  }
  return consumed;
}

void SmtpClientSession::send(Command command, std::string_view line, SmtpClientOutput& out) {
  out.write += line;
  pending_.push_back(command);
}

void SmtpClientSession::send_next_unsent(SmtpClientOutput& out) {
  if (unsent_next_ >= unsent_.size()) return;
  const Queued next = unsent_[unsent_next_++];
  append_command(next, out.write);
  pending_.push_back(next.command);
}

void SmtpClientSession::clear_unsent() {
  unsent_.clear();
  unsent_next_ = 0;
}

// The line of a transaction command, written where it goes (no string per command).
void SmtpClientSession::append_command(const Queued& q, std::string& out) const {
  switch (q.command) {
    case Command::Rset:
      out += "RSET\r\n";
      return;
    case Command::Mail:
      out += "MAIL FROM:<";
      out += message_->envelope_from;
      out += '>';
      if (extensions_.size > 0) {
        out += " SIZE=";
        append_decimal(out, message_->data.size());
      }
      if (message_->eight_bit && extensions_.eight_bit_mime) out += " BODY=8BITMIME";
      if (message_->smtputf8) out += " SMTPUTF8";
      out += "\r\n";
      return;
    case Command::Rcpt:
      out += "RCPT TO:<";
      out += message_->envelope_rcpts[q.rcpt];
      out += ">\r\n";
      return;
    case Command::Data:
      out += "DATA\r\n";
      return;
    default:
      return;  // not a transaction command
  }
}

void SmtpClientSession::send_hello(Command command, SmtpClientOutput& out) {
  send(command, (command == Command::Helo ? "HELO " : "EHLO ") + options_.ehlo_name + "\r\n", out);
}

void SmtpClientSession::handle_reply(const SmtpReply& reply, SmtpClientOutput& out) {
  if (pending_.empty()) {
    handle_unsolicited(reply, out);
    return;
  }
  Command command = pending_.front();
  pending_.pop_front();
  switch (command) {
    case Command::Greeting:
    case Command::Ehlo:
    case Command::Helo:
    case Command::StartTls:
      setup_reply(command, reply, out);
      return;
    case Command::AuthLogin:
    case Command::AuthLoginUser:
    case Command::AuthPlain:
    case Command::AuthLoginPassword:
      auth_reply(command, reply, out);
      return;
    case Command::AuthOAuth:
    case Command::AuthOAuthCancel:
      oauth2_reply(command, reply, out);
      return;
    case Command::Quit:
      state_ = State::Closed;
      emit(out, SmtpClientEvent::Kind::Closed);
      return;
    case Command::Rset:
    case Command::Mail:
    case Command::Rcpt:
    case Command::Data:
    case Command::EndOfData:
      handle_transaction_reply(command, reply, out);
      return;
  }
}

void SmtpClientSession::setup_reply(Command command, const SmtpReply& reply,
                                    SmtpClientOutput& out) {
  switch (command) {
    case Command::Greeting:
      if (reply.code == 220) {
        state_ = State::Ehlo;
        send_hello(Command::Ehlo, out);
      } else {
        fail(rejection(reply), out);
      }
      return;
    case Command::Ehlo:
      if (is_positive(reply.code)) {
        extensions_ = SmtpExtensions::parse(reply);
        after_hello(out);
      } else if (helo_fallback_code(reply.code)) {
        state_ = State::Helo;
        send_hello(Command::Helo, out);
      } else {
        fail(rejection(reply), out);
      }
      return;
    case Command::Helo:
      if (is_positive(reply.code)) {
        extensions_ = SmtpExtensions();
        after_hello(out);
      } else {
        fail(rejection(reply), out);
      }
      return;
    default:  // StartTls
      if (reply.code == 220) {
        state_ = State::TlsHandshake;
        discard_input_ = true;
        emit(out, SmtpClientEvent::Kind::NeedTlsHandshake);
      } else {
        fail(reply_result(DeliveryStatus::TlsUnavailable, reply,
                          "STARTTLS refused by server: " + reply.text()),
             out);
      }
      return;
  }
}

void SmtpClientSession::auth_reply(Command command, const SmtpReply& reply, SmtpClientOutput& out) {
  if ((command == Command::AuthLogin || command == Command::AuthLoginUser) && reply.code == 334) {
    bool user = command == Command::AuthLogin;
    state_ = user ? State::AuthLoginUser : State::AuthLoginPassword;
    send(user ? Command::AuthLoginUser : Command::AuthLoginPassword,
         text::base64_encode(user ? options_.username : options_.password) + "\r\n", out);
    return;
  }
  if (reply.code == 235) {
    enter_ready(out);
  } else {
    fail(reply_result(DeliveryStatus::AuthenticationFailed, reply, "Authentication failed"), out);
  }
}

void SmtpClientSession::after_hello(SmtpClientOutput& out) {
  if (options_.encryption == Encryption::StartTls && !tls_done_) {
    if (!extensions_.starttls) {
      // encryption: tls means never in clear; there is no fallback.
      fail(
          delivery_failure(DeliveryStatus::TlsUnavailable, "server does not offer STARTTLS", false),
          out);
      return;
    }
    state_ = State::StartTls;
    send(Command::StartTls, "STARTTLS\r\n", out);
    return;
  }
  if (options_.username.empty()) {
    enter_ready(out);
    return;
  }
  start_auth(out);
}

void SmtpClientSession::start_auth(SmtpClientOutput& out) {
  if (options_.oauth2) {
    start_oauth2(out);
    return;
  }
  if (extensions_.auth_plain) {
    std::string credentials;
    credentials += '\0';
    credentials += options_.username;
    credentials += '\0';
    credentials += options_.password;
    state_ = State::AuthPlain;
    auth_mechanism_ = "PLAIN";
    send(Command::AuthPlain, "AUTH PLAIN " + text::base64_encode(credentials) + "\r\n", out);
  } else if (extensions_.auth_login) {
    state_ = State::AuthLogin;
    auth_mechanism_ = "LOGIN";
    send(Command::AuthLogin, "AUTH LOGIN\r\n", out);
  } else {
    fail(
        delivery_failure(DeliveryStatus::AuthenticationFailed,
                         extensions_.auth
                             ? "Authentication failed: upstream offers no supported AUTH mechanism "
                               "(PLAIN or LOGIN)"
                             : "Authentication failed: credentials are configured but the upstream "
                               "does not offer AUTH",
                         false),
        out);
  }
}

// ---- OAuth2 (issue 9) ----

void SmtpClientSession::start_oauth2(SmtpClientOutput& out) {
  const bool xoauth2 = *options_.oauth2 == OAuth2Mechanism::XOAuth2;
  if (!(xoauth2 ? extensions_.auth_xoauth2 : extensions_.auth_oauthbearer)) {
    fail(delivery_failure(DeliveryStatus::AuthenticationFailed,
                          std::string("Authentication failed: the upstream does not offer AUTH ") +
                              (xoauth2 ? "XOAUTH2" : "OAUTHBEARER"),
                          false),
         out);
    return;
  }
  state_ = State::AuthToken;
  emit(out, SmtpClientEvent::Kind::NeedToken);
}

SmtpClientOutput SmtpClientSession::provide_token(std::string token, bool fresh) {
  SmtpClientOutput out;
  if (state_ != State::AuthToken) return out;
  token_ = std::move(token);
  token_fresh_ = fresh;
  const bool xoauth2 = *options_.oauth2 == OAuth2Mechanism::XOAuth2;
  std::string line = xoauth2 ? "AUTH XOAUTH2 " + xoauth2_initial_response(options_.username, token_)
                             : "AUTH OAUTHBEARER " + oauthbearer_initial_response(
                                                         options_.username, options_.oauth2_host,
                                                         options_.oauth2_port, token_);
  state_ = State::AuthOAuth;
  send(Command::AuthOAuth, line + "\r\n", out);
  return out;
}

SmtpClientOutput SmtpClientSession::token_failed(DeliveryResult why) {
  SmtpClientOutput out;
  if (state_ != State::AuthToken) return out;
  fail(std::move(why), out);
  return out;
}

void SmtpClientSession::oauth2_reply(Command command, const SmtpReply& reply,
                                     SmtpClientOutput& out) {
  if (reply.code == 235) {
    enter_ready(out);
    return;
  }
  if (reply.code == 334 && command == Command::AuthOAuth) {
    // RFC 7628 §3.2.3 / XOAUTH2: a base64 JSON error; the client answers with an empty
    // line (OAUTHBEARER wants "\x01", which base64-encodes to "AQ=="), then the final reply.
    state_ = State::AuthOAuthError;
    const bool xoauth2 = *options_.oauth2 == OAuth2Mechanism::XOAuth2;
    send(Command::AuthOAuthCancel, xoauth2 ? "\r\n" : "AQ==\r\n", out);
    return;
  }
  if (!token_fresh_ && !auth_retried_ && reply.code != 334) {
    // A cached token may have been revoked or expired early: renew it once, AUTH once more.
    auth_retried_ = true;
    state_ = State::AuthToken;
    emit(out, SmtpClientEvent::Kind::NeedToken);
    return;
  }
  fail(reply_result(DeliveryStatus::AuthenticationFailed, reply, "Authentication failed"), out);
}

std::string xoauth2_initial_response(std::string_view user, std::string_view token) {
  std::string raw = "user=";
  raw += user;
  raw +=
      "\x01"
      "auth=Bearer ";
  raw += token;
  raw += "\x01\x01";
  return text::base64_encode(raw);
}

std::string oauthbearer_initial_response(std::string_view user, std::string_view host,
                                         uint16_t port, std::string_view token) {
  std::string raw = "n,a=";
  for (char c : user) {
    if (c == ',') {
      raw += "=2C";
    } else if (c == '=') {
      raw += "=3D";
    } else {
      raw += c;
    }
  }
  raw += ",\x01host=";
  raw += host;
  raw += "\x01port=";
  raw += std::to_string(port);
  raw +=
      "\x01"
      "auth=Bearer ";
  raw += token;
  raw += "\x01\x01";
  return text::base64_encode(raw);
}

void SmtpClientSession::enter_ready(SmtpClientOutput& out) {
  state_ = State::Ready;
  emit(out, SmtpClientEvent::Kind::Ready);
}

SmtpClientOutput SmtpClientSession::tls_established() {
  SmtpClientOutput out;
  if (state_ != State::TlsHandshake) return out;
  tls_done_ = true;
  extensions_ = SmtpExtensions();  // RFC 3207: forget everything learned in clear
  input_.clear();
  state_ = State::EhloAfterTls;
  send_hello(Command::Ehlo, out);
  return out;
}

SmtpClientOutput SmtpClientSession::start_message(const OutboundMessage& message) {
  SmtpClientOutput out;
  // Refused before anything was sent: the connection stays as it was, so a session that was
  // ready says so again (otherwise its owner would wait for it forever).
  auto refuse = [&](DeliveryResult result) {
    emit(out, SmtpClientEvent::Kind::MessageDone, std::move(result), true);
    if (state_ == State::Ready && message_ == nullptr) {
      emit(out, SmtpClientEvent::Kind::Ready);
    }
    return out;
  };
  if (state_ != State::Ready || message_ != nullptr) {
    return refuse(delivery_failure(DeliveryStatus::ProtocolError,
                                   "upstream session is not ready for a message", true));
  }
  if (message.envelope_rcpts.empty()) {
    return refuse(delivery_failure(DeliveryStatus::Rejected, "message has no recipients", false));
  }
  bool addresses_ok = safe_for_command(message.envelope_from);
  for (const auto& rcpt : message.envelope_rcpts)
    addresses_ok = addresses_ok && safe_for_command(rcpt);
  if (!addresses_ok) {
    return refuse(delivery_failure(DeliveryStatus::Rejected,
                                   "envelope address contains characters not allowed in SMTP",
                                   false));
  }
  if (extensions_.size > 0 && message.data.size() > extensions_.size) {
    DeliveryResult r = delivery_failure(DeliveryStatus::Rejected,
                                        "message size " + std::to_string(message.data.size()) +
                                            " exceeds the upstream's limit of " +
                                            std::to_string(extensions_.size) + " bytes",
                                        false);
    r.smtp_code = 552;
    r.smtp_reply = "5.3.4 " + r.message;
    return refuse(std::move(r));
  }
  if (message.smtputf8 && !extensions_.smtputf8) {
    return refuse(delivery_failure(
        DeliveryStatus::Rejected,
        "upstream does not support SMTPUTF8 (needed for non-ASCII addresses)", false));
  }

  message_ = &message;
  next_rcpt_reply_ = 0;
  accepted_.clear();
  rejected_.clear();
  body_pos_ = 0;
  body_at_line_start_ = true;

  clear_unsent();
  size_t line_bytes = 64 + message.envelope_from.size();
  if (need_rset_) unsent_.push_back({Command::Rset, 0});
  unsent_.push_back({Command::Mail, 0});
  for (size_t i = 0; i < message.envelope_rcpts.size(); ++i) {
    unsent_.push_back({Command::Rcpt, i});
    line_bytes += 12 + message.envelope_rcpts[i].size();
  }
  unsent_.push_back({Command::Data, 0});
  need_rset_ = true;  // whatever happens now, the next transaction starts clean

  state_ = unsent_.front().command == Command::Rset ? State::Rset : State::MailFrom;
  if (extensions_.pipelining) {
    // RFC 2920: the whole envelope and DATA in one batch; replies come back in order.
    out.write.reserve(line_bytes);
    while (unsent_next_ < unsent_.size()) send_next_unsent(out);
  } else {
    send_next_unsent(out);
  }
  return out;
}

void SmtpClientSession::handle_transaction_reply(Command command, const SmtpReply& reply,
                                                 SmtpClientOutput& out) {
  if (reply.code == 421) {
    // RFC 5321 3.8: the server is closing the channel, so no later reply will come. Usually
    // an idle connection it gave up on: a 421 before the body on a reused connection is what
    // the relay retries once on a fresh one.
    fail(rejection(reply), out);
    return;
  }
  if (state_ == State::Draining) {
    // The message is already decided; these are replies to pipelined commands.
    if (command == Command::Data && reply.code == 354) {
      // The server wants a body we will not send: the only safe way out is to hang up.
      state_ = State::Failed;
      emit(out, SmtpClientEvent::Kind::Closed);
      return;
    }
    if (pending_.empty()) enter_ready(out);
    return;
  }
  switch (command) {
    case Command::Rset:
      if (!is_positive(reply.code)) {
        fail(rejection(reply), out);  // usually 421 from a server that gave up on us
        return;
      }
      state_ = State::MailFrom;
      send_next_unsent(out);
      return;
    case Command::Mail:
      if (!is_positive(reply.code)) {
        finish_message(rejection(reply), out);
        return;
      }
      state_ = State::RcptTo;
      send_next_unsent(out);
      return;
    case Command::Rcpt: {
      const std::string& address = message_->envelope_rcpts[next_rcpt_reply_++];
      if (is_positive(reply.code)) {
        accepted_.push_back(address);
      } else {
        rejected_.push_back({address, reply.code, reply.text()});
      }
      if (next_rcpt_reply_ < message_->envelope_rcpts.size()) {
        send_next_unsent(out);
        return;
      }
      if (accepted_.empty()) {
        // Nobody to send to: no DATA (or, pipelined, its refusal is drained).
        DeliveryResult r = delivery_failure(DeliveryStatus::Rejected, rejected_.front().smtp_reply,
                                            is_temporary(rejected_.front().smtp_code));
        r.smtp_code = rejected_.front().smtp_code;
        r.smtp_reply = rejected_.front().smtp_reply;
        finish_message(std::move(r), out);
        return;
      }
      state_ = State::Data;
      send_next_unsent(out);
      return;
    }
    case Command::Data:
      if (reply.code != 354) {
        accepted_.clear();
        finish_message(rejection(reply), out);
        return;
      }
      state_ = State::Body;
      return;
    case Command::EndOfData: {
      DeliveryResult r = is_positive(reply.code) ? reply_result(DeliveryStatus::Sent, reply, {})
                                                 : rejection(reply);
      if (r.status != DeliveryStatus::Sent) accepted_.clear();
      finish_message(std::move(r), out);
      return;
    }
    default:
      return;
  }
}

void SmtpClientSession::handle_unsolicited(const SmtpReply& reply, SmtpClientOutput& out) {
  if (state_ == State::Body && message_ != nullptr) {
    // The server cut the body short (e.g. 552 too big, 421 shutting down).
    DeliveryResult r = rejection(reply);
    r.rejected = std::move(rejected_);
    accepted_.clear();
    rejected_.clear();
    message_ = nullptr;
    state_ = State::Failed;
    emit(out, SmtpClientEvent::Kind::MessageDone, std::move(r), false);
    return;
  }
  if (state_ == State::Ready) {
    state_ = State::Closed;  // typically "421 idle timeout"
    emit(out, SmtpClientEvent::Kind::Closed);
    return;
  }
  fail(protocol_error("reply without a command (" + std::to_string(reply.code) + ")"), out);
}

void SmtpClientSession::finish_message(DeliveryResult&& result, SmtpClientOutput& out) {
  bool before_data = state_ != State::Body && state_ != State::EndOfData;
  result.accepted = std::move(accepted_);
  result.rejected = std::move(rejected_);
  accepted_.clear();
  rejected_.clear();
  message_ = nullptr;
  clear_unsent();
  emit(out, SmtpClientEvent::Kind::MessageDone, std::move(result), before_data);
  after_message(out);
}

void SmtpClientSession::after_message(SmtpClientOutput& out) {
  if (pending_.empty()) {
    enter_ready(out);
  } else {
    state_ = State::Draining;
  }
}

void SmtpClientSession::fail(DeliveryResult result, SmtpClientOutput& out) {
  if (terminal()) return;
  if (message_ != nullptr) {
    bool before_data = state_ != State::Body && state_ != State::EndOfData;
    result.accepted.clear();  // not delivered: nobody got it
    result.rejected = std::move(rejected_);
    accepted_.clear();
    rejected_.clear();
    message_ = nullptr;
    emit(out, SmtpClientEvent::Kind::MessageDone, std::move(result), before_data);
  } else if (state_ == State::Ready || state_ == State::Draining || state_ == State::Quit) {
    emit(out, SmtpClientEvent::Kind::Closed);
  } else {
    emit(out, SmtpClientEvent::Kind::Failed, std::move(result), false);
  }
  state_ = State::Failed;
  pending_.clear();
  clear_unsent();
}

SmtpClientOutput SmtpClientSession::quit() {
  SmtpClientOutput out;
  if (state_ == State::Ready) {
    state_ = State::Quit;
    send(Command::Quit, "QUIT\r\n", out);
  } else if (!terminal() && state_ != State::Quit) {
    fail(delivery_failure(DeliveryStatus::ShuttingDown, "connection closed by mailcar", true), out);
    state_ = State::Closed;
  }
  return out;
}

SmtpClientOutput SmtpClientSession::connection_lost(DeliveryResult why) {
  SmtpClientOutput out;
  if (terminal()) return out;
  if (state_ == State::Quit) {
    state_ = State::Closed;
    emit(out, SmtpClientEvent::Kind::Closed);
    return out;
  }
  fail(std::move(why), out);
  return out;
}

namespace {

// Where in data[from, limit) the next line starting with '.' begins (at that '.'), or limit.
// data[from] itself is not looked at. memchr() finds the next dot at memory speed but costs a
// call per dot, and most bodies have few (base64 none), so it hops from dot to dot. Where dots
// come closer than every ~64 bytes on average (headers, prose) the block scan of
// find_dot_after_lf(), which costs the same for any content, takes a window, then hops again.
size_t stuffing_point(std::string_view data, size_t from, size_t limit) {
  constexpr size_t kDenseGap = 64;
  constexpr size_t kScanWindow = 4096;
  const char* base = data.data();
  const char* end = base + limit;
  const char* p = base + from + 1;  // every '.' before p that follows an LF has been looked at
  const char* hops_from = p;
  size_t hops = 0;
  while (p < end) {
    const auto* dot = static_cast<const char*>(std::memchr(p, '.', static_cast<size_t>(end - p)));
    if (dot == nullptr) return limit;
    if (dot[-1] == '\n') return static_cast<size_t>(dot - base);
    p = dot + 1;
    if (++hops < 4 || static_cast<size_t>(p - hops_from) >= hops * kDenseGap) continue;
    const char* window_end = static_cast<size_t>(end - p) > kScanWindow ? p + kScanWindow : end;
    const char* hit = text::find_dot_after_lf(dot, window_end);  // dot itself is not looked at
    if (hit < window_end) return static_cast<size_t>(hit - base);
    p = hops_from = window_end;
    hops = 0;
  }
  return limit;
}

}  // namespace

bool SmtpClientSession::pull_body(std::string& out, size_t max_bytes) {
  if (state_ != State::Body || message_ == nullptr) return false;
  const std::string& data = message_->data;
  size_t budget = max_bytes == 0 ? 1 : max_bytes;
  while (body_pos_ < data.size() && budget > 0) {
    if (body_at_line_start_ && data[body_pos_] == '.') {
      out += '.';  // RFC 5321 §4.5.2 transparency
    }
    // Everything up to the next line that starts with '.' goes in one copy.
    size_t limit = std::min(data.size(), body_pos_ + budget);
    size_t run_end = stuffing_point(data, body_pos_, limit);
    size_t take = run_end - body_pos_;
    out.append(data, body_pos_, take);
    body_pos_ += take;
    budget -= take;
    body_at_line_start_ = data[body_pos_ - 1] == '\n';
  }
  if (body_pos_ < data.size()) return true;
  if (!body_at_line_start_ && !data.empty()) out += "\r\n";
  out += ".\r\n";
  state_ = State::EndOfData;
  pending_.push_back(Command::EndOfData);
  return false;
}

const char* smtp_client_state_name(SmtpClientSession::State state) {
  using S = SmtpClientSession::State;
  switch (state) {
    case S::Greeting:
      return "greeting";
    case S::Ehlo:
      return "ehlo";
    case S::Helo:
      return "helo";
    case S::StartTls:
      return "starttls";
    case S::TlsHandshake:
      return "tls_handshake";
    case S::EhloAfterTls:
      return "ehlo_after_tls";
    case S::AuthPlain:
      return "auth_plain";
    case S::AuthLogin:
      return "auth_login";
    case S::AuthLoginUser:
      return "auth_login_user";
    case S::AuthLoginPassword:
      return "auth_login_password";
    case S::AuthToken:
      return "auth_token";
    case S::AuthOAuth:
      return "auth_oauth";
    case S::AuthOAuthError:
      return "auth_oauth_error";
    case S::Ready:
      return "ready";
    case S::Rset:
      return "rset";
    case S::MailFrom:
      return "mail_from";
    case S::RcptTo:
      return "rcpt_to";
    case S::Data:
      return "data";
    case S::Body:
      return "body";
    case S::EndOfData:
      return "end_of_data";
    case S::Draining:
      return "draining";
    case S::Quit:
      return "quit";
    case S::Closed:
      return "closed";
    case S::Failed:
      return "failed";
  }
  return "unknown";
}

}  // namespace mailcar
