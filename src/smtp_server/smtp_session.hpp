// The server side of one ESMTP conversation (RFC 5321, 2920, 3207, 4954, 6531) as a pure state
// machine: bytes from the client go in, reply bytes and at most one event come out. No I/O, no
// timers, no clock of its own; the glue in smtp_server.cpp owns the socket and the timers.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/dsn.hpp"
#include "mailcar/normalize.hpp"
#include "mailcar/policy.hpp"

namespace mailcar::smtp {

// Looks up SMTP AUTH credentials. Implementations compare passwords in constant time.
class CredentialStore {
 public:
  virtual ~CredentialStore() = default;
  // The role of this user/password pair, nullopt when they do not match.
  virtual std::optional<std::string> authenticate(std::string_view user,
                                                  std::string_view password) const = 0;
};

struct SessionOptions {
  std::string hostname = "localhost";
  // Shared state (issue 11): rate windows live in Redis and are judged once, at the end of
  // DATA; MAIL/RCPT check only the rules (role, service, sender, recipient count).
  bool shared_windows = false;
  uint64_t max_message_bytes = 26'214'400;
  bool tls_available = false;  // STARTTLS configured
  bool implicit_tls = false;   // listen.smtps: TLS from the first byte (STARTTLS not offered)
  bool auth_in_clear = false;  // AUTH may be offered without TLS (loopback listener)
  // Offer the DSN extension (RFC 3461: RET, ENVID, NOTIFY, ORCPT): only in spool mode, where
  // the parameters are honoured. Without it they get 555 like any unknown parameter.
  bool dsn = false;
  std::optional<std::string> anonymous_role;
  std::string service;  // the service SMTP mail is relayed through (for policy checks)
  // Routing (issue 9): the service for (role, envelope sender); empty: always `service`.
  std::function<std::string(std::string_view role, std::string_view from)> route;
  size_t max_recipients = 1000;        // hard cap, whatever the role says
  size_t max_command_line = 512;       // RFC 5321 4.5.3.1.4, including CRLF
  size_t max_auth_line = 12'288;       // RFC 4954 4
  size_t max_data_line = 65'536;       // generous; RFC 5322 says 998
  size_t max_pending_input = 262'144;  // pipelined bytes held while a delivery is pending
  unsigned max_errors = 10;
  // Commands that do not move a message forward (NOOP, RSET, VRFY, HELP, EHLO/HELO, a repeated
  // RCPT, anything refused with 4xx/5xx) allowed between accepted messages; then 421 4.7.0.
  unsigned max_junk_commands = 100;
  unsigned max_auth_failures = 3;
  // Syntax check for envelope addresses; empty: the built-in basic check.
  std::function<bool(std::string_view)> validate_address;
  // Wall clock in ms for policy checks; empty: std::chrono::system_clock.
  std::function<uint64_t()> now_ms;
  // Asked before the DATA buffer is allocated or grown to `total` bytes (the memory budget
  // for message data in flight). false: no room now; the message is refused with 451 4.3.1
  // (at DATA when even the first buffer does not fit). Empty: always room.
  std::function<bool(uint64_t total)> reserve_data;
};

enum class SessionState {
  Greeting,           // greeting produced, not yet written: client must stay silent
  Command,            // reading commands
  AuthPlainResponse,  // 334 sent, waiting for the PLAIN response
  AuthLoginUser,      // 334 Username: sent
  AuthLoginPass,      // 334 Password: sent
  Data,               // reading message data
  DataDraining,       // message data over a limit: scanning for the end marker, not storing
  Chunk,              // BDAT (RFC 3030): reading the chunk's octets, exactly as announced
  AwaitingDelivery,   // end of data seen; waiting for delivery_finished()
  StartTlsPending,    // 220 sent for STARTTLS; waiting for tls_started()
  Closed,             // QUIT, limits or timeout: nothing more is read
};

// Which time limit the glue found broken; each has its own 421 4.4.2 text.
enum class Timeout {
  Idle,         // no complete command within limits.smtp_idle_timeout of the last reply
  CommandLine,  // a command line not completed within limits.smtp_command_timeout
  DataRate,     // message data slower than limits.smtp_min_data_rate allows
};

enum class SessionEvent {
  None,
  StartTls,  // write `reply`, then upgrade; feed nothing more from the current read
  Deliver,   // write `reply`, then deliver `submission` and call delivery_finished()
  Close,     // write `reply`, then close the connection
};

// One message as the client submitted it: dot-unstuffed, line ends made CRLF.
struct Submission {
  std::string envelope_from;  // empty for the null reverse-path <>
  std::vector<std::string> recipients;
  std::string data;
  bool smtputf8 = false;        // an envelope address is non-ASCII
  bool utf8_requested = false;  // MAIL FROM carried SMTPUTF8 (Received: with UTF8SMTP...)
  bool eight_bit = false;       // BODY=8BITMIME or 8-bit bytes in the data
  // DATA (not BDAT): what the reader saw of every byte, so normalization need not look again.
  std::optional<KnownText> known_text;
  // RET, ENVID and per recipient NOTIFY, ORCPT; dsn.recipients is parallel to `recipients`
  // (always filled, defaults where nothing was given). Empty unless options.dsn.
  DsnRequest dsn;
};

// A policy refusal at MAIL FROM (the whole message) or RCPT TO (one recipient), for the
// glue to log and count.
struct PolicyRefusal {
  PolicyDecision decision;
  bool whole_message = false;  // MAIL FROM: the transaction never starts
};

struct SessionOutput {
  std::string reply;  // bytes to write, in order
  SessionEvent event = SessionEvent::None;
  std::optional<Submission> submission;  // set with Deliver
  bool auth_failed = false;              // the reply holds a 535: the glue may delay it
  std::string auth_user_tried;           // with auth_failed: the user name (never the password)
  std::vector<PolicyRefusal> refusals;   // policy decisions behind refusing replies
  // Refusals by a limit of the door (552 over max_message_bytes, 530), for the glue to log
  // and count like policy refusals: what was refused and the limit.
  std::vector<std::string> limit_refusals;
};

class SmtpServerSession {
 public:
  // `credentials` and `policy` may be null (no AUTH possible / no policy checks); both must
  // outlive the session.
  SmtpServerSession(SessionOptions options, const CredentialStore* credentials,
                    const Policy* policy);

