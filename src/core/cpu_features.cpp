#include "core/cpu_features.h"

#include <cstdlib>
#include <fstream>

namespace mambacpp {

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
    __builtin_cpu_init();
    std::string flags;  // of the first CPU, space-padded: " fpu vme ... "
    std::ifstream info("/proc/cpuinfo");
    for (std::string line; std::getline(info, line);) {
      if (f.model_name.empty() && line.rfind("model name", 0) == 0) {
        auto colon = line.find(':');
        if (colon != std::string::npos) f.model_name = line.substr(line.find_first_not_of(" \t", colon + 1));
      }
      if (flags.empty() && line.rfind("flags", 0) == 0) flags = line.substr(line.find(':') + 1) + " ";
    }
    // f16c, avx512bf16 and amx from the flags: clang-14 (the fuzz build) has no
    // __builtin_cpu_supports names for them.
    const auto has = [&](const char* name) { return flags.find(std::string(" ") + name + " ") != std::string::npos; };
    f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && has("f16c");
    f.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq");
    f.avx512_bf16 = has("avx512_bf16");
    f.amx = has("amx_tile");
    return f;
  }();
  return features;
}

std::string cpu_kernel_level() {
  const CpuFeatures& f = cpu_features();
  std::string level = f.avx512 ? "avx512" : f.avx2 ? "avx2" : "generic";
  if (const char* cap = std::getenv("MAMBACPP_CPU")) {
    const std::string c = cap;
    if (c == "generic") level = "generic";
    else if (c == "avx2" && level == "avx512") level = "avx2";
  }
  return level;
}

}  // namespace mambacpp
