// Failover (issue 9, SPEC §9.2): which answers move a message on to the next service, and the
// chain walked for one message.
#include "mailcar/failover.hpp"

#include <gtest/gtest.h>

#include <optional>
#include <utility>

namespace mailcar {
namespace {

class Scripted : public Transport {
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

DeliveryResult reply(DeliveryStatus status, std::optional<int> code) {
  DeliveryResult r = delivery_failure(status, "x", false);
  r.smtp_code = code;
  return r;
}

DeliveryResult all_refused(int a, int b) {
  DeliveryResult r;
  r.rejected = {{"a@x", a, "no"}, {"b@x", b, "no"}};
  return r;
}

TEST(ShouldFailOver, ConnectionTlsAuthAnd4xxYes5xxNo) {
  for (DeliveryStatus s : {DeliveryStatus::ConnectionRefused, DeliveryStatus::ConnectionTimedOut,
                           DeliveryStatus::CertificateError, DeliveryStatus::AuthenticationFailed,
                           DeliveryStatus::TlsUnavailable, DeliveryStatus::ProtocolError}) {
    EXPECT_TRUE(should_fail_over(reply(s, std::nullopt))) << delivery_status_name(s);
  }
  EXPECT_TRUE(should_fail_over(reply(DeliveryStatus::AuthenticationFailed, 535)));
  EXPECT_TRUE(should_fail_over(reply(DeliveryStatus::Rejected, 421)));
  EXPECT_TRUE(should_fail_over(reply(DeliveryStatus::Rejected, 451)));
  EXPECT_FALSE(should_fail_over(reply(DeliveryStatus::Rejected, 550)));
  EXPECT_FALSE(should_fail_over(reply(DeliveryStatus::Rejected, 554)));
  EXPECT_FALSE(should_fail_over(reply(DeliveryStatus::ShuttingDown, std::nullopt)));
  EXPECT_TRUE(should_fail_over(all_refused(451, 452)));   // every RCPT 4xx
  EXPECT_FALSE(should_fail_over(all_refused(451, 550)));  // one final refusal decides
  DeliveryResult partial;
  partial.accepted = {"a@x"};
  partial.rejected = {{"b@x", 451, "later"}};
  EXPECT_FALSE(should_fail_over(partial));  // taken by this service
}

struct Chain {
  Chain() {
    auto config = std::make_shared<Config>();
    for (const char* name : {"a", "b", "c"}) {
      ServiceConfig s;
      s.name = name;
      config->services.push_back(s);
    }
    config->services[0].fallback = {"b", "c"};
    runtime->config = config;
    runtime->transports = {{"a", a}, {"b", b}, {"c", c}};
  }
  void send() {
    OutboundMessage m;
    m.id = "m1";
    m.data = "body";
    deliver_with_failover(runtime, "a", std::move(m), [this](DeliveryResult r) { got = r; });
  }
  std::shared_ptr<Runtime> runtime = std::make_shared<Runtime>();
  std::shared_ptr<Scripted> a = std::make_shared<Scripted>(), b = std::make_shared<Scripted>(),
                            c = std::make_shared<Scripted>();
  std::optional<DeliveryResult> got;
};

TEST(DeliverWithFailover, WalksTheChainUntilOneTakesIt) {
  Chain t;
  t.send();
  ASSERT_TRUE(t.a->pending);
  t.a->answer(reply(DeliveryStatus::ConnectionRefused, std::nullopt));
  ASSERT_TRUE(t.b->pending);
  EXPECT_EQ(t.b->delivered->data, "body");  // every try gets the whole message
  t.b->answer(reply(DeliveryStatus::Rejected, 451));
  ASSERT_TRUE(t.c->pending);
  EXPECT_EQ(t.c->delivered->data, "body");
  DeliveryResult ok;
  ok.accepted = {"x@y"};
  ok.upstream_seconds = 0.5;
  t.c->answer(ok);
  ASSERT_TRUE(t.got);
  EXPECT_EQ(t.got->status, DeliveryStatus::Sent);
  EXPECT_EQ(t.got->delivered_via, "c");
}

TEST(DeliverWithFailover, A5xxStopsAtOnce) {
  Chain t;
  t.send();
  t.a->answer(reply(DeliveryStatus::Rejected, 550));
  ASSERT_TRUE(t.got);
  EXPECT_EQ(t.got->smtp_code, 550);
  EXPECT_EQ(t.got->delivered_via, "a");
  EXPECT_FALSE(t.b->delivered);
}

TEST(DeliverWithFailover, TheLastFailureIsTheAnswer) {
  Chain t;
  t.send();
  t.a->answer(reply(DeliveryStatus::ConnectionRefused, std::nullopt));
  t.b->answer(reply(DeliveryStatus::CertificateError, std::nullopt));
  t.c->answer(reply(DeliveryStatus::ConnectionTimedOut, std::nullopt));
  ASSERT_TRUE(t.got);
  EXPECT_EQ(t.got->status, DeliveryStatus::ConnectionTimedOut);
  EXPECT_EQ(t.got->delivered_via, "c");
}

}  // namespace
}  // namespace mailcar
