// The `attachment` URL fetch of issue 10 (SPEC §10.1, §4): URLs that attachment_fetch allows are
// fetched over the loop's HTTPS client (include/mailcar/http_client.hpp), one after another,
// and become ordinary attachments. Nothing here blocks; the URLs never appear in an answer
// (their query may carry a token), only their position in the request.
#pragma once

#include <uv.h>

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/config.hpp"
#include "mailcar/message.hpp"

namespace mailcar::http {

// Why the fetch failed: the HTTP status of the answer (502: the file server failed us, whether
// by a non-2xx status, a timeout, a file over max_bytes or a TLS error) and a message that
// starts with the request's field name.
struct FetchFailure {
  int status = 502;
  std::string message;
};

// The file name an attachment fetched from `url` gets: the path's last segment,
// percent-decoded; "attachment" when that is empty or holds a control byte.
std::string attachment_name(std::string_view url);

// Fetches `urls` in order (each verified against the system CAs, or attachment_fetch.ca_file,
// at most max_bytes and timeout each, and all of them together at most `total_bytes`: the
// memory the caller reserved for them). `done` runs once on the loop: with every body, or
// with the first failure (413 when the files together pass `total_bytes`). `field` names the
// request field in messages.
using FetchedFn =
    std::function<void(std::vector<Attachment> attachments, std::optional<FetchFailure> failure)>;
void fetch_attachments(uv_loop_t* loop, const AttachmentFetchConfig& config, std::string field,
                       std::vector<std::string> urls, uint64_t total_bytes, FetchedFn done);

}  // namespace mailcar::http
