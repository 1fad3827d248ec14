// The block-at-a-time scanners against one-byte-at-a-time reference versions, on random input
// rich in the bytes they decide on, at every length and offset (so every block split is hit).
#include "mailcar/scan.hpp"

#include "common/scan_kernels.hpp"
#include "support/scan_reference.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <string>
#include <vector>

namespace mailcar::text {
namespace {

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

// Long plain runs (what the block scanners skip in bulk) with a byte of random_text() about
// every 90 bytes, so blocks with and without something to decide on meet at every offset.
std::string sparse_text(std::mt19937& rng, size_t n) {
  std::string specials = random_text(rng, n / 90 + 1);
  std::string s;
  std::uniform_int_distribution<size_t> at(0, 89);
  std::uniform_int_distribution<int> letter('A', 'z');
  for (size_t i = 0; i < n; ++i) {
    bool special = at(rng) == 0 && !specials.empty();
    if (special) {
      s.push_back(specials.back());
      specials.pop_back();
    } else {
      char c = static_cast<char>(letter(rng));
      s.push_back(c == '=' ? ' ' : c);
    }
  }
  return s;
}

// Every test runs on each instruction set's block loops: SSE2, then AVX2 where the CPU has it.
class Scan : public testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    kernels::allow_avx2(GetParam());
    if (GetParam() && !kernels::have_avx2()) GTEST_SKIP() << "this CPU has no AVX2";
  }
  void TearDown() override { kernels::allow_avx2(true); }
};

INSTANTIATE_TEST_SUITE_P(Isa, Scan, testing::Bool(), [](const testing::TestParamInfo<bool>& i) {
  return i.param ? "Avx2" : "Sse2";
});

void expect_same(const TextSummary& got, const TextSummary& want, std::string_view s) {
  EXPECT_EQ(got.longest_line, want.longest_line) << testing::PrintToString(std::string(s));
  EXPECT_EQ(got.high_bytes, want.high_bytes);
  EXPECT_EQ(got.nul, want.nul);
  EXPECT_EQ(got.bare_line_end, want.bare_line_end) << testing::PrintToString(std::string(s));
}

TEST_P(Scan, SummaryMatchesReferenceOnRandomTextAtEveryOffset) {
  std::mt19937 rng(12);
  for (int round = 0; round < 300; ++round) {
    std::string s = random_text(rng, round % 97);
    for (size_t from = 0; from <= s.size(); ++from) {
      std::string_view v = std::string_view(s).substr(from);
      expect_same(summarize_text(v), reference::summary(v), v);
    }
  }
}

TEST_P(Scan, SummaryMatchesReferenceOnSparseText) {
  std::mt19937 rng(56);
  for (int round = 0; round < 60; ++round) {
    std::string s = sparse_text(rng, 200 + round * 7);
    for (size_t from = 0; from <= s.size(); ++from) {
      std::string_view v = std::string_view(s).substr(from);
      expect_same(summarize_text(v), reference::summary(v), v);
    }
  }
}

