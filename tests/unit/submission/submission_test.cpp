#include "mailcar/submission.hpp"

#include <gtest/gtest.h>

#include <functional>
#include <optional>
#include <utility>

#include "mailcar/metrics.hpp"

namespace mailcar {
namespace {

constexpr uint64_t kNow = 1'700'000'000'000;

// A transport that answers with a result chosen by the test, on the next call of answer().
class ScriptedTransport : public Transport {
 public:
  void deliver(OutboundMessage message, DeliveryCallback done) override {
    delivered = std::move(message);
    pending = std::move(done);
  }
  void shutdown(std::function<void()> done) override { done(); }
  void answer(DeliveryResult r) { std::exchange(pending, nullptr)(std::move(r)); }

  std::optional<OutboundMessage> delivered;
  DeliveryCallback pending;
};

struct Fixture {
  Fixture() {
    auto config = std::make_shared<Config>();
    ServiceConfig email;
    email.name = "email";
    email.from_email = "noreply@example.com";
    config->services.push_back(email);
    RoleConfig app;
    app.name = "app";
    app.senders = std::vector<std::string>{"*@example.com"};
    app.rate_limits.push_back(*parse_rate("2/minute"));
    config->roles.push_back(app);
    runtime->config = config;
    runtime->policy = make_policy(*config);
    runtime->transports.emplace("email", transport);
    metrics::reset_for_tests();
  }

  Submission submission(std::string from = "app@example.com") const {
    Submission s;
    s.submitter = {Ingress::Smtp, "app", "anonymous", "127.0.0.1:1"};
    s.service = "email";
    s.header_from = {from};
    s.message.id = "id1@test";
    s.message.envelope_from = from;
    s.message.envelope_rcpts = {"a@example.com", "b@example.com"};
    s.message.data = "Subject: x\r\n\r\nbody\r\n";
    return s;
  }

  std::optional<SubmissionResult> run(Submission s, std::optional<DeliveryResult> answer) {
    std::optional<SubmissionResult> got;
    submit(runtime, std::move(s), kNow, [&got](SubmissionResult r) { got = std::move(r); });
    if (answer) {
      EXPECT_FALSE(got) << "answered before the transport did";
      if (!got && transport->pending) transport->answer(std::move(*answer));
    }
    return got;
  }

