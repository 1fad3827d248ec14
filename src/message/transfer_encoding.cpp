#include "message/transfer_encoding.hpp"

#include <algorithm>
#include <cstring>

namespace mailcar {
namespace {

constexpr size_t kQpLineChars = 76;

void append_hex(std::string& out, unsigned char c) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  char piece[3] = {'=', kHex[c >> 4], kHex[c & 15]};
  out.append(piece, 3);
}

// Copies a run of literal bytes in pieces that fill each output line to 75 characters, a
// soft break ("=" CRLF) before each further piece; the output is sized once for the run.
// Whole lines are copied at a fixed size, which the compiler turns into a few moves.
// `col` is the output column before and after. Returns run.size().
size_t copy_literal_run(std::string& out, std::string_view run, size_t& col) {
  constexpr size_t kFill = kQpLineChars - 1;  // room for the soft break's '='
  size_t at = out.size();
  out.resize(at + run.size() + (run.size() / kFill + 1) * 3);  // at most: trimmed below
  char* o = out.data() + at;
  const char* p = run.data();
  size_t left = run.size();
  size_t n = std::min(kFill - col, left);  // the rest of the current line
  std::memcpy(o, p, n);
  o += n;
  p += n;
  left -= n;
  col += n;
  for (; left >= kFill; left -= kFill, p += kFill, o += 3 + kFill) {  // col is kFill here
    std::memcpy(o, "=\r\n", 3);
    std::memcpy(o + 3, p, kFill);
  }
  if (left > 0) {
    std::memcpy(o, "=\r\n", 3);
    std::memcpy(o + 3, p, left);
    o += 3 + left;
    col = left;
  }
  out.resize(static_cast<size_t>(o - out.data()));
  return run.size();
}

bool crlf_at(std::string_view s, size_t i) {
  return i + 1 < s.size() && s[i] == '\r' && s[i + 1] == '\n';
}

// One byte that needs a decision: an escape, or the last byte of a line (a space or tab
// there is escaped; any byte there may use the 76th column, no '=' follows it).
void qp_byte(std::string& out, unsigned char c, bool last, size_t& col) {
  bool literal = (c >= 33 && c <= 126 && c != '=') || (!last && (c == ' ' || c == '\t'));
  size_t width = literal ? 1 : 3;
  // Leave room for the soft break's '=' unless this byte ends the line.
  if (col + width > (last ? kQpLineChars : kQpLineChars - 1)) {
    out.append("=\r\n", 3);
    col = 0;
  }
  if (literal) {
    out.push_back(static_cast<char>(c));
  } else {
    append_hex(out, c);
  }
  col += width;
}

}  // namespace

TextEncoding choose_text_encoding(const text::TextSummary& sum, size_t size) {
  if (!sum.nul && sum.high_bytes == 0 && sum.longest_line <= kMaxLineOctets) {
    return TextEncoding::SevenBit;
  }
  return sum.high_bytes * 4 > size ? TextEncoding::Base64 : TextEncoding::QuotedPrintable;
}

// One pass, no line split first: the literal run ahead is measured, and it stops at the next
// CR anyway. A run that ends its line leaves its last byte to qp_byte().
void append_quoted_printable(std::string& out, std::string_view s) {
  size_t col = 0;
  size_t i = 0;
  while (i < s.size()) {
    size_t run = text::qp_literal_prefix(s.substr(i));
    if (run > 0) {
      size_t end = i + run;
      bool line_ends = end == s.size() || crlf_at(s, end);
      i += copy_literal_run(out, s.substr(i, line_ends ? run - 1 : run), col);
      if (!line_ends) continue;  // s[i] needs a decision: the next round's run is empty
    }
    if (crlf_at(s, i)) {
      out.append("\r\n", 2);
      col = 0;
      i += 2;
      continue;
    }
    bool last = i + 1 == s.size() || crlf_at(s, i + 1);
    qp_byte(out, static_cast<unsigned char>(s[i]), last, col);
    ++i;
  }
}

std::string quoted_printable(std::string_view s) {
  std::string out;
  out.reserve(s.size() + s.size() / 16 + 16);
  append_quoted_printable(out, s);
  return out;
}

}  // namespace mailcar
