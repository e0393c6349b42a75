#include "core/error.h"

namespace mambacpp {

void internal_error(const char* file, int line, const char* what) {
  throw Error(ErrorKind::Internal, cat("internal error at ", file, ":", line, ": ", what));
}

}  // namespace mambacpp
