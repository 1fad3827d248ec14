// Upstream SMTP client state machine fuzz target: arbitrary server bytes against a session
// that starts a message whenever it is Ready, pulls the body whenever asked and completes
// STARTTLS whenever requested. The first byte picks the configuration and the feed size.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "mailcar/smtp_client.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > 256 * 1024) return 0;
  const uint8_t flags = data[0];
  mailcar::SmtpClientOptions options;
  options.ehlo_name = "fuzz.test";
  static constexpr mailcar::Encryption kModes[] = {
      mailcar::Encryption::None, mailcar::Encryption::StartTls, mailcar::Encryption::Tls};
  options.encryption = kModes[(flags & 3) % 3];
  if (flags & 4) {
    options.username = "user";
    options.password = "secret";
    if (flags & 0x40) {  // OAuth2 (issue 9): tokens are handed over on NeedToken
      options.oauth2 = (flags & 0x20) ? mailcar::OAuth2Mechanism::OAuthBearer
                                      : mailcar::OAuth2Mechanism::XOAuth2;
      options.oauth2_host = "smtp.test";
      options.oauth2_port = 587;
    }
  }
  const size_t feed_size = static_cast<size_t>(flags >> 3) + 1;

  mailcar::OutboundMessage message;
  message.id = "fuzz@test";
  message.envelope_from = "a@example.com";
  message.envelope_rcpts = {"b@example.com", "c@example.com"};
  message.data = "Subject: fuzz\r\n\r\n.leading dot\r\nbody\r\n.\r\nno final newline";
  message.eight_bit = (flags & 0x80) != 0;

  mailcar::SmtpClientSession session(options);
  int started = 0;
  int done = 0;
  int tokens = 0;
  std::string body;
  auto take = [&](const mailcar::SmtpClientOutput& out) {
    for (const auto& event : out.events) {
      switch (event.kind) {
        case mailcar::SmtpClientEvent::Kind::MessageDone:
          ++done;
          break;
        case mailcar::SmtpClientEvent::Kind::NeedToken:
          ++tokens;
          break;
        case mailcar::SmtpClientEvent::Kind::NeedTlsHandshake:
        case mailcar::SmtpClientEvent::Kind::Ready:
        case mailcar::SmtpClientEvent::Kind::Failed:
        case mailcar::SmtpClientEvent::Kind::Closed:
          break;
      }
    }
  };
  std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  while (!input.empty()) {
    std::string_view chunk = input.substr(0, feed_size);
    input.remove_prefix(chunk.size());
    take(session.feed(chunk));
    if (session.state() == mailcar::SmtpClientSession::State::TlsHandshake) {
      take(session.tls_established());
    }
    if (session.state() == mailcar::SmtpClientSession::State::AuthToken) {
      // First token from the cache, the renewal fresh: at most two tokens per session.
      if (tokens > 2) __builtin_trap();
      take(session.provide_token("tok" + std::to_string(tokens), tokens > 1));
    }
    while (session.body_pending()) {
      body.clear();
      session.pull_body(body, 1 + (flags & 0x3f));
    }
    if (session.state() == mailcar::SmtpClientSession::State::Ready &&
        !session.message_in_flight()) {
      ++started;
      take(session.start_message(message));
    }
    // A message finishes at most once and never before it started.
    if (done > started) __builtin_trap();
    if (session.terminal() && session.message_in_flight()) __builtin_trap();
  }
  take(session.connection_lost(mailcar::DeliveryResult{}));
  if (done > started || session.message_in_flight()) __builtin_trap();
  if (started - done > 1) __builtin_trap();
  return 0;
}
