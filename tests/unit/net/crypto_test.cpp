// SHA-256 against the FIPS 180-2 test vectors, one-shot and fed in pieces.
#include <gtest/gtest.h>

#include <string>

#include "mailcar/crypto.hpp"

namespace mailcar::crypto {
namespace {

TEST(Sha256Test, KnownVectors) {
  EXPECT_EQ(hex(sha256("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(hex(sha256("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256Test, IncrementalEqualsOneShot) {
  const std::string text = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  for (size_t split = 0; split <= text.size(); ++split) {
    Sha256 h;
    h.update(std::string_view(text).substr(0, split));
    h.update(std::string_view(text).substr(split));
    EXPECT_EQ(hex(h.finish()), "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        << "split at " << split;
  }
}

}  // namespace
}  // namespace mailcar::crypto
