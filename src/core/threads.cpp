#include "core/threads.h"

#include <omp.h>

extern "C" void openblas_set_num_threads(int);

namespace mambacpp {

void set_num_threads(int n) {
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int num_threads() { return omp_get_max_threads(); }

}  // namespace mambacpp
