// Byte scanning a block at a time, for the paths every message byte takes (body
// classification, line-end normalization, SMTP DATA, quoted-printable). SSE2 on x86-64, a
// plain byte loop elsewhere; each function has a simple reference twin in the unit tests that
// it must agree with on random input.
#pragma once

#include <cstddef>
#include <string_view>

namespace mailcar::text {

// What one pass over a text tells: enough to choose a transfer encoding and to know whether
// line ends need rewriting. A line ends at CRLF, at a bare CR or at a bare LF; its length
// does not count the line end.
struct TextSummary {
  size_t longest_line = 0;     // octets
  size_t high_bytes = 0;       // bytes >= 0x80
  bool nul = false;            // holds a NUL byte
  bool bare_line_end = false;  // holds a CR not followed by LF, or an LF not after CR
};
TextSummary summarize_text(std::string_view s);

// First CR or LF in [p, end), or end.
const char* find_line_end(const char* p, const char* end);

// SMTP DATA in bulk: the end of the longest run of whole lines at the start of [p, end) that
// need no decision: each ends in CRLF and holds no other CR or LF, the byte after each CRLF
// is there and is not '.', and no line is longer than max_line (the first one has
// first_line_length bytes before p already). Looks at 64 bytes at a time and may stop earlier
// than that run ends (never later); returns p when it finds none.
const char* plain_crlf_lines(const char* p, const char* end, size_t first_line_length,
                             size_t max_line);

// Dot-stuffing in bulk: the first '.' in [p, end) that directly follows an LF, or end. The
// byte before p is not looked at.
const char* find_dot_after_lf(const char* p, const char* end);

// Whether any byte is >= 0x80.
bool has_high_byte(std::string_view s);

// NUL bytes and bytes >= 0x80: what a reader that already knows the line structure of a
// text (the SMTP DATA reader) still needs to summarize it.
struct ByteFlags {
  bool high = false;
  bool nul = false;
};
ByteFlags byte_flags(std::string_view s);

// Length of the longest prefix of `s` made of bytes 32..126 other than '=': what
// quoted-printable writes as it is (a space at a line end is the caller's business).
size_t qp_literal_prefix(std::string_view s);

}  // namespace mailcar::text
