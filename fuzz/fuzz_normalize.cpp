// libFuzzer: SMTP message normalization on arbitrary bytes, then dot-stuffing of the result.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "mailcar/mime.hpp"
#include "mailcar/normalize.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mailcar;
  NormalizeInput in;
  in.raw = std::string_view(reinterpret_cast<const char*>(data), size);
  in.default_from = Mailbox{"default@example.com", "Default"};
  in.received_header = make_received_header("fuzz", "127.0.0.1", "mc", "ESMTP", "F1", 1700000000);
  in.hostname = "mc";
  in.now_unix = 1700000000;
  auto r = normalize_message(in);
  if (!r.ok()) return 0;
  const std::string& d = r->data;
  // CRLF only, and no Bcc field left in the header block.
  for (size_t i = 0; i < d.size(); ++i) {
    if (d[i] == '\r' && (i + 1 >= d.size() || d[i + 1] != '\n')) std::abort();
    if (d[i] == '\n' && (i == 0 || d[i - 1] != '\r')) std::abort();
  }
  size_t header_end = d.find("\r\n\r\n");
  std::string_view headers(d.data(), header_end == std::string::npos ? d.size() : header_end + 2);
  for (size_t pos = 0; pos < headers.size();) {
    size_t eol = headers.find("\r\n", pos);
    std::string_view line = headers.substr(pos, eol - pos);
    if (line.size() >= 4 && (line[0] | 0x20) == 'b' && (line[1] | 0x20) == 'c' &&
        (line[2] | 0x20) == 'c' && line[3] == ':') {
      std::abort();
    }
    pos = eol + 2;
  }
  if (r->message_id.empty() || r->from.empty()) std::abort();
  std::string stuffed = dot_stuff(d);
  if (!stuffed.ends_with("\r\n.\r\n") && stuffed != ".\r\n") std::abort();
  return 0;
}
