// Normalization of a message submitted over SMTP (SPEC 5): the bytes after DATA, already
// dot-unstuffed, become the wire form that is relayed. Pure function, no I/O.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/message.hpp"
#include "mailcar/result.hpp"

namespace mailcar {

// What the caller already knows of the text from reading every byte of it (the SMTP DATA
// reader): every line end is CRLF, and these. Normalization then does not read it once more.
struct KnownText {
  bool nul = false;        // holds a NUL byte
  bool high = false;       // holds a byte >= 0x80
  bool long_line = false;  // a line is over kMaxLineOctets
};

struct NormalizeInput {
  std::string_view raw;                 // CRLF, bare LF or bare CR line ends
  std::optional<Mailbox> default_from;  // written as From when the message has none
  std::string received_header;          // full "Received: ..." field (make_received_header)
  std::string_view hostname;            // for a generated Message-ID (outlives the call)
  int64_t now_unix = 0;                 // for a generated Date / Message-ID
  std::optional<KnownText> known;       // set only when it is true of the text
};

struct NormalizedMessage {
  std::string data;           // CRLF everywhere, Received first, no Bcc / Resent-Bcc
  std::vector<Mailbox> from;  // addresses of the From header (given or added)
  std::string message_id;     // existing or new, without angle brackets
  bool eight_bit = false;     // data holds bytes >= 0x80
  // The first Idempotency-Key field's value, trimmed (SPEC §10.3); every such field is removed
  // from `data` (it is mailcar's, not the recipient's).
  std::optional<std::string> idempotency_key;
};

// Line ends become CRLF; the header block (up to the first empty line, or up to the first
// line that is not a header field, or the whole message) is parsed; Bcc, Resent-Bcc and
// Idempotency-Key fields are removed; Date, Message-ID and From are added when missing; the
// Received field is prepended. Errors: NUL byte, a header line over 998 octets, more than one From
// field, an unparsable From, no From and no default_from.
Result<NormalizedMessage> normalize_message(const NormalizeInput& input);
// The same for a message the caller gives up (input.raw is ignored): when its line ends are
// all CRLF already, the result is made in `raw`'s own buffer, so a large message is not
// copied (the header block is rewritten in place; spare capacity avoids a reallocation).
Result<NormalizedMessage> normalize_message(const NormalizeInput& input, std::string&& raw);

// "Received: from <helo> ([<peer_ip>])\r\n\tby <hostname> (mailcar) with <protocol> id <id>;
// \r\n\t<date>\r\n". Client-supplied text (helo) is reduced to safe printable characters.
std::string make_received_header(std::string_view helo, std::string_view peer_ip,
                                 std::string_view hostname, std::string_view protocol,
                                 std::string_view id, int64_t now_unix);

}  // namespace mailcar