  std::shared_ptr<Runtime> runtime = std::make_shared<Runtime>();
  std::shared_ptr<ScriptedTransport> transport = std::make_shared<ScriptedTransport>();
};

DeliveryResult sent(std::vector<std::string> accepted,
                    std::vector<RecipientOutcome> rejected = {}) {
  DeliveryResult r;
  r.accepted = std::move(accepted);
  r.rejected = std::move(rejected);
  return r;
}

bool has_line(const std::string& text, const std::string& line) {
  return text.find(line) != std::string::npos;
}

TEST(Submission, SentCountsAcceptedAndRejectedRecipients) {
  Fixture f;
  Submission s = f.submission();
  s.submitter.ingress = Ingress::Http;  // no DSN follows (see the direct mode DSN tests)
  auto r = f.run(std::move(s), sent({"a@example.com"}, {{"b@example.com", 550, "no"}}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, SubmissionStatus::Sent);
  EXPECT_EQ(r->id, "id1@test");
  ASSERT_TRUE(f.transport->delivered);
  EXPECT_EQ(f.transport->delivered->envelope_rcpts.size(), 2u);
  std::string m = metrics::render_prometheus();
  EXPECT_TRUE(has_line(m, R"(mailcar_recipients_total{service="email",outcome="sent"} 1)")) << m;
  EXPECT_TRUE(has_line(m, R"(mailcar_recipients_total{service="email",outcome="rejected"} 1)"))
      << m;
}

TEST(Submission, SentButNobodyTookItIsDecidedByTheFirstRefusal) {
  Fixture f;
  auto r = f.run(f.submission(),
                 sent({}, {{"a@example.com", 450, "later"}, {"b@example.com", 550, "no"}}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, SubmissionStatus::Failed);  // 450 first: temporary
  EXPECT_EQ(r->delivery.status, DeliveryStatus::Rejected);
  EXPECT_EQ(r->delivery.smtp_code, 450);
  EXPECT_TRUE(r->delivery.retryable);

  Fixture g;
  r = g.run(g.submission(), sent({}, {{"a@example.com", 550, "no"}}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, SubmissionStatus::Rejected);
  EXPECT_FALSE(r->delivery.retryable);
}

TEST(Submission, UpstreamRepliesAndConnectionTroubleMapToOneClosedSet) {
  struct Case {
    DeliveryStatus status;
    std::optional<int> code;
    bool retryable;
    SubmissionStatus expected;
  } cases[] = {
      {DeliveryStatus::Rejected, 554, false, SubmissionStatus::Rejected},
      {DeliveryStatus::Rejected, 451, true, SubmissionStatus::Failed},
      {DeliveryStatus::Rejected, std::nullopt, false, SubmissionStatus::Rejected},  // SMTPUTF8
      {DeliveryStatus::ConnectionRefused, std::nullopt, true, SubmissionStatus::Failed},
      {DeliveryStatus::CertificateError, std::nullopt, false, SubmissionStatus::Failed},
      {DeliveryStatus::ShuttingDown, std::nullopt, true, SubmissionStatus::Unavailable},
  };
  for (const Case& c : cases) {
    Fixture f;
    DeliveryResult d = delivery_failure(c.status, "x", c.retryable);
    d.smtp_code = c.code;
    auto r = f.run(f.submission(), d);
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, c.expected) << delivery_status_name(c.status);
  }
  EXPECT_STREQ(outcome_label(SubmissionStatus::Rejected), "rejected");
  EXPECT_STREQ(outcome_label(SubmissionStatus::Refused), "rejected");
  EXPECT_STREQ(outcome_label(SubmissionStatus::Failed), "failed");
  EXPECT_STREQ(outcome_label(SubmissionStatus::Unavailable), "failed");
  EXPECT_STREQ(outcome_label(SubmissionStatus::RateLimited), "rate_limited");
  EXPECT_STREQ(outcome_label(SubmissionStatus::Sent), "sent");
}

TEST(Submission, PolicyRefusalsAnswerAtOnceAndNeverReachTheTransport) {
  Fixture f;
  auto r = f.run(f.submission("x@evil.org"), std::nullopt);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, SubmissionStatus::Refused);
  EXPECT_EQ(r->decision.verdict, Verdict::SenderNotAllowed);
  EXPECT_FALSE(f.transport->delivered);

  Submission three = f.submission();  // 2/minute counts recipients: 3 can never pass
  three.message.envelope_rcpts.push_back("c@example.com");
  r = f.run(std::move(three), std::nullopt);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, SubmissionStatus::Refused);
  EXPECT_EQ(r->decision.verdict, Verdict::TooManyRecipients);
  EXPECT_FALSE(f.transport->delivered);
  std::string m = metrics::render_prometheus();
  EXPECT_TRUE(has_line(
      m,
      R"(mailcar_messages_total{ingress="smtp",role="app",service="email",outcome="rejected"} 2)"))
      << m;
}

TEST(Submission, RateLimitIsItsOwnOutcome) {
  Fixture f;
  ASSERT_EQ(f.run(f.submission(), sent({"a@example.com", "b@example.com"}))->status,
            SubmissionStatus::Sent);
  Submission two = f.submission();
  two.message.envelope_rcpts = {"a@example.com"};
  auto r = f.run(std::move(two), std::nullopt);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, SubmissionStatus::RateLimited);
  EXPECT_GT(r->decision.retry_after_ms, 0u);
  std::string m = metrics::render_prometheus();
  EXPECT_TRUE(has_line(m, R"(mailcar_rate_limited_total{role="app"} 1)")) << m;
}

TEST(Submission, NoTransportOrPolicyIsUnavailable) {
  Fixture f;
  f.runtime->transports.clear();
  auto r = f.run(f.submission(), std::nullopt);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, SubmissionStatus::Unavailable);
  f.runtime->policy.reset();
  r = f.run(f.submission(), std::nullopt);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, SubmissionStatus::Unavailable);
}

