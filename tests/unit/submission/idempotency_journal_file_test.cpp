#include "submission/idempotency_journal_file.hpp"

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "../support/loop_fixture.hpp"
#include "mailcar/clock.hpp"

namespace mailcar {
namespace {

constexpr uint64_t kNow = 1'700'000'000'000;
constexpr uint64_t kTtl = 60'000;

class JournalFileTest : public testing::LoopFixture {
 protected:
  void SetUp() override {
    LoopFixture::SetUp();
    char tmpl[] = "/tmp/mailcar-idem-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/idempotency.journal";
  }
  void TearDown() override {
    LoopFixture::TearDown();
    std::filesystem::remove_all(dir_);
  }

  std::shared_ptr<MemoryIdempotencyStore> store() {
    return std::make_shared<MemoryIdempotencyStore>(IdempotencyLimits{kTtl, 100});
  }

  std::string read_file() {
    std::ifstream in(path_, std::ios::binary);
    std::ostringstream all;
    all << in.rdbuf();
    return all.str();
  }

  // A key claimed and kept in `s` at `now`; true once the journal says it is on disk.
  void keep(MemoryIdempotencyStore& s, const std::string& scope, std::string body, bool& stored,
            uint64_t now = kNow) {
    std::optional<IdempotencyOutcome> o;
    s.begin(scope, crypto::sha256(scope), now, [&](IdempotencyOutcome out) { o = out; });
    ASSERT_TRUE(o && o->verdict == IdempotencyVerdict::Fresh);
    s.complete(scope, o->claim, IdempotentResponse{200, std::move(body)}, now,
               [&stored] { stored = true; });
  }

  std::string dir_;
  std::string path_;
};

TEST_F(JournalFileTest, KeptAnswersSurviveAReopen) {
  {
    auto s = store();
    auto journal = IdempotencyJournalFile::open(loop(), path_, s, kNow);
    ASSERT_TRUE(journal.ok()) << journal.error().message;
    bool a = false, b = false, c = false;
    keep(*s, "a", "{\"id\":\"a\"}", a);
    keep(*s, "b", "{\"id\":\"b\"}", b);  // waits for the write of "a": one batch after it
    keep(*s, "c", "{\"id\":\"c\"}", c);
    EXPECT_FALSE(a);  // not before it is on disk
    ASSERT_TRUE(run_until([&] { return a && b && c; }));
  }
  auto s = store();
  auto journal = IdempotencyJournalFile::open(loop(), path_, s, kNow + 1);
  ASSERT_TRUE(journal.ok()) << journal.error().message;
  EXPECT_EQ(s->size(), 3u);
  std::optional<IdempotencyOutcome> o;
  s->begin("b", crypto::sha256("b"), kNow + 1, [&](IdempotencyOutcome out) { o = out; });
  ASSERT_TRUE(o.has_value());
  EXPECT_EQ(o->verdict, IdempotencyVerdict::Replay);
  EXPECT_EQ(o->response.body, "{\"id\":\"b\"}");
}

TEST_F(JournalFileTest, StartDropsExpiredAndTornRecords) {
  IdempotencyRecord live{"live", crypto::sha256("live"), kNow + kTtl, {202, "{}"}};
  IdempotencyRecord old{"old", crypto::sha256("old"), kNow - 1, {200, "{}"}};
  {
    std::ofstream out(path_, std::ios::binary);
    out << format_idempotency_record(old) << format_idempotency_record(live) << "K 12 ab";
  }
  auto s = store();
  auto journal = IdempotencyJournalFile::open(loop(), path_, s, kNow);
  ASSERT_TRUE(journal.ok()) << journal.error().message;
  EXPECT_EQ(s->size(), 1u);
  EXPECT_EQ(read_file(), format_idempotency_record(live));  // compacted
  EXPECT_FALSE(std::filesystem::exists(path_ + ".new"));
}

TEST_F(JournalFileTest, CompactsWhileRunningOnceItHasGrown) {
  // Two keys at most: the journal gets ten records, of which two are still live.
  auto s = std::make_shared<MemoryIdempotencyStore>(IdempotencyLimits{kTtl, 2});
  auto journal = IdempotencyJournalFile::open(loop(), path_, s, wall_clock_ms(), 300);
  ASSERT_TRUE(journal.ok()) << journal.error().message;
  for (int i = 0; i < 10; ++i) {
    bool stored = false;
    keep(*s, "k" + std::to_string(i), "{}", stored, wall_clock_ms());
    ASSERT_TRUE(run_until([&] { return stored; }));
  }
  IdempotencyJournal j = parse_idempotency_journal(read_file());
  EXPECT_FALSE(j.truncated);
  EXPECT_LT(j.records.size(), 10u) << "never compacted";
  EXPECT_NE(j.records.front().scope, "k0");  // long gone from the store
  EXPECT_EQ(j.records.back().scope, "k9");  // the newest is always there
}

TEST_F(JournalFileTest, UnwritableFolderIsAnError) {
  auto s = store();
  auto journal =
      IdempotencyJournalFile::open(loop(), dir_ + "/missing/idempotency.journal", s, kNow);
  EXPECT_FALSE(journal.ok());
}

}  // namespace
}  // namespace mailcar
