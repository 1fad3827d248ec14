// Private helpers shared by the MIME builder and the normalizer: choosing and writing a
// text part's transfer encoding. Pure functions.
#pragma once

#include <string>
#include <string_view>

#include "mailcar/message.hpp"
#include "mailcar/scan.hpp"

namespace mailcar {

enum class TextEncoding { SevenBit, QuotedPrintable, Base64 };

// For CRLF text of `size` bytes summarized by `sum`: 7bit when it is ASCII without NUL and
// every line fits 998 octets; otherwise base64 when more than a quarter of the bytes are
// >= 0x80, else quoted-printable.
TextEncoding choose_text_encoding(const text::TextSummary& sum, size_t size);

// Quoted-printable (RFC 2045 6.7) of CRLF text: CRLF pairs stay hard line breaks, every other
// byte outside 33..126 (and '=', and a space or tab ending a line) is =XX, soft breaks keep
// lines <= 76. Written a run at a time.
std::string quoted_printable(std::string_view s);
void append_quoted_printable(std::string& out, std::string_view s);

}  // namespace mailcar
