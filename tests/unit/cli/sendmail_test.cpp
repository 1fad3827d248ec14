// The sendmail command's pure parts: arguments, input framing, recipient extraction, exit
// statuses, and where the listener is found.
#include "mailcar/sendmail.hpp"

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <string>
#include <vector>

namespace mailcar::sendmail {
namespace {

Options parse_ok(const std::vector<std::string>& args) {
  auto o = parse_arguments(args);
  EXPECT_TRUE(o.ok()) << (o.ok() ? "" : o.error().message);
  return o.ok() ? *o : Options{};
}

std::string parse_error(const std::vector<std::string>& args) {
  auto o = parse_arguments(args);
  EXPECT_FALSE(o.ok());
  return o.ok() ? "" : o.error().message;
}

TEST(SendmailArgs, FlagsGroupedAndValuesAttachedOrSeparate) {
  Options o = parse_ok({"-ti", "-fme@example.com", "-F", "Cron Daemon", "you@example.org"});
  EXPECT_TRUE(o.extract_recipients);
  EXPECT_TRUE(o.ignore_dots);
  EXPECT_EQ(o.sender, "me@example.com");
  EXPECT_EQ(o.full_name, "Cron Daemon");
  EXPECT_EQ(o.recipients, std::vector<std::string>{"you@example.org"});

  o = parse_ok({"-oi", "-f", "<a@b.example>", "--", "-odd@x.example"});
  EXPECT_TRUE(o.ignore_dots);
  EXPECT_EQ(o.sender, "a@b.example");
  EXPECT_EQ(o.recipients, std::vector<std::string>{"-odd@x.example"});
}

TEST(SendmailArgs, CommonOptionsAreAcceptedAndIgnored) {
  // What cron (Debian), PHP, mailx and others pass.
  Options o = parse_ok({"-FCronDaemon", "-i",        "-B8BITMIME", "-oem",
                        "-odi",         "-U",        "-v",         "-bm",
                        "-N",           "never",     "-R",         "hdrs",
                        "-V",           "envid",     "-O",         "DeliveryMode=b",
                        "-L",           "tag",       "-h",         "5",
                        "-X",           "/dev/null", "-C",         "/etc/mail/sendmail.cf",
                        "-G",           "-m",        "-n",         "-s",
                        "a@x.example"});
  EXPECT_TRUE(o.ignore_dots);
  EXPECT_FALSE(o.extract_recipients);
  EXPECT_FALSE(o.sender.has_value());
  EXPECT_EQ(o.recipients.size(), 1u);
}

TEST(SendmailArgs, OperandsAreAddressLists) {
  Options o = parse_ok({"a@x.example, Bee <b@y.example>", "c@z.example"});
  EXPECT_EQ(o.recipients, (std::vector<std::string>{"a@x.example", "b@y.example", "c@z.example"}));
}

TEST(SendmailArgs, NullSenderAndRAlias) {
  EXPECT_EQ(parse_ok({"-f", "<>", "a@x.example"}).sender, "");
  EXPECT_EQ(parse_ok({"-r", "bounce@x.example", "a@x.example"}).sender, "bounce@x.example");
}

TEST(SendmailArgs, UsageErrors) {
  EXPECT_NE(parse_error({"-f"}).find("-f needs a value"), std::string::npos);
  EXPECT_NE(parse_error({"-Z"}).find("unknown option -Z"), std::string::npos);
  EXPECT_NE(parse_error({"-bs"}).find("-bs is not supported"), std::string::npos);
  EXPECT_NE(parse_error({"-bp"}).find("not supported"), std::string::npos);
  EXPECT_NE(parse_error({"-q"}).find("-q is not supported"), std::string::npos);
  EXPECT_NE(parse_error({"-q30m"}).find("-q is not supported"), std::string::npos);
  EXPECT_NE(parse_error({"-f", "not an address"}).find("-f not an address"), std::string::npos);
  EXPECT_NE(parse_error({"root"}).find("recipient root"), std::string::npos);
  EXPECT_NE(parse_error({"-F", "a\nBcc: x@y.example"}).find("line break"), std::string::npos);
}

std::string collect(bool ignore_dots, const std::vector<std::string>& chunks,
                    MessageCollector::Status expect_last) {
  MessageCollector c(ignore_dots, 1000);
  MessageCollector::Status s = MessageCollector::Status::More;
  for (const auto& chunk : chunks) {
    s = c.feed(chunk);
    if (s != MessageCollector::Status::More) break;
  }
  if (s == MessageCollector::Status::More) s = c.finish();
  EXPECT_EQ(s, expect_last);
  return c.take();
}

TEST(SendmailInput, LoneDotEndsTheMessageUnlessIgnored) {
  using S = MessageCollector::Status;
  EXPECT_EQ(collect(false, {"a\n", "b\n.\nafter\n"}, S::Done), "a\nb\n");
  EXPECT_EQ(collect(false, {"a\r\n.", "\r\nafter"}, S::Done), "a\r\n");
  EXPECT_EQ(collect(false, {".\n"}, S::Done), "");
  EXPECT_EQ(collect(false, {"a\n."}, S::Done), "a\n");  // "." as the last line, no LF
  EXPECT_EQ(collect(false, {"a\n..\n.b\n"}, S::Done), "a\n..\n.b\n");  // not unstuffed
  EXPECT_EQ(collect(true, {"a\n.\nb\n"}, S::Done), "a\n.\nb\n");
}

TEST(SendmailInput, LimitIsEnforced) {
  MessageCollector c(true, 10);
  EXPECT_EQ(c.feed("0123456789"), MessageCollector::Status::More);
  EXPECT_EQ(c.feed("x"), MessageCollector::Status::TooLarge);
}

OutboundMessage prepare_ok(const std::string& raw, const Options& o) {
  auto m = prepare_message(raw, o);
  EXPECT_TRUE(m.ok()) << (m.ok() ? "" : m.error().message);
  return m.ok() ? std::move(m).value() : OutboundMessage{};
}

TEST(SendmailMessage, ExtractsToCcBccWithGroupsAndFoldingAndRemovesBcc) {
  Options o;
  o.extract_recipients = true;
  std::string raw =
      "From: App <app@example.com>\n"
      "To: Team: one@example.org, \"Two, Esq.\" <two@example.org>;,\n"
      "  three@example.org\n"
      "Cc: undisclosed-recipients:;\n"
      "Bcc: hidden@example.net,\n"
      "\tone@EXAMPLE.ORG\n"
      "Subject: s\n"
      "\n"
      "Bcc: in the body stays\n";
  OutboundMessage m = prepare_ok(raw, o);
  EXPECT_EQ(m.envelope_from, "app@example.com");
  EXPECT_EQ(m.envelope_rcpts,
            (std::vector<std::string>{"one@example.org", "two@example.org", "three@example.org",
                                      "hidden@example.net"}));
  EXPECT_EQ(m.data.find("hidden@"), std::string::npos);
  EXPECT_EQ(m.data.find("\tone@"), std::string::npos);
  EXPECT_NE(m.data.find("Subject: s\r\n\r\nBcc: in the body stays\r\n"), std::string::npos);
  EXPECT_EQ(m.data.find("\n\n"), std::string::npos);   // CRLF everywhere
  EXPECT_EQ(m.data.find("Date:"), std::string::npos);  // left to the SMTP door
}

TEST(SendmailMessage, OperandsWithoutDashTAndSenderFromDashF) {
  Options o;
  o.recipients = {"x@example.org"};
  o.sender = "bounce@example.com";
  OutboundMessage m = prepare_ok("From: a@example.com\nTo: y@example.org\n\nhi\n", o);
  EXPECT_EQ(m.envelope_from, "bounce@example.com");
  EXPECT_EQ(m.envelope_rcpts, std::vector<std::string>{"x@example.org"});
}

TEST(SendmailMessage, FromIsAddedFromDashFAndDashF) {
  Options o;
  o.recipients = {"x@example.org"};
  o.sender = "cron@example.com";
  o.full_name = "Cron Daemon";
  OutboundMessage m = prepare_ok("Subject: backup\n\nok\n", o);
  EXPECT_EQ(m.data.rfind("From: Cron Daemon <cron@example.com>\r\nSubject: backup\r\n", 0), 0u);
}

TEST(SendmailMessage, UnixFromLineIsDropped) {
  Options o;
  o.recipients = {"x@example.org"};
  OutboundMessage m =
      prepare_ok("From app@example.com Tue Dec  1 10:00:00 2026\nFrom: app@example.com\n\nb\n", o);
  EXPECT_EQ(m.data.rfind("From: app@example.com\r\n", 0), 0u);
}

TEST(SendmailMessage, EightBitAndUtf8Flags) {
  Options o;
  o.recipients = {"jürgen@example.org"};
  OutboundMessage m = prepare_ok("From: a@example.com\n\nGrüße\n", o);
  EXPECT_TRUE(m.smtputf8);
  EXPECT_TRUE(m.eight_bit);
}

std::string prepare_error(const std::string& raw, const Options& o) {
  auto m = prepare_message(raw, o);
  EXPECT_FALSE(m.ok());
  return m.ok() ? "" : m.error().message;
}

TEST(SendmailMessage, DataErrors) {
  Options t;
  t.extract_recipients = true;
  EXPECT_NE(prepare_error("", t).find("empty"), std::string::npos);
  EXPECT_NE(prepare_error(" \n\n", t).find("empty"), std::string::npos);
  EXPECT_NE(prepare_error("just a body line\n", t).find("no header section"), std::string::npos);
  EXPECT_NE(prepare_error("\nbody after an empty line\n", t).find("no header section"),
            std::string::npos);
  EXPECT_NE(prepare_error("From: a@example.com\nSubject: x\n\nb\n", t).find("no recipient"),
            std::string::npos);
  EXPECT_NE(prepare_error("To: b@example.org\n\nb\n", t).find("no sender"), std::string::npos);
  EXPECT_NE(prepare_error("From: a@example.com\nTo: root\n\nb\n", t).find("To: "),
            std::string::npos);
  EXPECT_NE(prepare_error("From: <broken\nTo: b@example.org\n\nb\n", t).find("From: "),
            std::string::npos);
}

TEST(SendmailExit, SysexitsForEveryOutcome) {
  DeliveryResult sent;
  EXPECT_EQ(exit_for(sent, true), Exit::Ok);
  DeliveryResult partial;
  partial.rejected.push_back({"b@x.example", 452, "4.5.3 Too many recipients"});
  EXPECT_EQ(exit_for(partial, true), Exit::TempFail);
  partial.rejected.push_back({"c@x.example", 550, "5.1.1 no"});
  EXPECT_EQ(exit_for(partial, true), Exit::NoPermission);

  DeliveryResult r = delivery_failure(DeliveryStatus::Rejected, "x", false);
  r.smtp_code = 550;
  EXPECT_EQ(exit_for(r, true), Exit::NoPermission);
  r.smtp_code = 451;
  EXPECT_EQ(exit_for(r, true), Exit::TempFail);
  r = delivery_failure(DeliveryStatus::AuthenticationFailed, "x", false);
  r.smtp_code = 535;
  EXPECT_EQ(exit_for(r, true), Exit::NoPermission);
  EXPECT_EQ(exit_for(delivery_failure(DeliveryStatus::ConnectionRefused, "x", true), false),
            Exit::Unavailable);
  EXPECT_EQ(exit_for(delivery_failure(DeliveryStatus::ConnectionTimedOut, "x", true), false),
            Exit::Unavailable);
  EXPECT_EQ(exit_for(delivery_failure(DeliveryStatus::ConnectionTimedOut, "x", true), true),
            Exit::TempFail);
  EXPECT_EQ(exit_for(delivery_failure(DeliveryStatus::ProtocolError, "closed", true), true),
            Exit::TempFail);
  EXPECT_EQ(exit_for(delivery_failure(DeliveryStatus::ProtocolError, "not SMTP", false), true),
            Exit::Unavailable);
}

// --------------------------------------------------------------------------- the listener

std::map<std::string, std::string>* g_env = nullptr;
std::optional<std::string> fake_env(const std::string& name) {
  auto it = g_env->find(name);
  if (it == g_env->end()) return std::nullopt;
  return it->second;
}

class SendmailTarget : public ::testing::Test {
 protected:
  void SetUp() override {
    g_env = &env_;
    char tmpl[] = "/tmp/sendmail_target_XXXXXX";
    dir_ = mkdtemp(tmpl);
  }
  void TearDown() override {
    std::system(("rm -rf " + dir_).c_str());
    g_env = nullptr;
  }
  std::string write(const std::string& name, const std::string& text) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path) << text;
    return path;
  }
  Target resolve(const std::string& file) {
    auto t = resolve_target(file, fake_env);
    EXPECT_TRUE(t.ok()) << (t.ok() ? "" : t.error().message);
    return t.ok() ? *t : Target{};
  }
  std::map<std::string, std::string> env_;
  std::string dir_;
};

