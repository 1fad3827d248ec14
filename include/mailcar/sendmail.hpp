// The sendmail command (SPEC §12): `mailcar sendmail [options] [rcpt...] < message`, also run
// as `sendmail` through a symbolic link. It submits the message from standard input to the
// local mailcar SMTP listener. The pure parts (arguments, framing of the input, recipient
// extraction, exit codes) are here; the blocking socket glue is in src/cli/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/config.hpp"
#include "mailcar/delivery.hpp"
#include "mailcar/message.hpp"
#include "mailcar/result.hpp"

namespace mailcar::sendmail {

// sysexits.h values, the only exit statuses of the command.
enum class Exit : int {
  Ok = 0,            // sent, or queued by mailcar
  Usage = 64,        // bad option or bad address on the command line
  DataError = 65,    // empty message, no header section, no sender, no recipient
  Unavailable = 69,  // the listener cannot be reached
  TempFail = 75,     // 4xx, or the connection broke / timed out after it was made
  NoPermission = 77  // 5xx: refused by policy
};

struct Options {
  bool extract_recipients = false;      // -t: To, Cc and Bcc of the header (Bcc then removed)
  bool ignore_dots = false;             // -i, -oi: a line "." does not end the input
  std::optional<std::string> sender;    // -f / -r, validated; "" for the null sender (-f '<>')
  std::string full_name;                // -F: display name of a From header we add
  std::vector<std::string> recipients;  // operands, validated addresses, in order
};

// sendmail's arguments (what follows `sendmail`), getopt style: flags may be grouped ("-ti"),
// option values attached or separate ("-fa@b", "-f a@b"), "--" ends the options. Operands
// may be address lists ("a@x, B <b@y>"). Ignored: -A -B -C -d -G -h -L -m -N -n -O -o<x>
// (but -oi) -p -R -s -U -v -V -X and -bm. Refused: other -b modes and -q (no queue here).
// The error text is for stderr; the exit status is Usage.
Result<Options> parse_arguments(const std::vector<std::string>& args);

// Collects standard input. Without ignore_dots a line holding only "." ends the message (the
// line itself is not part of it and nothing after it is read); otherwise only the end of the
// input does. Lines may end in LF or CRLF.
class MessageCollector {
 public:
  enum class Status { More, Done, TooLarge };
  MessageCollector(bool ignore_dots, size_t max_bytes);
  Status feed(std::string_view chunk);
  Status finish();  // end of input reached
  std::string take() { return std::move(data_); }

 private:
  bool ignore_dots_;
  size_t max_bytes_;
  std::string data_;
  size_t line_start_ = 0;  // where the line being collected begins in data_
};

// Turns the collected input into what is submitted: line ends become CRLF, a leading Unix
// "From " line is dropped, Bcc and Resent-Bcc fields are removed, a From field is added from
// -f and -F when the message has none. Envelope: -f, else the first From address; recipients:
// the operands plus, with -t, To, Cc and Bcc (groups and folded fields handled by
// parse_address_list), duplicates dropped. Date and Message-ID are left to mailcar's SMTP
// door, which adds them. Errors (exit status DataError): empty input, no header section (the
// first line is not a header field), an unparsable address field, no sender, no recipient.
Result<OutboundMessage> prepare_message(std::string raw, const Options& options);

// The exit status for a submission's outcome. `connected`: the TCP connection to the listener
// was made (a failure to connect is Unavailable, a break afterwards TempFail).
Exit exit_for(const DeliveryResult& result, bool connected);

// Where the listener is: MAILCAR_SMTP (host:port), else listen.smtp of `config_file` (or of
// MAILCAR_CONFIG, or of /etc/mailcar/mailcar.yaml) when it can be read, else
// MAILCAR_SMTP_LISTEN, else 127.0.0.1:2525. A wildcard listen address (0.0.0.0, ::) is reached
// through loopback. A configuration the caller cannot read is skipped, never an error: the
// daemon's configuration is often readable only by the daemon. `note` says where the
// address came from, for error messages.
struct Target {
  ListenAddress address;
  std::string note;
};
Result<Target> resolve_target(const std::string& config_file, EnvLookup env = process_env);

// The whole command: arguments, standard input, submission, messages on stderr.
// `config_file`: from `mailcar -c FILE sendmail ...`, else empty.
int sendmail_main(const std::vector<std::string>& args, const std::string& config_file);

// Recognizes a sendmail invocation: argv[0] named "sendmail", or `mailcar [-c FILE]
// sendmail ...`. Fills the arguments after "sendmail" and the -c file.
bool is_sendmail_invocation(int argc, char** argv, std::vector<std::string>& args,
                            std::string& config_file);

}  // namespace mailcar::sendmail

namespace mailcar {

// `mailcar --health-check`: GET /health on the HTTP listener of `config_file` (empty: the
// zero-file setup from the environment), 3 s timeout; 0 when it answers 200, else 1 with the
// reason on stderr.
int health_check_main(const std::string& config_file);

}  // namespace mailcar
