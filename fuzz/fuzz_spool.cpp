// libFuzzer: the spool file readers (.msg and .state) on arbitrary bytes. Whatever decodes
// must re-encode to a file that decodes to the same record, data and state.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "mailcar/spool.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mailcar;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  if (auto seal = parse_msg_seal(in); seal.ok() && seal->seal_len > kMaxSealLen) std::abort();
  if (auto msg = decode_msg_file(in); msg.ok()) {
    if (!is_safe_spool_id(msg->record.id) || msg->record.recipients.empty()) std::abort();
    std::string again = encode_msg_file(msg->record, msg->data);
    auto back = decode_msg_file(again);
    if (!back.ok() || !(back->record == msg->record) || back->data != msg->data) std::abort();
  }
  for (size_t n : {size_t{0}, size_t{1}, size_t{3}}) {
    if (auto state = decode_state_file(in, n); state.ok()) {
      if (state->recipients.size() != n) std::abort();
      auto back = decode_state_file(encode_state_file(*state), n);
      if (!back.ok() || !(*back == *state)) std::abort();
    }
  }
  return 0;
}
