// Data-parallel training across processes (docs/DISTRIBUTED.md). A Communicator connects the
// ranks of one job: in-place sums of float buffers that are started early and waited for later
// (so the gradient all-reduce overlaps the backward), and blocking sums, broadcast and barrier.
// Two implementations: one process (size 1, nothing to exchange) and MPI (the C API over
// MPI_COMM_WORLD, for `mpirun -np N mambacpp train --distributed`). A NCCL communicator (one
// process per GPU, MPI only for the rendezvous) fits the same interface: start = enqueue on a
// communication stream, wait_all = wait for it.
//
// No wait hangs: an MPI wait that sees no progress from the other ranks for the timeout prints
// "rank R: no progress from the other ranks for N s during <what>; aborting" and ends the whole
// job (MPI_Abort), never unwinding while a collective may still write into a buffer.
//
// Also here: which of a step's windows a rank trains on, and the buckets in which the gradient
// buffer is reduced as the backward completes it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "model/parameters.h"

namespace mambacpp {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string name() const = 0;  // "MPI", "single process"

  // Starts summing `data` over all ranks, in place. Every rank starts the same sequence of spans
  // (same lengths, same order); `data` must stay untouched until wait_all returns.
  virtual void start_allreduce_sum(std::span<float> data) = 0;
  // Lets started sums advance (MPI moves non-blocking collectives on only inside MPI calls).
  virtual void progress() = 0;
  // Waits for every started sum; `what` names them in the timeout message ("the gradient
  // all-reduce of step 12").
  virtual void wait_all(std::string_view what) = 0;

  virtual void allreduce_sum(std::span<double> data, std::string_view what) = 0;
  // Copies root's bytes into every rank's `data` (same length everywhere).
  virtual void broadcast(std::span<std::byte> data, int root, std::string_view what) = 0;
  virtual void barrier(std::string_view what) = 0;
  // Ends every rank's process with exit code `code`.
  [[noreturn]] virtual void abort(int code) = 0;
};

// Rank 0 of 1: sums and broadcasts leave the data as it is.
std::unique_ptr<Communicator> make_single_process_communicator();

// True when this process was started by an MPI launcher (mpirun, srun with PMI/PMIx).
bool launched_by_mpi();

// The communicator of `--distributed`: MPI (MPI_Init_thread, FUNNELED: only the main thread
// calls MPI; MPI_Finalize when destroyed) when launched by mpirun, else the single process one.
// timeout_s: how long a wait may see no progress before the job is aborted.
std::unique_ptr<Communicator> make_distributed_communicator(double timeout_s);

// The windows [first, end) of a step's `windows` (numbered in the order the data generator draws
// them) that `rank` of `size` trains on: contiguous shares whose sizes differ by at most one.
// Depends only on (windows, rank, size), so any rank count reads the same global stream.
struct WindowShare {
  int64_t first = 0, end = 0;
  bool contains(int64_t w) const { return w >= first && w < end; }
};
WindowShare window_share(int64_t windows, int rank, int size);

// Gradient buckets: the flat gradient regions (parameters.h) cut into element ranges, each range
// holding the tensors of consecutive layers (and the alignment padding after them). The buckets
// come in the order the backward completes them: top layers first, and last the tensors outside
// the layers (embedding, final norm, lm_head). Together they cover each region exactly once.
struct GradientRange {
  ParamKind kind = ParamKind::Matrix;
  int64_t first = 0, count = 0;  // elements of that region
};
struct GradientBucket {
  int ready_after = 0;  // the layer whose completion completes the bucket (kRestOfModel: the rest)
  std::vector<GradientRange> ranges;
  int64_t elements = 0;
};
// Consecutive layers are grouped until a bucket holds at least `bucket_bytes` of fp32 values.
std::vector<GradientBucket> plan_gradient_buckets(const ParameterTable& table, int64_t bucket_bytes);

inline constexpr int64_t kGradientBucketBytes = int64_t(4) << 20;

// Sums a gradient buffer over the ranks bucket by bucket: on_ready (LossOptions'
// on_gradients_ready) starts the buckets a layer completes; finish starts the rest and waits.
class GradientReducer {
 public:
  GradientReducer(Communicator& comm, Parameters& grads, int64_t bucket_bytes = kGradientBucketBytes);

  void on_ready(int layer);
  // Starts every bucket not started yet (all of them when no backward reported), waits for all,
  // and gets ready for the next step.
  void finish(std::string_view what);
  int64_t elements() const;  // in all buckets

 private:
  void start(const GradientBucket& bucket);

  Communicator& comm_;
  Parameters& grads_;
  std::vector<GradientBucket> buckets_;
  size_t next_ = 0;  // the first bucket not started
};

// A 64-bit digest of every value of `params` (both regions, bits as they are), to check that the
// ranks hold the same parameters.
uint64_t parameters_digest(const Parameters& params);

}  // namespace mambacpp
