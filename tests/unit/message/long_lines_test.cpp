#include "message/long_lines.hpp"

#include <gtest/gtest.h>

#include <string>

#include "mailcar/scan.hpp"

namespace mailcar {
namespace {

size_t longest(std::string_view s) {
  return text::summarize_text(s).longest_line;
}

const std::string kLong = std::string(1200, 'x');

TEST(LongLines, TextBodyBecomesQuotedPrintable) {
  std::string msg = "From: a@example.com\r\nSubject: s\r\n\r\nshort\r\n" + kLong + "\r\n";
  auto got = fit_long_lines(msg);
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_LE(longest(*got), 998u);
  EXPECT_NE(got->find("MIME-Version: 1.0\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
                      "short\r\n" +
                      std::string(75, 'x') + "=\r\n"),
            std::string::npos)
      << *got;
}

TEST(LongLines, ExistingEncodingFieldIsReplaced) {
  std::string msg =
      "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
      "Content-Transfer-Encoding: 8bit\r\n\r\n<p>" +
      kLong + "=\xc3\xa9</p>\r\n";
  auto got = fit_long_lines(msg);
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_EQ(got->find("8bit"), std::string::npos);
  EXPECT_EQ(got->find("MIME-Version", 10), std::string::npos);  // not added twice
  EXPECT_NE(got->find("=3D=C3=A9</p>\r\n"), std::string::npos);
  EXPECT_LE(longest(*got), 998u);
}

TEST(LongLines, OnlyTheLongPartOfAMultipartChanges) {
  std::string part1 = "Content-Type: text/plain\r\n\r\nfine\r\n";
  std::string part2 = "Content-Type: text/plain\r\n\r\n" + kLong;
  std::string part3 =
      "Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAAA";
  std::string msg = "Content-Type: multipart/mixed; boundary=\"b 1\"\r\n\r\npreamble\r\n--b 1\r\n" +
                    part1 + "\r\n--b 1\r\n" + part2 + "\r\n--b 1\r\n" + part3 +
                    "\r\n--b 1--\r\nepilogue\r\n";
  auto got = fit_long_lines(msg);
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_LE(longest(*got), 998u);
  EXPECT_NE(got->find("preamble\r\n--b 1\r\n" + part1 +
                      "\r\n--b 1\r\nContent-Type: text/plain\r\n"
                      "Content-Transfer-Encoding: quoted-printable\r\n\r\nxxx"),
            std::string::npos)
      << *got;
  EXPECT_NE(got->find("x\r\n--b 1\r\n" + part3 + "\r\n--b 1--\r\nepilogue\r\n"), std::string::npos)
      << *got;
}

TEST(LongLines, LongHeaderIsFoldedAtSpaces) {
  std::string words;
  for (int i = 0; i < 300; ++i) words += " word" + std::to_string(i);
  std::string msg = "Subject:" + words + "\r\n\r\nbody\r\n";
  auto got = fit_long_lines(msg);
  ASSERT_TRUE(got) << got.error().message;
  EXPECT_LE(longest(*got), 998u);
  std::string unfolded = *got;
  for (size_t at; (at = unfolded.find("\r\n ")) != std::string::npos;) unfolded.erase(at, 2);
  EXPECT_EQ(unfolded, msg);
}

TEST(LongLines, RefusedWhenTheMeaningWouldChange) {
  auto error = [](const std::string& msg) {
    auto got = fit_long_lines(msg);
    return got ? std::string("accepted") : got.error().message;
  };
  EXPECT_NE(error("Subject: " + kLong + "\r\n\r\nb\r\n").find("no space to fold"),
            std::string::npos);
  EXPECT_NE(error("DKIM-Signature: v=1\r\n\r\n" + kLong).find("DKIM-signed"), std::string::npos);
  EXPECT_NE(error("Content-Type: application/json\r\n\r\n" + kLong).find("application/json part"),
            std::string::npos);
  EXPECT_NE(error("Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" + kLong)
                .find("in base64"),
            std::string::npos);
  EXPECT_NE(error("Content-Type: multipart/mixed\r\n\r\n" + kLong).find("boundary"),
            std::string::npos);
  EXPECT_NE(error("Content-Type: multipart/mixed; boundary=b\r\n\r\n" + kLong +
                  "\r\n--b\r\n\r\nx\r\n--b--\r\n")
                .find("preamble"),
            std::string::npos);
}

}  // namespace
}  // namespace mailcar
