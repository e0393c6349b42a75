// One place sets the thread count for OpenMP and OpenBLAS together, so GEMMs and our own
// parallel loops never oversubscribe the cores.
#pragma once

namespace mambacpp {

void set_num_threads(int n);  // n >= 1
int num_threads();

}  // namespace mambacpp
