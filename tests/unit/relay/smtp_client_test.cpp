#include "mailcar/smtp_client.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <random>
#include <string>
#include <vector>

#include "mailcar/mime.hpp"
#include "mailcar/text.hpp"

namespace mailcar {
namespace {

using Kind = SmtpClientEvent::Kind;
using State = SmtpClientSession::State;

SmtpClientOptions plain_options() {
  SmtpClientOptions o;
  o.ehlo_name = "relay.test";
  o.encryption = Encryption::None;
  return o;
}

OutboundMessage make_message(std::vector<std::string> rcpts = {"bob@example.com"},
                             std::string data = "Subject: hi\r\n\r\nhello\r\n") {
  OutboundMessage m;
  m.id = "id1@relay.test";
  m.envelope_from = "alice@example.com";
  m.envelope_rcpts = std::move(rcpts);
  m.data = std::move(data);
  return m;
}

bool has_event(const SmtpClientOutput& out, Kind kind) {
  for (const auto& e : out.events) {
    if (e.kind == kind) return true;
  }
  return false;
}

const SmtpClientEvent* find_event(const SmtpClientOutput& out, Kind kind) {
  for (const auto& e : out.events) {
    if (e.kind == kind) return &e;
  }
  return nullptr;
}

std::string ehlo_reply(const std::vector<std::string>& keywords) {
  std::string r = "250";
  r += keywords.empty() ? " " : "-";
  r += "upstream.test greets you\r\n";
  for (size_t i = 0; i < keywords.size(); ++i) {
    r += "250";
    r += (i + 1 == keywords.size()) ? " " : "-";
    r += keywords[i] + "\r\n";
  }
  return r;
}

// Greeting + EHLO with `keywords`; expects the session to be Ready afterwards.
void make_ready(SmtpClientSession& s, const std::vector<std::string>& keywords) {
  auto out = s.feed("220 upstream.test ESMTP\r\n");
  ASSERT_EQ(out.write, "EHLO relay.test\r\n");
  out = s.feed(ehlo_reply(keywords));
  ASSERT_TRUE(has_event(out, Kind::Ready)) << out.write;
  ASSERT_EQ(s.state(), State::Ready);
}

std::string pull_all(SmtpClientSession& s, size_t chunk = 1 << 20) {
  std::string body;
  while (s.pull_body(body, chunk)) {
  }
  return body;
}

// Runs one non-pipelined transaction with every recipient accepted; returns the final output.
SmtpClientOutput send_simple(SmtpClientSession& s, const OutboundMessage& m) {
  auto out = s.start_message(m);
  EXPECT_EQ(out.write, "MAIL FROM:<" + m.envelope_from + ">\r\n");
  out = s.feed("250 2.1.0 ok\r\n");
  for (size_t i = 0; i < m.envelope_rcpts.size(); ++i) {
    EXPECT_EQ(out.write, "RCPT TO:<" + m.envelope_rcpts[i] + ">\r\n");
    out = s.feed("250 2.1.5 ok\r\n");
  }
  EXPECT_EQ(out.write, "DATA\r\n");
  out = s.feed("354 go ahead\r\n");
  EXPECT_TRUE(s.body_pending());
  pull_all(s);
  return s.feed("250 2.0.0 queued as 42\r\n");
}

TEST(SmtpClientSession, HappyPathWithoutPipelining) {
  SmtpClientSession s(plain_options());
  make_ready(s, {"8BITMIME", "SIZE 1000000"});
  OutboundMessage m = make_message({"bob@example.com", "carol@example.com"});
  m.eight_bit = true;
  auto out = s.start_message(m);
  EXPECT_EQ(out.write, "MAIL FROM:<alice@example.com> SIZE=" + std::to_string(m.data.size()) +
                           " BODY=8BITMIME\r\n");
  out = s.feed("250 ok\r\n");
  EXPECT_EQ(out.write, "RCPT TO:<bob@example.com>\r\n");
  out = s.feed("250 ok\r\n");
  EXPECT_EQ(out.write, "RCPT TO:<carol@example.com>\r\n");
  out = s.feed("250 ok\r\n");
  EXPECT_EQ(out.write, "DATA\r\n");
  out = s.feed("354 send it\r\n");
  EXPECT_TRUE(out.write.empty());
  ASSERT_TRUE(s.body_pending());
  EXPECT_EQ(pull_all(s), m.data + ".\r\n");
  EXPECT_EQ(s.state(), State::EndOfData);
  out = s.feed("250 2.0.0 Ok: queued as ABC\r\n");
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->result.status, DeliveryStatus::Sent);
  EXPECT_EQ(done->result.smtp_code, 250);
  EXPECT_EQ(done->result.smtp_reply, "2.0.0 Ok: queued as ABC");
  EXPECT_EQ(done->result.accepted,
            (std::vector<std::string>{"bob@example.com", "carol@example.com"}));
  EXPECT_TRUE(done->result.rejected.empty());
  EXPECT_TRUE(has_event(out, Kind::Ready));
  EXPECT_EQ(s.state(), State::Ready);
}

TEST(SmtpClientSession, HappyPathWithPipeliningSendsOneBatch) {
  SmtpClientSession s(plain_options());
  make_ready(s, {"PIPELINING"});
  OutboundMessage m = make_message({"bob@example.com", "carol@example.com"});
  auto out = s.start_message(m);
  EXPECT_EQ(out.write,
            "MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\n"
            "RCPT TO:<carol@example.com>\r\nDATA\r\n");
  out = s.feed("250 ok\r\n250 ok\r\n550 5.1.1 no such user\r\n354 go\r\n");
  EXPECT_TRUE(out.write.empty());
  ASSERT_TRUE(s.body_pending());
  pull_all(s);
  out = s.feed("250 done\r\n");
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->result.status, DeliveryStatus::Sent);
  EXPECT_EQ(done->result.accepted, std::vector<std::string>{"bob@example.com"});
  ASSERT_EQ(done->result.rejected.size(), 1u);
  EXPECT_EQ(done->result.rejected[0].address, "carol@example.com");
  EXPECT_EQ(done->result.rejected[0].smtp_code, 550);
  EXPECT_EQ(done->result.rejected[0].smtp_reply, "5.1.1 no such user");
}

