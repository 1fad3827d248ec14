// libFuzzer: the spool-mode journal of idempotent answers (SPEC §10.3) on arbitrary bytes.
// What parses must stay inside the input, re-encode to a record that parses back the same,
// and restore into a small bounded store without ever passing its bound.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "mailcar/idempotency.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mailcar;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  IdempotencyJournal journal = parse_idempotency_journal(in);
  if (journal.good_bytes > in.size()) std::abort();
  if (journal.truncated == (journal.good_bytes == in.size())) std::abort();
  MemoryIdempotencyStore store(IdempotencyLimits{1000, 4});
  for (const IdempotencyRecord& r : journal.records) {
    std::string again = format_idempotency_record(r);
    IdempotencyJournal back = parse_idempotency_journal(again);
    if (back.truncated || back.records.size() != 1 || back.good_bytes != again.size()) std::abort();
    const IdempotencyRecord& b = back.records.front();
    if (b.scope != r.scope || b.hash != r.hash || b.expires_ms != r.expires_ms ||
        b.response.status != r.response.status || b.response.body != r.response.body) {
      std::abort();
    }
    store.restore(r, 500);
    if (store.size() > 4 || store.in_flight() != 0) std::abort();
  }
  return 0;
}
