// libFuzzer: the long-line fixer and the run-at-a-time encoders on arbitrary text. A 0x01 byte
// stands for 500 'x' so that lines over 998 octets are easy to reach.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "expand_runs.hpp"
#include "mailcar/scan.hpp"
#include "message/line_ends.hpp"
#include "message/long_lines.hpp"
#include "message/transfer_encoding.hpp"

namespace {

int hex_value(char c) {
  return c <= '9' ? c - '0' : c - 'A' + 10;
}

// Decodes our own quoted-printable (upper-case hex, "=\r\n" soft breaks).
std::string qp_decode(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '=') {
      out.push_back(s[i]);
    } else if (s.substr(i + 1, 2) == "\r\n") {
      i += 2;
    } else {
      out.push_back(static_cast<char>(hex_value(s[i + 1]) * 16 + hex_value(s[i + 2])));
      i += 2;
    }
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mailcar;
  std::string raw = expand_runs(data, size, 500, 1 << 20);
  std::string text = normalize_line_ends(raw);
  text::TextSummary sum = text::summarize_text(text);
  if (sum.bare_line_end) std::abort();
  if (text::summarize_text(raw).longest_line != sum.longest_line) std::abort();

  std::string qp = quoted_printable(text);
  if (qp_decode(qp) != text) std::abort();
  if (text::summarize_text(qp).longest_line > 76) std::abort();

  auto fitted = fit_long_lines(text);
  if (fitted && text::summarize_text(*fitted).longest_line > kMaxLineOctets) std::abort();
  if (fitted && sum.longest_line <= kMaxLineOctets && *fitted != text) std::abort();
  return 0;
}