TEST(SmtpClientSession, NoPipeliningWaitsForEachReply) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  OutboundMessage m = make_message({"a@x.test", "b@x.test"});
  auto out = s.start_message(m);
  EXPECT_EQ(out.write, "MAIL FROM:<alice@example.com>\r\n");  // nothing else yet
}

TEST(SmtpClientSession, PartialRejectionWithoutPipelining) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  OutboundMessage m = make_message({"a@x.test", "b@x.test"});
  s.start_message(m);
  s.feed("250 ok\r\n");
  auto out = s.feed("450 4.2.1 mailbox busy\r\n");
  EXPECT_EQ(out.write, "RCPT TO:<b@x.test>\r\n");
  out = s.feed("250 ok\r\n");
  EXPECT_EQ(out.write, "DATA\r\n");
  s.feed("354 go\r\n");
  pull_all(s);
  out = s.feed("250 ok\r\n");
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->result.status, DeliveryStatus::Sent);
  EXPECT_EQ(done->result.accepted, std::vector<std::string>{"b@x.test"});
  ASSERT_EQ(done->result.rejected.size(), 1u);
  EXPECT_EQ(done->result.rejected[0].smtp_code, 450);
}

TEST(SmtpClientSession, AllRecipientsRejectedSendsNoData) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  OutboundMessage m = make_message({"a@x.test", "b@x.test"});
  s.start_message(m);
  s.feed("250 ok\r\n");
  auto out = s.feed("550 5.1.1 unknown a\r\n");
  EXPECT_EQ(out.write, "RCPT TO:<b@x.test>\r\n");
  out = s.feed("551 5.1.1 unknown b\r\n");
  EXPECT_TRUE(out.write.empty());  // no DATA
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->result.status, DeliveryStatus::Rejected);
  EXPECT_EQ(done->result.smtp_code, 550);  // the first rejection decides
  EXPECT_EQ(done->result.smtp_reply, "5.1.1 unknown a");
  EXPECT_EQ(done->result.message, "5.1.1 unknown a");
  EXPECT_FALSE(done->result.retryable);
  EXPECT_TRUE(done->before_data);
  EXPECT_TRUE(done->result.accepted.empty());
  EXPECT_EQ(done->result.rejected.size(), 2u);
  EXPECT_EQ(s.state(), State::Ready);
  // The next transaction starts with RSET.
  OutboundMessage m2 = make_message();
  out = s.start_message(m2);
  EXPECT_EQ(out.write, "RSET\r\n");
  out = s.feed("250 flushed\r\n");
  EXPECT_EQ(out.write, "MAIL FROM:<alice@example.com>\r\n");
}

TEST(SmtpClientSession, AllRecipientsRejectedPipelinedDrainsDataReply) {
  SmtpClientSession s(plain_options());
  make_ready(s, {"PIPELINING"});
  OutboundMessage m = make_message({"a@x.test"});
  s.start_message(m);
  auto out = s.feed("250 ok\r\n451 4.7.1 greylisted\r\n");
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->result.status, DeliveryStatus::Rejected);
  EXPECT_EQ(done->result.smtp_code, 451);
  EXPECT_TRUE(done->result.retryable);
  EXPECT_FALSE(has_event(out, Kind::Ready));  // DATA's reply still outstanding
  EXPECT_EQ(s.state(), State::Draining);
  out = s.feed("554 5.5.1 no valid recipients\r\n");
  EXPECT_TRUE(has_event(out, Kind::Ready));
  EXPECT_FALSE(has_event(out, Kind::MessageDone));
  OutboundMessage m2 = make_message();
  out = s.start_message(m2);
  EXPECT_EQ(out.write,
            "RSET\r\nMAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n");
}

