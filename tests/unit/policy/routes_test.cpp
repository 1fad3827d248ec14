// Routing of SMTP-submitted mail (issue 9, SPEC §9.2).
#include "mailcar/routes.hpp"

#include <gtest/gtest.h>

namespace mailcar {
namespace {

Config routed() {
  Config c;
  c.smtp.service = "email";
  c.routes.push_back({std::string("marketing"), std::nullopt, "bulk"});
  c.routes.push_back({std::nullopt, std::string("*@brand-b.example"), "brand-b"});
  c.routes.push_back({std::nullopt, std::string("*@*.sub.example"), "subs"});
  c.routes.push_back({std::string("legacy"), std::nullopt, "old"});
  return c;
}

TEST(Routes, FirstMatchWinsThenSmtpService) {
  Config c = routed();
  EXPECT_EQ(route_service(c, "marketing", "news@brand-b.example"), "bulk");  // role route first
  EXPECT_EQ(route_service(c, "app", "shop@brand-b.example"), "brand-b");
  EXPECT_EQ(route_service(c, "app", "shop@BRAND-B.example."), "brand-b");  // domain normal form
  EXPECT_EQ(route_service(c, "legacy", "x@a.sub.example"), "subs");        // sender before role
  EXPECT_EQ(route_service(c, "app", "x@sub.example"), "email");            // *@*.d: subdomains only
  EXPECT_EQ(route_service(c, "legacy", "x@example.com"), "old");
  EXPECT_EQ(route_service(c, "app", "x@example.com"), "email");
  EXPECT_EQ(route_service(c, "app", ""), "email");  // the null sender matches only "*"
  EXPECT_EQ(route_service(c, "", "x@example.com"), "email");
}

TEST(Routes, NoRoutesMeansSmtpService) {
  Config c;
  c.smtp.service = "email";
  EXPECT_EQ(route_service(c, "marketing", "a@b.example"), "email");
}

}  // namespace
}  // namespace mailcar
