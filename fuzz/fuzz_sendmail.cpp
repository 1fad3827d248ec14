// libFuzzer: the sendmail command's parsers (arguments, input framing, header section and
// recipient extraction) must never crash, and what prepare_message accepts must be sendable.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/address.hpp"
#include "mailcar/sendmail.hpp"

namespace {

// Arguments: the input's first line, split at spaces.
std::vector<std::string> split_args(std::string_view line) {
  std::vector<std::string> args;
  while (!line.empty()) {
    size_t sp = line.find(' ');
    args.emplace_back(line.substr(0, sp));
    line.remove_prefix(sp == std::string_view::npos ? line.size() : sp + 1);
  }
  return args;
}

void check_message(const mailcar::OutboundMessage& m) {
  using namespace mailcar;
  if (m.envelope_rcpts.empty()) std::abort();
  for (const auto& r : m.envelope_rcpts) {
    if (!validate_address(r).ok()) std::abort();
  }
  if (!m.envelope_from.empty() && !validate_address(m.envelope_from).ok()) std::abort();
  const std::string& d = m.data;
  for (size_t i = 0; i < d.size(); ++i) {  // CRLF line ends only
    if (d[i] == '\n' && (i == 0 || d[i - 1] != '\r')) std::abort();
    if (d[i] == '\r' && (i + 1 == d.size() || d[i + 1] != '\n')) std::abort();
  }
  // No Bcc field is left in the header section (up to an empty line or a line that is
  // neither a field nor a continuation, as mail parsers read it).
  for (size_t pos = 0; pos < d.size();) {
    size_t eol = d.find("\r\n", pos);
    std::string_view line(d.data() + pos, (eol == std::string::npos ? d.size() : eol) - pos);
    if (line.empty()) break;
    if (line[0] != ' ' && line[0] != '\t') {
      size_t colon = line.find(':');
      if (colon == std::string_view::npos || colon == 0) break;
      std::string_view name = line.substr(0, colon);
      while (!name.empty() && (name.back() == ' ' || name.back() == '\t')) name.remove_suffix(1);
      bool printable = !name.empty();
      for (unsigned char c : name) printable = printable && c >= 33 && c <= 126;
      if (!printable) break;
      if (name.size() == 3 && (name[0] | 0x20) == 'b' && (name[1] | 0x20) == 'c' &&
          (name[2] | 0x20) == 'c') {
        std::abort();
      }
    }
    pos = eol == std::string::npos ? d.size() : eol + 2;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mailcar::sendmail;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  size_t nl = in.find('\n');
  if (nl == std::string_view::npos) return 0;
  auto options = parse_arguments(split_args(in.substr(0, nl)));
  if (!options.ok()) return 0;
  std::string_view rest = in.substr(nl + 1);
  MessageCollector collector(options->ignore_dots, 1 << 20);
  auto status = MessageCollector::Status::More;
  for (size_t pos = 0; pos < rest.size() && status == MessageCollector::Status::More; pos += 7) {
    status = collector.feed(rest.substr(pos, 7));  // odd chunks: framing across reads
  }
  if (status == MessageCollector::Status::More) collector.finish();
  std::string raw = collector.take();
  if (raw.size() > rest.size()) std::abort();
  if (auto m = prepare_message(std::move(raw), *options); m.ok()) check_message(*m);
  return 0;
}
