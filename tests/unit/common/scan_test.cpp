// The block-at-a-time scanners against one-byte-at-a-time reference versions, on random input
// rich in the bytes they decide on, at every length and offset (so every block split is hit).
#include "mailcar/scan.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>

namespace mailcar::text {
namespace {

TextSummary reference_summary(std::string_view s) {
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

// Random text: mostly letters, with CR, LF, CRLF, '=', NUL, space, tab, DEL and high bytes.
std::string random_text(std::mt19937& rng, size_t n) {
  static const char kPool[] = "ab=\r\n\t \x7f\x80\xff.";
  std::string s;
  std::uniform_int_distribution<int> pick(0, 40);
  for (size_t i = 0; i < n; ++i) {
    int k = pick(rng);
    if (k < static_cast<int>(sizeof kPool) - 1) {
      s.push_back(kPool[k]);
    } else if (k == 39) {
      s.push_back('\0');
    } else if (k == 40) {
      s += "\r\n";
    } else {
      s.push_back(static_cast<char>('c' + k % 20));
    }
  }
  return s;
}

void expect_same(const TextSummary& got, const TextSummary& want, std::string_view s) {
  EXPECT_EQ(got.longest_line, want.longest_line) << testing::PrintToString(std::string(s));
  EXPECT_EQ(got.high_bytes, want.high_bytes);
  EXPECT_EQ(got.nul, want.nul);
  EXPECT_EQ(got.bare_line_end, want.bare_line_end) << testing::PrintToString(std::string(s));
}

TEST(Scan, SummaryMatchesReferenceOnRandomTextAtEveryOffset) {
  std::mt19937 rng(12);
  for (int round = 0; round < 300; ++round) {
    std::string s = random_text(rng, round % 97);
    for (size_t from = 0; from <= s.size(); ++from) {
      std::string_view v = std::string_view(s).substr(from);
      expect_same(summarize_text(v), reference_summary(v), v);
    }
  }
}

TEST(Scan, SummaryOfLongLinesAndSplitCrlf) {
  std::string s = std::string(999, 'x') + "\r\n" + std::string(20, 'y') + "\n" + "z\r";
  TextSummary sum = summarize_text(s);
  EXPECT_EQ(sum.longest_line, 999u);
  EXPECT_TRUE(sum.bare_line_end);
  // A CRLF across a 16-byte block edge is still one line end.
  for (size_t n = 0; n < 40; ++n) {
    std::string t = std::string(n, 'a') + "\r\n" + std::string(n + 1, 'b');
    TextSummary got = summarize_text(t);
    EXPECT_FALSE(got.bare_line_end) << n;
    EXPECT_EQ(got.longest_line, n + 1) << n;
  }
  EXPECT_EQ(summarize_text("").longest_line, 0u);
  EXPECT_FALSE(summarize_text("\r\n").bare_line_end);
  EXPECT_TRUE(summarize_text("\n\r").bare_line_end);
}

TEST(Scan, FindLineEndHighByteAndQpPrefixMatchReference) {
  std::mt19937 rng(34);
  for (int round = 0; round < 300; ++round) {
    std::string s = random_text(rng, round % 101);
    for (size_t from = 0; from <= s.size(); ++from) {
      std::string_view v = std::string_view(s).substr(from);
      size_t eol = v.find_first_of("\r\n");
      const char* want = eol == std::string_view::npos ? v.data() + v.size() : v.data() + eol;
      EXPECT_EQ(find_line_end(v.data(), v.data() + v.size()), want);
      bool high = false;
      size_t literal = v.size();
      for (size_t i = 0; i < v.size(); ++i) {
        auto c = static_cast<unsigned char>(v[i]);
        high = high || c >= 0x80;
        if (literal == v.size() && (c < 32 || c > 126 || c == '=')) literal = i;
      }
      EXPECT_EQ(has_high_byte(v), high);
      EXPECT_EQ(qp_literal_prefix(v), literal) << testing::PrintToString(std::string(v));
    }
  }
}

}  // namespace
}  // namespace mailcar::text
