#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <csignal>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mailcar/spool.hpp"
#include "spool/spool_test_support.hpp"

namespace mailcar {
namespace {

using testing::list_dir;
using testing::Loop;
using testing::sample_record;
using testing::slurp;
using testing::spit;
using testing::TempDir;

const std::string kData = "Subject: hello\r\n\r\nbody line\r\n";

class SpoolStoreTest : public ::testing::Test {
 protected:
  // Opens (and recovers) a store on dir_; returns what recover() found.
  std::vector<SpoolEntry> open_store(std::optional<uint64_t> max_bytes = std::nullopt) {
    store_.reset();
    auto opened = SpoolStore::open(loop_.get(), dir_.path(), max_bytes);
    EXPECT_TRUE(opened.ok()) << (opened.ok() ? "" : opened.error().message);
    store_ = std::move(opened).value();
    std::optional<Result<std::vector<SpoolEntry>>> result;
    store_->recover([&](Result<std::vector<SpoolEntry>> r) { result.emplace(std::move(r)); });
    EXPECT_TRUE(loop_.run_until([&] { return result.has_value(); }));
    EXPECT_TRUE(result->ok()) << result->error().message;
    return result->ok() ? std::move(*result).value() : std::vector<SpoolEntry>{};
  }

  SpoolStatus put(const SpoolRecord& r, const std::string& data) {
    std::optional<SpoolStatus> status;
    store_->put(r, data, [&](SpoolStatus s) { status = std::move(s); });
    EXPECT_TRUE(loop_.run_until([&] { return status.has_value(); }));
    return status.value_or(SpoolStatus{SpoolErrc::Io, "timed out"});
  }

  template <class Call>
  SpoolStatus wait(Call call) {
    std::optional<SpoolStatus> status;
    call([&](SpoolStatus s) { status = std::move(s); });
    EXPECT_TRUE(loop_.run_until([&] { return status.has_value(); }));
    return status.value_or(SpoolStatus{SpoolErrc::Io, "timed out"});
  }

  std::pair<SpoolStatus, std::string> read(const std::string& id) {
    std::optional<std::pair<SpoolStatus, std::string>> out;
    store_->read_data(id, [&](SpoolStatus s, SpoolMessage m) {
      EXPECT_TRUE(!s.ok() || m.record.id == id);
      EXPECT_EQ(m.record.data_size, m.data.size());
      out.emplace(std::move(s), std::move(m.data));
    });
    EXPECT_TRUE(loop_.run_until([&] { return out.has_value(); }));
    return out.value_or(std::make_pair(SpoolStatus{SpoolErrc::Io, "timed out"}, ""));
  }

  std::string file(const std::string& name) const { return dir_.path() + "/" + name; }

  TempDir dir_;
  Loop loop_;  // after dir_: destroyed first
  std::unique_ptr<SpoolStore> store_;

