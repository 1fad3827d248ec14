// Config loader fuzz target: arbitrary bytes as YAML text. Every variable is set to a fixed
// value so that ${...} expansions reach the typed parsers too.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "mailcar/config.hpp"
#include "mailcar/text.hpp"

namespace {

std::optional<std::string> fixed_env(const std::string& name) {
  if (name.starts_with("UNSET")) return std::nullopt;
  return std::string("25");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 64 * 1024) return 0;  // config files are small; keep iterations fast
  std::string text(reinterpret_cast<const char*>(data), size);
  // Relative *_file paths resolve under a folder that does not exist.
  auto config =
      mailcar::load_config_text(text, "/nonexistent/mailcar-fuzz/mailcar.yaml", fixed_env);
  if (config.ok() && config->services.empty()) __builtin_trap();  // the loader requires one
  if (!config.ok() && config.error().message.empty()) __builtin_trap();
  // Only UTF-8 text is accepted (issue 7: no Latin-1 fallback).
  if (config.ok() && mailcar::text::invalid_utf8_offset(text) != std::string::npos)
    __builtin_trap();

  std::string_view view(text);
  (void)mailcar::parse_rate(view);
  (void)mailcar::parse_duration_ms(view);
  (void)mailcar::parse_size_bytes(view);
  (void)mailcar::parse_listen_address(view);
  return 0;
}
