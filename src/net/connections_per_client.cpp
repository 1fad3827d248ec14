#include "mailcar/net.hpp"

namespace mailcar::net {

std::string host_of(std::string_view peer_address) {
  if (!peer_address.empty() && peer_address.front() == '[') {
    size_t close = peer_address.find(']');
    return std::string(peer_address.substr(
        1, close == std::string_view::npos ? std::string_view::npos : close - 1));
  }
  return std::string(peer_address.substr(0, peer_address.rfind(':')));
}

void ConnectionsPerClient::add(const void* connection, const std::string& host) {
  if (!host_of_.emplace(connection, host).second) return;
  ++open_[host];
}

void ConnectionsPerClient::remove(const void* connection) {
  auto it = host_of_.find(connection);
  if (it == host_of_.end()) return;
  auto count = open_.find(it->second);
  if (count != open_.end() && --count->second == 0) open_.erase(count);
  host_of_.erase(it);
}

unsigned ConnectionsPerClient::count(const std::string& host) const {
  auto it = open_.find(host);
  return it == open_.end() ? 0 : it->second;
}

}  // namespace mailcar::net
