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
// `col` is the output column before and after. Returns run.size().
size_t copy_literal_run(std::string& out, std::string_view run, size_t& col) {
  constexpr size_t kFill = kQpLineChars - 1;  // room for the soft break's '='
  size_t at = out.size();
  out.resize(at + run.size() + (run.size() / kFill + 1) * 3);  // at most: trimmed below
  char* o = out.data() + at;
  const char* p = run.data();
  size_t left = run.size();
  while (left > 0) {
    if (col == kFill) {
      std::memcpy(o, "=\r\n", 3);
      o += 3;
      col = 0;
    }
    size_t n = std::min(kFill - col, left);
    std::memcpy(o, p, n);
    o += n;
    p += n;
    col += n;
    left -= n;
  }
  out.resize(static_cast<size_t>(o - out.data()));
  return run.size();
}

// One line of CRLF text (without its CRLF). The literal run ahead is measured once and
// copied in pieces that fill each output line; only the bytes that need a decision (escapes,
// the last byte, whose limit differs) go one at a time.
void qp_line(std::string& out, std::string_view line) {
  size_t col = 0;
  size_t i = 0;
  size_t literal_end = 0;  // line[i, literal_end) is known literal (never the last byte)
  while (i < line.size()) {
    if (i >= literal_end && i + 1 < line.size()) {
      literal_end = i + text::qp_literal_prefix(line.substr(i, line.size() - 1 - i));
    }
    if (i < literal_end) {
      i = copy_literal_run(out, line.substr(i, literal_end - i), col) + i;
      continue;
    }
    auto c = static_cast<unsigned char>(line[i]);
    bool last = i + 1 == line.size();
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
    ++i;
  }
}

}  // namespace

TextEncoding choose_text_encoding(const text::TextSummary& sum, size_t size) {
  if (!sum.nul && sum.high_bytes == 0 && sum.longest_line <= kMaxLineOctets) {
    return TextEncoding::SevenBit;
  }
  return sum.high_bytes * 4 > size ? TextEncoding::Base64 : TextEncoding::QuotedPrintable;
}

void append_quoted_printable(std::string& out, std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    size_t crlf = s.find("\r\n", pos);
    size_t line_end = crlf == std::string_view::npos ? s.size() : crlf;
    qp_line(out, s.substr(pos, line_end - pos));
    if (crlf == std::string_view::npos) break;
    out.append("\r\n", 2);
    pos = crlf + 2;
  }
}

std::string quoted_printable(std::string_view s) {
  std::string out;
  out.reserve(s.size() + s.size() / 16 + 16);
  append_quoted_printable(out, s);
  return out;
}

}  // namespace mailcar
