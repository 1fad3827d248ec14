// Byte-at-a-time references for the block scanners of mailcar/scan.hpp, shared by their unit
// tests and their fuzz target: slow and obviously right.
#pragma once

#include <algorithm>
#include <cstddef>
#include <string_view>

#include "mailcar/scan.hpp"

namespace mailcar::text::reference {

inline TextSummary summary(std::string_view s) {
  TextSummary sum;
  size_t line = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) ++sum.high_bytes;
    if (c == 0) sum.nul = true;
    bool crlf = c == '\r' && i + 1 < s.size() && s[i + 1] == '\n';
    if (c == '\r' && !crlf) sum.bare_line_end = true;
    if (c == '\n' && (i == 0 || s[i - 1] != '\r')) sum.bare_line_end = true;
    if (c == '\r' || c == '\n') {
      sum.longest_line = std::max(sum.longest_line, line);
      line = 0;
      if (crlf) ++i;
    } else {
      ++line;
    }
  }
  sum.longest_line = std::max(sum.longest_line, line);
  return sum;
}

// The longest run of whole plain CRLF lines at the start of s (see plain_crlf_lines): none
// longer than max_line (the first has first_line_length bytes before s), each followed by a
// byte that is not '.'.
inline size_t plain_run(std::string_view s, size_t first_line_length, size_t max_line) {
  size_t good = 0, pos = 0, line = first_line_length;
  while (pos < s.size()) {
    size_t eol = s.find_first_of("\r\n", pos);
    if (eol == std::string_view::npos) break;
    line += eol - pos;
    if (line > max_line || s.substr(eol, 2) != "\r\n" || eol + 2 >= s.size() || s[eol + 2] == '.') {
      break;
    }
    pos = good = eol + 2;
    line = 0;
  }
  return good;
}

// Length of the longest prefix of bytes 32..126 other than '='.
inline size_t qp_literal(std::string_view s) {
  size_t n = 0;
  while (n < s.size()) {
    auto c = static_cast<unsigned char>(s[n]);
    if (c < 32 || c > 126 || c == '=') break;
    ++n;
  }
  return n;
}

}  // namespace mailcar::text::reference