TEST(SmtpClientSession, PipelinedDataAcceptedWithoutRecipientsHangsUp) {
  SmtpClientSession s(plain_options());
  make_ready(s, {"PIPELINING"});
  OutboundMessage m = make_message({"a@x.test"});
  s.start_message(m);
  auto out = s.feed("250 ok\r\n550 no\r\n354 go ahead anyway\r\n");
  EXPECT_TRUE(has_event(out, Kind::MessageDone));
  EXPECT_TRUE(s.terminal());  // never send an empty body; the owner closes the connection
  EXPECT_TRUE(out.write.empty());
}

TEST(SmtpClientSession, MailFromRejected) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  OutboundMessage m = make_message();
  s.start_message(m);
  auto out = s.feed("553 5.7.1 sender not allowed\r\n");
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->result.status, DeliveryStatus::Rejected);
  EXPECT_EQ(done->result.smtp_code, 553);
  EXPECT_TRUE(out.write.empty());
  EXPECT_EQ(s.state(), State::Ready);
}

TEST(SmtpClientSession, FinalReplyTemporaryVersusPermanent) {
  for (int code : {451, 554}) {
    SmtpClientSession s(plain_options());
    make_ready(s, {});
    OutboundMessage m = make_message();
    s.start_message(m);
    s.feed("250 ok\r\n");
    s.feed("250 ok\r\n");
    s.feed("354 go\r\n");
    pull_all(s);
    auto out = s.feed(std::to_string(code) + " nope\r\n");
    const auto* done = find_event(out, Kind::MessageDone);
    ASSERT_NE(done, nullptr);
    EXPECT_EQ(done->result.status, DeliveryStatus::Rejected);
    EXPECT_EQ(done->result.smtp_code, code);
    EXPECT_EQ(done->result.retryable, code == 451);
    EXPECT_FALSE(done->before_data);
    EXPECT_TRUE(done->result.accepted.empty());
  }
}

TEST(SmtpClientSession, DataRefused) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  OutboundMessage m = make_message();
  s.start_message(m);
  s.feed("250 ok\r\n");
  s.feed("250 ok\r\n");
  auto out = s.feed("452 4.3.1 insufficient storage\r\n");
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->result.status, DeliveryStatus::Rejected);
  EXPECT_TRUE(done->result.retryable);
  EXPECT_TRUE(done->before_data);
  EXPECT_TRUE(done->result.accepted.empty());
}

TEST(SmtpClientSession, HeloFallback) {
  for (int code : {500, 502, 504, 550}) {
    SmtpClientSession s(plain_options());
    auto out = s.feed("220 old server\r\n");
    out = s.feed(std::to_string(code) + " what?\r\n");
    EXPECT_EQ(out.write, "HELO relay.test\r\n");
    EXPECT_EQ(s.state(), State::Helo);
    out = s.feed("250 hello\r\n");
    EXPECT_TRUE(has_event(out, Kind::Ready));
    EXPECT_FALSE(s.extensions().pipelining);
  }
}

TEST(SmtpClientSession, EhloTemporaryFailureIsNotFallback) {
  SmtpClientSession s(plain_options());
  s.feed("220 hi\r\n");
  auto out = s.feed("421 4.3.2 go away\r\n");
  const auto* failed = find_event(out, Kind::Failed);
  ASSERT_NE(failed, nullptr);
  EXPECT_EQ(failed->result.status, DeliveryStatus::Rejected);
  EXPECT_TRUE(failed->result.retryable);
  EXPECT_TRUE(s.terminal());
}

TEST(SmtpClientSession, GreetingRefusal) {
  SmtpClientSession s(plain_options());
  auto out = s.feed("554 no service for you\r\n");
  const auto* failed = find_event(out, Kind::Failed);
  ASSERT_NE(failed, nullptr);
  EXPECT_EQ(failed->result.smtp_code, 554);
  EXPECT_FALSE(failed->result.retryable);
  EXPECT_TRUE(out.write.empty());
}

TEST(SmtpClientSession, StartTlsRequiredButNotOffered) {
  SmtpClientOptions o = plain_options();
  o.encryption = Encryption::StartTls;
  o.username = "user";
  o.password = "secret";
  SmtpClientSession s(o);
  s.feed("220 hi\r\n");
  auto out = s.feed(ehlo_reply({"AUTH PLAIN LOGIN", "PIPELINING"}));
  EXPECT_TRUE(out.write.empty());  // no AUTH in clear, nothing at all
  const auto* failed = find_event(out, Kind::Failed);
  ASSERT_NE(failed, nullptr);
  EXPECT_EQ(failed->result.status, DeliveryStatus::TlsUnavailable);
  EXPECT_EQ(failed->result.message, "server does not offer STARTTLS");
  EXPECT_FALSE(failed->result.retryable);
  EXPECT_TRUE(s.terminal());
}

