// hiredis 0.14 has no limit on the element count of an array reply (1.0 added maxelements):
// its default createArray callocs what the server announced. The reader's object functions are
// wrapped so that a count over kMaxRedisReplyElements fails the reader (hiredis reports it as
// out of memory, and the connection is dropped) before anything is allocated.
#include <hiredis/hiredis.h>

#include "mailcar/shared_state.hpp"

namespace mailcar {
namespace {

// hiredis's own functions, with createArray replaced; filled from the first reader (they are
// the same static table for every reader of the library). Loop thread and fuzzer only.
redisReplyObjectFunctions g_bounded{};
void* (*g_create_array)(const redisReadTask*, int) = nullptr;

void* bounded_create_array(const redisReadTask* task, int elements) {
  if (elements < 0 || elements > kMaxRedisReplyElements) return nullptr;
  return g_create_array(task, elements);
}

}  // namespace

void bound_reply_arrays(redisReader* reader) {
  if (reader == nullptr || reader->fn == nullptr) return;
  if (reader->fn == &g_bounded) return;
  if (g_create_array == nullptr) {
    g_bounded = *reader->fn;
    g_create_array = g_bounded.createArray;
    g_bounded.createArray = bounded_create_array;
  }
  reader->fn = &g_bounded;
}

}  // namespace mailcar
