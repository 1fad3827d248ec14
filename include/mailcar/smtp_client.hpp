// The upstream SMTP client as a pure state machine: bytes from the server go in, commands to
// write and events come out. No sockets, no timers: SmtpRelay (src/relay/) owns the I/O,
// the TLS upgrade and the timeouts, and feeds this.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/config.hpp"
#include "mailcar/delivery.hpp"
#include "mailcar/message.hpp"

namespace mailcar {

struct SmtpClientOptions {
  std::string ehlo_name;  // our host name, sent in EHLO/HELO
  std::string username;   // empty: no AUTH
  std::string password;
  // OAuth2 (issue 9): AUTH XOAUTH2 / OAUTHBEARER with a bearer token the owner supplies on
  // NeedToken instead of the password. host/port go into the OAUTHBEARER message.
  std::optional<OAuth2Mechanism> oauth2;
  std::string oauth2_host;
  uint16_t oauth2_port = 0;
  // StartTls: STARTTLS is required, never downgraded. Tls: the connection is already implicit
  // TLS when the session starts. None: plain.
  Encryption encryption = Encryption::StartTls;
  size_t max_reply_line = 4096;        // one reply line, without its line end
  size_t max_reply_bytes = 64 * 1024;  // all lines of one (multi-line) reply
};

// One complete server reply.
struct SmtpReply {
  int code = 0;
  std::vector<std::string> lines;  // text after "NNN-" / "NNN ", one per line
  std::string text() const;        // lines joined with "\n"
};

// What EHLO told us.
struct SmtpExtensions {
  bool starttls = false;
  bool pipelining = false;
  bool eight_bit_mime = false;
  bool smtputf8 = false;
  bool auth = false;  // any AUTH keyword
  bool auth_plain = false;
  bool auth_login = false;
  bool auth_xoauth2 = false;
  bool auth_oauthbearer = false;
  uint64_t size = 0;                  // SIZE n; 0: no limit announced
  std::vector<std::string> keywords;  // the EHLO lines after the first, as sent (probes)

  static SmtpExtensions parse(const SmtpReply& ehlo_reply);
};

struct SmtpClientEvent {
  enum class Kind {
    NeedTlsHandshake,  // STARTTLS accepted: upgrade the stream, then call tls_established()
    Ready,             // idle: start_message() may be called
    MessageDone,       // the message from start_message() is finished: see `result`
    Failed,            // the session failed outside a message (greeting, TLS, AUTH, ...)
    Closed,            // the session ended without a message at stake (QUIT, 421 while idle)
    // OAuth2: AUTH needs a bearer token: answer with provide_token() or token_failed().
    // last_token() is the token the upstream just refused (empty the first time): a token
    // source renews when that one is still its cached token.
    NeedToken,
  };
  Kind kind = Kind::Ready;
  DeliveryResult result;  // MessageDone and Failed
  // MessageDone: no byte of the body was sent, so the upstream cannot have taken the message
  // and it may be retried on another connection.
  bool before_data = false;
};

struct SmtpClientOutput {
  std::string write;  // bytes to send, in order
  std::vector<SmtpClientEvent> events;
};

class SmtpClientSession {
 public:
  enum class State {
    Greeting,           // waiting for 220
    Ehlo,               // EHLO sent
    Helo,               // EHLO refused, HELO sent
    StartTls,           // STARTTLS sent
    TlsHandshake,       // 220 to STARTTLS received; the owner runs the TLS handshake
    EhloAfterTls,       // EHLO sent again inside TLS
    AuthPlain,          // AUTH PLAIN <initial response> sent
    AuthLogin,          // AUTH LOGIN sent, waiting for the user name prompt
    AuthLoginUser,      // user name sent, waiting for the password prompt
    AuthLoginPassword,  // password sent
    AuthToken,          // OAuth2: waiting for the owner's token (NeedToken)
    AuthOAuth,          // AUTH XOAUTH2/OAUTHBEARER <initial response> sent
    AuthOAuthError,     // 334 error challenge answered with an empty line; final reply next
    Ready,              // idle
    Rset,               // RSET sent before a message
    MailFrom,           // waiting for the MAIL reply
    RcptTo,             // waiting for RCPT replies
    Data,               // waiting for the DATA reply
    Body,               // 354 received; the owner pulls the body with pull_body()
    EndOfData,          // body and "." sent, waiting for the final reply
    Draining,           // message already decided; consuming pipelined replies
    Quit,               // QUIT sent
    Closed,             // finished normally; close the connection
    Failed,             // unusable; close the connection
  };

  explicit SmtpClientSession(SmtpClientOptions options);

  // Server bytes (plaintext; after TLS the decrypted stream).
  SmtpClientOutput feed(std::string_view bytes);
  // The same, appending to `out` (an owner may reuse one output's buffers: clear it between).
  void feed(std::string_view bytes, SmtpClientOutput& out);
  // The TLS upgrade requested by NeedTlsHandshake succeeded.
  SmtpClientOutput tls_established();
  // OAuth2, in state AuthToken: the token to AUTH with. `fresh`: just fetched from the
  // endpoint (a refusal is then final); otherwise a cached one (a refusal asks once more).
  SmtpClientOutput provide_token(std::string token, bool fresh);
  // OAuth2, in state AuthToken: no token could be had; `why` is the session's failure.
  SmtpClientOutput token_failed(DeliveryResult why);
  const std::string& last_token() const { return token_; }
  // Begin a transaction; only in state Ready. `message` must stay alive and unchanged until
  // its MessageDone event: the body is streamed from it, never copied whole.
  SmtpClientOutput start_message(const OutboundMessage& message);
  // Politely end an idle session (QUIT). In any other state the session just becomes Closed.
  SmtpClientOutput quit();
  // The connection broke (closed, timed out, TLS failure). `why` becomes the result of the
  // message in flight, or of the session when no message is.
  SmtpClientOutput connection_lost(DeliveryResult why);

