#include "mailcar/address.hpp"

#include <gtest/gtest.h>

#include <ostream>
#include <string>

#include "message/char_class.hpp"

namespace mailcar {
namespace {

struct ValidCase {
  std::string input;
  std::string expected;
};

void PrintTo(const ValidCase& c, std::ostream* os) {
  *os << c.input;
}

class ValidAddress : public ::testing::TestWithParam<ValidCase> {};

TEST_P(ValidAddress, IsAcceptedAndReturnedTrimmedOnly) {
  auto r = validate_address(GetParam().input);
  ASSERT_TRUE(r.ok()) << GetParam().input << ": " << r.error().message;
  EXPECT_EQ(*r, GetParam().expected);
}

INSTANTIATE_TEST_SUITE_P(
    Table, ValidAddress,
    ::testing::Values(
        ValidCase{"user@example.com", "user@example.com"},
        ValidCase{"  user@example.com\t", "user@example.com"},
        ValidCase{"First.Last+tag@Sub.Example.COM", "First.Last+tag@Sub.Example.COM"},
        ValidCase{"!#$%&'*+-/=?^_`{|}~@example.org", "!#$%&'*+-/=?^_`{|}~@example.org"},
        ValidCase{"\"john doe\"@example.com", "\"john doe\"@example.com"},
        ValidCase{"\"a@b\"@example.com", "\"a@b\"@example.com"},
        ValidCase{"\"quote\\\"inside\"@example.com", "\"quote\\\"inside\"@example.com"},
        ValidCase{"\"\"@example.com", "\"\"@example.com"},
        ValidCase{"user@localhost", "user@localhost"},
        ValidCase{"user@xn--bcher-kva.de", "user@xn--bcher-kva.de"},
        ValidCase{"user@b\xC3\xBC"
                  "cher.de",
                  "user@b\xC3\xBC"
                  "cher.de"},
        ValidCase{"\xE7\x94\xA8\xE6\x88\xB7@\xE4\xBE\x8B\xE5\xAD\x90.\xE5\xB9\xBF\xE5\x91\x8A",
                  "\xE7\x94\xA8\xE6\x88\xB7@\xE4\xBE\x8B\xE5\xAD\x90.\xE5\xB9\xBF\xE5\x91\x8A"},
        ValidCase{"j\xC3\xB6rg@example.de", "j\xC3\xB6rg@example.de"},
        ValidCase{"user@[192.168.0.1]", "user@[192.168.0.1]"},
        ValidCase{"user@[IPv6:2001:db8::1]", "user@[IPv6:2001:db8::1]"},
        ValidCase{"user@[IPv6:::ffff:192.0.2.1]", "user@[IPv6:::ffff:192.0.2.1]"},
        ValidCase{std::string(64, 'a') + "@example.com", std::string(64, 'a') + "@example.com"},
        ValidCase{"a@" + std::string(63, 'b') + ".com", "a@" + std::string(63, 'b') + ".com"},
        ValidCase{"a@1-2.3com", "a@1-2.3com"}));

struct InvalidCase {
  std::string input;
  std::string message_part;  // the error must say what is wrong
};

void PrintTo(const InvalidCase& c, std::ostream* os) {
  *os << c.input;
}

class InvalidAddress : public ::testing::TestWithParam<InvalidCase> {};

TEST_P(InvalidAddress, IsRejectedWithReason) {
  auto r = validate_address(GetParam().input);
  ASSERT_FALSE(r.ok()) << "accepted: " << GetParam().input;
  EXPECT_NE(r.error().message.find(GetParam().message_part), std::string::npos)
      << "input " << GetParam().input << " gave: " << r.error().message;
}

std::string long_domain() {
  std::string d;
  while (d.size() < 250) d += std::string(40, 'x') + ".";
  return d + "com";
}

INSTANTIATE_TEST_SUITE_P(
    Table, InvalidAddress,
    ::testing::Values(
        InvalidCase{"", "empty address"}, InvalidCase{"   ", "empty address"},
        InvalidCase{"plainaddress", "missing @"}, InvalidCase{"@example.com", "empty local part"},
        InvalidCase{"user@", "empty domain"}, InvalidCase{"a..b@example.com", "consecutive dots"},
        InvalidCase{".a@example.com", "starts or ends with a dot"},
        InvalidCase{"a.@example.com", "starts or ends with a dot"},
        InvalidCase{"a b@example.com", "space"}, InvalidCase{"a@b@example.com", "more than one @"},
        InvalidCase{"a(b)@example.com", "invalid character in local part"},
        InvalidCase{"\"unterminated@example.com", "unterminated quoted"},
        InvalidCase{"\"a\"b@example.com", "text after quoted local part"},
        InvalidCase{"\"a\"", "missing @"}, InvalidCase{"user@-example.com", "hyphen"},
        InvalidCase{"user@example-.com", "hyphen"}, InvalidCase{"user@example..com", "empty label"},
        InvalidCase{"user@example.com.", "empty label"},
        InvalidCase{"user@exa_mple.com", "invalid domain"},
        InvalidCase{"user@exa mple.com", "invalid domain"},
        InvalidCase{std::string(65, 'a') + "@example.com", "local part longer than 64"},
        InvalidCase{"a@" + std::string(64, 'b') + ".com", "label longer than 63"},
        InvalidCase{"a@" + long_domain(), "longer than"},
        InvalidCase{std::string(64, 'a') + "@" + std::string(60, 'b') + "." + std::string(60, 'c') +
                        "." + std::string(60, 'd') + ".abcdefg",
                    "address longer than 254"},
        InvalidCase{"user@[1.2.3]", "invalid address literal"},
        InvalidCase{"user@[256.1.1.1]", "invalid address literal"},
        InvalidCase{"user@[IPv6:zz::1]", "invalid IPv6"},
        InvalidCase{"user@[1.2.3.4", "unterminated address literal"},
        InvalidCase{"user@example.com\r\nRCPT TO:<evil@example.net>", "CR or LF"},
        InvalidCase{"user@example.com\n", "CR or LF"},
        InvalidCase{"us\rer@example.com", "CR or LF"},
        InvalidCase{std::string("user\0@example.com", 17), "NUL"},
        InvalidCase{"us\x01"
                    "er@example.com",
                    "control character"},
        InvalidCase{"us\x7F"
                    "er@example.com",
                    "control character"},
        InvalidCase{"\xFF@example.com", "invalid UTF-8"},
        InvalidCase{"\xC0\xAF@example.com", "invalid UTF-8"},  // overlong '/'
        InvalidCase{"a@\xED\xA0\x80.com", "invalid UTF-8"},    // surrogate
        InvalidCase{"a@b\xC3.com", "invalid UTF-8"},           // truncated
        InvalidCase{"<user@example.com>", "angle brackets"}));

TEST(AddressParts, SplitAtLastAt) {
  EXPECT_EQ(address_domain("\"a@b\"@Example.com"), "Example.com");
  EXPECT_EQ(address_local("\"a@b\"@Example.com"), "\"a@b\"");
  EXPECT_EQ(address_domain("nodomain"), "");
  EXPECT_EQ(address_local("nodomain"), "nodomain");
  EXPECT_TRUE(address_is_ascii("user@example.com"));
  EXPECT_FALSE(
      address_is_ascii("user@b\xC3\xBC"
                       "cher.de"));
}

TEST(Utf8, Validity) {
  EXPECT_TRUE(is_valid_utf8("plain"));
  EXPECT_TRUE(is_valid_utf8("\xF0\x9F\x98\x80"));  // U+1F600
  EXPECT_FALSE(is_valid_utf8("\xF0\x9F\x98"));
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));  // > U+10FFFF
  EXPECT_FALSE(is_valid_utf8("\xE0\x80\x80"));      // overlong
}

