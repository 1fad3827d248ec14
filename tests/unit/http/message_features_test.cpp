// The issue 10 request fields: template choice and precedence, attachment references against
// attachment_fetch, and the DreamFactory fields mailcar refuses rather than ignores.
#include <gtest/gtest.h>

#include <string>

#include "http/attachment_fetch.hpp"
#include "http/message_features.hpp"

namespace mailcar::http {
namespace {

FeatureFields read(const std::string& json, std::optional<FeatureError>& error) {
  static simdjson::dom::parser parser;
  FeatureFields f;
  simdjson::dom::object root = parser.parse(json).get_object().value();
  for (auto [key, value] : root) {
    if (read_feature_field(key, value, f, error) && error) break;
  }
  return f;
}

Config with_templates() {
  Config c;
  TemplateConfig t;
  t.name = "welcome";
  t.subject = "Welcome {n}";
  t.body_text = "text";
  t.from_email = "hello@example.com";
  t.from_name = "Hello";
  c.templates.emplace("welcome", t);
  return c;
}

TEST(MessageFeatures, TemplateFromBodyWinsOverQueryAndTemplateOverTemplateId) {
  Config c = with_templates();
  std::optional<FeatureError> e;
  FeatureFields f = read(R"({"template_id": "nope", "template": "welcome"})", e);
  ASSERT_FALSE(e);
  TemplateChoice choice = choose_template(c, f, "other", std::nullopt);
  ASSERT_FALSE(choice.error);
  ASSERT_NE(choice.chosen, nullptr);
  EXPECT_EQ(choice.chosen->name, "welcome");
  FeatureFields none = read(R"({"to": "x"})", e);
  EXPECT_EQ(choose_template(c, none, "welcome", std::nullopt).chosen, choice.chosen);
  EXPECT_EQ(choose_template(c, none, std::nullopt, std::nullopt).chosen, nullptr);
  TemplateChoice unknown = choose_template(c, none, std::nullopt, "42");
  ASSERT_TRUE(unknown.error);
  EXPECT_EQ(unknown.error->field, "template_id");
  EXPECT_EQ(unknown.error->message, "Unknown template \"42\".");
  FeatureFields numeric = read(R"({"template_id": 7})", e);
  EXPECT_EQ(*numeric.template_name, "7");
}

TEST(MessageFeatures, RequestFieldsWinOverTheTemplate) {
  Config c = with_templates();
  std::string subject = "mine", body_text, body_html, from_name, from_email = "me@example.com",
              reply_name, reply_email;
  apply_template(c.templates.at("welcome"),
                 {subject, body_text, body_html, from_name, from_email, reply_name, reply_email});
  EXPECT_EQ(subject, "mine");
  EXPECT_EQ(body_text, "text");
  EXPECT_EQ(body_html, "");
  EXPECT_EQ(from_email, "me@example.com");
  EXPECT_EQ(from_name, "Hello");
}

TEST(MessageFeatures, AttachmentReferencesAreJudged) {
  Config c;
  std::optional<FeatureError> e;
  FeatureFields url =
      read(R"({"attachment": "https://f.example.com/a, https://f.example.com/b"})", e);
  ASSERT_EQ(url.attachments.size(), 2u);
  auto off = check_attachment_refs(c, url);
  ASSERT_TRUE(off);
  EXPECT_EQ(off->field, "attachment");
  EXPECT_NE(off->message.find("not enabled"), std::string::npos);

  c.attachment_fetch = AttachmentFetchConfig{{"https://F.example.com/"}, 1024, 1000, ""};
  EXPECT_FALSE(check_attachment_refs(c, url));  // allowed: fetched (attachment_fetch.hpp)

  std::string eleven = R"({"attachment": [)";
  for (int i = 0; i < 11; ++i) eleven += std::string(i ? "," : "") + "\"https://f.example.com/x\"";
  FeatureFields many = read(eleven + "]}", e);
  auto too_many = check_attachment_refs(c, many);
  ASSERT_TRUE(too_many);
  EXPECT_NE(too_many->message.find("at most 10 URLs"), std::string::npos);

  for (const char* bad : {R"({"import_url": "http://f.example.com/a"})",
                          R"({"attachment": ["https://f.example.com.evil.test/a"]})",
                          R"({"attachment": "https://g.example.com/a"})"}) {
    FeatureFields f = read(bad, e);
    auto r = check_attachment_refs(c, f);
    ASSERT_TRUE(r) << bad;
    EXPECT_NE(r->message.find("is not https or not under a prefix"), std::string::npos) << bad;
  }
  FeatureFields storage = read(R"({"attachment": [{"service": "files", "path": "a.pdf"}]})", e);
  auto s = check_attachment_refs(c, storage);
  ASSERT_TRUE(s);
  EXPECT_NE(s->message.find("storage references"), std::string::npos);
  read(R"({"attachment": 5})", e);
  ASSERT_TRUE(e);
  EXPECT_EQ(e->field, "attachment");
  e.reset();
  read(R"({"file": "x"})", e);  // a multipart upload in DreamFactory, not a JSON field
  EXPECT_FALSE(e);
}

}  // namespace
}  // namespace mailcar::http

TEST(AttachmentFetch, FileNameIsTheDecodedLastPathSegment) {
  EXPECT_EQ(mailcar::http::attachment_name(
                "https://f.example.com/shared/report%202024.pdf?token=s3cret#x"),
            "report 2024.pdf");
  EXPECT_EQ(mailcar::http::attachment_name("https://f.example.com/a/b%C3%A9.txt"), "b\xC3\xA9.txt");
  EXPECT_EQ(mailcar::http::attachment_name("https://f.example.com/a/"), "attachment");
  EXPECT_EQ(mailcar::http::attachment_name("https://f.example.com"), "attachment");
  EXPECT_EQ(mailcar::http::attachment_name("https://f.example.com/a%0D%0Ab"), "attachment");
  EXPECT_EQ(mailcar::http::attachment_name("https://f.example.com/a%2Fb"), "attachment");
  EXPECT_EQ(mailcar::http::attachment_name("https://f.example.com/100%25%zz"), "100%%zz");
}