// ---- Direct mode DSN: recipients refused after the client was told 250 ----

// The first delivery answered; returns the message the transport got next (the DSN), if any.
std::optional<OutboundMessage> dsn_after(Fixture& f, Submission s, DeliveryResult answer) {
  f.runtime->hostname = "mailcar.test";
  auto r = f.run(std::move(s), std::move(answer));
  EXPECT_TRUE(r && r->status == SubmissionStatus::Sent);
  if (!f.transport->pending) return std::nullopt;
  std::optional<OutboundMessage> dsn = std::move(f.transport->delivered);
  f.transport->answer(sent({"app@example.com"}));  // fire and forget: nobody waits for it
  return dsn;
}

TEST(Submission, DirectPartialRejectionOverSmtpSendsADsnToTheSender) {
  Fixture f;
  Submission s = f.submission();
  s.message.data = "Subject: x\r\n\r\nthe body\r\n";
  s.dsn.envid = "env-1";
  s.dsn.recipients = {{}, {dsn_notify::kFailure, "rfc822;orig-b@example.com"}};
  auto dsn = dsn_after(f, std::move(s),
                       sent({"a@example.com"}, {{"b@example.com", 550, "5.1.1 no such user"}}));
  ASSERT_TRUE(dsn);
  EXPECT_EQ(dsn->envelope_from, "");
  EXPECT_EQ(dsn->envelope_rcpts, std::vector<std::string>{"app@example.com"});
  const std::string& d = dsn->data;
  EXPECT_TRUE(has_line(d, "From: Mail Delivery System <MAILER-DAEMON@mailcar.test>")) << d;
  EXPECT_TRUE(has_line(d, "report-type=delivery-status")) << d;
  EXPECT_TRUE(has_line(d, "Original-Envelope-Id: env-1\r\n")) << d;
  EXPECT_TRUE(has_line(d, "Original-Recipient: rfc822;orig-b@example.com\r\n")) << d;
  EXPECT_TRUE(has_line(d, "Final-Recipient: rfc822; b@example.com\r\n")) << d;
  EXPECT_FALSE(has_line(d, "Final-Recipient: rfc822; a@example.com")) << d;
  EXPECT_TRUE(has_line(d, "Status: 5.1.1\r\n")) << d;
  EXPECT_TRUE(has_line(d, "Content-Type: text/rfc822-headers\r\n\r\nSubject: x\r\n")) << d;
  EXPECT_FALSE(has_line(d, "the body")) << d;  // headers only without RET=FULL
  EXPECT_FALSE(has_line(d, "does not retry")) << d;
  EXPECT_FALSE(f.transport->pending);  // sent once
}

TEST(Submission, DirectDsnForATemporaryRefusalSaysDirectModeDoesNotRetry) {
  Fixture f;
  Submission s = f.submission();
  s.message.data = "Subject: x\r\n\r\nthe body\r\n";
  s.dsn.ret = DsnRet::Full;
  auto dsn =
      dsn_after(f, std::move(s), sent({"a@example.com"}, {{"b@example.com", 451, "4.2.0 busy"}}));
  ASSERT_TRUE(dsn);
  EXPECT_TRUE(has_line(dsn->data, "Status: 4.2.0\r\n")) << dsn->data;
  EXPECT_TRUE(has_line(dsn->data, "does not retry")) << dsn->data;
  EXPECT_TRUE(has_line(dsn->data, "spool mode would retry")) << dsn->data;
  EXPECT_TRUE(has_line(dsn->data, "message/rfc822\r\n\r\nSubject: x\r\n\r\nthe body\r\n"))
      << dsn->data;
}

