// DKIM signing (RFC 6376, SPEC §10.2): rsa-sha256, c=relaxed/relaxed, t=, never l=.
//
// The canonicalizers and the header selection are pure functions over the message bytes (CRLF
// line ends, as the normalizer and the MIME builder leave them); sign() adds the two hashes and
// the RSA operation. Nothing here does I/O or logs.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/crypto.hpp"
#include "mailcar/result.hpp"

namespace mailcar::dkim {

// A message cut at its first empty line. Each field is as it stands in the message: name,
// colon and value with any folding, without the CRLF that ends it. Without an empty line the
// whole message is header and the body is empty.
struct SplitMessage {
  std::vector<std::string_view> fields;
  std::string_view body;
};
SplitMessage split_message(std::string_view message);

// The name of a field (up to its colon, trailing WSP removed); the whole field when it has no
// colon.
std::string_view field_name(std::string_view field);

// RFC 6376 §3.4.2 "relaxed" header canonicalization of one field: lower-case name, unfolded
// value, WSP runs as one SP, no WSP around the colon or at the ends. Ends with CRLF.
std::string relaxed_header(std::string_view field);

// RFC 6376 §3.4.4 "relaxed" body canonicalization: no WSP at the end of a line, WSP runs as one
// SP, no empty lines at the end, CRLF after a last line that lacks one; empty stays empty.
std::string relaxed_body(std::string_view body);

// The fields signed by default, in h= order (SPEC §10.2).
const std::vector<std::string>& default_signed_fields();

// The h= list for a message: each default field once per instance present (RFC 6376 §5.4.2:
// instances are taken from the bottom up), From once more so that a From added later breaks
// the signature.
std::vector<std::string> signed_field_list(const SplitMessage& message);

// The relaxed canonical form of the fields `h` selects, in h= order (RFC 6376 §5.4.2): the
// n-th mention of a name takes the n-th instance counted from the bottom; a mention without an
// instance contributes nothing.
std::string canonical_signed_fields(const SplitMessage& message, const std::vector<std::string>& h);

struct SignParams {
  std::string domain;     // d=
  std::string selector;   // s=
  int64_t timestamp = 0;  // t=, seconds since the epoch
};

// The DKIM-Signature field (folded, ending CRLF) for `message`, to be put on top of it.
Result<std::string> sign(std::string_view message, const SignParams& params, crypto::RsaKey& key);

}  // namespace mailcar::dkim
