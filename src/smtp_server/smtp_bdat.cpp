// CHUNKING (RFC 3030): `BDAT <size> [LAST]` followed by exactly <size> octets of message data,
// binary-safe (no dot-stuffing, no end marker). Part of SmtpServerSession (smtp_session.hpp);
// kept apart from the DATA scanner.
//
// Every announced chunk is read in full, whatever its reply will be (RFC 3030 §2: the octets
// must never be taken for commands): a BDAT refused for its sequence (no MAIL, no RCPT), over
// the size limit, or after an earlier chunk of the transaction failed, is consumed and then
// answered. A failed chunk ends the transaction, so the client's pipelined BDATs that follow
// get 503 until it starts a new one with MAIL. A BDAT line that does not parse cannot be
// skipped (its size is unknown): the session ends.
#include <charconv>
#include <string>

#include "mailcar/text.hpp"
#include "smtp_server/smtp_session.hpp"

namespace mailcar::smtp {
namespace {

// "<size>" or "<size> LAST" (LAST in any case); nullopt for anything else.
std::optional<std::pair<uint64_t, bool>> parse_bdat(std::string_view arg) {
  size_t sp = arg.find(' ');
  std::string_view digits = arg.substr(0, sp);
  std::string_view rest = sp == std::string_view::npos ? std::string_view() : arg.substr(sp + 1);
  uint64_t size = 0;
  auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), size);
  if (digits.empty() || ec != std::errc() || end != digits.data() + digits.size()) {
    return std::nullopt;
  }
  rest = text::trim(rest);
  if (rest.empty()) return std::make_pair(size, false);
  if (text::iequals_ascii(rest, "LAST")) return std::make_pair(size, true);
  return std::nullopt;
}

}  // namespace

void SmtpServerSession::cmd_bdat(std::string_view arg, SessionOutput& out) {
  auto parsed = parse_bdat(arg);
  if (!parsed) return close(out, 501, "5.5.4", "Syntax: BDAT size [LAST]; closing connection");
  chunk_size_ = chunk_remaining_ = parsed->first;
  chunk_last_ = parsed->second;
  chunk_refusal_ = {};
  state_ = SessionState::Chunk;
  if (!in_transaction_) {
    chunk_refusal_ = {503, "5.5.1", "Need MAIL command"};
  } else if (message_.recipients.empty()) {
    chunk_refusal_ = {503, "5.5.1", "Need RCPT command"};
  } else {
    if (!chunking_) start_chunks();
    if (data_no_budget_ || data_no_memory_) {
      // Answered at the end of this chunk, below.
    } else if (chunk_size_ > options_.max_message_bytes - data_bytes_) {
      data_too_big_ = true;
      drop_data();
    }
  }
  if (chunk_remaining_ == 0) end_chunk(out);
}

// The first BDAT of a transaction: the data buffer starts empty (sized from SIZE= when given).
void SmtpServerSession::start_chunks() {
  chunking_ = true;
  data_too_big_ = false;
  data_no_budget_ = false;
  data_no_memory_ = false;
  data_bytes_ = 0;
  (void)reserve_declared(declared_size_);  // sets data_no_budget_ / data_no_memory_
}

void SmtpServerSession::consume_chunk(SessionOutput& out) {
  size_t available = input_.size() - pos_;
  size_t take = chunk_remaining_ < available ? static_cast<size_t>(chunk_remaining_) : available;
  append_chunk(std::string_view(input_).substr(pos_, take));
  pos_ += take;
  chunk_remaining_ -= take;
  if (chunk_remaining_ == 0) end_chunk(out);
}

// Stores chunk octets unless the chunk is refused or the transaction's data has failed.
void SmtpServerSession::append_chunk(std::string_view bytes) {
  if (bytes.empty() || chunk_refusal_.code != 0 || data_too_big_ || data_no_budget_ ||
      data_no_memory_) {
    return;
  }
  if (!make_room(bytes.size())) {
    drop_data();
    return;
  }
  if (!message_.eight_bit) {
    for (char c : bytes) {
      if (static_cast<unsigned char>(c) >= 0x80) {
        message_.eight_bit = true;
        break;
      }
    }
  }
  (blocks_.empty() ? message_.data : blocks_.back()).append(bytes);
  data_bytes_ += bytes.size();
}

void SmtpServerSession::end_chunk(SessionOutput& out) {
  state_ = SessionState::Command;
  if (chunk_refusal_.code != 0) {
    ChunkRefusal r = std::move(chunk_refusal_);
    chunk_refusal_ = {};
    return error(out, r.code, r.enhanced, r.text);
  }
  if (data_too_big_) {
    reset_transaction();
    out.limit_refusals.push_back("BDAT message data" + over_limit());
    return reply(out, 552, "5.3.4", too_big_text());
  }
  if (!data_no_budget_ && !data_no_memory_ && chunk_last_) join_blocks();
  if (data_no_budget_ || data_no_memory_) {
    bool budget = data_no_budget_;
    reset_transaction();
    return budget ? reply(out, 451, "4.3.1", "Insufficient system storage, try again later")
                  : reply(out, 451, "4.3.0", "Temporary local problem, try again later");
  }
  if (!chunk_last_) {
    return reply(out, 250, "2.0.0", std::to_string(chunk_size_) + " octets received");
  }
  state_ = SessionState::AwaitingDelivery;
  out.event = SessionEvent::Deliver;
  out.submission = std::move(message_);
  reset_transaction();
}

}  // namespace mailcar::smtp
