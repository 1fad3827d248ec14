// The SMTP ingress (SPEC §5): a listener whose connections each run an SmtpServerSession
// (src/smtp_server/smtp_session.hpp) over a net::Stream. Submitted messages are normalized,
// judged by the policy and handed to the transport of `smtp.service`; the client's final dot
// is answered only with the transport's outcome (direct mode, SPEC §7).
//
// Time limits are deadlines that reads do not extend (docs/smtp.md): smtp_idle_timeout from
// each reply to the next command's line end, smtp_command_timeout from a line's first byte,
// smtp_min_data_rate in DATA; none runs while the upstream works. Connections:
// limits.max_connections per listener, limits.max_connections_per_client per peer IP address
// (421 4.7.0 either way).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>

#include <uv.h>

#include "mailcar/config.hpp"
#include "mailcar/result.hpp"
#include "mailcar/runtime.hpp"

namespace mailcar {

// Plain: SMTP in clear, STARTTLS offered while the runtime has a certificate (listen.smtp).
// ImplicitTls: the TLS handshake first, then SMTP inside it (listen.smtps, RFC 8314).
enum class SmtpListener { Plain, ImplicitTls };

class SmtpServer {
 public:
  // Opens the listener. Every new connection and every message takes the current runtime from
  // `runtime`; its smtp_tls (the certificate, reloaded with the configuration) decides
  // STARTTLS and serves implicit TLS. Errors name the key and the value: "listen.smtp ADDRESS:
  // reason"; ImplicitTls without a certificate in the runtime is an error. A failed start
  // leaves no handle open. On a Plain listener a TLS ClientHello is logged and closed.
  static Result<std::unique_ptr<SmtpServer>> start(uv_loop_t* loop, const ListenAddress& address,
                                                   RuntimeSource runtime,
                                                   SmtpListener kind = SmtpListener::Plain);
  ~SmtpServer();
  SmtpServer(const SmtpServer&) = delete;
  SmtpServer& operator=(const SmtpServer&) = delete;

  // Close the listening socket; existing sessions go on.
  void stop_accepting();
  // Stop accepting; idle sessions get 421 4.3.2 and close now; sessions receiving or
  // delivering a message finish it (then get 421), or get 421 when `grace_ms` runs out.
  // `done` fires once, when the last session has closed.
  void shutdown(uint64_t grace_ms, std::function<void()> done);

  uint16_t port() const;       // the bound port (port 0 in tests)
  size_t connections() const;  // open sessions

  struct Impl;

 private:
  explicit SmtpServer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace mailcar
