#include "mailcar/memory_budget.hpp"

#include <gtest/gtest.h>

#include <utility>

using mailcar::MemoryBudget;
using mailcar::MemoryLease;

TEST(MemoryBudget, TakesUpToTheLimitAndNoFurther) {
  MemoryBudget budget;
  EXPECT_TRUE(budget.try_take(60, 100));
  EXPECT_TRUE(budget.try_take(40, 100));
  EXPECT_FALSE(budget.try_take(1, 100));
  EXPECT_EQ(budget.used(), 100u);
  budget.give_back(30);
  EXPECT_FALSE(budget.try_take(31, 100));
  EXPECT_TRUE(budget.try_take(30, 100));
  // A lower limit after a reload: nothing new fits while more than it is held.
  EXPECT_FALSE(budget.try_take(1, 50));
}

TEST(MemoryBudget, HugeRequestsDoNotWrapAround) {
  MemoryBudget budget;
  EXPECT_TRUE(budget.try_take(10, 100));
  EXPECT_FALSE(budget.try_take(UINT64_MAX - 5, 100));
  EXPECT_FALSE(budget.try_take(UINT64_MAX, UINT64_MAX - 1));
  EXPECT_EQ(budget.used(), 10u);
}

TEST(MemoryLease, GrowsWithinTheLimitAndGivesBackWhenItEnds) {
  MemoryBudget budget;
  {
    MemoryLease a(budget);
    EXPECT_TRUE(a.grow_to(70, 100));
    EXPECT_TRUE(a.grow_to(50, 100));  // already held: no change
    EXPECT_EQ(a.bytes(), 70u);
    MemoryLease b(budget);
    EXPECT_FALSE(b.grow_to(31, 100));
    EXPECT_EQ(b.bytes(), 0u);
    EXPECT_TRUE(b.grow_to(30, 100));
    EXPECT_EQ(budget.used(), 100u);
    a.resize(20);  // shrinks to what is really held
    EXPECT_EQ(budget.used(), 50u);
  }
  EXPECT_EQ(budget.used(), 0u);
}

TEST(MemoryLease, ResizeCountsExistingDataOverTheLimit) {
  MemoryBudget budget;
  MemoryLease a(budget);
  a.resize(500);
  EXPECT_EQ(budget.used(), 500u);
  MemoryLease b(budget);
  EXPECT_FALSE(b.grow_to(1, 400));
  a.release();
  EXPECT_EQ(budget.used(), 0u);
  EXPECT_TRUE(b.grow_to(1, 400));
}

TEST(MemoryLease, MovesOwnershipExactlyOnce) {
  MemoryBudget budget;
  MemoryLease a(budget);
  ASSERT_TRUE(a.grow_to(40, 100));
  MemoryLease b = std::move(a);
  EXPECT_EQ(a.bytes(), 0u);  // NOLINT(bugprone-use-after-move): the moved-from state is defined
  EXPECT_EQ(b.bytes(), 40u);
  MemoryLease c(budget);
  ASSERT_TRUE(c.grow_to(10, 100));
  c = std::move(b);  // c's own 10 are given back
  EXPECT_EQ(budget.used(), 40u);
  a.release();
  EXPECT_EQ(budget.used(), 40u);
  c.release();
  EXPECT_EQ(budget.used(), 0u);
  MemoryLease empty;
  EXPECT_FALSE(empty.grow_to(1, 100));
}

TEST(MemoryLease, ACopyHoldsNothing) {
  MemoryBudget budget;
  MemoryLease a(budget);
  ASSERT_TRUE(a.grow_to(40, 100));
  {
    MemoryLease copy = a;  // NOLINT(performance-unnecessary-copy-initialization)
    EXPECT_EQ(copy.bytes(), 0u);
    EXPECT_FALSE(copy.attached());
  }
  EXPECT_EQ(budget.used(), 40u);
  MemoryLease b(budget);
  ASSERT_TRUE(b.grow_to(10, 100));
  b = a;  // b gives its own share back and holds nothing
  EXPECT_EQ(budget.used(), 40u);
}
