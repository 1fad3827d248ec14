#include "cli/listen_peek.hpp"

#include <yaml-cpp/yaml.h>

#include "config/config_internal.hpp"

namespace mailcar::cli {
namespace {

Result<std::optional<ListenAddress>> address_at(const YAML::Node& listen, const char* key,
                                                EnvLookup env) {
  YAML::Node node = listen[key];
  if (!node || node.IsNull()) return std::optional<ListenAddress>();
  if (!node.IsScalar()) return make_error(std::string("listen.") + key + ": not a string");
  auto text = config_detail::expand_env(node.Scalar(), env);
  if (!text) return make_error(std::string("listen.") + key + ": " + text.error().message);
  auto address = config_detail::parse_listen_address_explained(*text);
  if (!address) return make_error(std::string("listen.") + key + ": " + address.error().message);
  return std::optional<ListenAddress>(std::move(address).value());
}

}  // namespace

Result<ListenSection> peek_listen(const std::string& file, EnvLookup env) {
  auto content = config_detail::read_small_file(file, config_detail::kMaxConfigFileBytes);
  if (!content) return content.error();
  YAML::Node listen;
  try {
    YAML::Node root = YAML::Load(*content);
    if (root.IsMap()) listen = root["listen"];
  } catch (const YAML::Exception& e) {
    return make_error(file + ": not valid YAML: " + e.msg);
  }
  ListenSection section;
  if (!listen || listen.IsNull()) {
    section.http = parse_listen_address("127.0.0.1:2580");  // the loader's default
    return section;
  }
  if (!listen.IsMap()) return make_error(file + ": listen: not a mapping");
  auto http = address_at(listen, "http", env);
  if (!http) return make_error(file + ": " + http.error().message);
  auto smtp = address_at(listen, "smtp", env);
  if (!smtp) return make_error(file + ": " + smtp.error().message);
  section.http = std::move(http).value();
  section.smtp = std::move(smtp).value();
  return section;
}

ListenAddress reachable(ListenAddress address) {
  if (address.host == "0.0.0.0" || address.host == "::") {
    address.host = address.host == "::" ? "::1" : "127.0.0.1";
    bool v6 = address.host == "::1";
    address.text = (v6 ? "[::1]:" : "127.0.0.1:") + std::to_string(address.port);
  }
  return address;
}

}  // namespace mailcar::cli