  // In state Body: append up to about `max_bytes` of dot-stuffed body to `out` (the final
  // ".\r\n" included at the end). Returns false once everything was pulled.
  bool pull_body(std::string& out, size_t max_bytes);
  bool body_pending() const { return state_ == State::Body; }
  // In state Body: bytes of the message not pulled yet (before dot-stuffing); 0 otherwise.
  size_t body_bytes_left() const {
    return state_ == State::Body && message_ != nullptr ? message_->data.size() - body_pos_ : 0;
  }

  State state() const { return state_; }
  bool terminal() const { return state_ == State::Closed || state_ == State::Failed; }
  // A reply is outstanding (for the owner's command timeout).
  bool awaiting_reply() const { return !pending_.empty(); }
  // Complete replies parsed so far. The owner's command timeout is a deadline for a whole
  // reply: it starts again when this grows, never because part of a reply arrived.
  uint64_t replies_received() const { return replies_received_; }
  bool message_in_flight() const { return message_ != nullptr; }
  const SmtpExtensions& extensions() const { return extensions_; }
  // The SASL mechanism AUTH was started with ("PLAIN", "LOGIN"); empty when none was.
  std::string_view auth_mechanism() const { return auth_mechanism_; }

 private:
  enum class Command {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    AuthPlain,
    AuthLogin,
    AuthLoginUser,
    AuthLoginPassword,
    AuthOAuth,
    AuthOAuthCancel,
    Rset,
    Mail,
    Rcpt,
    Data,
    EndOfData,
    Quit
  };
  struct Queued {
    Command command;
    size_t rcpt;  // Rcpt: index into the message's envelope_rcpts
  };

  void handle_reply(const SmtpReply& reply, SmtpClientOutput& out);
  // Replies to the greeting, EHLO/HELO and STARTTLS; to AUTH PLAIN / LOGIN.
  void setup_reply(Command command, const SmtpReply& reply, SmtpClientOutput& out);
  void auth_reply(Command command, const SmtpReply& reply, SmtpClientOutput& out);
  void handle_transaction_reply(Command command, const SmtpReply& reply, SmtpClientOutput& out);
  void handle_unsolicited(const SmtpReply& reply, SmtpClientOutput& out);
  void send(Command command, std::string_view line, SmtpClientOutput& out);
  void send_next_unsent(SmtpClientOutput& out);
  void clear_unsent();
  void append_command(const Queued& q, std::string& out) const;
  void send_hello(Command command, SmtpClientOutput& out);
  void after_hello(SmtpClientOutput& out);
  void start_auth(SmtpClientOutput& out);
  void start_oauth2(SmtpClientOutput& out);
  void oauth2_reply(Command command, const SmtpReply& reply, SmtpClientOutput& out);
  void enter_ready(SmtpClientOutput& out);
  void finish_message(DeliveryResult&& result, SmtpClientOutput& out);
  void after_message(SmtpClientOutput& out);
  void fail(DeliveryResult result, SmtpClientOutput& out);
  size_t parse_input(std::string_view input, SmtpClientOutput& out);

  SmtpClientOptions options_;
  State state_ = State::Greeting;
  SmtpExtensions extensions_;
  bool tls_done_ = false;
  bool need_rset_ = false;
  // OAuth2.
  std::string token_;
  bool token_fresh_ = false;
  bool auth_retried_ = false;
  std::string_view auth_mechanism_;  // a literal, set when AUTH starts

  // Reply parsing.
  std::string input_;
  SmtpReply partial_;         // its `lines` keep their strings for the next reply
  size_t partial_lines_ = 0;  // lines of partial_ in use
  size_t partial_bytes_ = 0;
  bool have_partial_ = false;
  bool discard_input_ = false;  // bytes after the 220 to STARTTLS are never interpreted
  uint64_t replies_received_ = 0;

  std::deque<Command> pending_;  // commands sent, replies not yet read, in order
  // Transaction commands not sent yet (all but the first held back without PIPELINING).
  std::vector<Queued> unsent_;
  size_t unsent_next_ = 0;

  // The transaction.
  const OutboundMessage* message_ = nullptr;
  size_t next_rcpt_reply_ = 0;
  std::vector<std::string> accepted_;
  std::vector<RecipientOutcome> rejected_;
  size_t body_pos_ = 0;
  bool body_at_line_start_ = true;
};

const char* smtp_client_state_name(SmtpClientSession::State state);

// SASL initial responses, base64-encoded (the part after "AUTH MECH ").
// XOAUTH2 (Google, Microsoft): "user=" U "\x01auth=Bearer " T "\x01\x01".
std::string xoauth2_initial_response(std::string_view user, std::string_view token);
// OAUTHBEARER (RFC 7628): "n,a=" U ",\x01host=" H "\x01port=" P "\x01auth=Bearer " T
// "\x01\x01"; ',' and '=' in U are escaped as =2C and =3D (RFC 5801 saslname).
std::string oauthbearer_initial_response(std::string_view user, std::string_view host,
                                         uint16_t port, std::string_view token);

}  // namespace mailcar
