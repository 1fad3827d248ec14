// Private helper of the normalizer: a message never leaves with a line over 998 octets
// (RFC 5322 2.1.1; strict servers refuse it). Pure function.
#pragma once

#include <string>
#include <string_view>

#include "mailcar/result.hpp"

namespace mailcar {

// `message` is CRLF text (header block, empty line, body). Returns it with every line at most
// 998 octets, keeping its meaning:
// - a longer header line is folded at spaces or tabs (CRLF inserted before one);
// - a text/* part (or a message without Content-Type) in 7bit or 8bit whose body has a
//   longer line is re-encoded as quoted-printable (Content-Transfer-Encoding replaced,
//   MIME-Version added to a message that had none); multipart bodies are walked part by part,
//   parts without long lines are kept byte for byte.
// Errors (the message must be refused): a DKIM-Signature field is present (any change would
// break it), a header line with no space to fold at, a long line in any other kind of part,
// in a preamble or epilogue, a multipart without boundary, nesting deeper than 20.
Result<std::string> fit_long_lines(std::string_view message);

}  // namespace mailcar
