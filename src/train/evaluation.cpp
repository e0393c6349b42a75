#include "train/evaluation.h"

#include <algorithm>
#include <vector>

#include "core/error.h"

namespace mambacpp {
namespace {

// Adds the loss of `count` consecutive windows of `length` inputs starting at id `first`.
void add_windows(MambaModel& model, const TokenFile& file, int64_t first, int count, int64_t length,
                 MambaModel::Loss& total) {
  std::vector<int32_t> window(size_t(length + 1)), tokens(size_t(count * length)), targets(tokens.size());
  for (int b = 0; b < count; ++b) {
    file.read(first + b * length, window);
    std::copy(window.begin(), window.end() - 1, tokens.begin() + b * length);
    std::copy(window.begin() + 1, window.end(), targets.begin() + b * length);
  }
  const MambaModel::Loss part = model.loss(tokens.data(), targets.data(), count, length);
  total.sum += part.sum;
  total.count += part.count;
}

}  // namespace

MambaModel::Loss evaluate_loss(MambaModel& model, const TokenFile& file, int batch, int64_t seq_len,
                               int64_t max_targets) {
  MAMBACPP_CHECK(batch >= 1 && seq_len >= 1 && max_targets >= 0);
  if (file.size() < 2) fail(file.path().string(), ": holds ", file.size(), " ids; measuring a loss needs at least 2");
  if (file.vocab_size() > model.config().vocab_size)
    fail(file.path().string(), ": its vocabulary has ", file.vocab_size(), " tokens, more than the model's ",
         model.config().vocab_size);
  const int64_t available = file.size() - 1;
  const int64_t targets = max_targets == 0 ? available : std::min(max_targets, available);
  const int64_t full_windows = targets / seq_len;
  MambaModel::Loss total;
  for (int64_t w = 0; w < full_windows; w += batch) {
    const int count = int(std::min<int64_t>(batch, full_windows - w));
    add_windows(model, file, w * seq_len, count, seq_len, total);
  }
  if (const int64_t rest = targets - full_windows * seq_len; rest > 0)
    add_windows(model, file, full_windows * seq_len, 1, rest, total);
  return total;
}

}  // namespace mambacpp
