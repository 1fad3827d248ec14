// Shared by fuzz targets whose bugs hide in long runs: each 0x01 byte of the input stands for
// `run` letters 'x', so inputs of a few bytes reach lines over 998 octets or many 64-byte
// blocks. The text stops growing at about `cap` bytes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

inline std::string expand_runs(const uint8_t* data, size_t size, size_t run, size_t cap) {
  std::string raw;
  for (size_t i = 0; i < size && raw.size() < cap; ++i) {
    if (data[i] == 1) {
      raw.append(run, 'x');
    } else {
      raw.push_back(static_cast<char>(data[i]));
    }
  }
  return raw;
}
