// Initial states and packed rows at the model level (MambaModel::loss with LossOptions):
//  - running A then B from A's final states equals running A++B: logits and final states through
//    forward(), the loss and final states through loss() with and without gradients, for chunk
//    boundaries inside and between A and B; the training forward from a state gives forward()'s
//    logits from that state (compared through the loss);
//  - gradients: loss(A++B) equals loss(B from A's states, d_initial_state out) plus loss(A with
//    that as d_final_state), which is the gradient reaching A's parameters through the carried state;
//  - dL/d(initial states) against central differences of the double reference (model_double_reference.h);
//  - a packed row [doc1 doc2 ...] (positions restarting, the targets at each document's last token
//    -1) has the loss, gradients and final states of its documents run alone, each as its own row,
//    for the two fixtures and the odd shape;
//  - bad positions and mismatched states are BadInputs naming what is wrong.
// Tolerance for gradients and losses: |ours - ref| <= 1e-5 + 1e-3 |ref| elementwise (the same sums
// in another order, and chains through more tokens); logits and states 1e-4 absolute (values O(1),
// fp32 sums over a few hundred terms).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <numeric>

#include "core/rng.h"
#include "io/safetensors.h"
#include "model/mamba_model.h"
#include "model_double_reference.h"
#include "model_test_support.h"