  void TearDown() override {
    if (store_) {
      EXPECT_TRUE(loop_.run_until([&] { return store_->idle(); }));
    }
    store_.reset();
  }
};

TEST_F(SpoolStoreTest, PutRecoverReadRoundTrip) {
  EXPECT_TRUE(open_store().empty());
  SpoolRecord r = sample_record("round.1@host");
  ASSERT_TRUE(put(r, kData).ok());
  EXPECT_EQ(list_dir(dir_.path()), (std::vector<std::string>{"corrupt", "round.1@host.msg"}));
  EXPECT_EQ(store_->stats().messages, 1u);
  EXPECT_EQ(store_->stats().bytes, slurp(file("round.1@host.msg")).size());

  auto entries = open_store();  // a restart
  ASSERT_EQ(entries.size(), 1u);
  r.data_size = kData.size();
  EXPECT_EQ(entries[0].record, r);
  EXPECT_EQ(entries[0].state, fresh_spool_state(r));
  auto [status, data] = read("round.1@host");
  EXPECT_TRUE(status.ok()) << status.detail;
  EXPECT_EQ(data, kData);
  std::optional<SpoolMessage> msg;
  store_->read_data("round.1@host", [&](SpoolStatus, SpoolMessage m) { msg = std::move(m); });
  ASSERT_TRUE(loop_.run_until([&] { return msg.has_value(); }));
  EXPECT_EQ(msg->record, r);
}

// Recovery in batches: arrival order across batches, no batch over its size, states kept,
// and operations wait until the last batch is in. read_record() gives the record alone.
TEST_F(SpoolStoreTest, RecoveryInBatchesKeepsArrivalOrder) {
  open_store();
  std::vector<std::string> order;
  for (int i = 0; i < 7; ++i) {
    SpoolRecord r = sample_record("b" + std::to_string(9 - i));  // ids against arrival
    r.queued_at_ms = 1'700'000'000'000 + static_cast<uint64_t>(i);
    ASSERT_TRUE(put(r, kData).ok());
    order.push_back(r.id);
  }
  SpoolState s = fresh_spool_state(sample_record("b5"));
  s.state = MessageState::Deferred;
  s.attempts = 1;
  s.next_attempt_ms = 1'700'000'999'000;
  ASSERT_TRUE(wait([&](auto cb) { store_->update_state("b5", s, cb); }).ok());

  store_.reset();
  store_ = std::move(SpoolStore::open(loop_.get(), dir_.path(), std::nullopt)).value();
  std::vector<std::string> got;
  std::vector<size_t> sizes;
  std::optional<SpoolStatus> done;
  std::vector<SpoolErrc> early;  // removes asked for while batches came in
  store_->recover(
      3,
      [&](std::vector<SpoolEntry> batch) {
        EXPECT_FALSE(done.has_value());
        sizes.push_back(batch.size());
        for (const SpoolEntry& e : batch) {
          got.push_back(e.record.id);
          EXPECT_EQ(e.record.recipients.size(), 3u);
          EXPECT_EQ(e.state, e.record.id == "b5" ? s : fresh_spool_state(e.record));
        }
        store_->remove("b9", [&](SpoolStatus st) { early.push_back(st.code); });
      },
      [&](SpoolStatus st) { done = std::move(st); });
  ASSERT_TRUE(loop_.run_until([&] { return done.has_value(); }));
  EXPECT_TRUE(done->ok()) << done->detail;
  EXPECT_EQ(got, order);
  EXPECT_EQ(sizes, (std::vector<size_t>{3, 3, 1}));
  ASSERT_TRUE(loop_.run_until([&] { return early.size() == 3; }));
  EXPECT_EQ(early, std::vector<SpoolErrc>(3, SpoolErrc::NotReady));
  EXPECT_EQ(store_->stats().messages, 7u);

  std::optional<std::pair<SpoolStatus, SpoolMessage>> one;
  store_->read_record("b7", [&](SpoolStatus st, SpoolMessage m) { one.emplace(st, m); });
  ASSERT_TRUE(loop_.run_until([&] { return one.has_value(); }));
  EXPECT_TRUE(one->first.ok()) << one->first.detail;
  EXPECT_EQ(one->second.record.id, "b7");
  EXPECT_EQ(one->second.record.recipients, sample_record("b7").recipients);
  EXPECT_TRUE(one->second.data.empty());
  one.reset();
  store_->read_record("nosuch", [&](SpoolStatus st, SpoolMessage m) { one.emplace(st, m); });
  ASSERT_TRUE(loop_.run_until([&] { return one.has_value(); }));
  EXPECT_EQ(one->first.code, SpoolErrc::NotFound);
}

TEST_F(SpoolStoreTest, StateUpdatesSurviveRestartAndRemoveDeletesBoth) {
  open_store();
  SpoolRecord r = sample_record("s1");
  ASSERT_TRUE(put(r, kData).ok());
  SpoolState s = fresh_spool_state(r);
  s.state = MessageState::Deferred;
  s.attempts = 2;
  s.next_attempt_ms = 1'700'000'999'000;
  s.recipients[0] = {RecipientState::Sent, 250, "ok"};
  s.recipients[2] = {RecipientState::Failed, 550, "5.1.1 unknown"};
  ASSERT_TRUE(wait([&](auto cb) { store_->update_state("s1", s, cb); }).ok());
  auto entries = open_store();
  ASSERT_EQ(entries.size(), 1u);
  EXPECT_EQ(entries[0].state, s);

  EXPECT_EQ(wait([&](auto cb) { store_->update_state("nope", s, cb); }).code, SpoolErrc::NotFound);
  ASSERT_TRUE(wait([&](auto cb) { store_->remove("s1", cb); }).ok());
  EXPECT_EQ(list_dir(dir_.path()), std::vector<std::string>{"corrupt"});
  EXPECT_EQ(store_->stats().bytes, 0u);
  EXPECT_EQ(store_->stats().messages, 0u);
  EXPECT_EQ(wait([&](auto cb) { store_->remove("s1", cb); }).code, SpoolErrc::NotFound);
  EXPECT_TRUE(open_store().empty());
}

TEST_F(SpoolStoreTest, GroupCommitSharesDirectoryFsyncsAndAcksOnlyAfterThem) {
  open_store();
  constexpr int kPuts = 200;
  const uint64_t start = uv_hrtime();
  int acked = 0;
  int acked_before_durable = 0;
  for (int i = 0; i < kPuts; ++i) {
    std::string id = "g" + std::to_string(i);
    store_->put(sample_record(id), kData, [&, id](SpoolStatus s) {
      EXPECT_TRUE(s.ok()) << s.detail;
      // When the callback runs, the file is in place and a directory fsync has run since.
      struct stat st {};
      if (::stat(file(id + ".msg").c_str(), &st) != 0 || store_->stats().dir_fsyncs == 0) {
        ++acked_before_durable;
      }
      ++acked;
    });
  }
  EXPECT_EQ(acked, 0);  // never from inside put()
  ASSERT_TRUE(loop_.run_until([&] { return acked == kPuts; }));
  EXPECT_EQ(acked_before_durable, 0);
  const double seconds = static_cast<double>(uv_hrtime() - start) / 1e9;
  SpoolStats st = store_->stats();
  EXPECT_EQ(st.puts, static_cast<uint64_t>(kPuts));
  EXPECT_EQ(st.file_fsyncs, static_cast<uint64_t>(kPuts));
  EXPECT_LE(st.dir_fsyncs, 5u) << "group commit should batch the directory fsyncs";
  EXPECT_EQ(st.dir_fsyncs, st.commits);
  double per_message = static_cast<double>(st.file_fsyncs + st.dir_fsyncs) / kPuts;
  std::printf(
      "[ spool    ] %d puts in one loop turn: %llu commits, %llu file + %llu dir "
      "fsyncs = %.3f fsyncs per message, %.3f s\n",
      kPuts, static_cast<unsigned long long>(st.commits),
      static_cast<unsigned long long>(st.file_fsyncs),
      static_cast<unsigned long long>(st.dir_fsyncs), per_message, seconds);
  EXPECT_EQ(open_store().size(), static_cast<size_t>(kPuts));
}

TEST_F(SpoolStoreTest, RecoveryQuarantinesCorruptFilesAndCleansUp) {
  open_store();
  for (const char* id : {"good", "torn", "flipped", "badstate", "renamed"}) {
    ASSERT_TRUE(put(sample_record(id), kData).ok());
  }
  store_.reset();
  std::string torn = slurp(file("torn.msg"));
  spit(file("torn.msg"), torn.substr(0, torn.size() - 3));
  std::string flipped = slurp(file("flipped.msg"));
  flipped[flipped.size() - 5] ^= 0x01;
  spit(file("flipped.msg"), flipped);
  spit(file("badstate.state"), "MCSTATE1 3 00000000\nxyz");
  std::rename(file("renamed.msg").c_str(), file("other.msg").c_str());  // id != file name
  spit(file("half.msg.tmp"), "MCSPOOL1 12");
  spit(file("orphan.state"), encode_state_file(SpoolState{}));
  spit(file("README"), "left alone");

  ::testing::internal::CaptureStdout();
  auto entries = open_store();
  std::string log = ::testing::internal::GetCapturedStdout();

  std::vector<std::string> ids;
  for (const auto& e : entries) ids.push_back(e.record.id);
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids, (std::vector<std::string>{"badstate", "good"}));
  for (const auto& e : entries) EXPECT_EQ(e.state, fresh_spool_state(e.record));
  EXPECT_EQ(list_dir(dir_.path()),
            (std::vector<std::string>{"README", "badstate.msg", "corrupt", "good.msg"}));
  EXPECT_EQ(list_dir(file("corrupt")),
            (std::vector<std::string>{"flipped.msg", "other.msg", "torn.msg"}));
  EXPECT_EQ(store_->stats().quarantined, 3u);
  EXPECT_EQ(store_->stats().messages, 2u);
  EXPECT_NE(log.find("spool_corrupt"), std::string::npos) << log;
  EXPECT_NE(log.find("checksum does not match"), std::string::npos) << log;
  EXPECT_NE(log.find("size does not match"), std::string::npos) << log;
  EXPECT_NE(log.find("spool_state_rebuilt"), std::string::npos) << log;
  EXPECT_EQ(log.find("body line"), std::string::npos) << "no message data in the log";
}

TEST_F(SpoolStoreTest, CorruptionFoundWhenReadingIsQuarantinedNotDelivered) {
  open_store();
  ASSERT_TRUE(put(sample_record("rot"), kData).ok());
  std::string bytes = slurp(file("rot.msg"));
  bytes[bytes.size() - 3] ^= 0x20;  // bit rot after recovery checked it
  spit(file("rot.msg"), bytes);
  ::testing::internal::CaptureStdout();
  auto [status, data] = read("rot");
  std::string log = ::testing::internal::GetCapturedStdout();
  EXPECT_EQ(status.code, SpoolErrc::Corrupt);
  EXPECT_TRUE(data.empty());
  EXPECT_EQ(list_dir(file("corrupt")), std::vector<std::string>{"rot.msg"});
  EXPECT_NE(log.find("spool_corrupt"), std::string::npos);
  EXPECT_EQ(read("rot").first.code, SpoolErrc::NotFound);
}

TEST_F(SpoolStoreTest, MaxBytesRefusesWithoutWritingAndClearsWhenSpaceReturns) {
  std::string one = encode_msg_file(sample_record("a"), kData);
  open_store(one.size() + 10);
  ASSERT_TRUE(put(sample_record("a"), kData).ok());
  EXPECT_FALSE(store_->full());
  SpoolStatus s = put(sample_record("b"), kData);
  EXPECT_EQ(s.code, SpoolErrc::Full);
  EXPECT_TRUE(store_->full());
  EXPECT_EQ(list_dir(dir_.path()), (std::vector<std::string>{"a.msg", "corrupt"}));
  ASSERT_TRUE(wait([&](auto cb) { store_->remove("a", cb); }).ok());
  EXPECT_TRUE(put(sample_record("b"), kData).ok());
  EXPECT_FALSE(store_->full());
}

TEST_F(SpoolStoreTest, DiskErrorLeavesNothingHalfWritten) {
  // A real write failure: RLIMIT_FSIZE makes write() fail with EFBIG (SIGXFSZ ignored), as
  // a full file system would with ENOSPC.
  open_store();
  auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &old), 0);
  rlimit tiny = old;
  tiny.rlim_cur = 4096;
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &tiny), 0);
  SpoolStatus s = put(sample_record("big"), std::string(64 * 1024, 'x'));
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &old), 0);
  std::signal(SIGXFSZ, old_handler);
  EXPECT_EQ(s.code, SpoolErrc::Full) << s.detail;
  EXPECT_TRUE(store_->full());
  EXPECT_EQ(list_dir(dir_.path()), std::vector<std::string>{"corrupt"});
  EXPECT_EQ(store_->stats().bytes, 0u);
  EXPECT_TRUE(put(sample_record("small"), kData).ok());
  EXPECT_FALSE(store_->full());
}