  // The 220 greeting. State stays Greeting until greeting_sent().
  SessionOutput start();
  void greeting_sent();

  SessionOutput feed(std::string_view bytes);
  // A configuration reload: later commands are judged by the new credentials and policy
  // (an authenticated role stays as it was).
  void set_backends(const CredentialStore* credentials, const Policy* policy) {
    credentials_ = credentials;
    policy_ = policy;
  }
  // TLS handshake done: forget everything learnt before it (RFC 3207 4.2).
  void tls_started();
  // The final reply to the end of data, e.g. (250, "2.0.0", "Ok: queued as <id>").
  SessionOutput delivery_finished(int code, std::string_view enhanced, std::string_view text);
  // A time limit ran out: 421 4.4.2 and Close.
  SessionOutput timeout(Timeout kind = Timeout::Idle);
  // Server stopping: 421 4.3.2 and Close.
  SessionOutput shutdown();

  SessionState state() const { return state_; }
  // A message is being received or delivered: shutdown should wait for it.
  bool busy() const;
  // MAIL FROM was accepted and the transaction has not ended (RSET, delivery, refusal).
  bool in_transaction() const { return in_transaction_; }
  // Part of a command (or AUTH response) line has arrived without its line end: the glue's
  // per-line deadline runs.
  bool line_pending() const;
  bool tls_active() const { return tls_active_; }
  bool authenticated() const { return !auth_user_.empty(); }
  const std::string& auth_user() const { return auth_user_; }
  const std::string& role() const { return role_; }  // empty when no role applies yet
  const std::string& helo() const { return helo_; }
  bool esmtp() const { return esmtp_; }

 private:
  enum class DataScan { LineStart, AfterDot, AfterDotCr, InLine, InLineCr };