TEST(SmtpClientSession, StartTlsRequiredAndHeloOnlyServer) {
  SmtpClientOptions o = plain_options();
  o.encryption = Encryption::StartTls;
  SmtpClientSession s(o);
  s.feed("220 hi\r\n");
  s.feed("502 no EHLO\r\n");
  auto out = s.feed("250 hello\r\n");
  const auto* failed = find_event(out, Kind::Failed);
  ASSERT_NE(failed, nullptr);
  EXPECT_EQ(failed->result.status, DeliveryStatus::TlsUnavailable);
}

TEST(SmtpClientSession, StartTlsFlowDiscardsInjectedBytesAndForgetsExtensions) {
  SmtpClientOptions o = plain_options();
  o.encryption = Encryption::StartTls;
  SmtpClientSession s(o);
  s.feed("220 hi\r\n");
  auto out = s.feed(ehlo_reply({"STARTTLS", "PIPELINING", "SIZE 10"}));
  EXPECT_EQ(out.write, "STARTTLS\r\n");
  // A man in the middle appends a reply to the 220; it must never be interpreted.
  out = s.feed("220 go ahead\r\n250 injected\r\n");
  ASSERT_TRUE(has_event(out, Kind::NeedTlsHandshake));
  EXPECT_EQ(s.state(), State::TlsHandshake);
  EXPECT_TRUE(out.write.empty());
  out = s.feed("250 more injected\r\n");  // ignored while the handshake runs
  EXPECT_TRUE(out.events.empty());
  out = s.tls_established();
  EXPECT_EQ(out.write, "EHLO relay.test\r\n");
  EXPECT_EQ(s.extensions().size, 0u);  // learned in clear: forgotten
  out = s.feed(ehlo_reply({"8BITMIME"}));
  EXPECT_TRUE(has_event(out, Kind::Ready));
  EXPECT_FALSE(s.extensions().pipelining);
  EXPECT_FALSE(s.extensions().starttls);
}

TEST(SmtpClientSession, StartTlsRefused) {
  SmtpClientOptions o = plain_options();
  o.encryption = Encryption::StartTls;
  SmtpClientSession s(o);
  s.feed("220 hi\r\n");
  s.feed(ehlo_reply({"STARTTLS"}));
  auto out = s.feed("454 4.7.0 TLS not available\r\n");
  const auto* failed = find_event(out, Kind::Failed);
  ASSERT_NE(failed, nullptr);
  EXPECT_EQ(failed->result.status, DeliveryStatus::TlsUnavailable);
  EXPECT_TRUE(failed->result.retryable);
}

TEST(SmtpClientSession, ImplicitTlsSkipsStartTls) {
  SmtpClientOptions o = plain_options();
  o.encryption = Encryption::Tls;
  SmtpClientSession s(o);
  make_ready(s, {"STARTTLS"});
}

TEST(SmtpClientSession, AuthPlainSuccess) {
  SmtpClientOptions o = plain_options();
  o.username = "me@example.com";
  o.password = "pa:ss";
  SmtpClientSession s(o);
  s.feed("220 hi\r\n");
  auto out = s.feed(ehlo_reply({"AUTH LOGIN PLAIN"}));
  std::string expected = std::string("\0me@example.com\0pa:ss", 21);
  EXPECT_EQ(out.write, "AUTH PLAIN " + text::base64_encode(expected) + "\r\n");
  EXPECT_EQ(s.state(), State::AuthPlain);
  out = s.feed("235 2.7.0 Authentication successful\r\n");
  EXPECT_TRUE(has_event(out, Kind::Ready));
}

TEST(SmtpClientSession, AuthLoginSuccess) {
  SmtpClientOptions o = plain_options();
  o.username = "me";
  o.password = "secret";
  SmtpClientSession s(o);
  s.feed("220 hi\r\n");
  auto out = s.feed(ehlo_reply({"AUTH=LOGIN"}));
  EXPECT_EQ(out.write, "AUTH LOGIN\r\n");
  out = s.feed("334 VXNlcm5hbWU6\r\n");
  EXPECT_EQ(out.write, text::base64_encode("me") + "\r\n");
  out = s.feed("334 UGFzc3dvcmQ6\r\n");
  EXPECT_EQ(out.write, text::base64_encode("secret") + "\r\n");
  out = s.feed("235 ok\r\n");
  EXPECT_TRUE(has_event(out, Kind::Ready));
}

TEST(SmtpClientSession, AuthFailures) {
  for (std::string ext : {"AUTH PLAIN", "AUTH LOGIN"}) {
    SmtpClientOptions o = plain_options();
    o.username = "me";
    o.password = "wrong";
    SmtpClientSession s(o);
    s.feed("220 hi\r\n");
    s.feed(ehlo_reply({ext}));
    if (ext == "AUTH LOGIN") {
      s.feed("334 VXNlcm5hbWU6\r\n");
      s.feed("334 UGFzc3dvcmQ6\r\n");
    }
    auto out = s.feed("535 5.7.8 Authentication credentials invalid\r\n");
    const auto* failed = find_event(out, Kind::Failed);
    ASSERT_NE(failed, nullptr) << ext;
    EXPECT_EQ(failed->result.status, DeliveryStatus::AuthenticationFailed);
    EXPECT_EQ(failed->result.message, "Authentication failed");
    EXPECT_EQ(failed->result.smtp_code, 535);
    EXPECT_EQ(failed->result.smtp_reply, "5.7.8 Authentication credentials invalid");
    EXPECT_FALSE(failed->result.retryable);
    EXPECT_TRUE(s.terminal());
  }
}

