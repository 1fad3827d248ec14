// Issue 10 configuration keys: templates (inline and *_file), dkim (key parsed at load) and
// attachment_fetch, with their errors at the key's position.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "mailcar/config.hpp"
#include "mailcar/crypto.hpp"
#include "support/rsa_key.hpp"

using namespace mailcar;
namespace fs = std::filesystem;

namespace {

class MessageFeaturesConfig : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = (fs::temp_directory_path() / "mailcar-features-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string write(const std::string& name, const std::string& content) {
    fs::path p = dir_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }
  Result<Config> load(const std::string& extra) {
    return load_config_text("services:\n  email:\n    host: smtp.example.com\n" + extra,
                            (dir_ / "mailcar.yaml").string(), nullptr);
  }
  fs::path dir_;
};

TEST_F(MessageFeaturesConfig, TemplatesInlineAndFromFiles) {
  write("tpl/w.txt", "Hello {name}\n");
  auto c = load(
      "templates:\n  welcome:\n    subject: Hi {name}\n    body_text_file: tpl/w.txt\n"
      "    body_html: <p>x</p>\n    from_email: a@example.com\n    from_name: A\n");
  ASSERT_TRUE(c.ok()) << c.error().message;
  const TemplateConfig& t = c->templates.at("welcome");
  EXPECT_EQ(*t.subject, "Hi {name}");
  EXPECT_EQ(*t.body_text, "Hello {name}\n");
  EXPECT_EQ(*t.body_html, "<p>x</p>");
  EXPECT_EQ(t.from_email, "a@example.com");
  EXPECT_EQ(t.from_name, "A");
  EXPECT_EQ(t.reply_to_email, "");
}

TEST_F(MessageFeaturesConfig, TemplateErrorsPointAtTheKey) {
  auto c = load(
      "templates:\n  w:\n    body_text_file: missing.txt\n    body_html: x\n"
      "    body_html_file: y.html\n    subject: \"a\\nb\"\n    colour: red\n");
  ASSERT_FALSE(c.ok());
  const std::string& e = c.error().message;
  EXPECT_THAT(e, testing::HasSubstr("mailcar.yaml:6:5: templates.w.body_text_file: "));
  EXPECT_THAT(e, testing::HasSubstr("templates.w.body_html_file: give either body_html or "
                                    "body_html_file, not both"));
  EXPECT_THAT(e, testing::HasSubstr("templates.w.subject: must not contain CR, LF or NUL"));
  EXPECT_THAT(e, testing::HasSubstr("templates.w.colour: unknown key"));
}

TEST_F(MessageFeaturesConfig, DkimKeyIsLoadedAndCheckedAtLoad) {
  std::string key = write("k.pem", test::make_rsa_key_pem());
  auto c = load(
      "dkim:\n  - domain: Example.COM\n    selector: s1\n    key_file: k.pem\n"
      "  - domain: b.test\n    selector: s2\n    key_file: k.pem\n    subdomains: true\n");
  ASSERT_TRUE(c.ok()) << c.error().message;
  ASSERT_EQ(c->dkim.size(), 2u);
  EXPECT_EQ(c->dkim[0].domain, "example.com");
  EXPECT_EQ(c->dkim[0].key_file, key);
  ASSERT_NE(c->dkim[0].key, nullptr);
  EXPECT_EQ(c->dkim[0].key->bits(), 1024u);
  EXPECT_FALSE(c->dkim[0].subdomains);
  EXPECT_TRUE(c->dkim[1].subdomains);
}

TEST_F(MessageFeaturesConfig, DkimErrors) {
  write("bad.pem", "-----BEGIN RSA PRIVATE KEY-----\nc2VjcmV0\n-----END RSA PRIVATE KEY-----\n");
  auto c = load(
      "dkim:\n  - domain: example.com\n    selector: s\n    key_file: bad.pem\n"
      "  - selector: s\n    key_file: none.pem\n");
  ASSERT_FALSE(c.ok());
  const std::string& e = c.error().message;
  EXPECT_THAT(e, testing::HasSubstr(":7:5: dkim[0].key_file: "));
  EXPECT_THAT(e, testing::HasSubstr("not a valid PEM private key"));
  EXPECT_THAT(e, testing::HasSubstr("dkim[1].domain: is required"));
  EXPECT_THAT(e, testing::HasSubstr(":9:5: dkim[1].key_file: "));
  EXPECT_THAT(e, testing::Not(testing::HasSubstr("c2VjcmV0")));  // never the key's content
}

TEST_F(MessageFeaturesConfig, AttachmentFetch) {
  auto c = load(
      "attachment_fetch:\n  allow: [\"https://files.example.com/shared/\"]\n"
      "  max_bytes: 5MB\n  timeout: 10s\n");
  ASSERT_TRUE(c.ok()) << c.error().message;
  ASSERT_TRUE(c->attachment_fetch);
  EXPECT_EQ(c->attachment_fetch->allow.front(), "https://files.example.com/shared/");
  EXPECT_EQ(c->attachment_fetch->max_bytes, 5u * 1024 * 1024);
  EXPECT_EQ(c->attachment_fetch->timeout_ms, 10'000u);
  EXPECT_EQ(c->attachment_fetch->ca_file, "");  // the system bundle
  auto ca =
      load("attachment_fetch:\n  allow: [\"https://f.example.com/\"]\n  ca_file: certs/ca.pem\n");
  ASSERT_TRUE(ca.ok()) << ca.error().message;
  EXPECT_EQ(ca->attachment_fetch->ca_file, (dir_ / "certs/ca.pem").string());  // as the file's
  auto off = load("");
  ASSERT_TRUE(off.ok());
  EXPECT_FALSE(off->attachment_fetch);  // off by default
  auto bad = load("attachment_fetch:\n  allow: [\"http://x.example/\", \"https://host-only\"]\n");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.error().message, testing::HasSubstr("attachment_fetch.allow[0]: must be an "
                                                      "https:// URL prefix"));
  EXPECT_THAT(bad.error().message, testing::HasSubstr("attachment_fetch.allow[1]: must be"));
}

}  // namespace