TEST_F(SendmailTarget, EnvironmentThenConfigurationThenDefault) {
  env_["MAILCAR_CONFIG"] = dir_ + "/none.yaml";  // missing: skipped
  EXPECT_EQ(resolve("").address.text, "127.0.0.1:2525");

  std::string file = write("m.yaml",
                           "listen:\n  http: 127.0.0.1:1\n  smtp: ${SMTP_ADDR:-0.0.0.0:2626}\n"
                           "services:\n  x: {host: \"${UNSET_SECRET}\"}\n");
  Target t = resolve(file);  // the rest of the file (an unset variable) does not matter
  EXPECT_EQ(t.address.host, "127.0.0.1");  // the wildcard is reached through loopback
  EXPECT_EQ(t.address.port, 2626);
  env_["MAILCAR_CONFIG"] = file;
  EXPECT_EQ(resolve("").address.port, 2626);

  env_["MAILCAR_SMTP"] = "[::1]:2727";
  EXPECT_EQ(resolve(file).address.text, "[::1]:2727");
  env_["MAILCAR_SMTP"] = "localhost:25";
  EXPECT_FALSE(resolve_target(file, fake_env).ok());
}

TEST_F(SendmailTarget, UnreadableConfigurationFallsBack) {
  if (geteuid() == 0) {
    // root reads any file; a directory stands in for a file that cannot be read.
    ::mkdir((dir_ + "/dir.yaml").c_str(), 0700);
    EXPECT_EQ(resolve(dir_ + "/dir.yaml").address.text, "127.0.0.1:2525");
  } else {
    std::string file = write("secret.yaml", "listen:\n  smtp: 127.0.0.1:2999\n");
    ::chmod(file.c_str(), 0);
    EXPECT_EQ(resolve(file).address.text, "127.0.0.1:2525");
  }
  env_["MAILCAR_SMTP_LISTEN"] = "127.0.0.1:2828";
  EXPECT_EQ(resolve(dir_ + "/missing.yaml").address.text, "127.0.0.1:2828");
}

