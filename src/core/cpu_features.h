// What the CPU we run on supports, read once at run time. Kernels pick their variant from it
// once (never per call inside a loop), so one binary runs on AVX2-only and AVX-512 machines.
#pragma once

#include <string>

namespace mambacpp {

struct CpuFeatures {
  bool avx2 = false;       // with FMA and F16C
  bool avx512 = false;     // F, BW, VL, DQ
  bool avx512_bf16 = false;
  bool amx = false;
  std::string model_name;  // from /proc/cpuinfo, for benchmark stamps
};

const CpuFeatures& cpu_features();
// "avx512" / "avx2" / "generic": the kernel set cpu_features() selects. The environment variable
// MAMBACPP_CPU=avx2|generic caps it (to compare kernels or to run like an older machine).
std::string cpu_kernel_level();

}  // namespace mambacpp