TEST(Submission, ARefusedDirectDsnIsLoggedOnceAndNeverRetried) {
  Fixture f;
  f.runtime->hostname = "mailcar.test";
  testing::internal::CaptureStdout();
  f.run(f.submission(), sent({"a@example.com"}, {{"b@example.com", 550, "5.1.1 no"}}));
  ASSERT_TRUE(f.transport->pending);  // the DSN
  f.transport->answer(sent({}, {{"app@example.com", 550, "5.7.1 no bounces here"}}));
  std::string log = testing::internal::GetCapturedStdout();
  EXPECT_TRUE(has_line(log, R"("event":"dsn_failed")")) << log;
  EXPECT_TRUE(has_line(log, R"("upstream_code":550,"upstream_reply":"5.7.1 no bounces here")"))
      << log;
  EXPECT_TRUE(has_line(log, R"("outcome":"rejected")")) << log;
  EXPECT_FALSE(has_line(log, R"("event":"dsn_sent")")) << log;
  EXPECT_FALSE(f.transport->pending);  // not tried again
}

TEST(Submission, NoDirectDsnForHttpNotifyNeverOrAWholeFailure) {
  {
    Fixture f;  // the HTTP door lists the refused recipients in its answer
    Submission s = f.submission();
    s.submitter.ingress = Ingress::Http;
    EXPECT_FALSE(
        dsn_after(f, std::move(s), sent({"a@example.com"}, {{"b@example.com", 550, "no"}})));
  }
  {
    Fixture f;  // the refused recipient opted out; the other one was delivered
    Submission s = f.submission();
    s.dsn.recipients = {{dsn_notify::kFailure, ""}, {dsn_notify::kNever, ""}};
    EXPECT_FALSE(
        dsn_after(f, std::move(s), sent({"a@example.com"}, {{"b@example.com", 550, "no"}})));
  }
  {
    Fixture f;  // NOTIFY without FAILURE
    Submission s = f.submission();
    s.dsn.recipients = {{}, {dsn_notify::kSuccess | dsn_notify::kDelay, ""}};
    EXPECT_FALSE(
        dsn_after(f, std::move(s), sent({"a@example.com"}, {{"b@example.com", 550, "no"}})));
  }
  {
    Fixture f;  // nobody took it: the client gets the refusal itself, not a 250
    auto r = f.run(f.submission(),
                   sent({}, {{"a@example.com", 550, "no"}, {"b@example.com", 550, "no"}}));
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, SubmissionStatus::Rejected);
    EXPECT_FALSE(f.transport->pending);
  }
}

TEST(Submission, NoDirectDsnForTheNullSender) {
  Fixture f;
  auto config = std::make_shared<Config>(*f.runtime->config);
  config->roles[0].senders = std::vector<std::string>{"*"};  // may use <>
  f.runtime->config = config;
  f.runtime->policy = make_policy(*config);
  Submission s = f.submission("");
  s.header_from = {"app@example.com"};
  EXPECT_FALSE(dsn_after(f, std::move(s), sent({"a@example.com"}, {{"b@example.com", 550, "no"}})));
}

}  // namespace
}  // namespace mailcar

// ---- Capture and mirror (issue 10, SPEC §10.4) ------------------------------------------------

