#include "mailcar/dsn.hpp"

#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "message/mime_reader.hpp"

namespace mailcar {
namespace {

using testing::content_type_of;
using testing::header_param;
using testing::parse_entity;
using testing::Part;

const std::string kOriginal =
    "From: App <app@example.com>\r\n"
    "To: a@example.net, b@example.net\r\n"
    "Subject: Invoice 42\r\n"
    "Message-ID: <orig.1@example.com>\r\n"
    "\r\n"
    "SECRET BODY TEXT\r\n";

DsnInput input() {
  DsnInput in;
  in.reporting_mta = "mc.example.org";
  in.from = Mailbox{"MAILER-DAEMON@mc.example.org", "Mail Delivery System"};
  in.to = "app@example.com";
  in.envid = "env-77";
  in.arrival_unix = 1'700'000'000;
  in.now_unix = 1'700'000'600;
  in.original = kOriginal;
  in.message_id = "dsn.1@mc.example.org";
  in.recipients = {
      {"a@example.net", "rfc822;A@example.net", 550, "5.1.1 <a@example.net>: no such user", "",
       "smtp.example.net"},
      {"b@example.net", "", 0, "delivery time expired (spool.max_age)", "", ""},
  };
  return in;
}

// The delivery-status body: groups of fields separated by empty lines.
std::vector<Part> status_groups(const std::string& body) {
  std::vector<Part> groups;
  size_t pos = 0;
  while (pos < body.size()) {
    size_t end = body.find("\r\n\r\n", pos);
    std::string group =
        body.substr(pos, end == std::string::npos ? std::string::npos : end + 2 - pos);
    groups.push_back(parse_entity(group + "\r\n"));
    if (end == std::string::npos) break;
    pos = end + 4;
  }
  return groups;
}

TEST(Dsn, MultipartReportWithStatusAndOriginalHeaders) {
  auto dsn = build_dsn(input());
  ASSERT_TRUE(dsn.ok()) << dsn.error().message;
  EXPECT_EQ(dsn->envelope_from, "");  // the null sender
  EXPECT_EQ(dsn->envelope_rcpts, std::vector<std::string>{"app@example.com"});
  EXPECT_EQ(dsn->id, "dsn.1@mc.example.org");
  EXPECT_FALSE(dsn->smtputf8);
  for (size_t i = 0; i < dsn->data.size(); ++i) {
    if (dsn->data[i] == '\n') {
      ASSERT_TRUE(i > 0 && dsn->data[i - 1] == '\r') << "bare LF";
    }
  }

  Part top = parse_entity(dsn->data);
  EXPECT_EQ(content_type_of(top), "multipart/report");
  EXPECT_EQ(header_param(*top.header("Content-Type"), "report-type"), "delivery-status");
  EXPECT_EQ(top.header("To"), "app@example.com");
  EXPECT_EQ(top.header("Auto-Submitted"), "auto-replied");
  EXPECT_EQ(top.header("MIME-Version"), "1.0");
  EXPECT_EQ(top.header("Message-ID"), "<dsn.1@mc.example.org>");
  EXPECT_EQ(top.header("From"), "Mail Delivery System <MAILER-DAEMON@mc.example.org>");
  ASSERT_EQ(top.children.size(), 3u);

  EXPECT_EQ(content_type_of(top.children[0]), "text/plain");
  EXPECT_NE(top.children[0].body.find("<a@example.net>: 550 5.1.1"), std::string::npos);
  EXPECT_NE(top.children[0].body.find("<b@example.net>: delivery time expired"), std::string::npos);

  ASSERT_EQ(content_type_of(top.children[1]), "message/delivery-status");
  auto groups = status_groups(top.children[1].body);
  ASSERT_EQ(groups.size(), 3u) << top.children[1].body;
  EXPECT_EQ(groups[0].header("Reporting-MTA"), "dns; mc.example.org");
  EXPECT_EQ(groups[0].header("Original-Envelope-Id"), "env-77");
  EXPECT_EQ(groups[0].header("Arrival-Date"), "Tue, 14 Nov 2023 22:13:20 +0000");
  EXPECT_EQ(groups[1].header("Original-Recipient"), "rfc822;A@example.net");
  EXPECT_EQ(groups[1].header("Final-Recipient"), "rfc822; a@example.net");
  EXPECT_EQ(groups[1].header("Action"), "failed");
  EXPECT_EQ(groups[1].header("Status"), "5.1.1");
  EXPECT_EQ(groups[1].header("Remote-MTA"), "dns; smtp.example.net");
  EXPECT_EQ(groups[1].header("Diagnostic-Code"), "smtp; 550 5.1.1 <a@example.net>: no such user");
  EXPECT_FALSE(groups[2].header("Original-Recipient").has_value());
  EXPECT_EQ(groups[2].header("Final-Recipient"), "rfc822; b@example.net");
  EXPECT_EQ(groups[2].header("Status"), "4.4.7");
  EXPECT_FALSE(groups[2].header("Diagnostic-Code").has_value());

  EXPECT_EQ(content_type_of(top.children[2]), "text/rfc822-headers");
  Part headers = parse_entity(top.children[2].body);
  EXPECT_EQ(headers.header("Subject"), "Invoice 42");
  EXPECT_EQ(headers.header("Message-ID"), "<orig.1@example.com>");
  EXPECT_EQ(dsn->data.find("SECRET BODY TEXT"), std::string::npos) << "headers only";
}

TEST(Dsn, RetFullCarriesTheWholeMessage) {
  DsnInput in = input();
  in.ret = DsnRet::Full;
  auto dsn = build_dsn(in);
  ASSERT_TRUE(dsn.ok());
  Part top = parse_entity(dsn->data);
  ASSERT_EQ(top.children.size(), 3u);
  EXPECT_EQ(content_type_of(top.children[2]), "message/rfc822");
  EXPECT_EQ(top.children[2].body, kOriginal);
}

TEST(Dsn, MultiLineRepliesStayOnOneFieldAndErrorsAreValues) {
  DsnInput in = input();
  in.recipients.resize(1);
  in.recipients[0].smtp_reply = "5.7.1 line one\nline two\r\nInjected: field";
  in.envid = "";
  auto dsn = build_dsn(in);
  ASSERT_TRUE(dsn.ok());
  Part top = parse_entity(dsn->data);
  auto groups = status_groups(top.children[1].body);
  ASSERT_EQ(groups.size(), 2u);
  EXPECT_FALSE(groups[0].header("Original-Envelope-Id").has_value());
  EXPECT_EQ(groups[1].header("Status"), "5.7.1");
  EXPECT_FALSE(groups[1].header("Injected").has_value());
  EXPECT_NE(groups[1].header("Diagnostic-Code")->find("line one line two Injected: field"),
            std::string::npos);

  in.recipients[0].smtp_reply = "5.7.1 " + std::string(5000, 'x');
  dsn = build_dsn(in);
  ASSERT_TRUE(dsn.ok());
  for (size_t pos = 0, eol; (eol = dsn->data.find("\r\n", pos)) != std::string::npos;
       pos = eol + 2) {
    EXPECT_LE(eol - pos, 998u);
  }

  in.recipients.clear();
  EXPECT_FALSE(build_dsn(in).ok());
  in = input();
  in.to = "";
  EXPECT_FALSE(build_dsn(in).ok());
}

TEST(Dsn, WantedOnlyForARealSenderThatDidNotOptOut) {
  EXPECT_TRUE(dsn_wanted_for_failure("a@b", 0));
  EXPECT_TRUE(dsn_wanted_for_failure("a@b", dsn_notify::kFailure));
  EXPECT_TRUE(dsn_wanted_for_failure("a@b", dsn_notify::kFailure | dsn_notify::kDelay));
  EXPECT_FALSE(dsn_wanted_for_failure("", 0));  // never bounce a bounce
  EXPECT_FALSE(dsn_wanted_for_failure("a@b", dsn_notify::kNever));
  EXPECT_FALSE(dsn_wanted_for_failure("a@b", dsn_notify::kSuccess | dsn_notify::kDelay));
}

TEST(Dsn, StatusCodes) {
  EXPECT_EQ(dsn_status_for(550, "5.1.1 user unknown"), "5.1.1");
  EXPECT_EQ(dsn_status_for(550, "550 5.7.26 unauthenticated"), "5.7.26");
  EXPECT_EQ(dsn_status_for(550, "user unknown"), "5.0.0");
  EXPECT_EQ(dsn_status_for(552, "4.2.2 mismatched class"), "5.0.0");
  EXPECT_EQ(dsn_status_for(451, "4.7.1 greylisted"), "4.7.1");
  EXPECT_EQ(dsn_status_for(421, ""), "4.0.0");
  EXPECT_EQ(dsn_status_for(0, "Connection refused"), "4.4.7");
  EXPECT_EQ(dsn_status_for(550, "5.1234.1 bad"), "5.0.0");
}

TEST(Dsn, XtextDecoding) {
  EXPECT_EQ(xtext_decode(""), "");
  EXPECT_EQ(xtext_decode("abc!~"), "abc!~");
  EXPECT_EQ(xtext_decode("a+2Bb+3Dc+20"), "a+b=c ");
  EXPECT_EQ(xtext_decode("+C3+A9"), "\xC3\xA9");  // any byte may be encoded
  EXPECT_FALSE(xtext_decode("a+2b"));             // upper-case hex only
  EXPECT_FALSE(xtext_decode("a+2"));
  EXPECT_FALSE(xtext_decode("a+"));
  EXPECT_FALSE(xtext_decode("a=b"));
  EXPECT_FALSE(xtext_decode("a b"));
  EXPECT_FALSE(xtext_decode("\xC3\xA9"));  // raw 8-bit is not xtext
}

TEST(Dsn, RequestParameters) {
  DsnRequest mail;
  EXPECT_EQ(parse_dsn_mail_param("SIZE", "1", mail), DsnParamResult::NotDsn);
  EXPECT_EQ(parse_dsn_mail_param("Ret", "Hdrs", mail), DsnParamResult::Ok);
  EXPECT_EQ(mail.ret, DsnRet::Headers);
  EXPECT_EQ(parse_dsn_mail_param("RET", "HDRS", mail), DsnParamResult::Bad);  // twice
  EXPECT_EQ(parse_dsn_mail_param("ENVID", "x+2By", mail), DsnParamResult::Ok);
  EXPECT_EQ(mail.envid, "x+y");
  DsnRecipientRequest rcpt;
  EXPECT_EQ(parse_dsn_rcpt_param("NOTIFY", "delay,Success", rcpt), DsnParamResult::Ok);
  EXPECT_EQ(rcpt.notify, dsn_notify::kDelay | dsn_notify::kSuccess);
  EXPECT_EQ(parse_dsn_rcpt_param("ORCPT", "rfc822;a+40b", rcpt), DsnParamResult::Ok);
  EXPECT_EQ(rcpt.orcpt, "rfc822;a@b");
  EXPECT_EQ(parse_dsn_rcpt_param("ORCPT", "rfc822;" + std::string(494, 'a'), rcpt),
            DsnParamResult::Bad);  // twice, and over 500
  DsnRecipientRequest other;
  EXPECT_EQ(parse_dsn_rcpt_param("ORCPT", "rfc822;" + std::string(494, 'a'), other),
            DsnParamResult::Bad);
  EXPECT_EQ(parse_dsn_rcpt_param("ORCPT", "rfc822;" + std::string(493, 'a'), other),
            DsnParamResult::Ok);
  EXPECT_EQ(dsn_header_block("A: 1\r\nB: 2\r\n\r\nbody\r\n"), "A: 1\r\nB: 2\r\n");
  EXPECT_EQ(dsn_header_block("A: 1\r\n"), "A: 1\r\n");
}

}  // namespace
}  // namespace mailcar
