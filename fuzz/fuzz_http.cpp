// Bytes -> HTTP parser -> API handler (fake policy and transport) -> serialized responses.
// The first input byte picks the policy verdict and the delivery outcome; the rest is the
// connection's byte stream, fed in pieces whose sizes come from the data too.
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <string_view>

#include "http/api_handler.hpp"
#include "http/request_parser.hpp"
#include "http/response.hpp"
#include "mailcar/log.hpp"

namespace {

using namespace mailcar;

class FuzzPolicy : public Policy {
 public:
  PolicyDecision admit(const PolicyRequest&, uint64_t) override { return next; }
  PolicyDecision check(const PolicyRequest&, uint64_t) const override { return next; }
  QuotaVerdict take_quota(std::string_view, uint64_t, uint64_t) override { return {}; }
  PolicyDecision next;
};

// Completes deliveries after handle() returned, as a real transport would.
class FuzzTransport : public Transport {
 public:
  void deliver(OutboundMessage message, DeliveryCallback done) override {
    pending.emplace_back(std::move(message), std::move(done));
  }
  void shutdown(std::function<void()> done) override { done(); }
  void drain() {
    while (!pending.empty()) {
      auto [message, done] = std::move(pending.front());
      pending.pop_front();
      DeliveryResult result;
      result.status = status;
      if (status == DeliveryStatus::Sent) {
        for (size_t i = 0; i < message.envelope_rcpts.size(); ++i) {
          if (i % 2 == 1 && reject_some) {
            result.rejected.push_back({message.envelope_rcpts[i], 550, "550 no"});
          } else {
            result.accepted.push_back(message.envelope_rcpts[i]);
          }
        }
      } else {
        result.smtp_code = 451;
        result.smtp_reply = "451 later";
        result.retryable = true;
      }
      done(std::move(result));
    }
  }
  std::deque<std::pair<OutboundMessage, DeliveryCallback>> pending;
  DeliveryStatus status = DeliveryStatus::Sent;
  bool reject_some = false;
};

std::shared_ptr<Runtime> make_runtime(std::shared_ptr<FuzzPolicy> policy,
                                      std::shared_ptr<FuzzTransport> transport) {
  auto config = std::make_shared<Config>();
  ServiceConfig email;
  email.name = "email";
  email.from_name = "Support";
  email.from_email = "noreply@example.com";
  email.reply_to_email = "help@example.com";
  config->services.push_back(email);
  config->credentials.push_back({"k", "", "", "webapp"});
  config->limits.max_message_bytes = 64 * 1024;
  auto runtime = std::make_shared<Runtime>();
  runtime->config = config;
  runtime->policy = std::move(policy);
  runtime->transports["email"] = std::move(transport);
  runtime->hostname = "fuzz.local";
  return runtime;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static bool quiet = [] {
    log::configure(LogFormat::Text, LogLevel::Error);
    return true;
  }();
  (void)quiet;
  if (size == 0) return 0;
  auto policy = std::make_shared<FuzzPolicy>();
  auto transport = std::make_shared<FuzzTransport>();
  uint8_t selector = data[0];
  policy->next.verdict = static_cast<Verdict>(selector % 6);
  policy->next.retry_after_ms = selector * 37u;
  transport->status = static_cast<DeliveryStatus>((selector >> 3) % 9);
  transport->reject_some = (selector & 0x80) != 0;
  auto runtime = make_runtime(policy, transport);

  http::HttpRequestParser parser(http::body_limit_for(runtime->config->limits.max_message_bytes));
  http::ApiHandler handler([] { return uint64_t{1'700'000'000'000}; });
  std::string wire;
  std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  size_t step = 1 + selector % 97;
  while (!input.empty() && !parser.failed()) {
    auto out = parser.feed(input.substr(0, step));
    input.remove_prefix(std::min(step, input.size()));
    for (auto& request : out.requests) {
      bool keep_alive = request.keep_alive;
      handler.handle(
          request, runtime,
          [&wire, keep_alive](http::HttpResponse r) {
            wire += http::serialize_response(r, keep_alive);
          },
          "fuzz:1");
      parser.give_spare_body(handler.take_spare_body());  // as HttpConnection does
      transport->drain();
    }
    if (out.error_status) {
      wire += http::serialize_response(http::error_response(*out.error_status, "bad"), false);
    }
  }
  return wire.size() == 1 ? 1 : 0;  // keep `wire` observable
}
