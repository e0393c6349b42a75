#include "train/distributed.h"

// The MPI C API only: keep OpenMPI's (and MPICH's) deprecated C++ bindings out.
#define OMPI_SKIP_MPICXX 1
#define MPICH_SKIP_MPICXX 1
#include <mpi.h>
#include <sched.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>

#include "core/error.h"
#include "model/mamba_model.h"  // kRestOfModel

namespace mambacpp {

namespace {

using Clock = std::chrono::steady_clock;

class SingleProcessCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "single process"; }
  void start_allreduce_sum(std::span<float>) override {}
  void progress() override {}
  void wait_all(std::string_view) override {}
  void allreduce_sum(std::span<double>, std::string_view) override {}
  void broadcast(std::span<std::byte>, int, std::string_view) override {}
  void barrier(std::string_view) override {}
  [[noreturn]] void abort(int code) override {
    std::fflush(nullptr);
    std::_Exit(code);
  }
};

std::string mpi_error_text(int rc) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  MPI_Error_string(rc, text, &length);
  return std::string(text, size_t(length));
}

// MPI counts are ints: longer buffers go as several operations.
constexpr int64_t kMaxMpiCount = int64_t(1) << 30;

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(double timeout_s) : timeout_s_(timeout_s) {
    int provided = 0;
    if (const int rc = MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided); rc != MPI_SUCCESS)
      fail("--distributed: MPI_Init_thread failed: ", mpi_error_text(rc));
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    // Errors come back as codes (check_mpi) instead of ending the job without a word.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  }
  ~MpiCommunicator() override {
    MAMBACPP_CHECK(pending_.empty());
    MPI_Finalize();
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "MPI"; }

  void start_allreduce_sum(std::span<float> data) override {
    for (size_t at = 0; at < data.size(); at += size_t(kMaxMpiCount)) {
      const int count = int(std::min<size_t>(data.size() - at, size_t(kMaxMpiCount)));
      MPI_Request& r = pending_.emplace_back(MPI_REQUEST_NULL);
      check_mpi(MPI_Iallreduce(MPI_IN_PLACE, data.data() + at, count, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r),
                "MPI_Iallreduce");
    }
  }

  void progress() override {
    if (pending_.empty()) return;
    int done = 0;
    check_mpi(MPI_Testall(int(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
    if (done) pending_.clear();
  }

  void wait_all(std::string_view what) override {
    const Clock::time_point start = Clock::now();
    int done = 0;
    for (;;) {
      check_mpi(MPI_Testall(int(pending_.size()), pending_.data(), &done, MPI_STATUSES_IGNORE), "MPI_Testall");
      if (done) break;
      const double waited = std::chrono::duration<double>(Clock::now() - start).count();
      if (waited > timeout_s_) give_up(cat("no progress from the other ranks for ", timeout_s_, " s during ", what));
      // Each test moves the collective's rounds on, so keep testing (as MPI_Wait would), but
      // yield the core to anything else runnable (ranks may outnumber the cores).
      sched_yield();
    }
    pending_.clear();
  }

  void allreduce_sum(std::span<double> data, std::string_view what) override {
    MAMBACPP_CHECK(pending_.empty() && int64_t(data.size()) <= kMaxMpiCount);
    MPI_Request& r = pending_.emplace_back(MPI_REQUEST_NULL);
    check_mpi(MPI_Iallreduce(MPI_IN_PLACE, data.data(), int(data.size()), MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD, &r),
              "MPI_Iallreduce");
    wait_all(what);
  }

  void broadcast(std::span<std::byte> data, int root, std::string_view what) override {
    MAMBACPP_CHECK(pending_.empty());
    for (size_t at = 0; at < data.size(); at += size_t(kMaxMpiCount)) {
      const int count = int(std::min<size_t>(data.size() - at, size_t(kMaxMpiCount)));
      MPI_Request& r = pending_.emplace_back(MPI_REQUEST_NULL);
      check_mpi(MPI_Ibcast(data.data() + at, count, MPI_BYTE, root, MPI_COMM_WORLD, &r), "MPI_Ibcast");
    }
    wait_all(what);
  }

  void barrier(std::string_view what) override {
    MAMBACPP_CHECK(pending_.empty());
    MPI_Request& r = pending_.emplace_back(MPI_REQUEST_NULL);
    check_mpi(MPI_Ibarrier(MPI_COMM_WORLD, &r), "MPI_Ibarrier");
    wait_all(what);
  }

  [[noreturn]] void abort(int code) override {
    std::fflush(nullptr);
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // MPI_Abort does not return; should it, the process still ends
  }

 private:
  // Unwinding now could free a buffer a started collective still writes into: end the job here.
  [[noreturn]] void give_up(const std::string& why) {
    std::fprintf(stderr, "\nerror: rank %d: %s; aborting\n", rank_, why.c_str());
    abort(1);
  }
  void check_mpi(int rc, const char* call) {
    if (rc != MPI_SUCCESS) give_up(cat(call, " failed: ", mpi_error_text(rc)));
  }

  int rank_ = 0, size_ = 1;
  double timeout_s_;
  std::vector<MPI_Request> pending_;
};

}  // namespace

std::unique_ptr<Communicator> make_single_process_communicator() {
  return std::make_unique<SingleProcessCommunicator>();
}

bool launched_by_mpi() {
  for (const char* name : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK"})
    if (std::getenv(name)) return true;
  return false;
}

std::unique_ptr<Communicator> make_distributed_communicator(double timeout_s) {
  if (!launched_by_mpi()) return make_single_process_communicator();
  return std::make_unique<MpiCommunicator>(timeout_s);
}

WindowShare window_share(int64_t windows, int rank, int size) {
  MAMBACPP_CHECK(size >= 1 && rank >= 0 && rank < size && windows >= 0);
  return {windows * rank / size, windows * (rank + 1) / size};
}

namespace {

// One region's tensors as consecutive segments [offset, next offset), each with the layer it
// belongs to, so that the segments (alignment padding included) cover the whole region.
struct Segment {
  int64_t first = 0, end = 0;
  int layer = kRestOfModel;
};

std::vector<Segment> region_segments(const ParameterTable& table, ParamKind kind) {
  std::vector<Segment> segments;
  for (const ParamSpec& s : table.specs())
    if (s.kind == kind) segments.push_back({s.offset, 0, s.layer});
  std::sort(segments.begin(), segments.end(), [](const Segment& a, const Segment& b) { return a.first < b.first; });
  if (!segments.empty()) segments.front().first = 0;
  for (size_t i = 0; i < segments.size(); ++i)
    segments[i].end = i + 1 < segments.size() ? segments[i + 1].first : table.region_elements(kind);
  return segments;
}

// Adds [first, end) of `kind` to the bucket, joining it to the bucket's last range when adjacent.
void add_range(GradientBucket& bucket, ParamKind kind, int64_t first, int64_t end) {
  bucket.elements += end - first;
  if (!bucket.ranges.empty()) {
    GradientRange& last = bucket.ranges.back();
    if (last.kind == kind && last.first + last.count == first) {
      last.count += end - first;
      return;
    }
  }
  bucket.ranges.push_back({kind, first, end - first});
}

}  // namespace

std::vector<GradientBucket> plan_gradient_buckets(const ParameterTable& table, int64_t bucket_bytes) {
  const std::vector<Segment> segments[2] = {region_segments(table, ParamKind::Matrix),
                                            region_segments(table, ParamKind::Vector)};
  const ParamKind kinds[2] = {ParamKind::Matrix, ParamKind::Vector};
  int n_layer = 0;
  std::map<int, int64_t> layer_elements;
  for (const auto& region : segments)
    for (const Segment& s : region) {
      layer_elements[s.layer] += s.end - s.first;
      n_layer = std::max(n_layer, s.layer + 1);
    }
  // Which bucket each layer goes to: top layers first, a new bucket once one is full; the rest last.
  std::vector<int> bucket_of(size_t(n_layer), 0);
  std::vector<GradientBucket> buckets;
  int64_t filled = bucket_bytes;
  for (int l = n_layer - 1; l >= 0; --l) {
    if (filled >= bucket_bytes) {
      buckets.emplace_back();
      filled = 0;
    }
    buckets.back().ready_after = l;
    bucket_of[size_t(l)] = int(buckets.size()) - 1;
    filled += layer_elements[l] * int64_t(sizeof(float));
  }
  buckets.emplace_back().ready_after = kRestOfModel;
  const int rest = int(buckets.size()) - 1;
  for (int k = 0; k < 2; ++k)
    for (const Segment& s : segments[k])
      add_range(buckets[size_t(s.layer == kRestOfModel ? rest : bucket_of[size_t(s.layer)])], kinds[k], s.first, s.end);
  std::erase_if(buckets, [](const GradientBucket& b) { return b.elements == 0; });
  return buckets;
}

GradientReducer::GradientReducer(Communicator& comm, Parameters& grads, int64_t bucket_bytes)
    : comm_(comm), grads_(grads), buckets_(plan_gradient_buckets(grads.table(), bucket_bytes)) {}

void GradientReducer::start(const GradientBucket& bucket) {
  for (const GradientRange& r : bucket.ranges)
    comm_.start_allreduce_sum(std::span<float>(grads_.region(r.kind) + r.first, size_t(r.count)));
}

void GradientReducer::on_ready(int layer) {
  while (next_ < buckets_.size() && buckets_[next_].ready_after == layer) start(buckets_[next_++]);
  comm_.progress();
}

void GradientReducer::finish(std::string_view what) {
  while (next_ < buckets_.size()) start(buckets_[next_++]);
  comm_.wait_all(what);
  next_ = 0;
}

int64_t GradientReducer::elements() const {
  int64_t n = 0;
  for (const GradientBucket& b : buckets_) n += b.elements;
  return n;
}

uint64_t parameters_digest(const Parameters& params) {
  uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a over 32-bit words
  for (ParamKind kind : {ParamKind::Matrix, ParamKind::Vector}) {
    const float* values = params.region(kind);
    const int64_t n = params.table().region_elements(kind);
    for (int64_t i = 0; i < n; ++i) {
      uint32_t bits = 0;
      std::memcpy(&bits, values + i, sizeof bits);
      h = (h ^ bits) * 0x100000001b3ull;
    }
  }
  return h;
}

}  // namespace mambacpp
