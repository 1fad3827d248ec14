// The queue API (SPEC §7.1) and GET /ready/upstream on the HTTP listener: request -> response
// over the process's SpoolQueue (loop thread only, as the queue). No I/O of its own.
//
//   GET    /queue?state=&service=&limit=&after=   list, in id order, with a cursor
//   GET    /queue/{id}                             one message with its recipients
//   POST   /queue/{id}/retry                       a deferred message is due now
//   DELETE /queue/{id}                             removed from the spool (logged)
//
// Spool mode only (404 otherwise). A role with `queue: all` sees and manages every message;
// any other role sees only the messages it submitted and gets 403 on retry and delete. A
// message a role may not see is a 404, worded as for an unknown id.
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include "http/api_handler.hpp"
#include "http/request_parser.hpp"
#include "http/response.hpp"
#include "mailcar/runtime.hpp"
#include "mailcar/spool_queue.hpp"

namespace mailcar::http {

// "/queue", "/queue/" and everything under "/queue/".
bool is_queue_path(std::string_view path);

// Answers a request whose path is_queue_path(). `respond` is called once: synchronously,
// except for a DELETE that reaches the spool, answered once the files are gone.
void handle_queue(const HttpRequest& request, const std::shared_ptr<Runtime>& runtime,
                  Respond respond, const std::string& remote);

// GET /ready/upstream: 200 {"status":"ready", ...} only when the spool (spool mode) takes
// messages and every relayed service's last check (probe or delivery, upstream_health())
// succeeded; else 503 {"status":"not ready", ...}. The body always holds "services": {name:
// {ok, checked_at, latency_ms, error}} (SPEC §9.3), and "spool": "ok" | "full" in spool mode.
// A service never checked is not ok. Null: 503.
HttpResponse ready_upstream(const Runtime* runtime);

// One message as JSON. With `recipients`, the recipient list (GET /queue/{id}); without,
// "recipient_count" (the list view, which must stay small for messages with many).
std::string queued_message_json(const QueuedMessage& message, bool recipients);

}  // namespace mailcar::http
