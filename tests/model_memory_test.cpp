// Memory is planned: step() and repeated forwards allocate nothing after their first call (counted
// by replacing global operator new in this program), a 100,000-token prompt runs in a workspace no
// bigger than one chunk's, ending in the state that another chunk length gives, and loading peaks
// near the model's size.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>
#include <fstream>
#include <new>

#include "core/rng.h"
#include "io/checkpoint.h"
#include "model/mamba_model.h"
#include "model_test_support.h"

namespace {
std::atomic<int64_t> g_allocations{0};
}

// The replacements below pair malloc with free; GCC cannot see that they replace each other.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"

void* operator new(size_t n) {
  ++g_allocations;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void* operator new[](size_t n) { return operator new(n); }
void operator delete(void* p) noexcept { std::free(p); }
void operator delete[](void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }
void operator delete[](void* p, size_t) noexcept { std::free(p); }

namespace mambacpp {
namespace {

TEST(ModelMemory, StepAndForwardAllocateNothingAfterTheirFirstCall) {
  MambaModel model = MambaModel::load(testing::test_data("hf-tiny-mamba"));
  constexpr int B = 3;
  const int64_t V = model.config().vocab_size;
  InferenceState state = model.new_state(B);
  std::vector<float> logits(size_t(B * V));
  int32_t tokens[B] = {5, 6, 7};
  model.step(tokens, state, logits.data());  // sizes the workspace for B rows
  const size_t workspace = model.workspace_bytes();
  EXPECT_GT(workspace, 0u);

  const int64_t before = g_allocations.load();
  for (int i = 0; i < 50; ++i) {
    model.step(tokens, state, logits.data());
    for (int b = 0; b < B; ++b) tokens[b] = int32_t(testing::argmax(logits.data() + b * V, V));
  }
  EXPECT_EQ(g_allocations.load() - before, 0) << "operator new calls during 50 steps";
  EXPECT_EQ(model.workspace_bytes(), workspace);

  // A forward of the same size, twice: the second allocates nothing either.
  std::vector<int32_t> prompt(size_t(B * 20), 9);
  std::vector<float> all(size_t(B * 20 * V));
  model.forward(prompt.data(), B, 20, state, LogitsMode::All, all.data());
  const int64_t before_forward = g_allocations.load();
  model.forward(prompt.data(), B, 20, state, LogitsMode::All, all.data());
  EXPECT_EQ(g_allocations.load() - before_forward, 0) << "operator new calls during a repeated forward";
  // And the steps after it still fit the (grown) workspace.
  const int64_t before_more_steps = g_allocations.load();
  model.step(tokens, state, logits.data());
  EXPECT_EQ(g_allocations.load() - before_more_steps, 0);
}

// The final logits and states of a long prompt under two chunk lengths; the workspace stays that
// of one chunk whatever the prompt's length. (Sanitizer builds run 10,000 tokens: the unoptimised
// parts are ~20x slower there; the bound being tested does not depend on the length.)
TEST(ModelMemory, LongPromptRunsInAChunkSizedWorkspace) {
  const int64_t L = testing::kSanitized ? 10'000 : 100'000;
  MambaModel model = MambaModel::load(testing::test_data("hf-tiny-mamba"));
  const MambaConfig& c = model.config();
  Rng rng(3);
  std::vector<int32_t> prompt(static_cast<size_t>(L));
  for (auto& id : prompt) id = int32_t(rng.below(uint64_t(c.vocab_size)));

  // The workspace one full chunk needs.
  const int64_t chunk = model.chunk_length();
  {
    InferenceState s = model.new_state(1);
    model.forward(prompt.data(), 1, chunk, s, LogitsMode::None, nullptr);
  }
  const size_t chunk_workspace = model.workspace_bytes();

  std::vector<float> logits_a(size_t(c.vocab_size)), logits_b(size_t(c.vocab_size));
  InferenceState a = model.new_state(1), b = model.new_state(1);
  model.forward(prompt.data(), 1, L, a, LogitsMode::Last, logits_a.data());
  EXPECT_EQ(model.workspace_bytes(), chunk_workspace) << "the workspace grew with the prompt's length";
  std::printf("long prompt: %lld tokens, workspace %zu bytes, state %zu bytes\n", (long long)L,
              model.workspace_bytes(), a.bytes());

  model.set_chunk_length(333);  // boundaries fall elsewhere
  model.forward(prompt.data(), 1, L, b, LogitsMode::Last, logits_b.data());
  testing::expect_parity("long-prompt last logits (chunk 512 vs 333)", logits_a.data(), logits_b.data(), c.vocab_size, 1e-5);
  for (int l = 0; l < int(c.n_layer); ++l) {
    testing::expect_parity("long-prompt conv_state layer " + std::to_string(l), a.conv(l), b.conv(l),
                           c.d_inner * (c.d_conv - 1), 1e-5);
    testing::expect_parity("long-prompt ssm_state layer " + std::to_string(l), a.ssm(l), b.ssm(l),
                           c.d_inner * c.d_state, 1e-5);
  }
}

// A kernel counter of this process from /proc/self/status ("VmRSS", "VmHWM"), in bytes; -1 if absent.
int64_t proc_status_bytes(const std::string& key) {
  std::ifstream in("/proc/self/status");
  for (std::string line; std::getline(in, line);)
    if (line.rfind(key + ":", 0) == 0) return std::stoll(line.substr(key.size() + 1)) * 1024;
  return -1;
}

// Loading a safetensors checkpoint peaks near the model's own size, not at the mapped file plus
// the copy (the file's pages are handed back as they are copied). The peak is reset through
// /proc/self/clear_refs so earlier tests do not count.
TEST(ModelMemory, LoadingPeaksNearTheModelsSize) {
  if (testing::kSanitized) GTEST_SKIP() << "ASan's shadow memory distorts RSS";
  MambaConfig c;
  c.vocab_size = 16000;
  c.d_model = 512;
  c.n_layer = 4;
  c.d_inner = 1024;
  c.dt_rank = 32;
  testing::TempDir dir;
  {
    const MambaModel source = MambaModel::random(c, 5, WeightType::BF16);
    const auto list = source.hf_tensors(DType::BF16);
    write_hf_checkpoint(dir.path(), c, TensorMap(list.begin(), list.end()), std::nullopt);
  }
  const int64_t file_bytes = int64_t(std::filesystem::file_size(dir.path() / "model.safetensors"));
  std::ofstream("/proc/self/clear_refs") << "5";  // VmHWM := VmRSS
  const int64_t rss_before = proc_status_bytes("VmRSS");
  if (rss_before < 0 || proc_status_bytes("VmHWM") > rss_before + (1 << 20)) GTEST_SKIP() << "cannot reset VmHWM";
  const MambaModel model = MambaModel::load(dir.path());
  ASSERT_EQ(model.weight_type(), WeightType::BF16);
  const int64_t growth = proc_status_bytes("VmHWM") - rss_before;
  std::printf("load: file %.1f MiB, weights %.1f MiB, peak RSS growth %.1f MiB\n", file_bytes / 1048576.0,
              model.weight_bytes() / 1048576.0, growth / 1048576.0);
  EXPECT_LT(growth, int64_t(model.weight_bytes()) + file_bytes / 2);  // without the release: + file_bytes
}

// InferenceState bookkeeping: slots reset and copy independently.
TEST(ModelMemory, StateSlots) {
  MambaModel model = MambaModel::load(testing::test_data("hf-tiny-mamba"));
  const MambaConfig& c = model.config();
  InferenceState two = model.new_state(2), one = model.new_state(1);
  EXPECT_EQ(two.bytes(), size_t(2 * c.n_layer * c.d_inner * (c.d_conv - 1 + c.d_state)) * sizeof(float));
  const int32_t tokens[2][4] = {{1, 2, 3, 4}, {9, 8, 7, 6}};
  model.forward(&tokens[0][0], 2, 4, two, LogitsMode::None, nullptr);
  model.forward(&tokens[1][0], 1, 4, one, LogitsMode::None, nullptr);
  // Slot 1 of the batch equals the solo run of the same sequence.
  const int64_t conv_slot = c.d_inner * (c.d_conv - 1), ssm_slot = c.d_inner * c.d_state;
  testing::expect_parity("state slot 1 vs solo ssm", one.ssm(1), two.ssm(1) + ssm_slot, ssm_slot, 1e-6);
  InferenceState copy = model.new_state(2);
  copy.copy_slot(two, 1, 0);
  testing::expect_parity("copy_slot conv", two.conv(0) + conv_slot, copy.conv(0), conv_slot, 0);
  testing::expect_parity("copy_slot ssm", two.ssm(1) + ssm_slot, copy.ssm(1), ssm_slot, 0);
  two.reset_slot(0);
  for (int64_t i = 0; i < ssm_slot; ++i) ASSERT_EQ(two.ssm(0)[i], 0.0f);
  EXPECT_NE(two.ssm(0)[ssm_slot], 0.0f);  // slot 1 untouched
  two.reset();
  for (int64_t i = 0; i < 2 * ssm_slot; ++i) ASSERT_EQ(two.ssm(1)[i], 0.0f);
}

}  // namespace
}  // namespace mambacpp