TEST_P(Scan, SummaryOfLongLinesAndSplitCrlf) {
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

TEST_P(Scan, FindLineEndHighByteAndQpPrefixMatchReference) {
  std::mt19937 rng(34);
  for (int round = 0; round < 300; ++round) {
    std::string s = round % 3 == 2 ? sparse_text(rng, 150 + round)
                                   : random_text(rng, round % 101 + (round % 7 == 0 ? 150 : 0));
    for (size_t from = 0; from <= s.size(); ++from) {
      std::string_view v = std::string_view(s).substr(from);
      size_t eol = v.find_first_of("\r\n");
      const char* want = eol == std::string_view::npos ? v.data() + v.size() : v.data() + eol;
      EXPECT_EQ(find_line_end(v.data(), v.data() + v.size()), want);
      bool high = std::any_of(v.begin(), v.end(), [](char c) { return (c & 0x80) != 0; });
      EXPECT_EQ(has_high_byte(v), high);
      ByteFlags flags = byte_flags(v);
      EXPECT_EQ(flags.high, high);
      EXPECT_EQ(flags.nul, v.find('\0') != std::string_view::npos);
      size_t dot = v.find("\n.");
      EXPECT_EQ(find_dot_after_lf(v.data(), v.data() + v.size()),
                dot == std::string_view::npos ? v.data() + v.size() : v.data() + dot + 1);
      EXPECT_EQ(qp_literal_prefix(v), reference::qp_literal(v))
          << testing::PrintToString(std::string(v));
    }
  }
}

// Long lines (about one line start per 64-byte block) with a dot line at every position.
TEST_P(Scan, FindDotAfterLfOnLongLines) {
  for (size_t len :
       {size_t{40}, size_t{62}, size_t{63}, size_t{64}, size_t{65}, size_t{78}, size_t{130}}) {
    std::string s;
    for (int i = 0; i < 12; ++i) s += std::string(len, i % 3 ? 'x' : 'y') + ".\r\n";
    EXPECT_EQ(find_dot_after_lf(s.data(), s.data() + s.size()), s.data() + s.size()) << len;
    for (size_t line = 1; line < 12; ++line) {
      std::string t = s;
      const size_t at = line * (len + 3);
      t[at] = '.';
      if (t[at - 1] != '\n') continue;
      size_t want = std::string_view(t).find("\n.");
      for (size_t from : {size_t{0}, size_t{1}, size_t{17}}) {
        const char* b = t.data() + from;
        const char* got = find_dot_after_lf(b, t.data() + t.size());
        ASSERT_EQ(got - t.data(), static_cast<ptrdiff_t>(want + 1)) << len << " " << line;
      }
    }
  }
}

TEST_P(Scan, PlainCrlfLinesNeverPassesWhatNeedsADecision) {
  std::mt19937 rng(78);
  std::uniform_int_distribution<int> len(0, 150), odd(0, 60);
  for (int round = 0; round < 3000; ++round) {
    std::string s;
    while (s.size() < 600) {
      s += std::string(static_cast<size_t>(len(rng)), 'a');
      int k = odd(rng);
      s += k == 0 ? "\n" : k == 1 ? "\r" : k == 2 ? "\r\n." : "\r\n";
    }
    size_t first = static_cast<size_t>(round % 3) * 40;
    size_t max_line = round % 5 == 0 ? 100 : 1000;
    for (size_t from : {size_t{0}, size_t{1}, size_t{63}, size_t{64}, size_t{65}}) {
      std::string_view v = std::string_view(s).substr(from);
      size_t want = reference::plain_run(v, first, max_line);
      size_t got = static_cast<size_t>(
          plain_crlf_lines(v.data(), v.data() + v.size(), first, max_line) - v.data());
      ASSERT_LE(got, want) << round << " " << from;
      if (got > 0) {
        ASSERT_EQ(v.substr(got - 2, 2), "\r\n") << round << " " << from;
      }
      // Whole blocks of plain lines are taken: it stops at most two blocks and a line early
      // (the block that needs a decision, the tail shorter than a block).
      if (want > 0) {
        ASSERT_GE(got + 2 * 64 + 152 + first, want) << round << " " << from;
      }
    }
  }
}

TEST_P(Scan, PlainCrlfLinesTakesLongRuns) {
  std::string line = std::string(76, 'L') + "\r\n";
  std::string s;
  for (int i = 0; i < 100; ++i) s += line;
  const char* got = plain_crlf_lines(s.data(), s.data() + s.size(), 0, 65536);
  EXPECT_GE(got - s.data(), static_cast<ptrdiff_t>(s.size() - 64 - line.size()));
  EXPECT_EQ(plain_crlf_lines(s.data(), s.data() + s.size(), 0, 50), s.data());
  s[500] = '\n';  // a bare LF: the run stops before the line holding it
  got = plain_crlf_lines(s.data(), s.data() + s.size(), 0, 65536);
  EXPECT_LE(got - s.data(), 500);
}

}  // namespace
}  // namespace mailcar::text
