// DKIM canonicalization from RFC 6376's own example (§3.4.5), field selection (§5.4.2), and a
// signature checked with the public half of a key made at test time.
#include <gtest/gtest.h>

#include <mbedtls/pk.h>

#include <string>
#include <thread>
#include <vector>

#include "mailcar/dkim.hpp"
#include "mailcar/text.hpp"
#include "support/rsa_key.hpp"

namespace mailcar::dkim {
namespace {

// RFC 6376 §3.4.5, with <SP>, <HTAB> and <CRLF> written out.
constexpr std::string_view kRfcExample =
    "A: X\r\n"
    "B : Y\t\r\n"
    "\tZ  \r\n"
    "\r\n"
    " C \r\n"
    "D \t E\r\n"
    "\r\n"
    "\r\n";

TEST(DkimCanonicalization, Rfc6376Example) {
  SplitMessage m = split_message(kRfcExample);
  ASSERT_EQ(m.fields.size(), 2u);
  EXPECT_EQ(relaxed_header(m.fields[0]), "a:X\r\n");
  EXPECT_EQ(relaxed_header(m.fields[1]), "b:Y Z\r\n");
  EXPECT_EQ(relaxed_body(m.body), " C\r\nD E\r\n");
}

TEST(DkimCanonicalization, SplitKeepsFoldingAndFindsTheBody) {
  SplitMessage m = split_message("Subject: a\r\n  b\r\nTo: x\r\n\r\nbody\r\n");
  ASSERT_EQ(m.fields.size(), 2u);
  EXPECT_EQ(m.fields[0], "Subject: a\r\n  b");
  EXPECT_EQ(m.fields[1], "To: x");
  EXPECT_EQ(m.body, "body\r\n");
  SplitMessage header_only = split_message("Subject: a\r\nTo: x\r\n");
  EXPECT_EQ(header_only.fields.size(), 2u);
  EXPECT_TRUE(header_only.body.empty());
  SplitMessage no_crlf = split_message("Subject: a");
  ASSERT_EQ(no_crlf.fields.size(), 1u);
  EXPECT_EQ(no_crlf.fields[0], "Subject: a");
}

TEST(DkimCanonicalization, RelaxedBodyEdgeCases) {
  EXPECT_EQ(relaxed_body(""), "");
  EXPECT_EQ(relaxed_body("\r\n"), "");
  EXPECT_EQ(relaxed_body("\r\n\r\n \t \r\n"), "");
  EXPECT_EQ(relaxed_body("a"), "a\r\n");
  EXPECT_EQ(relaxed_body("a  "), "a \r\n");  // dkimpy: no CRLF yet, so the WSP is not at a line end
  EXPECT_EQ(relaxed_body("a\r\n\r\nb\r\n\r\n"), "a\r\n\r\nb\r\n");
  EXPECT_EQ(relaxed_body(".\r\n..x \r\n"), ".\r\n..x\r\n");  // dots are not stuffed here
  EXPECT_EQ(relaxed_body("\xc3\xa9t\xc3\xa9\t\t!\r\n"), "\xc3\xa9t\xc3\xa9 !\r\n");
  EXPECT_EQ(relaxed_body("x\r\n  \r\ny\r\n"), "x\r\n\r\ny\r\n");
}

TEST(DkimCanonicalization, RelaxedHeaderEdgeCases) {
  EXPECT_EQ(relaxed_header("SUBJECT:no space"), "subject:no space\r\n");
  EXPECT_EQ(relaxed_header("X-Empty:"), "x-empty:\r\n");
  EXPECT_EQ(relaxed_header("X-Empty:  \r\n\t "), "x-empty:\r\n");
  EXPECT_EQ(relaxed_header("To: a@b,\r\n c@d,\r\n\te@f"), "to:a@b, c@d, e@f\r\n");
}

TEST(DkimFields, ListsPresentFieldsAndOversignsFrom) {
  SplitMessage m = split_message(
      "Received: x\r\nFrom: a@example.com\r\nTo: b@example.org\r\nto: c@example.org\r\n"
      "Subject: s\r\nX-Other: o\r\n\r\n");
  std::vector<std::string> h = signed_field_list(m);
  EXPECT_EQ(h, (std::vector<std::string>{"from", "from", "subject", "to", "to"}));
}

TEST(DkimFields, InstancesAreTakenFromTheBottom) {
  SplitMessage m = split_message("To: first\r\nFrom: f\r\nTo: second\r\n\r\n");
  EXPECT_EQ(canonical_signed_fields(m, {"to"}), "to:second\r\n");
  EXPECT_EQ(canonical_signed_fields(m, {"to", "to"}), "to:second\r\nto:first\r\n");
  // The oversigned From has no instance: it adds nothing.
  EXPECT_EQ(canonical_signed_fields(m, {"from", "from", "to"}), "from:f\r\nto:second\r\n");
}

TEST(DkimKey, RejectsWhatIsNotAnRsaKey) {
  EXPECT_FALSE(crypto::RsaKey::load_pem("hello").ok());
  EXPECT_FALSE(crypto::RsaKey::load_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE "
                                        "KEY-----\n")
                   .ok());
}

TEST(DkimSign, SignatureVerifiesWithThePublicKey) {
  Result<crypto::RsaKey> key = crypto::RsaKey::load_pem(test::make_rsa_key_pem());
  ASSERT_TRUE(key.ok()) << key.error().message;
  EXPECT_EQ(key->bits(), 1024u);
  const std::string message =
      "From: A <a@example.com>\r\nTo: b@example.org\r\nSubject: a long\r\n folded subject\r\n"
      "DKIM-Signature: v=1; d=client.example; b=AAAA\r\n\r\nHello\r\n.dot\r\n\r\n\r\n";
  Result<std::string> field = sign(message, {"example.com", "sel", 1700000000}, *key);
  ASSERT_TRUE(field.ok()) << field.error().message;
  const std::string& f = *field;
  EXPECT_TRUE(f.starts_with("DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed;"));
  EXPECT_NE(f.find("d=example.com;"), std::string::npos);
  EXPECT_NE(f.find("t=1700000000;"), std::string::npos);
  EXPECT_EQ(f.find("l="), std::string::npos);
  EXPECT_TRUE(f.ends_with("\r\n"));
  for (size_t at = 0, end; (end = f.find("\r\n", at)) != std::string::npos; at = end + 2) {
    EXPECT_LE(end - at, 78u) << "line too long";
  }
  // bh= is the SHA-256 of the canonical body "Hello\r\n.dot\r\n".
  const crypto::Sha256Digest bh = crypto::sha256("Hello\r\n.dot\r\n");
  EXPECT_NE(f.find("bh=" +
                   text::base64_encode(
                       std::string_view(reinterpret_cast<const char*>(bh.data()), bh.size())) +
                   ";"),
            std::string::npos);
  // Verify as a verifier would: b= emptied, the signed fields, then this field.
  size_t b = f.rfind("b=");
  std::string unsigned_field = f.substr(0, b + 2);
  std::string sig = *text::base64_decode(f.substr(b + 2));
  SplitMessage m = split_message(message);
  std::string h_value = f.substr(f.find("h=from") + 2);
  h_value = h_value.substr(0, h_value.find(';'));
  const std::vector<std::string> h = {"from", "from", "subject", "to"};
  std::string stripped;
  for (char c : h_value) {
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') stripped.push_back(c);
  }
  EXPECT_EQ(stripped, "from:from:subject:to");
  std::string canon = relaxed_header(unsigned_field);
  canon.resize(canon.size() - 2);
  crypto::Sha256Digest digest = crypto::sha256(canonical_signed_fields(m, h) + canon);
  std::string der = key->public_der();
  mbedtls_pk_context pub;
  mbedtls_pk_init(&pub);
  ASSERT_EQ(mbedtls_pk_parse_public_key(&pub, reinterpret_cast<const unsigned char*>(der.data()),
                                        der.size()),
            0);
  EXPECT_EQ(mbedtls_pk_verify(&pub, MBEDTLS_MD_SHA256, digest.data(), digest.size(),
                              reinterpret_cast<const unsigned char*>(sig.data()), sig.size()),
            0);
  digest[0] ^= 1;
  EXPECT_NE(mbedtls_pk_verify(&pub, MBEDTLS_MD_SHA256, digest.data(), digest.size(),
                              reinterpret_cast<const unsigned char*>(sig.data()), sig.size()),
            0);
  mbedtls_pk_free(&pub);
}

// PKCS#1 v1.5 signatures are deterministic: every copy of the key, from any thread, gives the
// same bytes (blinding changes the work, not the result).
TEST(DkimKey, ConcurrentSigningGivesTheSameSignature) {
  Result<crypto::RsaKey> key = crypto::RsaKey::load_pem(test::make_rsa_key_pem());
  ASSERT_TRUE(key.ok());
  const crypto::Sha256Digest digest = crypto::sha256("concurrent");
  const std::string expected = key->sign_sha256(digest).value();
  std::vector<std::string> got(8);
  std::vector<std::thread> threads;
  for (size_t t = 0; t < got.size(); ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        auto sig = key->sign_sha256(digest);
        got[t] = sig.ok() && (i == 0 || got[t] == sig.value()) ? sig.value() : "mismatch";
      }
    });
  }
  for (auto& th : threads) th.join();
  for (const std::string& sig : got) EXPECT_EQ(sig, expected);
}

}  // namespace
}  // namespace mailcar::dkim
