// Mailbox address syntax: RFC 5321 addr-spec validation (with RFC 6531 UTF-8) and RFC 5322
// address-list parsing of header values. Pure functions, no I/O.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "mailcar/message.hpp"
#include "mailcar/result.hpp"

namespace mailcar {

// Validates an RFC 5321 mailbox (local@domain, no angle brackets). Local part: dot-atom or
// quoted-string, <= 64 octets. Domain: LDH labels (UTF-8 U-labels allowed, <= 63 octets each,
// <= 255 in all) or an address literal [1.2.3.4] / [IPv6:...]. Whole address <= 254 octets,
// valid UTF-8, no control characters, no space outside quotes. Returns the address with
// surrounding SP/TAB trimmed and nothing else changed; the error says what is wrong.
Result<std::string> validate_address(std::string_view addr);
// The same without a copy: the trimmed address is a view into `addr`.
Result<std::string_view> check_address(std::string_view addr);

bool address_is_ascii(std::string_view addr);
// Parts of a validated address, split at the last '@' (a quoted local part may hold '@').
// Without '@': domain is empty, local is the whole input.
std::string_view address_domain(std::string_view addr);
std::string_view address_local(std::string_view addr);

// Parses an RFC 5322 address-list header value (From, To, Cc, Reply-To, ...): display names
// (atoms, quoted strings, RFC 2047 encoded words kept as they are), comments, angle-addr,
// bare addr-spec, groups (their members are returned; "undisclosed-recipients:;" gives
// none), empty list elements. A comment after a bare addr-spec becomes its name. Folding
// (CRLF + WSP) is accepted; any other CR, LF or NUL is an error. Every address is checked
// with validate_address. An input holding no list element at all is an error.
Result<std::vector<Mailbox>> parse_address_list(std::string_view header_value);

// True when `s` is valid UTF-8 (no overlongs, no surrogates, <= U+10FFFF).
bool is_valid_utf8(std::string_view s);

}  // namespace mailcar
