#include "mailcar/normalize.hpp"

#include <gtest/gtest.h>

#include <string>

#include "mailcar/mime.hpp"
#include "mailcar/scan.hpp"
#include "message/mime_reader.hpp"

namespace mailcar {
namespace {

using testing::parse_entity;
using testing::Part;

constexpr int64_t kNow = 1700000000;
const std::string kReceived =
    "Received: from client ([127.0.0.1])\r\n\tby mc (mailcar) with ESMTP id X1;\r\n\t" +
    format_rfc5322_date(kNow) + "\r\n";

NormalizeInput input(std::string_view raw) {
  return NormalizeInput{
      raw, Mailbox{"default@example.com", "Default"}, kReceived, "mc.example", kNow, std::nullopt};
}

NormalizedMessage normalize_ok(const NormalizeInput& in) {
  auto r = normalize_message(in);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
  return r.ok() ? *r : NormalizedMessage{};
}

void expect_crlf_only(const std::string& d) {
  for (size_t i = 0; i < d.size(); ++i) {
    if (d[i] == '\r') {
      ASSERT_EQ(d.substr(i, 2), "\r\n") << "bare CR at " << i;
    } else if (d[i] == '\n') {
      ASSERT_TRUE(i > 0 && d[i - 1] == '\r') << "bare LF at " << i;
    }
  }
  EXPECT_TRUE(d.ends_with("\r\n"));
}

TEST(Normalize, LfOnlyInputGetsCrlfAndMissingDateAndMessageId) {
  auto n = normalize_ok(input("From: A <a@example.com>\nSubject: hi\n\nline 1\nline 2\n"));
  expect_crlf_only(n.data);
  EXPECT_TRUE(n.data.starts_with(kReceived));
  EXPECT_EQ(n.from, (std::vector<Mailbox>{{"a@example.com", "A"}}));
  EXPECT_TRUE(n.message_id.ends_with(".1700000000@mc.example")) << n.message_id;
  Part p = parse_entity(n.data);
  EXPECT_EQ(p.count("Received"), 1);
  EXPECT_EQ(p.header("Date"), format_rfc5322_date(kNow));
  EXPECT_EQ(p.header("Message-ID"), "<" + n.message_id + ">");
  EXPECT_EQ(p.count("From"), 1);
  EXPECT_EQ(p.body, "line 1\r\nline 2\r\n");
  EXPECT_FALSE(n.eight_bit);
}

TEST(Normalize, ExistingDateAndMessageIdAreKept) {
  auto n =
      normalize_ok(input("From: a@example.com\r\nDate: Mon, 1 Jan 2024 00:00:00 +0100\r\n"
                         "Message-ID:\r\n <abc.123@client.example>\r\n\r\nbody\r\n"));
  EXPECT_EQ(n.message_id, "abc.123@client.example");
  Part p = parse_entity(n.data);
  EXPECT_EQ(p.count("Date"), 1);
  EXPECT_EQ(p.header("Date"), "Mon, 1 Jan 2024 00:00:00 +0100");
  EXPECT_EQ(p.count("Message-ID"), 1);
  // Headers other than the ones added are byte-for-byte what the client sent.
  EXPECT_NE(n.data.find("Message-ID:\r\n <abc.123@client.example>\r\n"), std::string::npos);
}

TEST(Normalize, MissingFromTakesTheDefault) {
  auto n = normalize_ok(input("Subject: x\r\n\r\nbody\r\n"));
  EXPECT_EQ(n.from, (std::vector<Mailbox>{{"default@example.com", "Default"}}));
  Part p = parse_entity(n.data);
  EXPECT_EQ(p.header("From"), "Default <default@example.com>");

  NormalizeInput no_default = input("Subject: x\r\n\r\nbody\r\n");
  no_default.default_from.reset();
  auto r = normalize_message(no_default);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("no From"), std::string::npos);
}

TEST(Normalize, BccRemovedIncludingFoldedAndResentBcc) {
  auto n = normalize_ok(
      input("From: a@example.com\r\nbcc: one@example.com,\r\n two@example.com\r\n"
            "To: t@example.com\r\nResent-Bcc: three@example.com\r\nBCC:\r\n\tfour@example.com\r\n"
            "Subject: s\r\n\r\nBcc: in body stays\r\n"));
  Part p = parse_entity(n.data);
  EXPECT_EQ(p.count("Bcc"), 0);
  EXPECT_EQ(p.count("Resent-Bcc"), 0);
  EXPECT_EQ(p.header("To"), "t@example.com");
  EXPECT_EQ(p.header("Subject"), "s");
  for (const char* hidden : {"one@", "two@", "three@", "four@"}) {
    EXPECT_EQ(n.data.find(hidden), std::string::npos) << hidden;
  }
  EXPECT_EQ(p.body, "Bcc: in body stays\r\n");
}

// SPEC §10.3: the key is mailcar's, never relayed; the first one counts.
TEST(Normalize, IdempotencyKeyTakenOutOfTheHeader) {
  auto n = normalize_ok(
      input("From: a@example.com\r\nidempotency-key:  order-42 \r\nTo: t@example.com\r\n"
            "Idempotency-Key: second\r\nSubject: s\r\n\r\nIdempotency-Key: in body stays\r\n"));
  ASSERT_TRUE(n.idempotency_key.has_value());
  EXPECT_EQ(*n.idempotency_key, "order-42");
  Part p = parse_entity(n.data);
  EXPECT_EQ(p.count("Idempotency-Key"), 0);
  EXPECT_EQ(n.data.find("order-42"), std::string::npos);
  EXPECT_EQ(n.data.find("second"), std::string::npos);
  EXPECT_EQ(p.body, "Idempotency-Key: in body stays\r\n");
  EXPECT_FALSE(normalize_ok(input("From: a@example.com\r\n\r\nb\r\n")).idempotency_key);
}

TEST(Normalize, HeaderOnlyMessageWithoutFinalNewline) {
  auto n = normalize_ok(input("From: a@example.com\nSubject: only headers"));
  expect_crlf_only(n.data);
  Part p = parse_entity(n.data);
  EXPECT_EQ(p.header("Subject"), "only headers");
  EXPECT_EQ(p.body, "");
  EXPECT_EQ(n.data.find("\r\n\r\n"), std::string::npos);  // no body, so no separator needed
}

TEST(Normalize, MessageWithoutHeadersBecomesBody) {
  auto n = normalize_ok(input("Hello there\nsecond line\n"));
  Part p = parse_entity(n.data);
  EXPECT_EQ(p.body, "Hello there\r\nsecond line\r\n");
  EXPECT_EQ(p.count("From"), 1);
  EXPECT_EQ(p.count("Date"), 1);
}

TEST(Normalize, BareCrAndMixedLineEnds) {
  auto n = normalize_ok(input("From: a@example.com\rSubject: s\r\n\nb1\rb2\r\n"));
  expect_crlf_only(n.data);
  Part p = parse_entity(n.data);
  EXPECT_EQ(p.header("Subject"), "s");
  EXPECT_EQ(p.body, "b1\r\nb2\r\n");
}

TEST(Normalize, FromHeaderParsedWithGroupsAndFolding) {
  auto n =
      normalize_ok(input("From: \"Doe, J\" <j@example.com>,\r\n B <b@example.org>\r\n\r\nx\r\n"));
  EXPECT_EQ(n.from, (std::vector<Mailbox>{{"j@example.com", "Doe, J"}, {"b@example.org", "B"}}));
}

TEST(Normalize, EightBitDetected) {
  auto n = normalize_ok(input("From: a@example.com\r\n\r\ncaf\xC3\xA9\r\n"));
  EXPECT_TRUE(n.eight_bit);
}

TEST(Normalize, Errors) {
  auto expect_error = [](std::string raw, std::string part) {
    auto r = normalize_message(input(raw));
    ASSERT_FALSE(r.ok()) << raw;
    EXPECT_NE(r.error().message.find(part), std::string::npos) << r.error().message;
  };
  expect_error(std::string("From: a@example.com\r\n\r\nx\0y\r\n", 26), "NUL");
  expect_error("From: a@example.com\r\nX-Long:" + std::string(992, 'a') + "\r\n\r\n", "998");
  expect_error("From: a@example.com\r\nFrom: b@example.com\r\n\r\n", "more than one From");
  expect_error("From: not an address\r\n\r\n", "invalid From");
  expect_error("From: undisclosed:;\r\n\r\n", "no address");
  expect_error("From: a@example.com\r\nDKIM-Signature: v=1\r\n\r\n" + std::string(999, 'b'),
               "DKIM-signed");
  // 998 octets exactly is fine.
  auto ok = normalize_message(input("From: a@example.com\r\nX-Long: " + std::string(990, 'a') +
                                    "\r\n\r\n" + std::string(998, 'b') + "\r\n"));
  ASSERT_TRUE(ok.ok());
  EXPECT_NE(ok->data.find(std::string(998, 'b') + "\r\n"), std::string::npos);
}

// Lines over 998 octets never leave as they are: the body goes quoted-printable, a header is
// folded (the details are in long_lines_test.cpp).
TEST(Normalize, LongLinesAreReencoded) {
  auto n = normalize_ok(input("From: a@example.com\r\nX-Long: a" + std::string(995, ' ') +
                              "b\r\n\r\ncaf\xC3\xA9 " + std::string(5000, 'b') + "\r\n"));
  EXPECT_LE(text::summarize_text(n.data).longest_line, 998u);
  EXPECT_NE(n.data.find("Content-Transfer-Encoding: quoted-printable\r\n"), std::string::npos);
  EXPECT_NE(n.data.find("\r\n\r\ncaf=C3=A9 bbb"), std::string::npos) << n.data;
  EXPECT_FALSE(n.eight_bit);  // the only 8-bit bytes are now encoded
}

TEST(ReceivedHeader, FormatAndSanitizedClientText) {
  std::string r = make_received_header("evil\r\nBcc: x@y (z) [1]", "2001:db8::1", "mc.local",
                                       "ESMTPS", "ID7", kNow);
  EXPECT_EQ(r,
            "Received: from evilBcc:x@yz1 ([IPv6:2001:db8::1])\r\n\tby mc.local (mailcar) with "
            "ESMTPS id ID7;\r\n\t" +
                format_rfc5322_date(kNow) + "\r\n");
  EXPECT_EQ(make_received_header("", "127.0.0.1", "h", "ESMTP", "i", 0),
            "Received: from unknown ([127.0.0.1])\r\n\tby h (mailcar) with ESMTP id i;\r\n\t"
            "Thu, 01 Jan 1970 00:00:00 +0000\r\n");
}

}  // namespace
TEST(Normalize, InPlaceGivesTheSameMessageWithoutACopy) {
  for (std::string raw :
       {std::string("From: a@example.com\r\nBcc: x@example.com\r\nSubject: s\r\n"
                    "\r\nbody\r\n.line\r\n"),
        std::string("From: a@example.com\nSubject: s\n\nbare lf\nbody"),
        std::string("Subject: only headers"), std::string("no header at all\r\n"), std::string()}) {
    NormalizeInput in = input(raw);
    auto copied = normalize_message(in);
    std::string owned = raw;
    owned.reserve(owned.size() + 4096);  // as the SMTP session leaves room for the header block
    const char* buffer = owned.data();
    bool crlf_already =
        raw.find('\n') == std::string::npos || raw.find("\r\n") != std::string::npos;
    auto in_place = normalize_message(in, std::move(owned));
    ASSERT_EQ(copied.ok(), in_place.ok()) << raw;
    if (!copied.ok()) continue;
    // The same but for a generated Message-ID (random).
    std::string expected = copied->data;
    if (size_t at = expected.find(copied->message_id); at != std::string::npos) {
      expected.replace(at, copied->message_id.size(), in_place->message_id);
    }
    EXPECT_EQ(expected, in_place->data) << raw;
    EXPECT_EQ(copied->from, in_place->from);
    if (crlf_already && !raw.empty()) {
      EXPECT_EQ(in_place->data.data(), buffer) << "copied: " << raw;
    }
  }
}

