#include "smtp_server/delivery_reply.hpp"

#include <gtest/gtest.h>

namespace mailcar::smtp {
namespace {

DeliveryResult result(DeliveryStatus status, std::optional<int> code = std::nullopt,
                      std::string reply = {}, std::string message = {}, bool retryable = false) {
  DeliveryResult r;
  r.status = status;
  r.smtp_code = code;
  r.smtp_reply = std::move(reply);
  r.message = std::move(message);
  r.retryable = retryable;
  return r;
}

TEST(DeliveryReply, SentIsQueuedWithTheId) {
  auto r = result(DeliveryStatus::Sent, 250, "2.0.0 Ok");
  r.rejected.push_back({"x@example.org", 550, "5.1.1 no such user"});
  FinalReply f = reply_for_delivery(r, "abc.1@mx.test");
  EXPECT_EQ(f.code, 250);  // a partial rejection is still a success for the client
  EXPECT_EQ(f.enhanced, "2.0.0");
  EXPECT_EQ(f.text, "Ok: queued as abc.1@mx.test");
}

TEST(DeliveryReply, UpstreamPermanentStaysPermanent) {
  FinalReply f = reply_for_delivery(
      result(DeliveryStatus::Rejected, 550, "5.7.1 relaying denied\nsecond line"), "id");
  EXPECT_EQ(f.code, 554);
  EXPECT_EQ(f.enhanced, "5.7.1");
  EXPECT_EQ(f.text, "Upstream rejected the message: 550 5.7.1 relaying denied second line");
  f = reply_for_delivery(result(DeliveryStatus::Rejected, 554, "no enhanced code"), "id");
  EXPECT_EQ(f.code, 554);
  EXPECT_EQ(f.enhanced, "5.0.0");
}

TEST(DeliveryReply, UpstreamTemporaryStaysTemporary) {
  FinalReply f =
      reply_for_delivery(result(DeliveryStatus::Rejected, 452, "4.2.2 mailbox full"), "id");
  EXPECT_EQ(f.code, 451);
  EXPECT_EQ(f.enhanced, "4.2.2");
  f = reply_for_delivery(result(DeliveryStatus::Rejected, 421, "try later"), "id");
  EXPECT_EQ(f.enhanced, "4.3.0");
  // No upstream code (e.g. the file driver could not write): retryable decides.
  f = reply_for_delivery(
      result(DeliveryStatus::Rejected, std::nullopt, {}, "cannot write outbox", true), "id");
  EXPECT_EQ(f.code, 451);
}

TEST(DeliveryReply, SmtpUtf8MissingUpstreamIsPermanent) {
  FinalReply f = reply_for_delivery(
      result(DeliveryStatus::Rejected, std::nullopt, {},
             "upstream does not support SMTPUTF8 (needed for non-ASCII addresses)"),
      "id");
  EXPECT_EQ(f.code, 553);
  EXPECT_EQ(f.enhanced, "5.6.7");
  EXPECT_EQ(f.text, "upstream does not support SMTPUTF8 (needed for non-ASCII addresses)");
}

TEST(DeliveryReply, ConnectionProblemsAreTemporary) {
  for (auto status : {DeliveryStatus::ConnectionRefused, DeliveryStatus::ConnectionTimedOut,
                      DeliveryStatus::CertificateError, DeliveryStatus::AuthenticationFailed,
                      DeliveryStatus::TlsUnavailable, DeliveryStatus::ProtocolError,
                      DeliveryStatus::ShuttingDown}) {
    FinalReply f = reply_for_delivery(result(status, std::nullopt, {}, "why\r\nnot"), "id");
    EXPECT_EQ(f.code, 451) << delivery_status_name(status);
    EXPECT_EQ(f.enhanced[0], '4');
    EXPECT_EQ(f.text.find_first_of("\r\n"), std::string::npos);
  }
  EXPECT_EQ(reply_for_delivery(result(DeliveryStatus::ConnectionRefused), "id").text,
            "Upstream connection refused: ");
  EXPECT_EQ(reply_for_delivery(result(DeliveryStatus::ConnectionTimedOut), "id").enhanced, "4.4.2");
}

TEST(DeliveryReply, LongUpstreamTextIsBounded) {
  FinalReply f = reply_for_delivery(
      result(DeliveryStatus::Rejected, 550, "5.0.0 " + std::string(5000, 'x')), "id");
  EXPECT_LT(f.text.size(), 400u);
}

TEST(PolicyReply, Verdicts) {
  PolicyDecision d;
  d.verdict = Verdict::SenderNotAllowed;
  d.reason = "sender x@evil.com not allowed for role webapp";
  FinalReply f = reply_for_policy(d);
  EXPECT_EQ(f.code, 550);
  EXPECT_EQ(f.enhanced, "5.7.1");
  EXPECT_EQ(f.text, d.reason);
  d.verdict = Verdict::ServiceNotAllowed;
  EXPECT_EQ(reply_for_policy(d).code, 550);
  d.verdict = Verdict::UnknownRole;
  EXPECT_EQ(reply_for_policy(d).code, 550);
  d.verdict = Verdict::TooManyRecipients;
  EXPECT_EQ(reply_for_policy(d).code, 452);
  EXPECT_EQ(reply_for_policy(d).enhanced, "4.5.3");
  d.verdict = Verdict::RateLimited;
  d.limit_text = "50/second";
  d.retry_after_ms = 1;
  f = reply_for_policy(d);
  EXPECT_EQ(f.code, 450);
  EXPECT_EQ(f.enhanced, "4.7.1");
  EXPECT_EQ(f.text, "Rate limit 50/second exceeded, try again in 1 seconds");
}

}  // namespace
}  // namespace mailcar::smtp