TEST_F(SendmailTarget, ConfigurationWithoutSmtpListenerSaysSo) {
  std::string file = write("h.yaml", "listen:\n  http: 127.0.0.1:2580\n");
  Target t = resolve(file);
  EXPECT_EQ(t.address.text, "127.0.0.1:2525");
  EXPECT_NE(t.note.find("has no listen.smtp"), std::string::npos);
}

TEST(SendmailInvocation, ByNameOrSubcommand) {
  std::vector<std::string> args;
  std::string config;
  const char* link[] = {"/usr/sbin/sendmail", "-t", "-i"};
  EXPECT_TRUE(is_sendmail_invocation(3, const_cast<char**>(link), args, config));
  EXPECT_EQ(args, (std::vector<std::string>{"-t", "-i"}));
  EXPECT_EQ(config, "");

  const char* sub[] = {"mailcar", "-c", "/etc/m.yaml", "sendmail", "a@x.example"};
  EXPECT_TRUE(is_sendmail_invocation(5, const_cast<char**>(sub), args, config));
  EXPECT_EQ(args, std::vector<std::string>{"a@x.example"});
  EXPECT_EQ(config, "/etc/m.yaml");

  const char* daemon[] = {"mailcar", "-c", "/etc/m.yaml"};
  EXPECT_FALSE(is_sendmail_invocation(3, const_cast<char**>(daemon), args, config));
  const char* check[] = {"mailcar", "--check"};
  EXPECT_FALSE(is_sendmail_invocation(2, const_cast<char**>(check), args, config));
}

}  // namespace
}  // namespace mailcar::sendmail
