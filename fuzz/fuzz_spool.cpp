// libFuzzer: the spool file readers (.msg and .state) on arbitrary bytes. The input is read
// as a whole file (seal and CRC checked), and also as a header / state body with a correct
// seal put around it, so the parsers behind the CRC get fuzzed too. Whatever decodes must
// re-encode to bytes that decode to the same record, data and state.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "mailcar/spool.hpp"

namespace {

using namespace mailcar;

void check_msg(std::string_view file) {
  auto msg = decode_msg_file(file);
  if (!msg.ok()) return;
  if (!is_safe_spool_id(msg->record.id) || msg->record.recipients.empty()) std::abort();
  if (msg->record.data_size != msg->data.size()) std::abort();
  std::string again = encode_msg_file(msg->record, msg->data);
  auto back = decode_msg_file(again);
  if (!back.ok() || !(back->record == msg->record) || back->data != msg->data) std::abort();
}

void check_state(std::string_view file, size_t n) {
  auto state = decode_state_file(file, n);
  if (!state.ok()) return;
  if (state->recipients.size() != n) std::abort();
  auto back = decode_state_file(encode_state_file(*state), n);
  if (!back.ok() || !(*back == *state)) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  if (auto seal = parse_msg_seal(in); seal.ok() && seal->seal_len > kMaxSealLen) std::abort();
  check_msg(in);
  for (size_t n : {size_t{0}, size_t{1}, size_t{3}}) check_state(in, n);

  // The input as a header (up to the first NUL) and the rest as data, correctly sealed.
  size_t split = in.find('\0');
  std::string_view header = in.substr(0, split);
  std::string_view body =
      split == std::string_view::npos ? std::string_view() : in.substr(split + 1);
  uint32_t crc = crc32c_update(crc32c_update(0, header), body);
  check_msg(encode_msg_seal(header.size(), body.size(), crc) + std::string(header) +
            std::string(body));
  // The input as a state body, correctly sealed (the recipient count taken from it).
  size_t rcpts = 0;
  for (size_t pos = in.find("\nrcpt "); pos != std::string_view::npos;
       pos = in.find("\nrcpt ", pos + 1)) {
    ++rcpts;
  }
  std::string state = "MCSTATE1 " + std::to_string(in.size()) + " ";
  char hex[9];
  std::snprintf(hex, sizeof hex, "%08x", crc32c_update(0, in));
  check_state(state + hex + "\n" + std::string(in), rcpts);
  return 0;
}
