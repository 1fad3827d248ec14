// Delivery status notifications (RFC 3464) and the DSN request parameters of RFC 3461.
//
// Lives in the message layer, not in the spool, because direct mode needs it too: after a
// 250 at end of DATA mailcar owns the message (RFC 5321 §6.1), so recipients the upstream
// refuses afterwards are reported with the same DSN. Pure functions, no I/O.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/message.hpp"
#include "mailcar/result.hpp"

namespace mailcar {

// RCPT TO ... NOTIFY= (RFC 3461 §4.1) as bits; 0 means "not given" (the MTA's default:
// failures are reported).
namespace dsn_notify {
inline constexpr uint8_t kSuccess = 1;
inline constexpr uint8_t kFailure = 2;
inline constexpr uint8_t kDelay = 4;
inline constexpr uint8_t kNever = 8;
}  // namespace dsn_notify

// MAIL FROM ... RET= (RFC 3461 §4.3).
enum class DsnRet : uint8_t { Unspecified, Full, Headers };

// What an SMTP client asked for with the DSN extension (RFC 3461), carried from the SMTP door
// to the delivery mode. Empty for the HTTP door.
struct DsnRecipientRequest {
  uint8_t notify = 0;  // dsn_notify bits; 0: NOTIFY not given
  std::string orcpt;   // ORCPT as "type;address" (xtext decoded); empty: not given
  bool operator==(const DsnRecipientRequest&) const = default;
};

struct DsnRequest {
  DsnRet ret = DsnRet::Unspecified;
  std::string envid;  // ENVID (xtext decoded); empty: not given
  // Parallel to the envelope recipients, or empty when no recipient gave NOTIFY or ORCPT.
  std::vector<DsnRecipientRequest> recipients;
  // The request of recipient `index` (defaults when none was given).
  DsnRecipientRequest recipient(size_t index) const {
    return index < recipients.size() ? recipients[index] : DsnRecipientRequest{};
  }
};

// RFC 3461 §4 xtext: '!'..'~' except '+' and '=', and "+XX" (upper-case hex) for any byte.
// nullopt: not xtext.
std::optional<std::string> xtext_decode(std::string_view xtext);

// The DSN parameters of MAIL FROM (RET, ENVID) and RCPT TO (NOTIFY, ORCPT). `key` is
// compared case-insensitively. NotDsn: not one of them (the caller judges it). Bad: wrong
// syntax, given twice, or too long (RFC 3461: ENVID 100, ORCPT 500 characters); decoded
// values must be printable ASCII.
enum class DsnParamResult : uint8_t { NotDsn, Ok, Bad };
DsnParamResult parse_dsn_mail_param(std::string_view key, std::string_view value,
                                    DsnRequest& request);
DsnParamResult parse_dsn_rcpt_param(std::string_view key, std::string_view value,
                                    DsnRecipientRequest& request);

// The header block of a message (CRLF lines, up to and including the CRLF before the empty
// line; all of it when it has no body): what a DSN without RET=FULL quotes.
std::string_view dsn_header_block(std::string_view message);

// Whether a DSN for a recipient that failed for good is wanted: never for the null sender
// (a DSN is never bounced), never for NOTIFY=NEVER, never when NOTIFY lists other events
// only; otherwise yes.
bool dsn_wanted_for_failure(std::string_view envelope_from, uint8_t notify);

struct DsnFailedRecipient {
  std::string address;     // Final-Recipient (the RCPT TO address)
  std::string orcpt;       // ORCPT as "type;address" (xtext decoded), empty when not given
  int smtp_code = 0;       // 0: no SMTP reply (connection trouble, expiry)
  std::string smtp_reply;  // as received; lines joined with "\n"; may be empty
  std::string status;      // "5.1.1"; empty: taken from the reply, else derived from the code
  std::string remote_mta;  // upstream host name; empty: no Remote-MTA field
};

struct DsnInput {
  std::string reporting_mta;  // our host name (Reporting-MTA: dns; ...)
  Mailbox from;               // header From of the report (e.g. MAILER-DAEMON@host)
  std::string to;             // where the report goes (envelope sender or spool.bounces)
  std::string envid;          // ENVID of the original, empty when not given
  int64_t arrival_unix = 0;   // when mailcar accepted the original
  int64_t now_unix = 0;       // Date of the report
  DsnRet ret = DsnRet::Unspecified;
  std::string_view original;                   // the original message as sent upstream (CRLF lines)
  std::vector<DsnFailedRecipient> recipients;  // at least one
  std::string message_id;                      // without brackets; empty: a new one
  std::string boundary;                        // empty: a random one
  std::string note;  // optional extra sentence in the human-readable part (ASCII)
};

// Builds the report as an OutboundMessage from the null sender "<>" to `to`:
//   multipart/report; report-type=delivery-status
//     1. text/plain: what failed, one line per recipient with its reply
//     2. message/delivery-status: per-message fields (Reporting-MTA, Original-Envelope-Id,
//        Arrival-Date), then per recipient Original-Recipient, Final-Recipient,
//        Action: failed, Status, Remote-MTA, Diagnostic-Code: smtp; <reply>
//     3. text/rfc822-headers with the original's header block, or message/rfc822 with the
//        whole original when RET=FULL
// Reply text is put on one line (CR/LF and other controls become spaces). smtputf8 and
// eight_bit are set when the result holds non-ASCII bytes (a UTF-8 address or original).
// Errors: no recipient, empty `to`.
Result<OutboundMessage> build_dsn(const DsnInput& input);

// The RFC 3463 status for a failed recipient: the enhanced code at the start of the reply
// when it has one ("550 5.1.1 ..." or "5.1.1 ..."), else 5.0.0 for 5xx, 4.0.0 for 4xx,
// 4.4.7 (delivery time expired) for no reply at all.
std::string dsn_status_for(int smtp_code, std::string_view smtp_reply);

}  // namespace mailcar
