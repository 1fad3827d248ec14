// The MIME builder: MessageContent (HTTP JSON path) -> RFC 5322 / MIME wire form, plus the
// helpers the SMTP client and ingress share (dot-stuffing, dates, message ids).
//
// Choices: text bodies are sent 7bit when they are pure ASCII with lines <= 998, otherwise
// quoted-printable (base64 when more than a quarter of the bytes are non-ASCII); attachments
// are always base64. So the body never holds raw 8-bit bytes; OutboundMessage::eight_bit is
// set only when a header holds a raw UTF-8 address (RFC 6532), which also sets smtputf8.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "mailcar/message.hpp"
#include "mailcar/result.hpp"

namespace mailcar {

struct BuildOptions {
  std::string message_id;  // without brackets; empty -> make_message_id(hostname)
  int64_t date_unix = 0;   // Date header; <= 0 -> the current time
  std::string hostname;    // for the generated Message-ID
  // The caller has validated every address with validate_address and holds the trimmed form:
  // build_message does not check them again (names and the rest still are).
  bool addresses_checked = false;
};

// Builds the wire form. Errors (CR/LF/NUL in a header field, invalid address, bad content
// type, invalid UTF-8, no recipient) name the field, e.g. "subject: contains CR or LF".
// No line is longer than 998 octets (RFC 5322 §2.1.1): header fields are folded at spaces to
// 78 where possible; names and subjects with a word longer than a line go as several RFC 2047
// encoded words; non-ASCII or long file names as RFC 2231 parameters (name*, filename*,
// continued). What still cannot fit (a content_type token or an address longer than a line)
// is an error: "attachments[0].content_type: too long for a header line ...".
// envelope_rcpts = to + cc + bcc in order, duplicates dropped (local part exact, domain
// case-insensitive); no Bcc header is written. smtputf8 is set when any address in the
// envelope or headers is non-ASCII.
Result<OutboundMessage> build_message(const MessageContent& content, const BuildOptions& options);

// "<random>.<unixtime>@<host>" without brackets; only [A-Za-z0-9.@_-] (the host name is
// sanitized; "localhost" when nothing is left).
std::string make_message_id(std::string_view hostname);
std::string make_message_id(std::string_view hostname, int64_t now_unix);

// RFC 5322 date in UTC: "Thu, 01 Jan 1970 00:00:00 +0000".
// The string of the last second asked for is kept (per thread): the messages of one second
// share it.
std::string format_rfc5322_date(int64_t unix_seconds);
// The same, appended to `out`.
void append_rfc5322_date(std::string& out, int64_t unix_seconds);

// SMTP DATA payload: every line starting with '.' gets another '.', bare CR and bare LF become
// CRLF (so no <LF>.<LF> can reach the server), a final CRLF is added when missing, and the
// terminator ".\r\n" is appended. Empty data gives ".\r\n".
std::string dot_stuff(std::string_view data);

// Header-encoding helpers (exposed for tests and for other header writers).
// A display name as it goes into an address header: atoms as they are, a quoted-string when
// ASCII specials need it, RFC 2047 B encoded words (each <= 75 chars, UTF-8 sequences never
// split) when non-ASCII. Precondition: no CR/LF/NUL.
std::string encode_display_name(std::string_view name);
// "name <addr>" or "addr" when the name is empty.
std::string format_mailbox(const Mailbox& mailbox);
// Folds "Name: value" at spaces (the one after the colon included) so lines stay <= 78 where
// possible; CRLF-terminated. A word longer than a line is left whole: callers that cannot
// rule that out check the result against 998.
std::string fold_header(std::string_view name, std::string_view value);

}  // namespace mailcar
