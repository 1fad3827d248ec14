#include "mailcar/sender_pattern.hpp"

#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

namespace mailcar {
namespace {

struct MatchCase {
  std::vector<std::string> patterns;
  std::string address;
  bool expected;
};

void PrintTo(const MatchCase& c, std::ostream* os) {
  *os << "address '" << c.address << "' against [";
  for (const auto& p : c.patterns) *os << "'" << p << "' ";
  *os << "] expecting " << (c.expected ? "match" : "no match");
}

class SenderMatch : public ::testing::TestWithParam<MatchCase> {};

TEST_P(SenderMatch, Matches) {
  const MatchCase& c = GetParam();
  SenderPatterns patterns;
  for (const auto& p : c.patterns) ASSERT_TRUE(patterns.add(p)) << p;
  EXPECT_EQ(patterns.matches(c.address), c.expected);
}

INSTANTIATE_TEST_SUITE_P(
    Table, SenderMatch,
    ::testing::Values(
        // exact
        MatchCase{{"noreply@example.com"}, "noreply@example.com", true},
        MatchCase{{"noreply@example.com"}, "other@example.com", false},
        MatchCase{{"noreply@example.com"}, "noreply@example.org", false},
        MatchCase{{"noreply@example.com"}, "noreply@sub.example.com", false},
        // domains compare case-insensitively, in pattern and address
        MatchCase{{"noreply@Example.COM"}, "noreply@example.com", true},
        MatchCase{{"noreply@example.com"}, "noreply@EXAMPLE.com", true},
        // local parts are exact
        MatchCase{{"noreply@example.com"}, "NoReply@example.com", false},
        MatchCase{{"NoReply@example.com"}, "noreply@example.com", false},
        // plus-addressing is a different local part
        MatchCase{{"a@x.com"}, "a+tag@x.com", false}, MatchCase{{"a+tag@x.com"}, "a@x.com", false},
        MatchCase{{"a+tag@x.com"}, "a+tag@x.com", true},
        // quoted local parts, even holding '@'
        MatchCase{{"\"a b\"@x.com"}, "\"a b\"@x.com", true},
        MatchCase{{"\"a b\"@x.com"}, "ab@x.com", false},
        MatchCase{{"\"a@b\"@x.com"}, "\"a@b\"@x.com", true},
        MatchCase{{"\"a@b\"@x.com"}, "b\"@x.com", false},
        MatchCase{{"*@x.com"}, "\"a b\"@X.com", true},
        // *@domain: that domain only
        MatchCase{{"*@example.com"}, "anyone@example.com", true},
        MatchCase{{"*@example.com"}, "anyone@EXAMPLE.COM", true},
        MatchCase{{"*@example.com"}, "anyone@sub.example.com", false},
        MatchCase{{"*@example.com"}, "anyone@badexample.com", false},
        MatchCase{{"*@example.com"}, "anyone@example.com.evil.org", false},
        // *@*.domain: strict subdomains
        MatchCase{{"*@*.example.com"}, "a@mail.example.com", true},
        MatchCase{{"*@*.example.com"}, "a@deep.mail.EXAMPLE.com", true},
        MatchCase{{"*@*.example.com"}, "a@example.com", false},
        MatchCase{{"*@*.example.com"}, "a@badexample.com", false},
        MatchCase{{"*@*.example.com"}, "a@example.com.evil.org", false},
        MatchCase{{"*@*.example.com", "*@example.com"}, "a@example.com", true},
        // *
        MatchCase{{"*"}, "whoever@wherever.test", true}, MatchCase{{"*"}, "", true},
        // trailing dot on a domain is ignored, on either side
        MatchCase{{"a@example.com."}, "a@example.com", true},
        MatchCase{{"a@example.com"}, "a@example.com.", true},
        MatchCase{{"*@example.com"}, "a@example.com.", true},
        MatchCase{{"*@*.example.com."}, "a@x.example.com", true},
        MatchCase{{"*@example.com"}, "a@example.com..", false},
        // IDN: UTF-8 and punycode forms are one domain
        MatchCase{{"*@bücher.example"}, "a@bücher.example", true},
        MatchCase{{"*@bücher.example"}, "a@xn--bcher-kva.example", true},
        MatchCase{{"*@xn--bcher-kva.example"}, "a@bücher.example", true},
        MatchCase{{"*@XN--BCHER-KVA.example"}, "a@bücher.EXAMPLE", true},
        MatchCase{{"*@*.bücher.example"}, "a@mail.xn--bcher-kva.example", true},
        MatchCase{{"info@münchen.de"}, "info@xn--mnchen-3ya.de", true},
        MatchCase{{"*@bücher.example"}, "a@bucher.example", false},
        // UTF-8 local parts are exact bytes
        MatchCase{{"jörg@example.com"}, "jörg@example.com", true},
        MatchCase{{"jörg@example.com"}, "jorg@example.com", false},
        // malformed addresses never match
        MatchCase{{"*@example.com"}, "example.com", false},
        MatchCase{{"*@example.com"}, "@example.com", false},
        MatchCase{{"*@example.com"}, "", false}, MatchCase{{"a@example.com"}, "a@", false}));

// The matcher against a plain reading of SPEC §3, pattern by pattern, on random addresses
// (capitals, trailing dots, A-labels, several '@'): the fast path that copies nothing must agree.
bool reference_match(const std::vector<std::string>& patterns, const std::string& address) {
  for (const std::string& p : patterns) {
    if (p == "*") return true;
  }
  auto a = split_address(address);
  if (!a) return false;
  std::string domain = normalize_domain(a->domain);
  if (domain.empty()) return false;
  for (const std::string& p : patterns) {
    auto parts = split_address(p);
    std::string pd = normalize_domain(parts->domain);
    if (parts->local != "*") {
      if (parts->local == a->local && pd == domain) return true;
    } else if (pd.rfind("*.", 0) == 0) {
      std::string parent = pd.substr(2);
      if (domain.size() > parent.size() + 1 && domain.ends_with("." + parent)) return true;
    } else if (pd == domain) {
      return true;
    }
  }
  return false;
}

TEST(SenderPatterns, AgreesWithReferenceOnRandomAddresses) {
  const std::vector<std::string> locals = {"a", "A", "info", "x@y", "a.b"};
  const std::vector<std::string> domains = {"example.com",
                                            "Example.COM",
                                            "example.com.",
                                            "sub.example.com",
                                            "b.sub.example.com",
                                            "xn--bcher-kva.de",
                                            "XN--BCHER-KVA.DE",
                                            "bücher.de",
                                            "x.bücher.de",
                                            "xn--zz.de",
                                            "de",
                                            "."};
  std::mt19937 rng(11);
  auto pick = [&rng](const std::vector<std::string>& v) { return v[rng() % v.size()]; };
  for (int round = 0; round < 300; ++round) {
    std::vector<std::string> patterns;
    SenderPatterns compiled;
    for (size_t n = rng() % 4; n > 0; --n) {
      std::string domain = pick(domains);
      std::string p;
      switch (rng() % 3) {
        case 0:
          p = pick(locals) + "@" + domain;
          break;
        case 1:
          p = "*@" + domain;
          break;
        default:
          p = "*@*." + domain;
      }
      if (compiled.add(p)) patterns.push_back(p);
    }
    for (int i = 0; i < 50; ++i) {
      std::string address = pick(locals) + "@" + pick(domains);
      if (rng() % 10 == 0) address = pick(domains);  // no '@'
      ASSERT_EQ(compiled.matches(address), reference_match(patterns, address))
          << address << " round " << round;
    }
  }
}

TEST(SenderPatterns, RejectsMalformedPatterns) {
  SenderPatterns p;
  EXPECT_FALSE(p.add("example.com"));
  EXPECT_FALSE(p.add("*@"));
  EXPECT_FALSE(p.add("@example.com"));
  EXPECT_FALSE(p.add("*@*"));
  EXPECT_FALSE(p.add("*@*."));
  EXPECT_FALSE(p.add("*@a.*.com"));
  EXPECT_FALSE(p.add("a@*.com"));
  EXPECT_EQ(p.size(), 0u);
  EXPECT_FALSE(p.matches("a@x.com"));
  // `*` is legal in a local part, so this is an exact address, not a wildcard.
  EXPECT_TRUE(p.add("a*b@x.com"));
  EXPECT_TRUE(p.matches("a*b@x.com"));
  EXPECT_FALSE(p.matches("ab@x.com"));
}

TEST(SenderPatterns, NullSenderOnlyWithStar) {
  SenderPatterns p;
  ASSERT_TRUE(p.add("*@example.com"));
  ASSERT_TRUE(p.add("*@*.example.com"));
  EXPECT_FALSE(p.matches(""));
  ASSERT_TRUE(p.add("*"));
  EXPECT_TRUE(p.matches(""));
}

TEST(SenderPatterns, TenThousandPatterns) {
  SenderPatterns p;
  for (int i = 0; i < 10'000; ++i) {
    switch (i % 3) {
      case 0:
        ASSERT_TRUE(p.add("user" + std::to_string(i) + "@exact.test"));
        break;
      case 1:
        ASSERT_TRUE(p.add("*@d" + std::to_string(i) + ".test"));
        break;
      case 2:
        ASSERT_TRUE(p.add("*@*.p" + std::to_string(i) + ".test"));
        break;
    }
  }
  EXPECT_EQ(p.size(), 10'000u);
  EXPECT_TRUE(p.matches("user0@exact.test"));
  EXPECT_TRUE(p.matches("user9999@EXACT.test"));
  EXPECT_FALSE(p.matches("user1@exact.test"));
  EXPECT_TRUE(p.matches("x@d4.test"));
  EXPECT_FALSE(p.matches("x@sub.d4.test"));
  EXPECT_TRUE(p.matches("x@a.b.p9998.test"));
  EXPECT_FALSE(p.matches("x@p9998.test"));
  EXPECT_FALSE(p.matches("x@d5.test"));
  // Many checks stay cheap: a linear scan would take 10^4 * 10^5 comparisons here.
  int hits = 0;
  for (int i = 0; i < 100'000; ++i)
    hits += p.matches("user" + std::to_string(i % 10'000) + "@exact.test");
  EXPECT_EQ(hits, 33'340);
}

TEST(Punycode, Rfc3492Vectors) {
  EXPECT_EQ(punycode_decode_utf8("bcher-kva").value(), "bücher");
  EXPECT_EQ(punycode_decode_utf8("mnchen-3ya").value(), "münchen");
  // RFC 3492 7.1 (A) Arabic (Egyptian) and (L) Japanese "3年B組金八先生".
  EXPECT_EQ(punycode_decode_utf8("egbpdaj6bu4bxfgehfvwxn").value(),
            "\u0644\u064A\u0647\u0645\u0627\u0628\u062A\u0643\u0644\u0645\u0648\u0634\u0639"
            "\u0631\u0628\u064A\u061F");
  EXPECT_EQ(punycode_decode_utf8("3B-ww4c5e180e575a65lsy2b").value(),
            "3\u5E74B\u7D44\u91D1\u516B\u5148\u751F");
  EXPECT_FALSE(punycode_decode_utf8("bcher-kv!").has_value());
  EXPECT_FALSE(punycode_decode_utf8("999999999999").has_value());  // overflow
  EXPECT_FALSE(punycode_decode_utf8("ü-kva").has_value());         // non-basic before '-'
}

TEST(NormalizeDomain, Forms) {
  EXPECT_EQ(normalize_domain("Example.COM."), "example.com");
  EXPECT_EQ(normalize_domain("mail.XN--BCHER-KVA.example"), "mail.bücher.example");
  EXPECT_EQ(normalize_domain("xn--invalid!.example"), "xn--invalid!.example");
  EXPECT_EQ(normalize_domain("[192.0.2.1]"), "[192.0.2.1]");
}

}  // namespace
}  // namespace mailcar