// --- RFC 5322 address lists ---

std::vector<Mailbox> parse_ok(std::string_view in) {
  auto r = parse_address_list(in);
  EXPECT_TRUE(r.ok()) << in << ": " << (r.ok() ? "" : r.error().message);
  return r.ok() ? *r : std::vector<Mailbox>{};
}

TEST(AddressList, DisplayNamesQuotedStringsAndBareAddresses) {
  auto list = parse_ok("\"Doe, John\" <john@example.com>, jane@example.org");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0], (Mailbox{"john@example.com", "Doe, John"}));
  EXPECT_EQ(list[1], (Mailbox{"jane@example.org", ""}));
}

TEST(AddressList, ObsoletePhraseWithDotAndEscapes) {
  auto list = parse_ok("John Q. Public <jqp@example.com>, \"a \\\"b\\\" c\" <x@example.com>");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].name, "John Q. Public");
  EXPECT_EQ(list[1].name, "a \"b\" c");
}

TEST(AddressList, EncodedWordsStayAsTheyAre) {
  auto list = parse_ok("=?UTF-8?B?SsO2cmc=?= <j@example.de>");
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].name, "=?UTF-8?B?SsO2cmc=?=");
}

TEST(AddressList, Utf8NamesAndAddresses) {
  auto list = parse_ok(
      "J\xC3\xB6rg <j\xC3\xB6rg@b\xC3\xBC"
      "cher.de>");
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0], (Mailbox{"j\xC3\xB6rg@b\xC3\xBC"
                              "cher.de",
                              "J\xC3\xB6rg"}));
}