TEST(SmtpClientSession, CredentialsButNoAuthOffered) {
  SmtpClientOptions o = plain_options();
  o.username = "me";
  o.password = "pw";
  SmtpClientSession s(o);
  s.feed("220 hi\r\n");
  auto out = s.feed(ehlo_reply({"PIPELINING"}));
  const auto* failed = find_event(out, Kind::Failed);
  ASSERT_NE(failed, nullptr);
  EXPECT_EQ(failed->result.status, DeliveryStatus::AuthenticationFailed);
  EXPECT_NE(failed->result.message.find("does not offer AUTH"), std::string::npos);
  EXPECT_FALSE(failed->result.smtp_code.has_value());
}

TEST(SmtpClientSession, NoCredentialsSkipsAuth) {
  SmtpClientSession s(plain_options());
  s.feed("220 hi\r\n");
  auto out = s.feed(ehlo_reply({"AUTH PLAIN"}));
  EXPECT_TRUE(out.write.empty());
  EXPECT_TRUE(has_event(out, Kind::Ready));
}

TEST(SmtpClientSession, SizeTooBigIsRejectedWithoutSending) {
  SmtpClientSession s(plain_options());
  make_ready(s, {"SIZE 100"});
  OutboundMessage m = make_message({"bob@example.com"}, std::string(101, 'x'));
  auto out = s.start_message(m);
  EXPECT_TRUE(out.write.empty());
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->result.status, DeliveryStatus::Rejected);
  EXPECT_EQ(done->result.smtp_code, 552);
  EXPECT_FALSE(done->result.retryable);
  EXPECT_EQ(s.state(), State::Ready);
  // The owner learns the connection is free again (it would otherwise wait for it forever).
  ASSERT_EQ(out.events.size(), 2u);
  EXPECT_EQ(out.events[1].kind, Kind::Ready);
  OutboundMessage fits = make_message({"bob@example.com"}, std::string(100, 'x'));
  out = s.start_message(fits);
  EXPECT_EQ(out.write, "MAIL FROM:<alice@example.com> SIZE=100\r\n");
}

TEST(SmtpClientSession, Smtputf8) {
  SmtpClientSession without(plain_options());
  make_ready(without, {});
  OutboundMessage m = make_message({"jörg@example.com"});
  m.smtputf8 = true;
  auto out = without.start_message(m);
  EXPECT_TRUE(out.write.empty());
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->result.status, DeliveryStatus::Rejected);
  EXPECT_EQ(done->result.message,
            "upstream does not support SMTPUTF8 (needed for non-ASCII addresses)");
  EXPECT_FALSE(done->result.retryable);
  EXPECT_NE(find_event(out, Kind::Ready), nullptr);

  SmtpClientSession with(plain_options());
  make_ready(with, {"SMTPUTF8"});
  out = with.start_message(m);
  EXPECT_EQ(out.write, "MAIL FROM:<alice@example.com> SMTPUTF8\r\n");
}

TEST(SmtpClientSession, EnvelopeInjectionRefused) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  OutboundMessage m = make_message({"bob@example.com>\r\nRCPT TO:<evil@example.com"});
  auto out = s.start_message(m);
  EXPECT_TRUE(out.write.empty());
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->result.status, DeliveryStatus::Rejected);
}

TEST(SmtpClientSession, NullReversePath) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  OutboundMessage m = make_message();
  m.envelope_from.clear();
  EXPECT_EQ(s.start_message(m).write, "MAIL FROM:<>\r\n");
}

std::string body_for(const std::string& data, size_t chunk) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  OutboundMessage m = make_message({"bob@example.com"}, data);
  s.start_message(m);
  s.feed("250 ok\r\n");
  s.feed("250 ok\r\n");
  s.feed("354 go\r\n");
  return pull_all(s, chunk);
}

TEST(SmtpClientSession, DotStuffing) {
  const std::string data = ".starts with a dot\r\nline\r\n.\r\n..two\r\nmid.dle\r\n. \r\nend";
  const std::string stuffed =
      "..starts with a dot\r\nline\r\n..\r\n...two\r\nmid.dle\r\n.. \r\nend\r\n.\r\n";
  for (size_t chunk : {size_t{1}, size_t{2}, size_t{3}, size_t{7}, size_t{1} << 20}) {
    EXPECT_EQ(body_for(data, chunk), stuffed) << "chunk " << chunk;
  }
  EXPECT_EQ(body_for("", 1 << 20), ".\r\n");
  EXPECT_EQ(body_for("a\r\n", 1 << 20), "a\r\n.\r\n");
  EXPECT_EQ(body_for(".", 1), "..\r\n.\r\n");
}

