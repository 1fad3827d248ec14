// The run-at-a-time writers (quoted-printable, line ends, dot-stuffing) against the simple
// byte-at-a-time versions they replaced, on random text at every offset.
#include "message/transfer_encoding.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>

#include "mailcar/mime.hpp"
#include "message/line_ends.hpp"

namespace mailcar {
namespace {

std::string reference_qp(std::string_view s) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  size_t col = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    auto c = static_cast<unsigned char>(s[i]);
    if (c == '\r' && i + 1 < s.size() && s[i + 1] == '\n') {
      out += "\r\n";
      col = 0;
      ++i;
      continue;
    }
    bool line_end = i + 1 == s.size() || (s[i + 1] == '\r' && i + 2 < s.size() && s[i + 2] == '\n');
    std::string piece;
    if (((c == ' ' || c == '\t') && !line_end) || (c >= 33 && c <= 126 && c != '=')) {
      piece.assign(1, static_cast<char>(c));
    } else {
      piece = {'=', kHex[c >> 4], kHex[c & 15]};
    }
    size_t limit = line_end ? 76 : 75;
    if (col + piece.size() > limit) {
      out += "=\r\n";
      col = 0;
    }
    out += piece;
    col += piece.size();
  }
  return out;
}

std::string reference_line_ends(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r' || s[i] == '\n') {
      out += "\r\n";
      if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::string reference_dot_stuff(std::string_view s) {
  std::string out;
  bool line_start = true;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    if (c == '\r' || c == '\n') {
      out += "\r\n";
      if (c == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
      line_start = true;
      continue;
    }
    if (line_start && c == '.') out.push_back('.');
    out.push_back(c);
    line_start = false;
  }
  if (!line_start) out += "\r\n";
  return out + ".\r\n";
}

// Text with long runs (so soft breaks happen, several in one run), spaces before line ends, '=',
// high bytes, dots.
std::string random_text(std::mt19937& rng, size_t n) {
  static const std::string kPool[] = {"a",
                                      "b",
                                      " ",
                                      "\t",
                                      "=",
                                      ".",
                                      "\r\n",
                                      "\r",
                                      "\n",
                                      "\xc3\xa9",
                                      "\x7f",
                                      std::string(1, '\0'),
                                      "xxxxxxxxxxxxxxxxxxxx",
                                      std::string(160, 'y')};  // two whole output lines
  std::uniform_int_distribution<size_t> pick(0, std::size(kPool) + 6);
  std::string s;
  while (s.size() < n) {
    size_t k = pick(rng);
    s += k < std::size(kPool) ? kPool[k] : std::string(1, static_cast<char>('c' + k));
  }
  return s;
}

TEST(TransferEncoding, WritersMatchReferenceOnRandomTextAtEveryOffset) {
  std::mt19937 rng(56);
  for (int round = 0; round < 200; ++round) {
    std::string s = random_text(rng, static_cast<size_t>(round) * 3);
    for (size_t from = 0; from <= s.size(); from += 1 + s.size() / 40) {
      std::string_view v = std::string_view(s).substr(from);
      ASSERT_EQ(quoted_printable(v), reference_qp(v)) << testing::PrintToString(std::string(v));
      ASSERT_EQ(normalize_line_ends(v), reference_line_ends(v));
      ASSERT_EQ(dot_stuff(v), reference_dot_stuff(v));
    }
  }
}

TEST(TransferEncoding, QuotedPrintableSoftBreaksAndTrailingSpace) {
  // 75 literal characters, then a soft break; a line of exactly 76 ends without one.
  std::string long_line(200, 'x');
  std::string qp = quoted_printable(long_line);
  EXPECT_EQ(qp.substr(0, 78), std::string(75, 'x') + "=\r\n");
  EXPECT_EQ(quoted_printable(std::string(76, 'x')), std::string(76, 'x'));
  EXPECT_EQ(quoted_printable("a \r\nb\t"), "a=20\r\nb=09");
  EXPECT_EQ(quoted_printable("=\xc3\xa9"), "=3D=C3=A9");
  for (size_t pos = qp.find("\r\n"); pos != std::string::npos; pos = qp.find("\r\n", pos + 2)) {
    EXPECT_LE(
        pos - (qp.rfind("\r\n", pos - 1) == std::string::npos ? 0 : qp.rfind("\r\n", pos - 1) + 2),
        76u);
  }
}

TEST(TransferEncoding, ChoiceFollowsTheSummary) {
  auto choose = [](std::string_view s) {
    return choose_text_encoding(text::summarize_text(s), s.size());
  };
  EXPECT_EQ(choose("plain\r\ntext\r\n"), TextEncoding::SevenBit);
  EXPECT_EQ(choose(std::string(998, 'x') + "\r\n"), TextEncoding::SevenBit);
  EXPECT_EQ(choose(std::string(999, 'x') + "\r\n"), TextEncoding::QuotedPrintable);
  EXPECT_EQ(choose(std::string("a\0b", 3)), TextEncoding::QuotedPrintable);
  EXPECT_EQ(choose("caf\xc3\xa9 au lait\r\n"), TextEncoding::QuotedPrintable);
  EXPECT_EQ(choose("\xd0\x9f\xd1\x80\xd0\xb8\r\n"), TextEncoding::Base64);
}

}  // namespace
}  // namespace mailcar
