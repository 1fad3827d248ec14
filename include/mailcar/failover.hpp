// Failover (issue 9, SPEC §9.2): one message offered to a service and, when that service
// cannot take it, at once to the next of fallback_chain(). Both doors (submission.cpp) and the
// spool's attempts (spool_queue.cpp) deliver through here.
#pragma once

#include <memory>
#include <string>

#include "mailcar/delivery.hpp"
#include "mailcar/message.hpp"
#include "mailcar/runtime.hpp"

namespace mailcar {

// The service could not take the message, so the next one may: no recipient accepted and the
// reason is connection, TLS, certificate, AUTH or protocol trouble, or a 4xx reply (to MAIL,
// every RCPT, or DATA). A 5xx is final; so is mailcar shutting down.
bool should_fail_over(const DeliveryResult& result);

// Delivers `message` through `service`, then its fallbacks while should_fail_over(). `done`
// gets the last answer, with delivered_via naming the service that gave it and
// upstream_seconds summed over the attempts. A service without a transport is skipped; when no
// service of the chain has one, `done` gets ConnectionRefused at once (callers check the first
// service's transport before). The message is copied once when the service has fallbacks (each
// try needs the bytes). Logs one "failover" line per step.
void deliver_with_failover(std::shared_ptr<Runtime> runtime, const std::string& service,
                           OutboundMessage message, DeliveryCallback done);

}  // namespace mailcar