TEST(AddressList, GroupsGiveTheirMembers) {
  EXPECT_TRUE(parse_ok("undisclosed-recipients:;").empty());
  auto list = parse_ok("team: a@example.com, B <b@example.com>;, c@example.net");
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].address, "a@example.com");
  EXPECT_EQ(list[1], (Mailbox{"b@example.com", "B"}));
  EXPECT_EQ(list[2].address, "c@example.net");
}

TEST(AddressList, CommentsAreSkippedOrBecomeTheName) {
  auto list = parse_ok("a@example.com (Alice (the first)), (x) Bob <b@example.com> (work)");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0], (Mailbox{"a@example.com", "Alice (the first)"}));
  EXPECT_EQ(list[1], (Mailbox{"b@example.com", "Bob"}));
}

TEST(AddressList, FoldingEmptyElementsAngleOnlyAndQuotedLocal) {
  auto list =
      parse_ok("A <a@example.com>,\r\n\tB <b@example.com>,, <c@example.com>, \"x y\"@example.com");
  ASSERT_EQ(list.size(), 4u);
  EXPECT_EQ(list[1], (Mailbox{"b@example.com", "B"}));
  EXPECT_EQ(list[2], (Mailbox{"c@example.com", ""}));
  EXPECT_EQ(list[3].address, "\"x y\"@example.com");
}

TEST(AddressList, ObsoleteSpacesAroundDotsAndRoute) {
  auto list = parse_ok("john . doe @ example . com, <@relay.example:x@example.com>");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].address, "john.doe@example.com");
  EXPECT_EQ(list[1].address, "x@example.com");
}

struct BadList {
  std::string input;
  std::string message_part;
};

void PrintTo(const BadList& c, std::ostream* os) {
  *os << c.input;
}

class InvalidAddressList : public ::testing::TestWithParam<BadList> {};

TEST_P(InvalidAddressList, IsRejected) {
  auto r = parse_address_list(GetParam().input);
  ASSERT_FALSE(r.ok()) << "accepted: " << GetParam().input;
  EXPECT_NE(r.error().message.find(GetParam().message_part), std::string::npos)
      << GetParam().input << " gave: " << r.error().message;
}

INSTANTIATE_TEST_SUITE_P(
    Table, InvalidAddressList,
    ::testing::Values(BadList{"", "empty address list"}, BadList{" , ", "empty address list"},
                      BadList{"John", "missing @"}, BadList{"John <a@example.com", "missing '>'"},
                      BadList{"<>", "empty angle address"},
                      BadList{"a@example.com\r\nBcc: evil@example.net", "CR or LF"},
                      BadList{"a@example.com\nb@example.com", "CR or LF"},
                      BadList{"\"unterminated <a@example.com>", "unterminated quoted string"},
                      BadList{"(unterminated a@example.com", "unterminated comment"},
                      BadList{"a b@example.com", "invalid local part"},
                      BadList{"g: h: a@example.com;;", "nested group"},
                      BadList{std::string("a@exa\0mple.com", 14), "NUL"},
                      BadList{"x <a@-bad.com>", "hyphen"},
                      BadList{"a@example.com b@example.com", "unexpected"},
                      BadList{"a@example.com)", "unbalanced"}));

}  // namespace
}  // namespace mailcar

namespace mailcar {
namespace {

// The table validate_address reads is the predicates it replaces, for every byte.
TEST(AddressCharClasses, TableMatchesThePredicates) {
  for (int i = 0; i < 256; ++i) {
    auto c = static_cast<unsigned char>(i);
    EXPECT_EQ(has_class(c, kPrintableAscii), c >= 32 && c < 127) << i;
    EXPECT_EQ(has_class(c, kAtextUtf8), is_atext_utf8(c)) << i;
    EXPECT_EQ(has_class(c, kLabelChar), is_ascii_alnum(c) || c == '-' || c >= 0x80) << i;
  }
}

}  // namespace
}  // namespace mailcar