  void run(SessionOutput& out);
  bool take_line(std::string_view& line, bool& too_long);
  void consume_data(SessionOutput& out);
  void finish_data(SessionOutput& out);
  const char* consume_data_run(const char* p, const char* end);
  void append_data(std::string_view bytes);
  void store_data(std::string_view bytes);
  bool make_room(size_t more);
  bool reserve_declared(uint64_t declared);
  bool join_blocks();
  void drop_data();
  void end_data_line(bool crlf);

  void command(std::string_view line, SessionOutput& out);
  void cmd_helo(std::string_view arg, bool extended, SessionOutput& out);
  void cmd_mail(std::string_view arg, SessionOutput& out);
  void cmd_rcpt(std::string_view arg, SessionOutput& out);
  void cmd_data(std::string_view arg, SessionOutput& out);
  void cmd_auth(std::string_view arg, SessionOutput& out);
  void cmd_starttls(std::string_view arg, SessionOutput& out);
  // CHUNKING (RFC 3030), in smtp_bdat.cpp.
  void cmd_bdat(std::string_view arg, SessionOutput& out);
  void start_chunks();
  void consume_chunk(SessionOutput& out);
  void append_chunk(std::string_view bytes);
  void end_chunk(SessionOutput& out);
  void auth_response(std::string_view line, SessionOutput& out);
  void auth_plain(std::string_view base64, SessionOutput& out);
  void auth_check(std::string_view user, std::string_view password, SessionOutput& out);

  void count_junk(bool junk, size_t reply_from, SessionOutput& out);
  void reply(SessionOutput& out, int code, std::string_view enhanced, std::string_view text);
  void error(SessionOutput& out, int code, std::string_view enhanced, std::string_view text);
  void close(SessionOutput& out, int code, std::string_view enhanced, std::string_view text);
  bool auth_offered() const;
  std::string too_big_text() const;
  std::string over_limit() const;
  bool address_ok(std::string_view address) const;
  std::optional<PolicyDecision> check_policy(const std::string& from, uint64_t recipients) const;
  void reset_transaction();
  const std::string& current_role() const;

  SessionOptions options_;
  const CredentialStore* credentials_;
  const Policy* policy_;

  SessionState state_ = SessionState::Greeting;
  std::string input_;  // client bytes; input_[pos_..] not yet consumed
  size_t pos_ = 0;
  bool discarding_line_ = false;  // inside an over-long line: skip to its LF

  std::string helo_;
  bool esmtp_ = false;
  bool tls_active_ = false;
  std::string auth_user_;
  std::string role_;
  std::string pending_login_user_;
  unsigned errors_ = 0;
  unsigned auth_failures_ = 0;
  unsigned junk_ = 0;          // junk commands since the last accepted message
  bool junk_command_ = false;  // the command just run is junk even though it succeeded

  bool in_transaction_ = false;
  Submission message_;
  bool smtputf8_param_ = false;

  DataScan scan_ = DataScan::LineStart;
  bool previous_line_crlf_ = true;
  size_t data_line_length_ = 0;
  bool data_too_big_ = false;
  bool data_line_too_long_ = false;
  KnownText data_seen_;                   // DATA: NUL, 8-bit bytes, a line over 998 octets so far
  mutable PolicyRequest policy_request_;  // check_policy's, its buffers reused
  // No memory for the message: 451 4.3.1 (budget spent) / 4.3.0 (allocation failed) at its end.
  bool data_no_budget_ = false;
  bool data_no_memory_ = false;
  uint64_t declared_size_ = 0;  // MAIL FROM SIZE=, 0 when not given
  // Message data past the declared buffer (message_.data), in blocks joined at the end.
  std::vector<std::string> blocks_;
  size_t blocks_capacity_ = 0;
  size_t data_bytes_ = 0;  // in message_.data and blocks_ together
  bool pending_overflow_ = false;
  // BDAT: octets of the current chunk still to read, whether it is the LAST one, whether this
  // transaction's data came by BDAT, and the refusal owed at the chunk's end (code 0: none).
  uint64_t chunk_remaining_ = 0;
  uint64_t chunk_size_ = 0;
  bool chunk_last_ = false;
  bool chunking_ = false;
  struct ChunkRefusal {
    int code = 0;
    std::string enhanced;
    std::string text;
  } chunk_refusal_;
};

}  // namespace mailcar::smtp