// The run-at-a-time body writer against dot_stuff() on random CRLF data, at every chunk size.
TEST(SmtpClientSession, DotStuffingMatchesReferenceAtEveryChunkSize) {
  std::mt19937 rng(9);
  const char* lines[] = {"a", ".", "..", ". x", "", "mid.dle", "xxxxxxxxxxxxxxxxxxxxxxxxx"};
  std::uniform_int_distribution<int> pick(0, 6);
  for (int round = 0; round < 40; ++round) {
    std::string data;
    for (int n = round % 9; n > 0; --n) data += std::string(lines[pick(rng)]) + "\r\n";
    if (round % 3 == 0) data += lines[pick(rng)];  // no final line end
    const std::string want = dot_stuff(data);
    for (size_t chunk = 1; chunk <= data.size() + 1; ++chunk) {
      ASSERT_EQ(body_for(data, chunk), want) << round << " chunk " << chunk;
    }
  }
}

// The same on longer random bodies of every dot density: no dot, rare dots (the memchr hops),
// dots closer than the switch to the block scan, dots after LF at block edges.
TEST(SmtpClientSession, DotStuffingMatchesReferenceAtEveryDotDensity) {
  std::mt19937 rng(12);
  for (int round = 0; round < 60; ++round) {
    const int dot_per_mille = std::vector<int>{0, 2, 10, 30, 100, 400}[round % 6];
    const int lf_per_mille = std::vector<int>{5, 15, 60, 300}[round % 4];
    std::uniform_int_distribution<int> roll(0, 999);
    std::string data;
    const size_t size = 1 + static_cast<size_t>(roll(rng)) * 10;
    while (data.size() < size) {
      const int r = roll(rng);
      if (r < dot_per_mille) {
        data += '.';
      } else if (r < dot_per_mille + lf_per_mille) {
        data += "\r\n";  // message data is CRLF-normalized before it reaches the relay
      } else {
        data += static_cast<char>('a' + r % 26);
      }
    }
    const std::string want = dot_stuff(data);
    for (size_t chunk :
         {size_t{1}, size_t{5}, size_t{63}, size_t{64}, size_t{65}, size_t{700}, size_t{1} << 20}) {
      ASSERT_EQ(body_for(data, chunk), want) << round << " chunk " << chunk;
    }
  }
}

// A dot line just before, at and after the end of the block-scanned window that dense dots
// start (4096 bytes on from the fourth dot), and again further on.
TEST(SmtpClientSession, DotStuffingAroundTheScanWindow) {
  for (size_t pad = 4060; pad < 4140; ++pad) {
    std::string data = "a.b.c.d.e.f";
    data += std::string(pad, 'x') + "\r\n.one\r\n" + std::string(pad, 'y') + "\r\n.two\r\n";
    ASSERT_EQ(body_for(data, size_t{1} << 20), dot_stuff(data)) << pad;
  }
}

TEST(SmtpClientSession, BodyIsPulledInBoundedChunks) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  OutboundMessage m = make_message({"bob@example.com"}, std::string(100000, 'a') + "\r\n");
  s.start_message(m);
  s.feed("250 ok\r\n");
  s.feed("250 ok\r\n");
  s.feed("354 go\r\n");
  std::string chunk;
  EXPECT_TRUE(s.pull_body(chunk, 4096));
  EXPECT_EQ(chunk.size(), 4096u);
}

// The whole conversation, server side, fed one byte at a time (so split at every boundary),
// must give exactly the commands it gives when each reply arrives whole.
TEST(SmtpClientSession, RepliesSplitAtEveryByteBoundary) {
  const std::vector<std::string> replies = {
      "220-upstream.test ESMTP\r\n220 second greeting line\r\n",
      "250-upstream.test\n250-PIPELINING\r\n250-SIZE 5000\r\n250 8BITMIME\r\n",
      "250 sender ok\r\n250-recipient\r\n250 ok\r\n354 go\r\n", "250-2.0.0 queued\r\n250 as 1\r\n"};
  OutboundMessage m = make_message();
  auto run = [&](bool bytewise) {
    SmtpClientSession s(plain_options());
    std::string written;
    std::vector<std::string> done;
    std::function<void(const SmtpClientOutput&)> take = [&](const SmtpClientOutput& out) {
      written += out.write;
      for (const auto& e : out.events) {
        if (e.kind == Kind::MessageDone) done.push_back(e.result.smtp_reply);
        if (e.kind == Kind::Ready && done.empty()) take(s.start_message(m));
      }
      if (s.body_pending()) written += pull_all(s);
    };
    for (const auto& reply : replies) {
      if (bytewise) {
        for (char c : reply) take(s.feed(std::string_view(&c, 1)));
      } else {
        take(s.feed(reply));
      }
    }
    EXPECT_EQ(done, std::vector<std::string>{"2.0.0 queued\nas 1"});
    EXPECT_EQ(s.state(), State::Ready);
    return written;
  };
  const std::string expected =
      "EHLO relay.test\r\nMAIL FROM:<alice@example.com> SIZE=" + std::to_string(m.data.size()) +
      "\r\nRCPT TO:<bob@example.com>\r\nDATA\r\n" + m.data + ".\r\n";
  EXPECT_EQ(run(false), expected);
  EXPECT_EQ(run(true), expected);
}

