// Failover lists, routes and probe_interval in the configuration (issue 9, SPEC §9.2/§9.3).
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "mailcar/config.hpp"

using namespace mailcar;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

namespace {

Result<Config> load(const std::string& yaml) {
  return load_config_text(yaml, "/etc/mailcar/mailcar.yaml", nullptr);
}

ServiceConfig service(std::string name, std::vector<std::string> fallback) {
  ServiceConfig s;
  s.name = std::move(name);
  s.fallback = std::move(fallback);
  return s;
}

TEST(FallbackCycle, NoneInAChainOrATree) {
  EXPECT_TRUE(
      find_fallback_cycle({service("a", {"b"}), service("b", {"c"}), service("c", {})}).empty());
  EXPECT_TRUE(find_fallback_cycle({service("a", {"b", "c"}), service("b", {"c"}), service("c", {})})
                  .empty());  // c reached twice is not a cycle
  EXPECT_TRUE(find_fallback_cycle({service("a", {"unknown"})}).empty());
}

TEST(FallbackCycle, FindsTheLoop) {
  EXPECT_THAT(find_fallback_cycle({service("a", {"b"}), service("b", {"a"})}),
              ElementsAre("a", "b", "a"));
  EXPECT_THAT(find_fallback_cycle({service("x", {"a"}), service("a", {"b"}), service("b", {"c"}),
                                   service("c", {"a"})}),
              ElementsAre("a", "b", "c", "a"));
}

TEST(FallbackChain, DepthFirstEachServiceOnce) {
  Config config;
  config.services = {service("a", {"b", "c"}), service("b", {"d", "c"}), service("c", {}),
                     service("d", {}), service("e", {})};
  EXPECT_THAT(fallback_chain(config, "a"), ElementsAre("a", "b", "d", "c"));
  EXPECT_THAT(fallback_chain(config, "e"), ElementsAre("e"));
  EXPECT_TRUE(fallback_chain(config, "nope").empty());
}

TEST(FailoverConfig, LoadsFallbackRoutesAndProbeInterval) {
  auto config = load(R"(services:
  primary:
    host: a.example
    fallback: [backup]
    probe_interval: 10s
  backup:
    host: b.example
    probe_interval: 0
  bulk:
    host: c.example
roles:
  marketing:
    services: [bulk]
routes:
  - {role: marketing, service: bulk}
  - {sender: "*@brand-b.example", service: backup}
)");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_THAT(config->find_service("primary")->fallback, ElementsAre("backup"));
  EXPECT_EQ(config->find_service("primary")->probe_interval_ms, 10'000u);
  EXPECT_EQ(config->find_service("backup")->probe_interval_ms, 0u);
  EXPECT_EQ(config->find_service("bulk")->probe_interval_ms, 60'000u);  // the default
  ASSERT_EQ(config->routes.size(), 2u);
  EXPECT_EQ(config->routes[0].role, "marketing");
  EXPECT_EQ(config->routes[0].service, "bulk");
  EXPECT_EQ(config->routes[1].sender, "*@brand-b.example");
  EXPECT_FALSE(config->routes[1].role.has_value());
}

TEST(FailoverConfig, ErrorsNameFileLineAndColumn) {
  auto cycle = load(
      "services:\n  a:\n    host: x\n    fallback: [b]\n  b:\n    host: y\n"
      "    fallback: [a]\n");
  ASSERT_FALSE(cycle.ok());
  EXPECT_THAT(cycle.error().message,
              HasSubstr("/etc/mailcar/mailcar.yaml:7:16: services.b.fallback[0]: fallback cycle: "
                        "a -> b -> a"));
  auto self = load("services:\n  a:\n    host: x\n    fallback: [a]\n");
  ASSERT_FALSE(self.ok());
  EXPECT_THAT(self.error().message, HasSubstr(":4:16: services.a.fallback[0]: a service cannot "
                                              "fall back to itself"));
  auto unknown = load("services:\n  a:\n    host: x\n    fallback: [zz]\n");
  ASSERT_FALSE(unknown.ok());
  EXPECT_THAT(unknown.error().message, HasSubstr("services.a.fallback[0]: no service named 'zz'"));
  auto route = load(
      "services:\n  a:\n    host: x\nroutes:\n  - {service: a}\n"
      "  - {role: r, sender: '*', service: a}\n  - {sender: 'bad*x', service: b}\n");
  ASSERT_FALSE(route.ok());
  EXPECT_THAT(route.error().message, HasSubstr("routes[0]: a route needs exactly one of role or "
                                               "sender"));
  EXPECT_THAT(route.error().message, HasSubstr("routes[1]: a route needs exactly one of role or "
                                               "sender"));
  EXPECT_THAT(route.error().message, HasSubstr("routes[1].role: no role named 'r'"));
  EXPECT_THAT(route.error().message, HasSubstr("routes[2].sender: 'bad*x'"));
  EXPECT_THAT(route.error().message, HasSubstr("routes[2].service: no service named 'b'"));
  auto probe = load("services:\n  a:\n    driver: file\n    path: /tmp\n    probe_interval: 5s\n");
  ASSERT_FALSE(probe.ok());
  EXPECT_THAT(probe.error().message,
              HasSubstr("services.a.probe_interval: not allowed with driver: file"));
}

}  // namespace
