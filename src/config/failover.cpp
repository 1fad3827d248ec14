// Failover lists (issue 9, SPEC §9.2): the order in which services are offered a message, and
// the cycle check the loader runs.
#include <algorithm>
#include <functional>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/config.hpp"

namespace mailcar {

std::vector<std::string> fallback_chain(const Config& config, std::string_view service) {
  std::vector<std::string> chain;
  // Depth-first; a service already in the chain is not offered twice (and ends a cycle the
  // loader would have refused).
  std::function<void(std::string_view)> visit = [&](std::string_view name) {
    if (std::find(chain.begin(), chain.end(), name) != chain.end()) return;
    const ServiceConfig* s = config.find_service(name);
    if (s == nullptr) return;
    chain.emplace_back(name);
    for (const std::string& next : s->fallback) visit(next);
  };
  visit(service);
  return chain;
}

std::vector<std::string> find_fallback_cycle(const std::vector<ServiceConfig>& services) {
  std::map<std::string_view, const ServiceConfig*> by_name;
  for (const ServiceConfig& s : services) by_name.emplace(s.name, &s);
  enum class Mark { Unseen, OnPath, Done };
  std::map<std::string_view, Mark> mark;
  std::vector<std::string> path;
  std::vector<std::string> cycle;
  std::function<bool(const ServiceConfig&)> visit = [&](const ServiceConfig& s) {
    mark[s.name] = Mark::OnPath;
    path.push_back(s.name);
    for (const std::string& next : s.fallback) {
      auto it = by_name.find(next);
      if (it == by_name.end()) continue;  // an unknown name is reported on its own
      Mark m = mark[it->second->name];
      if (m == Mark::OnPath) {
        auto start = std::find(path.begin(), path.end(), next);
        cycle.assign(start, path.end());
        cycle.push_back(next);
        return true;
      }
      if (m == Mark::Unseen && visit(*it->second)) return true;
    }
    path.pop_back();
    mark[s.name] = Mark::Done;
    return false;
  };
  for (const ServiceConfig& s : services) {
    if (mark[s.name] == Mark::Unseen && visit(s)) return cycle;
  }
  return {};
}

}  // namespace mailcar
