// Private helper shared by the builder and the normalizer.
#pragma once

#include <string>
#include <string_view>

namespace mailcar {

// CRLF stays, bare CR and bare LF become CRLF.
std::string normalize_line_ends(std::string_view s);

}  // namespace mailcar
