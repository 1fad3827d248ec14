#include "mailcar/text.hpp"

#include <gtest/gtest.h>

#include <set>

using namespace mailcar::text;

TEST(Base64, RoundTripsAllLengths) {
  std::string bytes;
  for (int i = 0; i < 70; ++i) {
    bytes.push_back(static_cast<char>(i * 37));
    auto decoded = base64_decode(base64_encode(bytes));
    ASSERT_TRUE(decoded.has_value()) << i;
    EXPECT_EQ(*decoded, bytes);
  }
}

TEST(Base64, KnownVectors) {
  EXPECT_EQ(base64_encode(""), "");
  EXPECT_EQ(base64_encode("f"), "Zg==");
  EXPECT_EQ(base64_encode("fo"), "Zm8=");
  EXPECT_EQ(base64_encode("foo"), "Zm9v");
  EXPECT_EQ(base64_encode("foobar"), "Zm9vYmFy");
  EXPECT_EQ(base64_decode("Zm9v\r\nYmFy").value(), "foobar");
  EXPECT_EQ(base64_decode("Zg").value(), "f");  // unpadded is accepted
}

TEST(Base64, RejectsGarbage) {
  EXPECT_FALSE(base64_decode("Zm9v!").has_value());
  EXPECT_FALSE(base64_decode("Z").has_value());
  EXPECT_FALSE(base64_decode("Zg==Zg==").has_value());
  EXPECT_FALSE(base64_decode("Z===").has_value());
  EXPECT_FALSE(base64_decode("Zm9=v").has_value());
}

TEST(ConstantTimeEqual, ComparesContentAndLength) {
  EXPECT_TRUE(constant_time_equal("secret", "secret"));
  EXPECT_FALSE(constant_time_equal("secret", "secreT"));
  EXPECT_FALSE(constant_time_equal("secret", "secret2"));
  EXPECT_FALSE(constant_time_equal("", "x"));
  EXPECT_TRUE(constant_time_equal("", ""));
}

TEST(Ascii, CaseHelpers) {
  EXPECT_TRUE(iequals_ascii("EHLO", "ehlo"));
  EXPECT_FALSE(iequals_ascii("EHLO", "ehl"));
  EXPECT_TRUE(istarts_with_ascii("MAIL FROM:<a@b>", "mail from:"));
  EXPECT_EQ(lower_ascii("AbC"), "abc");
  EXPECT_EQ(trim("  x y \t"), "x y");
}

TEST(RandomToken, HasLengthAndAlphabet) {
  auto t = random_token(40);
  ASSERT_EQ(t.size(), 40u);
  for (char c : t) EXPECT_TRUE(isalnum(static_cast<unsigned char>(c)));
  EXPECT_NE(random_token(40), t);
}

// Tokens come from a pool of kernel random bytes: every call takes fresh bytes, the alphabet
// is used evenly (no modulo bias), and appending keeps what was there.
TEST(RandomToken, FreshEvenAndAppended) {
  std::string out = "prefix.";
  append_random_token(out, 30);
  ASSERT_EQ(out.size(), 37u);
  EXPECT_TRUE(out.starts_with("prefix."));
  int counts[128] = {};
  std::set<std::string> seen;
  for (int i = 0; i < 2000; ++i) {
    std::string t = random_token(31);  // not a divisor of the pool: tokens span refills
    ASSERT_EQ(t.size(), 31u);
    EXPECT_TRUE(seen.insert(t).second) << "repeated token " << t;
    for (char c : t) {
      ASSERT_TRUE(isalnum(static_cast<unsigned char>(c)));
      ++counts[static_cast<unsigned char>(c)];
    }
  }
  // 62,000 characters over 62: about 1,000 each; a biased or stuck source falls far outside.
  for (int c = 0; c < 128; ++c) {
    if (isalnum(c)) {
      EXPECT_GT(counts[c], 800) << static_cast<char>(c);
    }
  }
}

TEST(Utf8, InvalidOffsetPointsAtTheFirstBadSequence) {
  constexpr size_t npos = std::string_view::npos;
  EXPECT_EQ(invalid_utf8_offset(""), npos);
  EXPECT_EQ(invalid_utf8_offset("plain ascii"), npos);
  EXPECT_EQ(invalid_utf8_offset("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80 \xC2\x85"), npos);
  EXPECT_EQ(invalid_utf8_offset("caf\xE9!"), 3u);           // Latin-1 é
  EXPECT_EQ(invalid_utf8_offset("ab\x80"), 2u);             // lone continuation byte
  EXPECT_EQ(invalid_utf8_offset("a\xC0\xAF"), 1u);          // overlong '/'
  EXPECT_EQ(invalid_utf8_offset("a\xE0\x80\xAF"), 1u);      // overlong, 3 bytes
  EXPECT_EQ(invalid_utf8_offset("\xED\xA0\x80"), 0u);       // surrogate U+D800
  EXPECT_EQ(invalid_utf8_offset("x\xF4\x90\x80\x80"), 1u);  // above U+10FFFF
  EXPECT_EQ(invalid_utf8_offset("\xC3\xA9\xE2\x82"), 2u);   // truncated at the end
  EXPECT_EQ(invalid_utf8_offset("\xE2\x28\xA1"), 0u);       // bad second byte
  EXPECT_EQ(invalid_utf8_offset("\xFF\xFE"), 0u);           // UTF-16 BOM
}