namespace mambacpp {
namespace {

using namespace testing;

// LossOptions with some fields set (designated initializers would leave on_gradients_ready out,
// which -Wextra reports).
struct with {
  LossOptions o;
  with& positions(const int32_t* p) { return o.positions = p, *this; }
  with& initial_state(const InferenceState* s) { return o.initial_state = s, *this; }
  with& final_state(InferenceState* s) { return o.final_state = s, *this; }
  with& d_final_state(const InferenceState* s) { return o.d_final_state = s, *this; }
  with& d_initial_state(InferenceState* s) { return o.d_initial_state = s, *this; }
  operator const LossOptions&() const { return o; }
};

// |ours - ref| <= abs_tol + rel_tol |ref| for every element; prints the worst ratio to the bound.
void expect_close(const std::string& check, const float* ref, const float* ours, int64_t n, double abs_tol = 1e-5,
                  double rel_tol = 1e-3) {
  double worst_ratio = 0;
  int64_t worst = -1;
  for (int64_t i = 0; i < n; ++i) {
    const double diff = std::fabs(double(ours[i]) - double(ref[i]));
    const double ratio = std::isnan(diff) ? INFINITY : diff / (abs_tol + rel_tol * std::fabs(double(ref[i])));
    if (ratio > worst_ratio || worst < 0) worst_ratio = ratio, worst = i;
  }
  std::printf("PARITY %s worst/bound=%.3g\n", check.c_str(), worst_ratio);
  if (worst < 0) return;
  EXPECT_LE(worst_ratio, 1.0) << check << ": element " << worst << " expected " << ref[worst] << " got " << ours[worst];
}

void expect_same_gradients(const std::string& check, const Parameters& ref, const Parameters& ours) {
  for (ParamKind kind : {ParamKind::Vector, ParamKind::Matrix})
    expect_close(check + (kind == ParamKind::Vector ? " (vectors)" : " (matrices)"), ref.region(kind),
                 ours.region(kind), ref.table().region_elements(kind));
}

// Sequence b's slot of every layer, conv then ssm.
std::vector<float> slot_values(const InferenceState& s, int b, const MambaConfig& c) {
  const int64_t conv = c.d_inner * (c.d_conv - 1), ssm = c.d_inner * c.d_state;
  std::vector<float> v;
  for (int l = 0; l < int(c.n_layer); ++l) {
    v.insert(v.end(), s.conv(l) + b * conv, s.conv(l) + (b + 1) * conv);
    v.insert(v.end(), s.ssm(l) + b * ssm, s.ssm(l) + (b + 1) * ssm);
  }
  return v;
}

void expect_same_states(const std::string& check, const InferenceState& ref, int ref_slot, const InferenceState& ours,
                        int our_slot, const MambaConfig& c) {
  const std::vector<float> a = slot_values(ref, ref_slot, c), b = slot_values(ours, our_slot, c);
  expect_close(check, a.data(), b.data(), int64_t(a.size()), 1e-4, 0.0);
}
void expect_same_states(const std::string& check, const InferenceState& ref, const InferenceState& ours,
                        const MambaConfig& c) {
  for (int b = 0; b < ref.batch(); ++b) expect_same_states(cat(check, " slot ", b), ref, b, ours, b, c);
}

std::vector<int32_t> random_ids(Rng& rng, size_t n, int64_t vocab) {
  std::vector<int32_t> ids(n);
  for (int32_t& id : ids) id = int32_t(rng.next_u64() % uint64_t(vocab));
  return ids;
}

// Columns [t0, t0 + len) of a [B, L] matrix.
template <class T>
std::vector<T> columns(const std::vector<T>& m, int B, int64_t L, int64_t t0, int64_t len) {
  std::vector<T> out;
  for (int b = 0; b < B; ++b) out.insert(out.end(), m.begin() + b * L + t0, m.begin() + b * L + t0 + len);
  return out;
}

// Next-token targets within each row of [B, L] ids; the last column -1.
std::vector<int32_t> next_token_targets(const std::vector<int32_t>& ids, int B, int64_t L) {
  std::vector<int32_t> targets(ids.size(), -1);
  for (int b = 0; b < B; ++b)
    for (int64_t t = 0; t + 1 < L; ++t) targets[size_t(b * L + t)] = ids[size_t(b * L + t + 1)];
  return targets;
}

// Sum over rows of -log softmax(logits) at the target (targets < 0 skipped), in double.
double loss_of_logits(const std::vector<float>& logits, const std::vector<int32_t>& targets, int64_t V) {
  double total = 0;
  for (size_t r = 0; r < targets.size(); ++r) {
    if (targets[r] < 0) continue;
    const float* row = logits.data() + r * V;
    double mx = row[0], sum = 0;
    for (int64_t v = 1; v < V; ++v) mx = std::max(mx, double(row[v]));
    for (int64_t v = 0; v < V; ++v) sum += std::exp(double(row[v]) - mx);
    total += mx + std::log(sum) - double(row[targets[r]]);
  }
  return total;
}

MambaModel odd_model(bool falcon, uint64_t seed) {
  const MambaConfig c = odd_config(falcon);
  return MambaModel::from_tensors(c, random_weights(c, seed).second, "odd shape", LoadOptions{WeightType::F32});
}

MambaModel model_named(const std::string& name) {
  if (name == "odd") return odd_model(false, 7);
  if (name == "odd-falcon") return odd_model(true, 8);
  return MambaModel::load(test_data(name), LoadOptions{WeightType::F32});
}

std::string test_name(const std::string& model) {
  std::string s;
  for (char ch : model) s += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  return s;
}

// ---- Continuing from a state equals running the whole sequence

class Continuation : public ::testing::TestWithParam<std::string> {};

TEST_P(Continuation, AThenBFromItsStatesEqualsAPlusB) {
  MambaModel model = model_named(GetParam());
  const MambaConfig& c = model.config();
  const int B = 2;
  const int64_t LB = 6, V = c.vocab_size;
  Rng rng(3);
  for (int64_t LA : {6, 7})
    for (int64_t chunk : {3, 512}) {  // chunks of 3: a boundary between A and B (LA 6) or inside both (7)
      SCOPED_TRACE(cat("A of ", LA, " tokens, chunks of ", chunk));
      model.set_chunk_length(chunk);
      const int64_t L = LA + LB;
      const std::vector<int32_t> ids = random_ids(rng, size_t(B * L), V), targets = next_token_targets(ids, B, L);
      const std::vector<int32_t> ids_a = columns(ids, B, L, 0, LA), ids_b = columns(ids, B, L, LA, LB);
      const std::vector<int32_t> targets_a = columns(targets, B, L, 0, LA), targets_b = columns(targets, B, L, LA, LB);

      // forward(): logits and final states
      InferenceState whole = model.new_state(B), split = model.new_state(B);
      std::vector<float> logits(size_t(B * L * V)), logits_b(size_t(B * LB * V));
      model.forward(ids.data(), B, L, whole, LogitsMode::All, logits.data());
      model.forward(ids_a.data(), B, LA, split, LogitsMode::None, nullptr);
      const InferenceState after_a = split;
      model.forward(ids_b.data(), B, LB, split, LogitsMode::All, logits_b.data());
      const std::vector<float> whole_b = columns(logits, B, L * V, LA * V, LB * V);
      expect_parity("forward: B's logits from A's states", whole_b.data(), logits_b.data(), int64_t(whole_b.size()), 1e-4);
      expect_same_states("forward: final states", whole, split, c);

      // loss(), without and with gradients
      for (bool with_grads : {false, true}) {
        SCOPED_TRACE(with_grads ? "loss with gradients" : "loss without gradients");
        Parameters grads(c, WeightType::F32);
        Parameters* g = with_grads ? &grads : nullptr;
        InferenceState state_a = model.new_state(B), state_b = model.new_state(B);
        const MambaModel::Loss loss_whole = model.loss(ids.data(), targets.data(), B, L, g);
        const MambaModel::Loss loss_a = model.loss(ids_a.data(), targets_a.data(), B, LA, g, 1.0f, with().final_state(&state_a));
        const MambaModel::Loss loss_b = model.loss(ids_b.data(), targets_b.data(), B, LB, g, 1.0f,
                                                   with().initial_state(&state_a).final_state(&state_b));
        expect_same_states("loss: A's final states", after_a, state_a, c);
        expect_same_states("loss: final states", whole, state_b, c);
        const float expected = float(loss_whole.sum), ours = float(loss_a.sum + loss_b.sum);
        expect_close("loss(A) + loss(B from A's states) vs loss(A++B)", &expected, &ours, 1);
        // The training forward from A's states has forward()'s logits from them.
        const float from_logits = float(loss_of_logits(logits_b, targets_b, V)), ours_b = float(loss_b.sum);
        expect_close("loss(B from A's states) vs forward()'s logits", &from_logits, &ours_b, 1);
      }
    }
}

TEST_P(Continuation, GradientsReachAThroughTheCarriedStates) {
  MambaModel model = model_named(GetParam());
  const MambaConfig& c = model.config();
  model.set_scan_checkpoint_every(4);
  const int B = 2;
  const int64_t LA = 7, LB = 6, L = LA + LB;
  Rng rng(4);
  const std::vector<int32_t> ids = random_ids(rng, size_t(B * L), c.vocab_size), targets = next_token_targets(ids, B, L);
  const std::vector<int32_t> ids_a = columns(ids, B, L, 0, LA), ids_b = columns(ids, B, L, LA, LB);
  const std::vector<int32_t> targets_a = columns(targets, B, L, 0, LA), targets_b = columns(targets, B, L, LA, LB);
  const float scale = 1.0f / float(B * (L - 1));
  Parameters whole(c, WeightType::F32), split(c, WeightType::F32);
  const double loss_whole = model.loss(ids.data(), targets.data(), B, L, &whole, scale).sum;

  InferenceState state_a = model.new_state(B), d_state_a = model.new_state(B), unused = model.new_state(B);
  const double loss_b = model.loss(ids_b.data(), targets_b.data(), B, LB, &split, scale,
                                   with().initial_state(&state_a).d_initial_state(&d_state_a))
                            .sum;
  // B ran from zeros here; now from A's states, as the chain rule needs.
  split.zero();
  model.loss(ids_a.data(), targets_a.data(), B, LA, nullptr, 1.0f, with().final_state(&state_a));
  const double loss_b_from_a = model.loss(ids_b.data(), targets_b.data(), B, LB, &split, scale,
                                          with().initial_state(&state_a).d_initial_state(&d_state_a))
                                   .sum;
  EXPECT_NE(loss_b, loss_b_from_a) << "the initial state changed nothing";
  const double loss_a = model.loss(ids_a.data(), targets_a.data(), B, LA, &split, scale,
                                   with().final_state(&unused).d_final_state(&d_state_a))
                            .sum;
  const float expected = float(loss_whole), ours = float(loss_a + loss_b_from_a);
  expect_close(GetParam() + " loss", &expected, &ours, 1);
  expect_same_gradients(GetParam() + " grad(A++B) vs grad(B from A's states) + grad(A through d_final_state)", whole,
                        split);
  // Without d_final_state, A's gradients miss what reached them through the states: they differ.
  Parameters without(c, WeightType::F32);
  model.loss(ids_b.data(), targets_b.data(), B, LB, &without, scale, with().initial_state(&state_a));
  model.loss(ids_a.data(), targets_a.data(), B, LA, &without, scale);
  double differ = 0;
  for (int64_t i = 0; i < c.d_inner; ++i)
    differ = std::max(differ, std::fabs(double(without.region(ParamKind::Vector)[i] - split.region(ParamKind::Vector)[i])));
  EXPECT_GT(differ, 1e-6) << "d_final_state made no difference";
}

INSTANTIATE_TEST_SUITE_P(Model, Continuation, ::testing::Values("hf-tiny-mamba", "hf-tiny-falcon-mamba", "odd"),
                         [](const auto& info) { return test_name(info.param); });

// ---- dL/d(initial states) against finite differences of the double reference

class InitialStateGradients : public ::testing::TestWithParam<bool> {};  // param: Falcon-Mamba

TEST_P(InitialStateGradients, MatchFiniteDifferencesOfTheDoubleReference) {
  const MambaConfig c = odd_config(GetParam());
  auto [weights, tensors] = random_weights(c, 12);
  MambaModel model = MambaModel::from_tensors(c, tensors, "odd shape", LoadOptions{WeightType::F32});
  model.set_scan_checkpoint_every(2);
  const int64_t L = 6, E = c.d_inner, S = c.d_conv - 1, N = c.d_state;
  Rng rng(6);
  const std::vector<int32_t> ids = random_ids(rng, size_t(L), c.vocab_size), targets = next_token_targets(ids, 1, L);
  // A random initial state, the same values (floats) on both sides.
  InferenceState initial = model.new_state(1), d_initial = model.new_state(1);
  ReferenceState ref_state;
  for (int l = 0; l < int(c.n_layer); ++l) {
    ref_state.conv.emplace_back(size_t(E * S)), ref_state.ssm.emplace_back(size_t(E * N));
    for (int64_t i = 0; i < E * S; ++i) ref_state.conv.back()[i] = initial.conv(l)[i] = float(2 * rng.uniform() - 1);
    for (int64_t i = 0; i < E * N; ++i) ref_state.ssm.back()[i] = initial.ssm(l)[i] = float(2 * rng.uniform() - 1);
  }
  Parameters grads(c, WeightType::F32);
  const float scale = 1.0f / float(L - 1);
  const double loss = model.loss(ids.data(), targets.data(), 1, L, &grads, scale,
                                 with().initial_state(&initial).d_initial_state(&d_initial))
                          .sum;
  auto reference_loss = [&] {
    const Matrix logits = reference_logits(c, weights, ids, &ref_state);
    double total = 0;
    for (int64_t t = 0; t + 1 < L; ++t) {
      const auto& row = logits[size_t(t)];
      double mx = row[0], sum = 0;
      for (double v : row) mx = std::max(mx, v);
      for (double v : row) sum += std::exp(v - mx);
      total += mx + std::log(sum) - row[size_t(ids[size_t(t + 1)])];
    }
    return total / double(L - 1);
  };
  const float ref_mean = float(reference_loss()), ours_mean = float(loss * scale);
  expect_parity("loss from an initial state vs double reference", &ref_mean, &ours_mean, 1, 1e-5);
  // Central differences in double (h = 1e-5: truncation ~1e-10) at a few elements of each layer's
  // conv and ssm states; d_initial holds grad_scale x d(sum)/d(state) = d(mean)/d(state).
  std::vector<float> fd, analytic;
  for (int l = 0; l < int(c.n_layer); ++l)
    for (bool conv : {true, false})
      for (int k = 0; k < 4; ++k) {
        std::vector<double>& values = conv ? ref_state.conv[size_t(l)] : ref_state.ssm[size_t(l)];
        const size_t i = size_t(rng.next_u64() % values.size());
        const double saved = values[i], h = 1e-5;
        values[i] = saved + h;
        const double up = reference_loss();
        values[i] = saved - h;
        const double down = reference_loss();
        values[i] = saved;
        fd.push_back(float((up - down) / (2 * h)));
        analytic.push_back(conv ? d_initial.conv(l)[i] : d_initial.ssm(l)[i]);
      }
  expect_close(std::string(GetParam() ? "falcon " : "") + "dL/d(initial states) vs finite differences", fd.data(),
               analytic.data(), int64_t(fd.size()));
  double largest = 0;
  for (float v : analytic) largest = std::max(largest, double(std::fabs(v)));
  EXPECT_GT(largest, 1e-4) << "the state gradients checked are all about zero";
}

INSTANTIATE_TEST_SUITE_P(Model, InitialStateGradients, ::testing::Values(false, true),
                         [](const auto& info) { return info.param ? "FalconMamba" : "Mamba"; });

// ---- Packed rows

// Rows of documents back to back: ids, positions, and targets (next token inside the document,
// -1 at each document's last token).
struct Packed {
  int B;
  int64_t L;
  std::vector<std::vector<int64_t>> docs;  // lengths per row, each row summing to L
  std::vector<int32_t> ids, positions, targets;
  Packed(Rng& rng, int64_t vocab, std::vector<std::vector<int64_t>> docs_) : docs(std::move(docs_)) {
    B = int(docs.size());
    L = std::accumulate(docs[0].begin(), docs[0].end(), int64_t(0));
    ids = random_ids(rng, size_t(B * L), vocab);
    targets.assign(ids.size(), -1);
    for (int b = 0; b < B; ++b) {
      int64_t t = 0;
      for (int64_t len : docs[size_t(b)])
        for (int64_t p = 0; p < len; ++p, ++t) {
          positions.push_back(int32_t(p));
          if (p + 1 < len) targets[size_t(b * L + t)] = ids[size_t(b * L + t + 1)];
        }
    }
  }
};

class PackedRows : public ::testing::TestWithParam<std::string> {};

TEST_P(PackedRows, EqualTheirDocumentsRunAlone) {
  MambaModel model = model_named(GetParam());
  const MambaConfig& c = model.config();
  model.set_scan_checkpoint_every(4);  // restarts at, right after and between saved states
  Rng rng(9);
  const Packed p(rng, c.vocab_size, {{5, 1, 9, 4}, {12, 7}, {19}});
  const LossOptions packed_options = with().positions(p.positions.data());
  Parameters packed(c, WeightType::F32), alone(c, WeightType::F32);
  InferenceState packed_final = model.new_state(p.B);
  LossOptions with_final = packed_options;
  with_final.final_state = &packed_final;
  const MambaModel::Loss packed_loss = model.loss(p.ids.data(), p.targets.data(), p.B, p.L, &packed, 1.0f, with_final);

  double alone_sum = 0;
  int64_t alone_count = 0;
  for (int b = 0; b < p.B; ++b) {
    int64_t t0 = 0;
    for (int64_t len : p.docs[size_t(b)]) {
      const std::vector<int32_t> ids(p.ids.begin() + b * p.L + t0, p.ids.begin() + b * p.L + t0 + len);
      const std::vector<int32_t> targets = next_token_targets(ids, 1, len);
      InferenceState final_state = model.new_state(1);
      const MambaModel::Loss l = model.loss(ids.data(), targets.data(), 1, len, &alone, 1.0f, with().final_state(&final_state));
      alone_sum += l.sum, alone_count += l.count;
      t0 += len;
      if (t0 == p.L) expect_same_states(cat(GetParam(), " row ", b, "'s final states"), final_state, 0, packed_final, b, c);
    }
  }
  EXPECT_EQ(packed_loss.count, alone_count);
  const float expected = float(alone_sum), ours = float(packed_loss.sum);
  expect_close(GetParam() + " packed loss", &expected, &ours, 1);
  expect_same_gradients(GetParam() + " packed gradients vs documents alone", alone, packed);

  // Without gradients: the chunked forward, chunks of 4 tokens crossing the documents.
  model.set_chunk_length(4);
  InferenceState chunked_final = model.new_state(p.B);
  LossOptions chunked = packed_options;
  chunked.final_state = &chunked_final;
  const float chunked_loss = float(model.loss(p.ids.data(), p.targets.data(), p.B, p.L, nullptr, 1.0f, chunked).sum);
  expect_close(GetParam() + " packed loss without gradients", &expected, &chunked_loss, 1);
  expect_same_states(GetParam() + " final states without gradients", packed_final, chunked_final, c);
}

INSTANTIATE_TEST_SUITE_P(Model, PackedRows, ::testing::Values("hf-tiny-mamba", "hf-tiny-falcon-mamba", "odd"),
                         [](const auto& info) { return test_name(info.param); });

// ---- Bad input

TEST(LossOptionsValidation, BadPositionsAndStatesAreRefused) {
  MambaModel model = odd_model(false, 5);
  const MambaConfig& c = model.config();
  const int B = 2;
  const int64_t L = 5;
  Rng rng(10);
  const std::vector<int32_t> ids = random_ids(rng, size_t(B * L), c.vocab_size), targets = next_token_targets(ids, B, L);
  Parameters grads(c, WeightType::F32);
  for (Parameters* g : {(Parameters*)nullptr, &grads}) {
    SCOPED_TRACE(g ? "with gradients" : "without gradients");
    std::vector<int32_t> positions = {0, 1, 2, 3, 4, 7, 8, 9, 3, 0};  // row 1 continues at 7, then jumps to 3
    expect_bad_input([&] { model.loss(ids.data(), targets.data(), B, L, g, 1.0f, with().positions(positions.data())); },
                     {"positions[1, 3] is 3", "positions[1, 2] is 9"});
    positions[2] = -1;
    expect_bad_input([&] { model.loss(ids.data(), targets.data(), B, L, g, 1.0f, with().positions(positions.data())); },
                     {"positions[0, 2] is -1"});
    InferenceState three = model.new_state(3);
    expect_bad_input([&] { model.loss(ids.data(), targets.data(), B, L, g, 1.0f, with().initial_state(&three)); },
                     {"initial_state", "3 sequences", "batch has 2"});
    expect_bad_input([&] { model.loss(ids.data(), targets.data(), B, L, g, 1.0f, with().final_state(&three)); },
                     {"final_state", "3 sequences"});
    InferenceState other_shape = odd_model(true, 5).new_state(B);  // same sizes: accepted
    EXPECT_NO_THROW(model.loss(ids.data(), targets.data(), B, L, g, 1.0f, with().initial_state(&other_shape)));
    MambaConfig wider = c;
    wider.d_state = c.d_state + 1;
    InferenceState wrong = InferenceState(wider, B);
    expect_bad_input([&] { model.loss(ids.data(), targets.data(), B, L, g, 1.0f, with().initial_state(&wrong)); },
                     {"initial_state", "another model shape"});
  }
  InferenceState three = model.new_state(3);
  expect_bad_input([&] { model.loss(ids.data(), targets.data(), B, L, &grads, 1.0f, with().d_initial_state(&three)); },
                   {"d_initial_state", "3 sequences"});
  expect_bad_input([&] { model.loss(ids.data(), targets.data(), B, L, &grads, 1.0f, with().d_final_state(&three)); },
                   {"d_final_state", "3 sequences"});
}

}  // namespace
}  // namespace mambacpp
