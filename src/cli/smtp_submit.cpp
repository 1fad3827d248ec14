#include "cli/smtp_submit.hpp"

#include <optional>
#include <string>
#include <utility>

#include "cli/blocking_socket.hpp"
#include "mailcar/smtp_client.hpp"

namespace mailcar::cli {
namespace {

constexpr size_t kReadChunk = 16 * 1024;
constexpr size_t kBodyChunk = 64 * 1024;
constexpr int kQuitTimeoutMs = 5'000;

DeliveryResult lost(BlockingSocket::Status status, int timeout_ms) {
  if (status == BlockingSocket::Status::TimedOut) {
    return delivery_failure(
        DeliveryStatus::ConnectionTimedOut,
        "mailcar did not answer within " + std::to_string(timeout_ms / 1000) + " s", true);
  }
  return delivery_failure(DeliveryStatus::ProtocolError, "mailcar closed the connection", true);
}

class Driver {
 public:
  Driver(BlockingSocket socket, const SubmitSettings& settings, const OutboundMessage& message)
      : socket_(std::move(socket)),
        settings_(settings),
        message_(message),
        session_(options(settings)) {}

  DeliveryResult run() {
    while (!session_.terminal()) {
      if (session_.body_pending()) {
        std::string chunk;
        session_.pull_body(chunk, kBodyChunk);
        process({std::move(chunk), {}});
        continue;
      }
      int timeout = timeout_now();
      auto received = socket_.receive(kReadChunk, timeout);
      if (received.status == BlockingSocket::Status::Ok) {
        process(session_.feed(received.data));
      } else {
        process(session_.connection_lost(lost(received.status, timeout)));
      }
    }
    if (result_) return std::move(*result_);
    return delivery_failure(DeliveryStatus::ProtocolError, "mailcar ended the session", true);
  }

 private:
  static SmtpClientOptions options(const SubmitSettings& s) {
    SmtpClientOptions o;
    o.ehlo_name = s.ehlo_name;
    o.username = s.username;
    o.password = s.password;
    o.encryption = Encryption::None;  // a local listener; STARTTLS is not attempted
    return o;
  }

  int timeout_now() const {
    if (result_) return kQuitTimeoutMs;
    if (session_.state() == SmtpClientSession::State::EndOfData) {
      return settings_.final_reply_timeout_ms;
    }
    return settings_.reply_timeout_ms;
  }

  // Writes the session's output and reacts to its events until nothing new comes out.
  void process(SmtpClientOutput out) {
    for (;;) {
      if (!out.write.empty() && !write_failed_) {
        auto status = socket_.send_all(out.write, settings_.reply_timeout_ms);
        if (status != BlockingSocket::Status::Ok) {
          write_failed_ = true;
          handle_events(out);
          out = session_.connection_lost(lost(status, settings_.reply_timeout_ms));
          continue;
        }
      }
      SmtpClientOutput next = handle_events(out);
      if (next.write.empty() && next.events.empty()) return;
      out = std::move(next);
    }
  }

  SmtpClientOutput handle_events(const SmtpClientOutput& out) {
    SmtpClientOutput next;
    auto append = [&next](SmtpClientOutput more) {
      next.write += more.write;
      for (auto& e : more.events) next.events.push_back(std::move(e));
    };
    for (const SmtpClientEvent& event : out.events) {
      switch (event.kind) {
        case SmtpClientEvent::Kind::Ready:
          if (!started_ && !write_failed_) {
            started_ = true;
            append(session_.start_message(message_));
          }
          break;
        case SmtpClientEvent::Kind::MessageDone:
          result_ = event.result;
          if (!write_failed_) append(session_.quit());
          break;
        case SmtpClientEvent::Kind::Failed:
          if (!result_) result_ = event.result;
          break;
        case SmtpClientEvent::Kind::NeedTlsHandshake:  // never asked for (Encryption::None)
        case SmtpClientEvent::Kind::NeedToken:         // never asked for (no OAuth2 here)
        case SmtpClientEvent::Kind::Closed:
          break;
      }
    }
    return next;
  }

  BlockingSocket socket_;
  const SubmitSettings& settings_;
  const OutboundMessage& message_;
  SmtpClientSession session_;
  std::optional<DeliveryResult> result_;
  bool started_ = false;
  bool write_failed_ = false;
};

}  // namespace

SubmitOutcome submit(const OutboundMessage& message, const SubmitSettings& settings) {
  const ListenAddress& t = settings.target;
  auto socket = BlockingSocket::connect(t.host, t.port, settings.connect_timeout_ms);
  if (!socket) {
    return {delivery_failure(
                DeliveryStatus::ConnectionRefused,
                "cannot connect to mailcar at " + t.text + ": " + socket.error().message, true),
            false};
  }
  Driver driver(std::move(socket).value(), settings, message);
  return {driver.run(), true};
}

}  // namespace mailcar::cli
