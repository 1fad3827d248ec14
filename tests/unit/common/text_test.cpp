#include "mailcar/text.hpp"

#include <gtest/gtest.h>

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
