// The message core's data: what every ingress produces and the relay consumes.
// Ingresses turn input into one Message + Submitter; policy judges; relay delivers.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "mailcar/memory_budget.hpp"

namespace mailcar {

inline constexpr size_t kMaxLineOctets = 998;  // RFC 5322 2.1.1, line end not counted

// A validated mailbox. `address` is an RFC 5321 addr-spec (local@domain) as given, domain
// possibly UTF-8; `name` is the display name, unencoded UTF-8 (encoding happens when built).
struct Mailbox {
  std::string address;
  std::string name;
  bool operator==(const Mailbox&) const = default;
};

struct Attachment {
  std::string filename;      // UTF-8
  std::string content_type;  // e.g. application/pdf; default application/octet-stream
  std::string data;          // decoded bytes
};

// A message described by its parts (the HTTP JSON path). The MIME builder turns it into wire
// form; see mailcar/mime.hpp.
struct MessageContent {
  Mailbox from;
  std::optional<Mailbox> reply_to;
  std::vector<Mailbox> to, cc, bcc;
  std::string subject;  // UTF-8, no CR/LF
  std::optional<std::string> body_text;
  std::optional<std::string> body_html;
  std::vector<Attachment> attachments;
};

// What the relay needs: envelope plus finished RFC 5322 bytes (CRLF line ends, no Bcc
// header, not dot-stuffed: the SMTP client stuffs while sending).
struct OutboundMessage {
  std::string id;  // Message-ID without angle brackets; [A-Za-z0-9.@_-] when mailcar made it
  std::string envelope_from;                // MAIL FROM; may be empty (null reverse-path)
  std::vector<std::string> envelope_rcpts;  // RCPT TO, in order, no duplicates
  std::string data;
  bool smtputf8 = false;   // an envelope address is non-ASCII: needs SMTPUTF8 upstream
  bool eight_bit = false;  // data holds 8-bit bytes: send BODY=8BITMIME when offered
  // The message's share of the in-flight budget (inflight_budget()), given back when the
  // message is destroyed after its delivery. Empty for messages nobody counted.
  MemoryLease memory;
};

enum class Ingress { Http, Smtp };

// Who submitted a message, as authenticated by the ingress.
struct Submitter {
  Ingress ingress = Ingress::Http;
  std::string role;      // role name from credentials or smtp.anonymous_role
  std::string identity;  // for logs: "api_key#2", "smtp:legacy-app", "anonymous"; never a secret
  std::string remote;    // peer address "ip:port"
};

inline const char* ingress_name(Ingress i) {
  return i == Ingress::Http ? "http" : "smtp";
}

}  // namespace mailcar