namespace mailcar {
namespace {

// The fixture's config with a change (mirror and capture are read per submission).
void reconfigure(Fixture& f, const std::function<void(Config&)>& change) {
  auto config = std::make_shared<Config>(*f.runtime->config);
  change(*config);
  f.runtime->config = config;
}

TEST(Submission, MirrorRecipientsJoinTheEnvelopeButNeverTheAnswer) {
  Fixture f;
  reconfigure(f, [](Config& c) {
    c.roles[0].mirror_to = {"audit@example.org", "a@example.com"};  // a@ is a recipient already
    c.services[0].mirror_to = {"audit@example.org", "svc@example.org"};
  });
  Submission s = f.submission();
  s.submitter.ingress = Ingress::Http;
  auto r =
      f.run(std::move(s), sent({"a@example.com", "audit@example.org"},
                               {{"b@example.com", 550, "no"}, {"svc@example.org", 550, "no"}}));
  ASSERT_TRUE(r);
  ASSERT_TRUE(f.transport->delivered);
  EXPECT_EQ(f.transport->delivered->envelope_rcpts,
            (std::vector<std::string>{"a@example.com", "b@example.com", "audit@example.org",
                                      "svc@example.org"}));
  EXPECT_EQ(r->status, SubmissionStatus::Sent);
  EXPECT_EQ(r->mirrored, 2u);
  EXPECT_EQ(r->delivery.accepted, std::vector<std::string>{"a@example.com"});
  ASSERT_EQ(r->delivery.rejected.size(), 1u);
  EXPECT_EQ(r->delivery.rejected[0].address, "b@example.com");
  std::string m = metrics::render_prometheus();
  EXPECT_TRUE(has_line(m, R"(mailcar_mirrored_recipients_total{service="email"} 2)")) << m;
  EXPECT_TRUE(has_line(m, R"(mailcar_recipients_total{service="email",outcome="sent"} 1)")) << m;
}

TEST(Submission, OnlyAMirrorRecipientTakingItIsNotASend) {
  Fixture f;
  reconfigure(f, [](Config& c) { c.roles[0].mirror_to = {"audit@example.org"}; });
  auto r = f.run(f.submission(), sent({"audit@example.org"}, {{"a@example.com", 550, "no"},
                                                              {"b@example.com", 550, "no"}}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, SubmissionStatus::Rejected);
}

TEST(Submission, ARefusedMirrorRecipientIsNeverReportedToTheSender) {
  Fixture f;
  reconfigure(f, [](Config& c) { c.roles[0].mirror_to = {"audit@example.org"}; });
  Submission s = f.submission();  // SMTP, with a sender: a refused recipient would get a DSN
  s.dsn.recipients = {DsnRecipientRequest{dsn_notify::kFailure, {}}, DsnRecipientRequest{}};
  auto r = f.run(std::move(s), sent({"a@example.com", "b@example.com"},
                                    {{"audit@example.org", 550, "no such user"}}));
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, SubmissionStatus::Sent);
  EXPECT_TRUE(r->delivery.rejected.empty());
  EXPECT_FALSE(f.transport->pending) << "a DSN was sent about a mirror recipient";
}

TEST(Submission, CaptureWritesToTheFileServiceAndIsCountedAsCaptured) {
  Fixture f;
  auto outbox = std::make_shared<ScriptedTransport>();
  f.runtime->transports.emplace("outbox", outbox);
  reconfigure(f, [](Config& c) {
    ServiceConfig file;
    file.name = "outbox";
    file.driver = ServiceDriver::File;
    c.services.push_back(file);
    c.roles[0].capture = "outbox";
    c.roles[0].mirror_to = {"audit@example.org"};  // never for a captured message
  });
  std::optional<SubmissionResult> got;
  submit(f.runtime, f.submission(), kNow, [&got](SubmissionResult r) { got = std::move(r); });
  EXPECT_FALSE(f.transport->pending) << "the relay must not see a captured message";
  ASSERT_TRUE(outbox->pending);
  EXPECT_EQ(outbox->delivered->envelope_rcpts.size(), 2u);
  outbox->answer(sent({"a@example.com", "b@example.com"}));
  ASSERT_TRUE(got);
  EXPECT_EQ(got->status, SubmissionStatus::Sent);
  EXPECT_TRUE(got->captured);
  EXPECT_EQ(got->mirrored, 0u);
  std::string m = metrics::render_prometheus();
  EXPECT_TRUE(has_line(
      m,
      R"(mailcar_messages_total{ingress="smtp",role="app",service="email",outcome="captured"} 1)"))
      << m;
  EXPECT_TRUE(has_line(m, R"(mailcar_recipients_total{service="email",outcome="captured"} 2)"))
      << m;
}

}  // namespace
}  // namespace mailcar
