// The spool file format (see the design comment in mailcar/spool.hpp). Pure, no I/O.
#include <array>
#include <charconv>
#include <cstdio>

#include "mailcar/spool.hpp"

namespace mailcar {

namespace {

constexpr std::string_view kMsgMagic = "MCSPOOL1 ";
constexpr std::string_view kStateMagic = "MCSTATE1 ";
constexpr size_t kMaxIdLen = 200;

std::array<uint32_t, 256> make_crc_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) != 0 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[i] = c;
  }
  return table;
}

bool needs_escape(unsigned char c) {
  return c == '%' || c <= 0x20 || c == 0x7f;
}

std::string escape(std::string_view s) {
  if (s.empty()) return "-";
  if (s == "-") return "%2D";
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(s.size());
  for (char ch : s) {
    auto c = static_cast<unsigned char>(ch);
    if (needs_escape(c)) {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    } else {
      out += ch;
    }
  }
  return out;
}

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

std::optional<std::string> unescape(std::string_view s) {
  if (s == "-") return std::string();
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      if (needs_escape(static_cast<unsigned char>(s[i]))) return std::nullopt;
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    int hi = hex_digit(s[i + 1]);
    int lo = hex_digit(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

std::optional<uint64_t> parse_u64(std::string_view s) {
  if (s.empty() || s.size() > 20 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<uint32_t> parse_hex32(std::string_view s) {
  if (s.size() != 8) return std::nullopt;
  uint32_t v = 0;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return std::nullopt;
    v = v * 16 + static_cast<uint32_t>(hex_digit(c));
  }
  return v;
}

std::string hex32(uint32_t v) {
  char buf[9];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return std::string(buf, 8);
}

// Splits "a b c" at single spaces into exactly `n` tokens (the last takes no spaces either).
std::optional<std::vector<std::string_view>> tokens(std::string_view s, size_t n) {
  std::vector<std::string_view> out;
  size_t pos = 0;
  while (out.size() + 1 < n) {
    size_t sp = s.find(' ', pos);
    if (sp == std::string_view::npos) return std::nullopt;
    out.push_back(s.substr(pos, sp - pos));
    pos = sp + 1;
  }
  out.push_back(s.substr(pos));
  for (auto t : out) {
    if (t.empty() || t.find(' ') != std::string_view::npos) return std::nullopt;
  }
  return out;
}

// Iterates "key value\n" lines; `body` must end with '\n' unless empty.
template <class F>
Result<void> for_each_line(std::string_view body, F&& on_line) {
  if (!body.empty() && body.back() != '\n') return make_error("last line not terminated");
  size_t pos = 0;
  while (pos < body.size()) {
    size_t eol = body.find('\n', pos);
    std::string_view line = body.substr(pos, eol - pos);
    pos = eol + 1;
    size_t sp = line.find(' ');
    if (sp == std::string_view::npos) return make_error("line without a value");
    if (auto r = on_line(line.substr(0, sp), line.substr(sp + 1)); !r.ok()) return r;
  }
  return {};
}

// A seal "<magic><n1> ... <crc>\n": `numbers` decimal fields, then the CRC.
struct SealFields {
  std::vector<uint64_t> numbers;
  uint32_t crc = 0;
  size_t len = 0;
};
Result<SealFields> parse_seal(std::string_view head, std::string_view magic, size_t numbers) {
  size_t eol = head.substr(0, std::min(head.size(), kMaxSealLen)).find('\n');
  if (eol == std::string_view::npos || !head.starts_with(magic)) return make_error("bad seal");
  auto fields = tokens(head.substr(magic.size(), eol - magic.size()), numbers + 1);
  if (!fields) return make_error("bad seal");
  SealFields out;
  for (size_t i = 0; i < numbers; ++i) {
    auto v = parse_u64((*fields)[i]);
    if (!v) return make_error("bad seal");
    out.numbers.push_back(*v);
  }
  auto crc = parse_hex32((*fields)[numbers]);
  if (!crc) return make_error("bad seal");
  out.crc = *crc;
  out.len = eol + 1;
  return out;
}

Result<void> bad(std::string_view key) {
  return make_error("bad value for '" + std::string(key) + "'");
}

bool parse_flag(std::string_view v, bool& out) {
  if (v != "0" && v != "1") return false;
  out = v == "1";
  return true;
}

bool parse_text(std::string_view v, std::string& out) {
  auto s = unescape(v);
  if (!s) return false;
  out = std::move(*s);
  return true;
}

bool parse_number(std::string_view v, uint64_t& out) {
  auto n = parse_u64(v);
  if (!n) return false;
  out = *n;
  return true;
}

bool parse_recipient(std::string_view v, SpoolRecipient& r) {
  auto t = tokens(v, 3);
  if (!t) return false;
  auto notify = parse_u64((*t)[0]);
  if (!notify || *notify > 15) return false;
  r.notify = static_cast<uint8_t>(*notify);
  return parse_text((*t)[1], r.orcpt) && parse_text((*t)[2], r.address) && !r.address.empty();
}

bool parse_ret(std::string_view v, DsnRet& ret) {
  if (v == "-") {
    ret = DsnRet::Unspecified;
  } else if (v == "full") {
    ret = DsnRet::Full;
  } else if (v == "hdrs") {
    ret = DsnRet::Headers;
  } else {
    return false;
  }
  return true;
}

bool parse_ingress(std::string_view v, Ingress& ingress) {
  if (v != "http" && v != "smtp") return false;
  ingress = v == "http" ? Ingress::Http : Ingress::Smtp;
  return true;
}

const char* ret_name(DsnRet ret) {
  switch (ret) {
    case DsnRet::Full:
      return "full";
    case DsnRet::Headers:
      return "hdrs";
    case DsnRet::Unspecified:
      break;
  }
  return "-";
}

// The singular header keys; each must appear exactly once.
constexpr std::array<std::string_view, 12> kMsgKeys = {
    "id",   "service",  "role",      "identity", "ingress", "remote",
    "from", "smtputf8", "eight_bit", "ret",      "envid",   "queued_at"};

bool parse_msg_field(std::string_view key, std::string_view v, SpoolRecord& r) {
  uint64_t n = 0;
  if (key == "id") return parse_text(v, r.id) && is_safe_spool_id(r.id);
  if (key == "service") return parse_text(v, r.service);
  if (key == "role") return parse_text(v, r.role);
  if (key == "identity") return parse_text(v, r.identity);
  if (key == "ingress") return parse_ingress(v, r.ingress);
  if (key == "remote") return parse_text(v, r.remote);
  if (key == "from") return parse_text(v, r.envelope_from);
  if (key == "smtputf8") return parse_flag(v, r.smtputf8);
  if (key == "eight_bit") return parse_flag(v, r.eight_bit);
  if (key == "ret") return parse_ret(v, r.ret);
  if (key == "envid") return parse_text(v, r.envid);
  if (key == "queued_at" && parse_number(v, n)) {
    r.queued_at_ms = n;
    return true;
  }
  return false;
}

bool parse_message_state(std::string_view v, MessageState& s) {
  for (auto candidate : {MessageState::Queued, MessageState::Held, MessageState::Sending,
                         MessageState::Deferred, MessageState::Failed}) {
    if (v == message_state_name(candidate)) {
      s = candidate;
      return true;
    }
  }
  return false;
}

bool parse_recipient_status(std::string_view v, RecipientStatus& r) {
  auto t = tokens(v, 3);
  if (!t) return false;
  std::string_view s = (*t)[0];
  if (s == "pending") {
    r.state = RecipientState::Pending;
  } else if (s == "sent") {
    r.state = RecipientState::Sent;
  } else if (s == "failed") {
    r.state = RecipientState::Failed;
  } else {
    return false;
  }
  auto code = parse_u64((*t)[1]);
  if (!code || *code > 999) return false;
  r.smtp_code = static_cast<int>(*code);
  return parse_text((*t)[2], r.smtp_reply);
}

constexpr std::array<std::string_view, 5> kStateKeys = {"state", "attempts", "next_attempt",
                                                        "failed_at", "last_reply"};

bool parse_state_field(std::string_view key, std::string_view v, SpoolState& s) {
  uint64_t n = 0;
  if (key == "state") return parse_message_state(v, s.state);
  if (key == "last_reply") return parse_text(v, s.last_reply);
  if (!parse_number(v, n)) return false;
  if (key == "attempts") {
    if (n > UINT32_MAX) return false;
    s.attempts = static_cast<uint32_t>(n);
  } else if (key == "next_attempt") {
    s.next_attempt_ms = n;
  } else if (key == "failed_at") {
    s.failed_at_ms = n;
  } else {
    return false;
  }
  return true;
}

template <size_t N>
std::optional<size_t> key_index(const std::array<std::string_view, N>& keys, std::string_view key) {
  for (size_t i = 0; i < N; ++i) {
    if (keys[i] == key) return i;
  }
  return std::nullopt;
}

}  // namespace

const char* message_state_name(MessageState s) {
  switch (s) {
    case MessageState::Queued:
      return "queued";
    case MessageState::Held:
      return "held";
    case MessageState::Sending:
      return "sending";
    case MessageState::Deferred:
      return "deferred";
    case MessageState::Failed:
      return "failed";
  }
  return "queued";
}

const char* recipient_state_name(RecipientState s) {
  switch (s) {
    case RecipientState::Pending:
      return "pending";
    case RecipientState::Sent:
      return "sent";
    case RecipientState::Failed:
      return "failed";
  }
  return "pending";
}

SpoolState fresh_spool_state(const SpoolRecord& record) {
  SpoolState s;
  s.recipients.resize(record.recipients.size());
  return s;
}

bool is_safe_spool_id(std::string_view id) {
  if (id.empty() || id.size() > kMaxIdLen || id[0] == '.') return false;
  for (char c : id) {
    bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '@' || c == '_' || c == '-';
    if (!ok) return false;
  }
  return true;
}

std::string make_safe_spool_id(std::string_view id) {
  std::string out(id.substr(0, kMaxIdLen));
  for (char& c : out) {
    if (!is_safe_spool_id(std::string_view(&c, 1))) c = '_';
  }
  if (out.empty()) out = "_";
  return out;
}

uint32_t crc32c_update(uint32_t crc, std::string_view bytes) {
  static const std::array<uint32_t, 256> table = make_crc_table();
  uint32_t c = ~crc;
  for (char ch : bytes) c = table[(c ^ static_cast<unsigned char>(ch)) & 0xff] ^ (c >> 8);
  return ~c;
}

std::string encode_msg_header(const SpoolRecord& r) {
  std::string h;
  h += "id " + escape(r.id) + "\n";
  h += "service " + escape(r.service) + "\n";
  h += "role " + escape(r.role) + "\n";
  h += "identity " + escape(r.identity) + "\n";
  h += std::string("ingress ") + ingress_name(r.ingress) + "\n";
  h += "remote " + escape(r.remote) + "\n";
  h += "from " + escape(r.envelope_from) + "\n";
  h += std::string("smtputf8 ") + (r.smtputf8 ? "1" : "0") + "\n";
  h += std::string("eight_bit ") + (r.eight_bit ? "1" : "0") + "\n";
  h += std::string("ret ") + ret_name(r.ret) + "\n";
  h += "envid " + escape(r.envid) + "\n";
  h += "queued_at " + std::to_string(r.queued_at_ms) + "\n";
  for (const auto& rcpt : r.recipients) {
    h += "rcpt " + std::to_string(rcpt.notify) + " " + escape(rcpt.orcpt) + " " +
         escape(rcpt.address) + "\n";
  }
  return h;
}

std::string encode_msg_seal(uint64_t header_len, uint64_t data_len, uint32_t crc) {
  return std::string(kMsgMagic) + std::to_string(header_len) + " " + std::to_string(data_len) +
         " " + hex32(crc) + "\n";
}

std::string encode_msg_file(const SpoolRecord& record, std::string_view data) {
  std::string header = encode_msg_header(record);
  uint32_t crc = crc32c_update(crc32c_update(0, header), data);
  std::string out = encode_msg_seal(header.size(), data.size(), crc);
  out += header;
  out += data;
  return out;
}

Result<MsgSeal> parse_msg_seal(std::string_view head) {
  auto f = parse_seal(head, kMsgMagic, 2);
  if (!f.ok()) return f.error();
  MsgSeal seal;
  seal.seal_len = f->len;
  seal.header_len = f->numbers[0];
  seal.data_len = f->numbers[1];
  seal.crc = f->crc;
  if (seal.header_len > kMaxHeaderLen) return make_error("header too long");
  if (seal.data_len > (uint64_t{1} << 40)) return make_error("data too long");
  return seal;
}

Result<SpoolRecord> parse_msg_header(std::string_view header, const MsgSeal& seal) {
  SpoolRecord r;
  std::array<bool, kMsgKeys.size()> seen{};
  auto status = for_each_line(header, [&](std::string_view key, std::string_view v) {
    if (key == "rcpt") {
      SpoolRecipient rcpt;
      if (!parse_recipient(v, rcpt)) return bad(key);
      r.recipients.push_back(std::move(rcpt));
      return Result<void>();
    }
    auto i = key_index(kMsgKeys, key);
    if (!i) return Result<void>(make_error("unknown key '" + std::string(key) + "'"));
    if (seen[*i]) return Result<void>(make_error("'" + std::string(key) + "' twice"));
    seen[*i] = true;
    return parse_msg_field(key, v, r) ? Result<void>() : bad(key);
  });
  if (!status.ok()) return status.error();
  for (size_t i = 0; i < kMsgKeys.size(); ++i) {
    if (!seen[i]) return make_error("'" + std::string(kMsgKeys[i]) + "' missing");
  }
  if (r.recipients.empty()) return make_error("no recipient");
  r.data_size = seal.data_len;
  return r;
}

Result<DecodedMsg> decode_msg_file(std::string_view file) {
  auto seal = parse_msg_seal(file);
  if (!seal.ok()) return seal.error();
  uint64_t rest = file.size() - seal->seal_len;
  if (rest != seal->header_len + seal->data_len) return make_error("size does not match");
  std::string_view header = file.substr(seal->seal_len, seal->header_len);
  std::string_view data = file.substr(seal->seal_len + seal->header_len);
  if (crc32c_update(crc32c_update(0, header), data) != seal->crc) {
    return make_error("checksum does not match");
  }
  auto record = parse_msg_header(header, *seal);
  if (!record.ok()) return record.error();
  return DecodedMsg{std::move(record).value(), data};
}

std::string encode_state_file(const SpoolState& s) {
  std::string body;
  body += std::string("state ") + message_state_name(s.state) + "\n";
  body += "attempts " + std::to_string(s.attempts) + "\n";
  body += "next_attempt " + std::to_string(s.next_attempt_ms) + "\n";
  body += "failed_at " + std::to_string(s.failed_at_ms) + "\n";
  body += "last_reply " + escape(s.last_reply) + "\n";
  for (const auto& r : s.recipients) {
    body += std::string("rcpt ") + recipient_state_name(r.state) + " " +
            std::to_string(r.smtp_code < 0 || r.smtp_code > 999 ? 0 : r.smtp_code) + " " +
            escape(r.smtp_reply) + "\n";
  }
  return std::string(kStateMagic) + std::to_string(body.size()) + " " +
         hex32(crc32c_update(0, body)) + "\n" + body;
}

Result<SpoolState> decode_state_file(std::string_view file, size_t recipients) {
  auto seal = parse_seal(file, kStateMagic, 1);
  if (!seal.ok()) return seal.error();
  std::string_view body = file.substr(seal->len);
  if (body.size() != seal->numbers[0]) return make_error("size does not match");
  if (crc32c_update(0, body) != seal->crc) return make_error("checksum does not match");
  SpoolState s;
  std::array<bool, kStateKeys.size()> seen{};
  auto status = for_each_line(body, [&](std::string_view key, std::string_view v) {
    if (key == "rcpt") {
      RecipientStatus r;
      if (!parse_recipient_status(v, r)) return bad(key);
      s.recipients.push_back(std::move(r));
      return Result<void>();
    }
    auto i = key_index(kStateKeys, key);
    if (!i || seen[*i]) return Result<void>(make_error("unknown or repeated key"));
    seen[*i] = true;
    return parse_state_field(key, v, s) ? Result<void>() : bad(key);
  });
  if (!status.ok()) return status.error();
  for (bool b : seen) {
    if (!b) return make_error("a key is missing");
  }
  if (s.recipients.size() != recipients) return make_error("recipient count does not match");
  return s;
}

}  // namespace mailcar