TEST_F(SpoolStoreTest, RefusesDuplicatesBadIdsAndWorkBeforeRecovery) {
  auto opened = SpoolStore::open(loop_.get(), dir_.path(), std::nullopt);
  ASSERT_TRUE(opened.ok());
  store_ = std::move(opened).value();
  EXPECT_EQ(put(sample_record("early"), kData).code, SpoolErrc::NotReady);
  store_.reset();
  open_store();
  ASSERT_TRUE(put(sample_record("dup"), kData).ok());
  EXPECT_EQ(put(sample_record("dup"), "other").code, SpoolErrc::Exists);
  EXPECT_EQ(read("dup").second, kData);
  EXPECT_EQ(put(sample_record("../escape"), kData).code, SpoolErrc::NotReady);
  EXPECT_EQ(list_dir(dir_.path()), (std::vector<std::string>{"corrupt", "dup.msg"}));
}

TEST_F(SpoolStoreTest, DestroyedStoreDropsCallbacksAndTheLoopStillCloses) {
  open_store();
  bool called = false;
  store_->put(sample_record("late"), kData, [&](SpoolStatus) { called = true; });
  store_.reset();
  for (int i = 0; i < 200; ++i) uv_run(loop_.get(), UV_RUN_NOWAIT);
  EXPECT_FALSE(called);
}

TEST(SpoolStoreOpen, CreatesMissingFoldersAndRefusesAFile) {
  TempDir dir;
  spit(dir.path() + "/file", "x");
  Loop loop;
  auto opened = SpoolStore::open(loop.get(), dir.path() + "/file", std::nullopt);
  EXPECT_FALSE(opened.ok());
  opened = SpoolStore::open(loop.get(), dir.path() + "/a/b/spool", std::nullopt);
  ASSERT_TRUE(opened.ok()) << opened.error().message;
  EXPECT_EQ(list_dir(dir.path() + "/a/b/spool"), std::vector<std::string>{"corrupt"});
  struct stat st {};
  ASSERT_EQ(::stat((dir.path() + "/a/b/spool").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

}  // namespace
}  // namespace mailcar