// The owner's command deadline restarts only on whole replies: count them, byte by byte.
TEST(SmtpClientSession, RepliesReceivedCountsWholeRepliesOnly) {
  SmtpClientSession s(plain_options());
  const std::string greeting = "220-upstream.test\r\n220 hello\r\n";
  for (size_t i = 0; i < greeting.size(); ++i) {
    EXPECT_EQ(s.replies_received(), 0u) << i;
    s.feed(std::string_view(&greeting[i], 1));
  }
  EXPECT_EQ(s.replies_received(), 1u);
  EXPECT_TRUE(s.awaiting_reply());  // EHLO
  const std::string ehlo = ehlo_reply({"PIPELINING", "SIZE 1000"});
  s.feed(ehlo.substr(0, ehlo.size() - 1));
  EXPECT_EQ(s.replies_received(), 1u);
  s.feed(ehlo.substr(ehlo.size() - 1));
  EXPECT_EQ(s.replies_received(), 2u);
  EXPECT_EQ(s.state(), State::Ready);
}

TEST(SmtpClientSession, MultiLineReplyInTwoRandomPieces) {
  // Every split point of one multi-line reply, fed as exactly two feeds.
  const std::string greeting = "220 hi\r\n";
  const std::string ehlo = ehlo_reply({"PIPELINING", "AUTH PLAIN", "SIZE 77"});
  for (size_t split = 0; split <= ehlo.size(); ++split) {
    SmtpClientSession s(plain_options());
    s.feed(greeting);
    auto a = s.feed(ehlo.substr(0, split));
    auto b = s.feed(ehlo.substr(split));
    EXPECT_EQ(has_event(a, Kind::Ready) || has_event(b, Kind::Ready), true) << split;
    EXPECT_TRUE(s.extensions().pipelining);
    EXPECT_TRUE(s.extensions().auth_plain);
    EXPECT_EQ(s.extensions().size, 77u);
  }
}

TEST(SmtpClientSession, BareLfRepliesTolerated) {
  SmtpClientSession s(plain_options());
  auto out = s.feed("220 hi\n");
  EXPECT_EQ(out.write, "EHLO relay.test\r\n");
  out = s.feed("250-x\n250 PIPELINING\n");
  EXPECT_TRUE(has_event(out, Kind::Ready));
  EXPECT_TRUE(s.extensions().pipelining);
}

void expect_protocol_error(const std::string& reply) {
  SmtpClientSession s(plain_options());
  auto out = s.feed(reply);
  const auto* failed = find_event(out, Kind::Failed);
  ASSERT_NE(failed, nullptr) << reply;
  EXPECT_EQ(failed->result.status, DeliveryStatus::ProtocolError) << reply;
  EXPECT_TRUE(s.terminal());
  EXPECT_TRUE(s.feed("220 too late\r\n").events.empty());
}

TEST(SmtpClientSession, GarbageRepliesAreProtocolErrors) {
  expect_protocol_error("HTTP/1.1 400 Bad Request\r\n");
  expect_protocol_error("SSH-2.0-OpenSSH_9.2\r\n");
  expect_protocol_error("22\r\n");
  expect_protocol_error("220x hello\r\n");
  expect_protocol_error("120 wait\r\n");
  expect_protocol_error("600 out of range\r\n");
  expect_protocol_error("220-first\r\n250 changed code\r\n");
  expect_protocol_error("220 " + std::string(5000, 'a') + "\r\n");
  expect_protocol_error(std::string(5000, '2'));  // no line end at all
  std::string huge;
  for (int i = 0; i < 100; ++i) huge += "220-" + std::string(1000, 'b') + "\r\n";
  expect_protocol_error(huge);
}

TEST(SmtpClientSession, ProtocolErrorDuringMessageFailsTheMessage) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  OutboundMessage m = make_message();
  s.start_message(m);
  auto out = s.feed("hello?\r\n");
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->result.status, DeliveryStatus::ProtocolError);
  EXPECT_TRUE(done->before_data);
  EXPECT_TRUE(s.terminal());
}

TEST(SmtpClientSession, ReuseSendsRsetBetweenMessages) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  OutboundMessage m1 = make_message({"a@x.test"});
  auto out = send_simple(s, m1);
  ASSERT_TRUE(has_event(out, Kind::MessageDone));
  ASSERT_TRUE(has_event(out, Kind::Ready));
  OutboundMessage m2 = make_message({"b@x.test"});
  out = s.start_message(m2);
  EXPECT_EQ(out.write, "RSET\r\n");
  EXPECT_EQ(s.state(), State::Rset);
  out = s.feed("250 2.0.0 ok\r\n");
  EXPECT_EQ(out.write, "MAIL FROM:<alice@example.com>\r\n");
  out = s.feed("250 ok\r\n");
  EXPECT_EQ(out.write, "RCPT TO:<b@x.test>\r\n");
}

