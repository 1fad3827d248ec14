// Accounting of memory that clients make mailcar hold: a process-wide byte counter per kind
// of data and move-only leases that hold part of it. Nothing is allocated here; holders ask
// before they allocate and give back when they free. Both doors use it (HTTP, SMTP).
#pragma once

#include <atomic>
#include <cstdint>

namespace mailcar {

// Bytes held by all holders together. The limit is passed by each caller (it comes from the
// configuration in effect, which a reload may change), so the counter has no state to reload.
// Thread-safe: a lease may be released on a worker thread (file transport).
class MemoryBudget {
 public:
  MemoryBudget() = default;
  MemoryBudget(const MemoryBudget&) = delete;
  MemoryBudget& operator=(const MemoryBudget&) = delete;

  // Takes `bytes` when used() + bytes <= limit; false (nothing taken) otherwise.
  bool try_take(uint64_t bytes, uint64_t limit);
  // Takes `bytes` whatever the limit (what is already allocated must be counted).
  void take(uint64_t bytes) { used_.fetch_add(bytes, std::memory_order_relaxed); }
  void give_back(uint64_t bytes) { used_.fetch_sub(bytes, std::memory_order_relaxed); }
  uint64_t used() const { return used_.load(std::memory_order_relaxed); }

 private:
  std::atomic<uint64_t> used_{0};
};

// Message data in flight, both doors: HTTP bodies being read and messages being built or
// delivered, SMTP DATA buffers and normalized messages (limits.max_inflight_bytes).
MemoryBudget& inflight_budget();
// HTTP request bodies read before their request could be authenticated (the key may be in
// the body) (limits.unauthenticated_body_bytes).
MemoryBudget& unauthenticated_budget();

// A share of a budget, given back when the lease ends. A move hands the share on; a copy
// holds nothing (the share stays with the data it was taken for, so copying a message or a
// request, as tests do, can never give it back twice). An empty lease holds none.
class MemoryLease {
 public:
  MemoryLease() = default;
  explicit MemoryLease(MemoryBudget& budget) : budget_(&budget) {}
  MemoryLease(MemoryLease&& other) noexcept;
  MemoryLease& operator=(MemoryLease&& other) noexcept;
  MemoryLease(const MemoryLease&) noexcept {}
  MemoryLease& operator=(const MemoryLease& other) noexcept {
    if (this != &other) release();
    return *this;
  }
  ~MemoryLease() { release(); }

  // Holds at least `total` bytes afterwards: true when that fit within `limit` (or was already
  // held); false leaves the lease as it was.
  bool grow_to(uint64_t total, uint64_t limit);
  // Holds exactly `total` bytes, over the limit if need be (for data that already exists).
  void resize(uint64_t total);
  void release() { resize(0); }
  uint64_t bytes() const { return bytes_; }
  bool attached() const { return budget_ != nullptr; }

 private:
  MemoryBudget* budget_ = nullptr;
  uint64_t bytes_ = 0;
};

}  // namespace mailcar