// A caller that says what it knows of the text (KnownText, all true) gets the message it
// would get without saying it.
TEST(Normalize, KnownTextGivesTheSameMessage) {
  const std::string big(1200, 'w');
  for (std::string raw :
       {std::string("From: a@example.com\r\nBcc: x@example.com\r\nSubject: s\r\n\r\nbody\r\n"),
        std::string("From: a@example.com\r\nSubject: caf\xc3\xa9\r\n\r\n8 bit \xff\r\n"),
        std::string("From: a@example.com\r\nSubject: s\r\n\r\n") + big + "\r\nshort\r\n",
        std::string("From: a@example.com\r\nX-Long: ") + big + "\r\n\r\nbody\r\n",
        std::string("From: a@example.com\r\n\r\nnul \0 byte\r\n", 35),
        std::string("no header at all\r\n"), std::string()}) {
    const text::TextSummary sum = text::summarize_text(raw);
    ASSERT_FALSE(sum.bare_line_end);
    NormalizeInput plain = input(raw);
    NormalizeInput told = input(raw);
    told.known = KnownText{sum.nul, sum.high_bytes > 0, sum.longest_line > kMaxLineOctets};
    auto a = normalize_message(plain);
    auto b = normalize_message(told);
    ASSERT_EQ(a.ok(), b.ok()) << raw;
    if (!a.ok()) {
      EXPECT_EQ(a.error().message, b.error().message);
      continue;
    }
    std::string expected = a->data;  // the same but for a generated Message-ID (random)
    if (size_t at = expected.find(a->message_id); at != std::string::npos) {
      expected.replace(at, a->message_id.size(), b->message_id);
    }
    EXPECT_EQ(expected, b->data) << raw;
    EXPECT_EQ(a->eight_bit, b->eight_bit) << raw;
    EXPECT_EQ(a->from, b->from);
  }
}

}  // namespace mailcar
