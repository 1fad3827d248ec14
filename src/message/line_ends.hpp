// Private helper shared by the builder and the normalizer.
#pragma once

#include <string>
#include <string_view>

namespace mailcar {

// CRLF stays, bare CR and bare LF become CRLF. Runs between line ends are copied whole.
std::string normalize_line_ends(std::string_view s);
void append_normalized_line_ends(std::string& out, std::string_view s);

}  // namespace mailcar
