#include "mailcar/dkim.hpp"

#include <map>
#include <utility>

#include "mailcar/text.hpp"

namespace mailcar::dkim {
namespace {

bool is_wsp(char c) {
  return c == ' ' || c == '\t';
}

// Appends `line` (no line end) with WSP runs as one SP; with `strip_end`, without WSP at its end.
void append_compressed(std::string& out, std::string_view line, bool strip_end) {
  size_t end = line.size();
  if (strip_end) {
    while (end > 0 && is_wsp(line[end - 1])) --end;
  }
  bool in_wsp = false;
  for (size_t i = 0; i < end; ++i) {
    if (is_wsp(line[i])) {
      in_wsp = true;
      continue;
    }
    if (in_wsp) out.push_back(' ');
    in_wsp = false;
    out.push_back(line[i]);
  }
  if (in_wsp) out.push_back(' ');
}

// The tag list up to and including "b=", folded before each tag that would pass 76 columns.
// `first` is the column after "DKIM-Signature:".
std::string fold_tags(const std::vector<std::string>& tags, size_t first) {
  std::string out;
  size_t column = first;
  for (size_t i = 0; i < tags.size(); ++i) {
    const std::string& tag = tags[i];
    if (i > 0 && column + 1 + tag.size() > 76) {
      out += "\r\n\t";
      column = 8;
    } else {
      out.push_back(' ');
      column += 1;
    }
    out += tag;
    column += tag.size();
  }
  return out;
}

// h= value, folded after colons where it grows long (WSP there is ignored, RFC 6376 §3.2).
std::string h_tag(const std::vector<std::string>& names) {
  std::string out = "h=";
  size_t column = 2;
  for (size_t i = 0; i < names.size(); ++i) {
    if (i > 0) {
      out.push_back(':');
      ++column;
      if (column + names[i].size() > 70) {
        out += "\r\n\t";
        column = 8;
      }
    }
    out += names[i];
    column += names[i].size();
  }
  return out + ";";
}

// The signature value, folded into lines of 72 base64 characters.
std::string fold_b64(std::string_view b64) {
  std::string out;
  for (size_t at = 0; at < b64.size(); at += 72) {
    out += "\r\n\t";
    out += b64.substr(at, 72);
  }
  return out;
}

}  // namespace

SplitMessage split_message(std::string_view message) {
  SplitMessage out;
  size_t at = 0;
  while (at < message.size()) {
    if (message.compare(at, 2, "\r\n") == 0) {  // the empty line
      out.body = message.substr(at + 2);
      return out;
    }
    size_t end = at;
    for (;;) {
      end = message.find("\r\n", end);
      if (end == std::string_view::npos) {
        end = message.size();
        break;
      }
      if (end + 2 < message.size() && is_wsp(message[end + 2])) {
        end += 2;  // a continuation line
        continue;
      }
      break;
    }
    out.fields.push_back(message.substr(at, end - at));
    at = end + 2;
  }
  return out;
}

std::string_view field_name(std::string_view field) {
  size_t colon = field.find(':');
  std::string_view name = field.substr(0, colon);
  while (!name.empty() && is_wsp(name.back())) name.remove_suffix(1);
  return name;
}

std::string relaxed_header(std::string_view field) {
  size_t colon = field.find(':');
  std::string out = text::lower_ascii(field_name(field));
  out.push_back(':');
  std::string value;
  if (colon != std::string_view::npos) {
    std::string_view rest = field.substr(colon + 1);
    value.reserve(rest.size());
    for (size_t i = 0; i < rest.size(); ++i) {
      if (rest[i] == '\r' && i + 1 < rest.size() && rest[i + 1] == '\n') {
        ++i;  // unfold: the CRLF goes, the WSP after it stays
        continue;
      }
      value.push_back(rest[i]);
    }
  }
  std::string_view v = text::trim(value);
  append_compressed(out, v, true);
  out += "\r\n";
  return out;
}

std::string relaxed_body(std::string_view body) {
  std::string out;
  out.reserve(body.size());
  size_t empty_lines = 0;  // held back until a non-empty line follows
  size_t at = 0;
  while (at < body.size()) {
    size_t end = body.find("\r\n", at);
    const bool terminated = end != std::string_view::npos;
    std::string_view line = body.substr(at, terminated ? end - at : std::string_view::npos);
    at = terminated ? end + 2 : body.size();
    // An unterminated last line keeps its trailing WSP (compressed), as dkimpy and the RFC's
    // order of steps have it: the CRLF is added after trailing WSP was removed from lines.
    const bool empty =
        terminated ? line.find_first_not_of(" \t") == std::string_view::npos : line.empty();
    if (empty) {
      ++empty_lines;
      continue;
    }
    for (; empty_lines > 0; --empty_lines) out += "\r\n";
    append_compressed(out, line, terminated);
    out += "\r\n";
  }
  return out;
}

const std::vector<std::string>& default_signed_fields() {
  static const std::vector<std::string> kFields = {
      "from", "reply-to",   "subject",      "date",         "to",
      "cc",   "message-id", "mime-version", "content-type", "content-transfer-encoding"};
  return kFields;
}

std::vector<std::string> signed_field_list(const SplitMessage& message) {
  std::map<std::string, size_t, std::less<>> present;
  for (std::string_view field : message.fields) ++present[text::lower_ascii(field_name(field))];
  std::vector<std::string> out;
  for (const std::string& name : default_signed_fields()) {
    auto it = present.find(name);
    size_t n = it == present.end() ? 0 : it->second;
    if (name == "from") ++n;  // oversigned: a From added later fails verification
    out.insert(out.end(), n, name);
  }
  return out;
}

std::string canonical_signed_fields(const SplitMessage& message,
                                    const std::vector<std::string>& h) {
  std::map<std::string, size_t, std::less<>> used;  // instances taken so far, by name
  std::string out;
  for (const std::string& wanted : h) {
    std::string name = text::lower_ascii(wanted);
    size_t skip = used[name]++;
    for (size_t i = message.fields.size(); i-- > 0;) {
      if (!text::iequals_ascii(field_name(message.fields[i]), name)) continue;
      if (skip-- > 0) continue;
      out += relaxed_header(message.fields[i]);
      break;
    }
  }
  return out;
}

Result<std::string> sign(std::string_view message, const SignParams& params, crypto::RsaKey& key) {
  SplitMessage split = split_message(message);
  const crypto::Sha256Digest body_digest = crypto::sha256(relaxed_body(split.body));
  std::string body_hash = text::base64_encode(
      std::string_view(reinterpret_cast<const char*>(body_digest.data()), body_digest.size()));
  std::vector<std::string> h = signed_field_list(split);
  std::vector<std::string> tags = {"v=1;",
                                   "a=rsa-sha256;",
                                   "c=relaxed/relaxed;",
                                   "d=" + params.domain + ";",
                                   "s=" + params.selector + ";",
                                   "t=" + std::to_string(params.timestamp) + ";",
                                   "bh=" + body_hash + ";",
                                   h_tag(h),
                                   "b="};
  std::string field = "DKIM-Signature:" + fold_tags(tags, 15);
  // RFC 6376 §3.7: the signed fields, then this field with an empty b= and no final CRLF.
  std::string to_hash = canonical_signed_fields(split, h);
  std::string own = relaxed_header(field);
  own.resize(own.size() - 2);
  crypto::Sha256 hash;
  hash.update(to_hash);
  hash.update(own);
  Result<std::string> signature = key.sign_sha256(hash.finish());
  if (!signature) return signature.error();
  field += fold_b64(text::base64_encode(signature.value()));
  field += "\r\n";
  return field;
}

}  // namespace mailcar::dkim
