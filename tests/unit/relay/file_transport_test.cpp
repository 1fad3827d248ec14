#include <dirent.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "mailcar/relay.hpp"
#include "relay/loop_helper.hpp"

namespace mailcar {
namespace {

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/mailcar-relay-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::vector<std::string> list_dir(const std::string& path) {
  std::vector<std::string> names;
  if (DIR* d = opendir(path.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    closedir(d);
  }
  return names;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

ServiceConfig file_service(const std::string& path) {
  ServiceConfig s;
  s.name = "outbox";
  s.driver = ServiceDriver::File;
  s.path = path;
  return s;
}

OutboundMessage message(std::string id) {
  OutboundMessage m;
  m.id = std::move(id);
  m.envelope_from = "a@example.com";
  m.envelope_rcpts = {"b@example.com", "hidden-bcc@example.com"};
  m.data = "From: a@example.com\r\nTo: b@example.com\r\n\r\n.line with dot\r\nbody\r\n";
  return m;
}

TEST(FileTransport, WritesExactlyTheMessageAtomicallyIntoANewFolder) {
  TempDir dir;
  const std::string outbox = dir.path() + "/out/box";  // does not exist yet
  testing::TestLoop loop;
  auto transport = make_transport(loop.get(), file_service(outbox), "host.test", 0);
  std::optional<DeliveryResult> result;
  bool inside_deliver = true;
  bool called_inside = false;
  transport->deliver(message("abc.123@host.test"), [&](DeliveryResult r) {
    called_inside = inside_deliver;
    result = std::move(r);
  });
  inside_deliver = false;
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }));
  EXPECT_FALSE(called_inside);
  EXPECT_EQ(result->status, DeliveryStatus::Sent);
  EXPECT_EQ(result->accepted,
            (std::vector<std::string>{"b@example.com", "hidden-bcc@example.com"}));
  EXPECT_EQ(list_dir(outbox), std::vector<std::string>{"abc.123@host.test.eml"});  // no temp
  EXPECT_EQ(read_file(outbox + "/abc.123@host.test.eml"), message("").data);
}

TEST(FileTransport, IdCannotEscapeTheFolder) {
  EXPECT_EQ(outbox_file_name("../../etc/passwd"), "_._.._etc_passwd.eml");
  EXPECT_EQ(outbox_file_name("a b/c"), "a_b_c.eml");
  EXPECT_EQ(outbox_file_name(".hidden"), "_hidden.eml");
  EXPECT_EQ(outbox_file_name("ok-id_1.2@x"), "ok-id_1.2@x.eml");
  EXPECT_FALSE(outbox_file_name("").empty());
  EXPECT_EQ(outbox_file_name("").find('/'), std::string::npos);
}

TEST(FileTransport, UnwritableFolderIsARetryableFailure) {
  TempDir dir;
  const std::string blocker = dir.path() + "/not-a-folder";
  std::ofstream(blocker) << "x";
  testing::TestLoop loop;
  FileTransport transport(loop.get(), file_service(blocker + "/sub"));
  std::optional<DeliveryResult> result;
  transport.deliver(message("id1"), [&](DeliveryResult r) { result = std::move(r); });
  ASSERT_TRUE(loop.run_until([&] { return result.has_value(); }));
  EXPECT_EQ(result->status, DeliveryStatus::Rejected);
  EXPECT_TRUE(result->retryable);
  EXPECT_EQ(result->message.rfind("cannot write outbox: ", 0), 0u) << result->message;
  EXPECT_TRUE(result->accepted.empty());
}

TEST(FileTransport, ShutdownWaitsForWritesThenRefuses) {
  TempDir dir;
  testing::TestLoop loop;
  FileTransport transport(loop.get(), file_service(dir.path()));
  int delivered = 0;
  bool shut = false;
  bool shut_before_delivery = false;
  for (int i = 0; i < 5; ++i) {
    transport.deliver(message("m" + std::to_string(i)), [&](DeliveryResult r) {
      EXPECT_EQ(r.status, DeliveryStatus::Sent);
      ++delivered;
    });
  }
  transport.shutdown([&] {
    shut_before_delivery = delivered < 5;
    shut = true;
  });
  std::optional<DeliveryResult> refused;
  transport.deliver(message("late"), [&](DeliveryResult r) { refused = std::move(r); });
  ASSERT_TRUE(loop.run_until([&] { return shut && refused.has_value(); }));
  EXPECT_FALSE(shut_before_delivery);
  EXPECT_EQ(delivered, 5);
  EXPECT_EQ(refused->status, DeliveryStatus::ShuttingDown);
  EXPECT_EQ(list_dir(dir.path()).size(), 5u);
}

TEST(FileTransport, ShutdownWithNothingInFlight) {
  testing::TestLoop loop;
  TempDir dir;
  FileTransport transport(loop.get(), file_service(dir.path()));
  bool shut = false;
  transport.shutdown([&] { shut = true; });
  EXPECT_FALSE(shut);  // never from inside shutdown()
  EXPECT_TRUE(loop.run_until([&] { return shut; }));
}

}  // namespace
}  // namespace mailcar
