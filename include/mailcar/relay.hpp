// The egress: Transports that deliver an OutboundMessage for one configured service.
//  - SmtpRelay: a pool of upstream SMTP connections (SmtpClientSession over net::Stream).
//  - FileTransport: `driver: file`, writes <path>/<id>.eml atomically off the loop thread.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include <uv.h>

#include "mailcar/config.hpp"
#include "mailcar/delivery.hpp"
#include "mailcar/probe.hpp"

namespace mailcar {

// The transport for `service` (by its driver). Loop-thread only. `delivery_timeout_ms` is
// limits.delivery_timeout (the file driver has no use for it).
std::shared_ptr<Transport> make_transport(uv_loop_t* loop, const ServiceConfig& service,
                                          const std::string& hostname,
                                          uint64_t delivery_timeout_ms);

// Relays over SMTP, keeping up to `service.connections` upstream connections open and reusing
// them (RSET between messages). Messages wait in a FIFO queue for a free connection.
// Deadlines, never idle timers that a trickling peer could keep alive:
//  - connect_timeout: name lookup + TCP connect + implicit TLS handshake + the 220 greeting,
//    all together; a STARTTLS handshake gets connect_timeout of its own.
//  - command_timeout: each reply as a whole, from when the wait for it starts (its command is
//    sent, or the reply before it is complete) to its last line; also the longest the
//    upstream may take to accept the next chunk of the message body.
//  - delivery_timeout_ms: one message from deliver() to its result, queue wait included. When
//    it passes the caller gets ConnectionTimedOut and the connection carrying the message is
//    dropped (its state is unknown). 0: none.
// Destroying it QUITs idle connections and aborts the rest without calling pending callbacks:
// call shutdown() first when callers still wait.
class SmtpRelay : public Transport {
 public:
  SmtpRelay(uv_loop_t* loop, const ServiceConfig& service, std::string our_hostname,
            uint64_t delivery_timeout_ms = LimitsConfig{}.delivery_timeout_ms);
  ~SmtpRelay() override;
  SmtpRelay(const SmtpRelay&) = delete;
  SmtpRelay& operator=(const SmtpRelay&) = delete;

  void deliver(OutboundMessage message, DeliveryCallback done) override;
  void shutdown(std::function<void()> done) override;

  // Idle connections are QUIT after this long (default 30 s); for tests.
  void set_idle_timeout_ms(uint64_t ms);

  // Upstream probe (issue 9, SPEC §9.3): a connection of its own, outside `connections`,
  // through the same connect, TLS, EHLO and AUTH code as deliveries, then QUIT. `done` is
  // called once, from the loop (not when the relay is destroyed first; ShuttingDown after
  // shutdown()). Each finished delivery is also recorded in upstream_health() as a check.
  void probe(ProbeCallback done);

  struct Impl;

 private:
  std::shared_ptr<Impl> impl_;
};

// Writes each message to <path>/<id>.eml: temp file, fsync, rename, fsync of the folder, all in
// libuv's thread pool. The file holds exactly `data` (a pure RFC 5322 message): the envelope is
// not recorded, so Bcc recipients are not visible in it. Characters outside [A-Za-z0-9.@_-]
// in the id become '_' in the file name. The folder is created when missing.
class FileTransport : public Transport {
 public:
  FileTransport(uv_loop_t* loop, const ServiceConfig& service);
  ~FileTransport() override;
  FileTransport(const FileTransport&) = delete;
  FileTransport& operator=(const FileTransport&) = delete;

  void deliver(OutboundMessage message, DeliveryCallback done) override;
  void shutdown(std::function<void()> done) override;

  struct State;

 private:
  uv_loop_t* loop_;
  std::shared_ptr<State> state_;
};

// The file name FileTransport uses for a message id (no folder).
std::string outbox_file_name(std::string_view message_id);

}  // namespace mailcar