TEST(SmtpClientSession, StaleConnectionRsetFailureIsRetryableBeforeData) {
  SmtpClientSession s(plain_options());
  make_ready(s, {"PIPELINING"});
  OutboundMessage m1 = make_message();
  s.start_message(m1);
  s.feed("250 ok\r\n250 ok\r\n354 go\r\n");
  pull_all(s);
  s.feed("250 ok\r\n");
  OutboundMessage m2 = make_message();
  s.start_message(m2);
  auto out = s.feed("421 4.4.2 idle timeout\r\n");
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_TRUE(done->before_data);
  EXPECT_TRUE(done->result.retryable);
  EXPECT_TRUE(s.terminal());
}

// 421 closes the channel whatever it answers: a session draining pipelined replies does not
// wait for the ones that will never come.
TEST(SmtpClientSession, ClosingReplyWhileDrainingEndsTheSession) {
  SmtpClientSession s(plain_options());
  make_ready(s, {"PIPELINING"});
  OutboundMessage m = make_message({"a@x.test"});
  s.start_message(m);
  auto out = s.feed("250 ok\r\n550 5.1.1 unknown\r\n");
  ASSERT_TRUE(has_event(out, Kind::MessageDone));
  ASSERT_EQ(s.state(), State::Draining);
  out = s.feed("421 4.3.2 shutting down\r\n");
  EXPECT_TRUE(has_event(out, Kind::Closed));
  EXPECT_FALSE(has_event(out, Kind::Ready));
  EXPECT_TRUE(s.terminal());
}

// A 421 to pipelined MAIL: the RCPT and DATA replies will never come, so the message ends
// at once, before data and retryable, and the session with it.
TEST(SmtpClientSession, ClosingReplyToPipelinedMailEndsMessageAndSession) {
  SmtpClientSession s(plain_options());
  make_ready(s, {"PIPELINING"});
  OutboundMessage m = make_message({"a@x.test", "b@x.test"});
  s.start_message(m);
  auto out = s.feed("421 4.3.2 shutting down\r\n");
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_TRUE(done->before_data);
  EXPECT_TRUE(done->result.retryable);
  EXPECT_EQ(done->result.smtp_code, 421);
  EXPECT_TRUE(s.terminal());
}

TEST(SmtpClientSession, ConnectionLostMidBodyIsNotBeforeData) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  OutboundMessage m = make_message({"bob@example.com"}, std::string(10000, 'z'));
  s.start_message(m);
  s.feed("250 ok\r\n");
  s.feed("250 ok\r\n");
  s.feed("354 go\r\n");
  std::string part;
  s.pull_body(part, 100);
  DeliveryResult why;
  why.status = DeliveryStatus::ProtocolError;
  why.message = "connection closed";
  why.retryable = true;
  auto out = s.connection_lost(why);
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_FALSE(done->before_data);
  EXPECT_EQ(done->result.message, "connection closed");
  EXPECT_TRUE(s.terminal());
}

TEST(SmtpClientSession, ConnectionLostWhileIdleIsClosed) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  auto out = s.connection_lost(DeliveryResult{});
  EXPECT_TRUE(has_event(out, Kind::Closed));
  EXPECT_FALSE(has_event(out, Kind::Failed));
}

TEST(SmtpClientSession, ServerClosingWhileIdle) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  auto out = s.feed("421 4.4.2 timeout, closing\r\n");
  EXPECT_TRUE(has_event(out, Kind::Closed));
  EXPECT_TRUE(s.terminal());
}

TEST(SmtpClientSession, ServerAbortsDuringBody) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  OutboundMessage m = make_message({"bob@example.com"}, std::string(10000, 'z'));
  s.start_message(m);
  s.feed("250 ok\r\n");
  s.feed("250 ok\r\n");
  s.feed("354 go\r\n");
  std::string part;
  s.pull_body(part, 100);
  auto out = s.feed("552 5.3.4 too big\r\n");
  const auto* done = find_event(out, Kind::MessageDone);
  ASSERT_NE(done, nullptr);
  EXPECT_EQ(done->result.smtp_code, 552);
  EXPECT_FALSE(done->before_data);
  EXPECT_TRUE(s.terminal());
}

TEST(SmtpClientSession, Quit) {
  SmtpClientSession s(plain_options());
  make_ready(s, {});
  auto out = s.quit();
  EXPECT_EQ(out.write, "QUIT\r\n");
  out = s.feed("221 bye\r\n");
  EXPECT_TRUE(has_event(out, Kind::Closed));
  EXPECT_EQ(s.state(), State::Closed);
}

TEST(SmtpClientSession, StartMessageWhenNotReady) {
  SmtpClientSession s(plain_options());
  OutboundMessage m = make_message();
  auto out = s.start_message(m);
  EXPECT_TRUE(out.write.empty());
  ASSERT_TRUE(has_event(out, Kind::MessageDone));
  EXPECT_EQ(s.state(), State::Greeting);
}

}  // namespace
}  // namespace mailcar
