// The Parameter-GRU row pass of hrnn.step_flat as one loop over the rows (an XLA CPU custom
// call). learned_opt/kernels/__init__.py builds, loads and calls it; hrnn._rows is the same
// math as TensorFlow ops, the reference it is tested against and the form the meta-trainer
// differentiates.
//
// Per row (one parameter): the momentum and mean-square EMAs, the input features, the
// Parameter GRU, the direction before its per-tensor normalisation, the nominal (Adam-like)
// direction, the log-step-length delta, and the raw-gradient mean square. Per tensor: the sums
// that hrnn turns into means (the new GRU state, the features, direction^2, nominal^2).
// Compiled with g++ -O3 -march=native; the row loop is vectorised (#pragma omp simd) and split
// over threads for large vectors. No TensorFlow headers: the XLA registry is reached through
// two function pointers that Python looks up in TensorFlow's own library.

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <thread>
#include <type_traits>

#include <unistd.h>
#include <vector>

#define LO_INLINE inline __attribute__((always_inline))

namespace {

// ---- float32 math, written to vectorise (bit-level, no libm calls) -------------------------

LO_INLINE float bits_to_float(int32_t i) { float f; std::memcpy(&f, &i, 4); return f; }
LO_INLINE int32_t float_to_bits(float f) { int32_t i; std::memcpy(&i, &f, 4); return i; }
// c ? a : b as bit arithmetic: plain ternaries get turned into branches (jump threading),
// which stops the row loop from being vectorised.
LO_INLINE float pick(bool c, float a, float b) {
  const int32_t mask = -static_cast<int32_t>(c);
  return bits_to_float((float_to_bits(a) & mask) | (float_to_bits(b) & ~mask));
}

// exp(x) for |x| <= 88: Cody-Waite reduction by ln 2 and a degree-6 polynomial (Cephes expf).
LO_INLINE float exp_f(float x) {
  x = pick(x > 88.0f, 88.0f, x);
  x = pick(x < -87.0f, -87.0f, x);
  float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = p * r + 1.3981999507E-3f;
  p = p * r + 8.3334519073E-3f;
  p = p * r + 4.1665795894E-2f;
  p = p * r + 1.6666665459E-1f;
  p = p * r + 5.0000001201E-1f;
  p = p * r * r + r + 1.0f;
  return p * bits_to_float((static_cast<int32_t>(n) + 127) << 23);
}

// log(x) for x > 0 (Cephes logf); +inf -> +inf, NaN -> NaN, 0 -> a large negative value.
LO_INLINE float log_f(float x) {
  const float orig = x;
  x = pick(x < 1.17549435e-38f, 1.17549435e-38f, x);
  int32_t bits = float_to_bits(x);
  int32_t e = ((bits >> 23) & 0xff) - 126;
  float m = bits_to_float((bits & 0x007fffff) | 0x3f000000);   // in [0.5, 1)
  bool small = m < 0.707106781186547524f;
  e -= static_cast<int32_t>(small);
  m = pick(small, m + m, m) - 1.0f;
  float z = m * m;
  float y = 7.0376836292E-2f;
  y = y * m - 1.1514610310E-1f;
  y = y * m + 1.1676998740E-1f;
  y = y * m - 1.2420140846E-1f;
  y = y * m + 1.4249322787E-1f;
  y = y * m - 1.6668057665E-1f;
  y = y * m + 2.0000714765E-1f;
  y = y * m - 2.4999993993E-1f;
  y = y * m + 3.3333331174E-1f;
  y = y * m * z;
  float fe = static_cast<float>(e);
  y += fe * -2.12194440e-4f;
  y += -0.5f * z;
  float result = m + y + fe * 0.693359375f;
  result = pick(orig == INFINITY, orig, result);
  return pick(orig != orig, orig, result);
}

// log1p(x) for x >= 0, to about an ulp: log(u) * x / (u - 1) with u = 1 + x.
LO_INLINE float log1p_f(float x) {
  float u = 1.0f + x;
  float d = u - 1.0f;
  float r = log_f(u) * (x / pick(d == 0.0f, 1.0f, d));
  return pick(d == 0.0f, x, r);
}

LO_INLINE float sigmoid_f(float x) { return 1.0f / (1.0f + exp_f(-x)); }

// tanh: odd polynomial below 0.625 (Cephes tanhf), 1 - 2 / (exp(2|x|) + 1) above.
LO_INLINE float tanh_f(float x) {
  float a = std::fabs(x);
  float z = x * x;
  float p = -5.70498872745E-3f;
  p = p * z + 2.06390887954E-2f;
  p = p * z - 5.37397155531E-2f;
  p = p * z + 1.33314422036E-1f;
  p = p * z - 3.33332819422E-1f;
  float small = p * z * x + x;
  float big = 1.0f - 2.0f / (exp_f(2.0f * a) + 1.0f);
  big = pick(x < 0.0f, -big, big);
  return pick(a < 0.625f, small, big);
}

// asinh as hrnn._asinh: sign(x) log1p(|x| + x^2 / (1 + sqrt(1 + x^2))).
LO_INLINE float asinh_f(float x) {
  float a = std::fabs(x);
  float root = std::sqrt(1.0f + x * x);
  float y = log1p_f(a + a * a / (1.0f + root));
  return pick(x < 0.0f, -y, y);
}

// bfloat16 <-> float32, rounding to nearest even as TensorFlow's cast does (NaN stays NaN);
// branch-free, so that the row loop vectorises.
LO_INLINE float to_float(uint16_t v) {
  return bits_to_float(static_cast<int32_t>(static_cast<uint32_t>(v) << 16));
}
LO_INLINE float to_float(float v) { return v; }
template <typename Store> Store from_float(float f);
template <> LO_INLINE float from_float<float>(float f) { return f; }
template <> LO_INLINE uint16_t from_float<uint16_t>(float f) {
  const uint32_t b = static_cast<uint32_t>(float_to_bits(f));
  const uint32_t rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
  const uint32_t nan_mask = -static_cast<uint32_t>((b & 0x7fffffffu) > 0x7f800000u);
  return static_cast<uint16_t>((((b >> 16) | 0x40u) & nan_mask) | (rounded & ~nan_mask));
}

constexpr float kMsEps = 1e-12f;   // hrnn._MS_EPS
constexpr float kEps = 1e-16f;     // hrnn._EPS

// ---- the row pass ----------------------------------------------------------------------------

// Small operands, read once per call (layout of the `small` input, see kernels/__init__.py).
template <int K, int S>
struct Small {
  float momentum_decay[S], rms_decay, raw_decay, mean_log_lr;
  float readout_direction[K], shortcut[S], readout_lr[K], lr_bias;
  explicit Small(const float* p) {
    for (int s = 0; s < S; ++s) momentum_decay[s] = *p++;
    rms_decay = *p++; raw_decay = *p++; mean_log_lr = *p++;
    for (int k = 0; k < K; ++k) readout_direction[k] = *p++;
    for (int s = 0; s < S; ++s) shortcut[s] = *p++;
    for (int k = 0; k < K; ++k) readout_lr[k] = *p++;
    lr_bias = *p++;
  }
};

template <typename Store, int K, int S>
struct Args {
  static constexpr int F = 3 * S;          // scaled momenta, products, log magnitudes, rel. lr
  static constexpr int G = 3 * K;          // reset, update, candidate
  static constexpr int R = K + F + 2;      // per-tensor sums: h, x, direction^2, nominal^2
  const float* grad; const Store* h; const Store* m; const Store* v;
  const float* log_lr; const float* nominal_rms; const float* bias;   // bias [T, 3K]
  const float* kernel; const float* kernel_ch;                        // [F + K, 3K], [K, K]
  Store* h_out; Store* m_out; Store* v_out;
  float* nominal_rms_out; float* direction; float* nominal; float* delta_log_lr;
};

constexpr int kLanes = 16;

// Weights of the Parameter GRU with the tensor's injected bias folded in, and the call's
// scalars: what one row needs besides its own data.
template <int K, int S>
struct Weights {
  static constexpr int F = 3 * S, G = 3 * K;
  float w[F + K][G], wc[K][K], b[G];
};

// Lane buffers of one block of kLanes rows: the stored per-row state, transposed to
// [field][lane] in float32 so that the row loop reads and writes it contiguously.
template <typename T, int K, int S>
struct Block {
  T h[K][kLanes], m[S][kLanes], v[S][kLanes];
  static constexpr int kSize = (K + 2 * S) * kLanes;
  T* data() { return &h[0][0]; }   // the fields are one contiguous array
  const T* data() const { return &h[0][0]; }
};

// One row (lane l of the block starting at row i - l): reads `in`, writes `out` and the flat
// outputs, and its contributions to the tensor sums (part[r * kLanes]).
template <typename Store, int K, int S>
LO_INLINE void row(const Args<Store, K, S>& a, const Small<K, S>& c, const Weights<K, S>& wt,
                   int64_t i, int l, const Block<float, K, S>& in, Block<float, K, S>& out,
                   float* part) {
  using A = Args<Store, K, S>;
  constexpr int F = A::F, G = A::G;
  const float g = a.grad[i];
  float m[S], v[S], x[F], h[K];
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k) h[k] = in.h[k][l];
  float log_ms_mean = 0.0f, m_mean = 0.0f;
#pragma GCC unroll 16
  for (int s = 0; s < S; ++s) {
    const float md = c.momentum_decay[s];
    m[s] = md * in.m[s][l] + (1.0f - md) * g;
    v[s] = c.rms_decay * in.v[s][l] + (1.0f - c.rms_decay) * (m[s] * m[s] + kMsEps);
    x[s] = asinh_f(m[s] * (1.0f / std::sqrt(v[s] + kEps)));
    x[2 * S - 1 + s] = log_f(v[s] + kEps);
    log_ms_mean += x[2 * S - 1 + s];
    m_mean += m[s];
  }
  log_ms_mean *= 1.0f / S;
#pragma GCC unroll 16
  for (int s = 0; s + 1 < S; ++s) x[S + s] = x[s] * x[s + 1];
#pragma GCC unroll 16
  for (int s = 0; s < S; ++s) x[2 * S - 1 + s] -= log_ms_mean;
  x[F - 1] = a.log_lr[i] - c.mean_log_lr;
  // Parameter GRU (hrnn._bias_gru): gates and candidate input part in one pass.
  float pre[G];
#pragma GCC unroll 64
  for (int j = 0; j < G; ++j) pre[j] = wt.b[j];
#pragma GCC unroll 16
  for (int f = 0; f < F; ++f) {
#pragma GCC unroll 64
    for (int j = 0; j < G; ++j) pre[j] += x[f] * wt.w[f][j];
  }
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k) {
#pragma GCC unroll 64
    for (int j = 0; j < 2 * K; ++j) pre[j] += h[k] * wt.w[F + k][j];
  }
  float reset_h[K], update[K], hn[K];
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k) {
    reset_h[k] = sigmoid_f(pre[k]) * h[k];
    update[k] = sigmoid_f(pre[K + k]);
  }
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k) {
    float cand = pre[2 * K + k];
#pragma GCC unroll 16
    for (int q = 0; q < K; ++q) cand += reset_h[q] * wt.wc[q][k];
    hn[k] = update[k] * h[k] + (1.0f - update[k]) * tanh_f(cand);
  }
  // Raw-gradient mean square (nominal term) and the output preconditioner.
  const float raw_ms = c.raw_decay * a.nominal_rms[i] + (1.0f - c.raw_decay) * g * g;
  const float precondition = 1.0f / std::sqrt(raw_ms + kEps);
  float dir = 0.0f, delta = c.lr_bias;
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k) {
    dir += hn[k] * c.readout_direction[k];
    delta += hn[k] * c.readout_lr[k];
  }
#pragma GCC unroll 16
  for (int s = 0; s < S; ++s) dir += x[s] * c.shortcut[s];
  dir *= precondition;
  const float nominal = m_mean * (1.0f / S) * precondition;
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k) out.h[k][l] = hn[k];
#pragma GCC unroll 16
  for (int s = 0; s < S; ++s) {
    out.m[s][l] = m[s];
    out.v[s][l] = v[s];
  }
  a.nominal_rms_out[i] = raw_ms;
  a.direction[i] = dir;
  a.nominal[i] = nominal;
  a.delta_log_lr[i] = delta;
#pragma GCC unroll 16
  for (int k = 0; k < K; ++k) part[k * kLanes] = hn[k];
#pragma GCC unroll 16
  for (int f = 0; f < F; ++f) part[(K + f) * kLanes] = x[f];
  part[(K + F) * kLanes] = dir * dir;
  part[(K + F + 1) * kLanes] = nominal * nominal;
}

// Rows [begin, end) of tensor t; adds the tensor's sums into acc[R] (double).
template <typename Store, int K, int S>
void rows(const Args<Store, K, S>& a, const Small<K, S>& c, int t, int64_t begin, int64_t end,
          double* acc) {
  using A = Args<Store, K, S>;
  constexpr int F = A::F, G = A::G, R = A::R;
  Weights<K, S> wt;
  for (int i = 0; i < F + K; ++i) for (int j = 0; j < G; ++j) wt.w[i][j] = a.kernel[i * G + j];
  for (int i = 0; i < K; ++i) for (int j = 0; j < K; ++j) wt.wc[i][j] = a.kernel_ch[i * K + j];
  for (int j = 0; j < G; ++j) wt.b[j] = a.bias[t * G + j];
  float part[R * kLanes];
  float block[R * kLanes];
  for (int r = 0; r < R * kLanes; ++r) block[r] = 0.0f;
  Block<Store, K, S> raw;          // stored layout, transposed
  Block<float, K, S> in, out;      // float32 lane buffers of the row loop
  // Transposes rows [base, base + lanes) between the stored layout and the lane buffers.
  auto gather = [&](int64_t base, int lanes) {
    for (int l = 0; l < lanes; ++l) {
      for (int k = 0; k < K; ++k) raw.h[k][l] = a.h[(base + l) * K + k];
      for (int s = 0; s < S; ++s) {
        raw.m[s][l] = a.m[(base + l) * S + s];
        raw.v[s][l] = a.v[(base + l) * S + s];
      }
    }
#pragma omp simd
    for (int j = 0; j < raw.kSize; ++j) in.data()[j] = to_float(raw.data()[j]);
  };
  auto scatter = [&](int64_t base, int lanes) {
#pragma omp simd
    for (int j = 0; j < raw.kSize; ++j) raw.data()[j] = from_float<Store>(out.data()[j]);
    for (int l = 0; l < lanes; ++l) {
      for (int k = 0; k < K; ++k) a.h_out[(base + l) * K + k] = raw.h[k][l];
      for (int s = 0; s < S; ++s) {
        a.m_out[(base + l) * S + s] = raw.m[s][l];
        a.v_out[(base + l) * S + s] = raw.v[s][l];
      }
    }
  };
  int64_t base = begin;
  int blocks = 0;
  for (; base + kLanes <= end; base += kLanes) {
    gather(base, kLanes);
#pragma omp simd
    for (int l = 0; l < kLanes; ++l) row<Store, K, S>(a, c, wt, base + l, l, in, out, part + l);
    scatter(base, kLanes);
#pragma omp simd
    for (int r = 0; r < R * kLanes; ++r) block[r] += part[r];
    if (++blocks == 64) {   // float sums over at most 1,024 rows, then into double
      for (int r = 0; r < R; ++r) {
        float s = 0.0f;
        for (int l = 0; l < kLanes; ++l) s += block[r * kLanes + l];
        acc[r] += s;
      }
      for (int r = 0; r < R * kLanes; ++r) block[r] = 0.0f;
      blocks = 0;
    }
  }
  for (int r = 0; r < R * kLanes; ++r) part[r] = 0.0f;
  const int tail = static_cast<int>(end - base);
  gather(base, tail);
  for (int l = 0; l < tail; ++l) row<Store, K, S>(a, c, wt, base + l, l, in, out, part + l);
  scatter(base, tail);
  for (int r = 0; r < R; ++r) {
    float s = 0.0f;
    for (int l = 0; l < kLanes; ++l) s += block[r * kLanes + l] + part[r * kLanes + l];
    acc[r] += s;
  }
}

struct Config {
  int units = 0, timescales = 0, bf16 = 0, threads = 1;
  int64_t total = 0;
  std::vector<int64_t> offsets;   // T + 1 row offsets of the tensors
};

// The call's configuration, operand 10 (int64): units, timescales, bfloat16 storage, threads,
// tensors T, then the T tensors' row counts. An operand rather than XLA's opaque string, so
// that the function reads only (out, in), which every custom-call API version passes.
Config parse(const int64_t* p) {
  Config cfg;
  cfg.units = static_cast<int>(p[0]);
  cfg.timescales = static_cast<int>(p[1]);
  cfg.bf16 = static_cast<int>(p[2]);
  cfg.threads = static_cast<int>(p[3]);
  const int64_t tensors = p[4];
  cfg.offsets.push_back(0);
  for (int64_t t = 0; t < tensors; ++t) cfg.offsets.push_back(cfg.offsets.back() + p[5 + t]);
  cfg.total = cfg.offsets.back();
  return cfg;
}

// Worker threads kept between calls: starting threads for each call cost most of what a
// second core saves on small models (26k rows: 0.85 ms with fresh threads, 0.6 with these,
// 0.96 on one). Workers sleep on a condition variable between calls and are never joined: the
// pool is never destroyed, and a process exits with them asleep.
class Pool {
 public:
  static Pool& get() {
    static Pool* pool = new Pool();   // never destroyed: workers may outlive static teardown
    return *pool;
  }
  // Runs work(1..n-1) on workers and work(0) here; returns when all are done. One call at a
  // time (XLA may run two steps concurrently in one process: they queue here).
  template <typename F>
  void run(int n, F& work) {
    std::lock_guard<std::mutex> call(call_mutex_);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (pid_ != getpid()) {   // a forked child has none of its parent's workers
        new std::vector<std::thread>(std::move(workers_));   // leaked: never joined nor run
        workers_.clear();
        pid_ = getpid();
      }
      while (static_cast<int>(workers_.size()) < n - 1) {
        const int id = static_cast<int>(workers_.size()) + 1;
        workers_.emplace_back([this, id] { loop(id); });
      }
      job_ = [&work](int w) { work(w); };
      active_ = n;
      pending_ = n - 1;
      ++generation_;
    }
    wake_.notify_all();
    work(0);
    std::unique_lock<std::mutex> lock(mutex_);
    done_.wait(lock, [this] { return pending_ == 0; });
  }

 private:
  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      std::function<void(int)> job;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        wake_.wait(lock, [&] { return generation_ != seen; });
        seen = generation_;
        if (id >= active_) continue;
        job = job_;
      }
      job(id);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        if (--pending_ == 0) done_.notify_one();
      }
    }
  }

  std::mutex call_mutex_, mutex_;
  std::condition_variable wake_, done_;
  std::vector<std::thread> workers_;
  std::function<void(int)> job_;
  int active_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
  pid_t pid_ = getpid();
};

// How a pass splits the rows over threads: equal contiguous chunks, one per thread, each of at
// least `min_rows` rows, at most cfg.threads of them.
struct Split {
  const Config& cfg;
  int threads;
  Split(const Config& c, int64_t min_rows)
      : cfg(c), threads(static_cast<int>(std::max<int64_t>(
                    1, std::min<int64_t>(c.threads, c.total / min_rows)))) {}
  int64_t begin(int w) const { return cfg.total * w / threads; }
  // Calls f(t, b, e) for every tensor t with rows [b, e) in chunk w.
  template <typename F>
  void tensors(int w, F&& f) const {
    const int64_t lo = begin(w), hi = begin(w + 1);
    for (int t = 0; t + 1 < static_cast<int>(cfg.offsets.size()); ++t) {
      const int64_t b = std::max(lo, cfg.offsets[t]), e = std::min(hi, cfg.offsets[t + 1]);
      if (b < e) f(t, b, e);
    }
  }
  // Runs work(w) for every chunk w: here alone, or here and on the pool's workers.
  template <typename F>
  void run(F& work) const {
    if (threads == 1) {
      work(0);
    } else {
      Pool::get().run(threads, work);
    }
  }
};

template <typename Store, int K, int S>
void run(void* out, const void** in, const Config& cfg) {
  using A = Args<Store, K, S>;
  void** outs = reinterpret_cast<void**>(out);
  A a;
  a.grad = static_cast<const float*>(in[0]);
  a.h = static_cast<const Store*>(in[1]);
  a.m = static_cast<const Store*>(in[2]);
  a.v = static_cast<const Store*>(in[3]);
  a.log_lr = static_cast<const float*>(in[4]);
  a.nominal_rms = static_cast<const float*>(in[5]);
  a.bias = static_cast<const float*>(in[6]);
  a.kernel = static_cast<const float*>(in[7]);
  a.kernel_ch = static_cast<const float*>(in[8]);
  const Small<K, S> small(static_cast<const float*>(in[9]));
  a.h_out = static_cast<Store*>(outs[0]);
  a.m_out = static_cast<Store*>(outs[1]);
  a.v_out = static_cast<Store*>(outs[2]);
  a.nominal_rms_out = static_cast<float*>(outs[3]);
  a.direction = static_cast<float*>(outs[4]);
  a.nominal = static_cast<float*>(outs[5]);
  a.delta_log_lr = static_cast<float*>(outs[6]);
  float* sums = static_cast<float*>(outs[7]);
  constexpr int R = A::R;
  const int tensors = static_cast<int>(cfg.offsets.size()) - 1;
  // One chunk of rows per thread, from 8,192 rows each; each chunk keeps its own sums.
  const Split split(cfg, 8192);
  const int threads = split.threads;
  std::vector<double> acc(static_cast<size_t>(threads) * tensors * R, 0.0);
  auto work = [&](int w) {
    split.tensors(w, [&](int t, int64_t b, int64_t e) {
      rows<Store, K, S>(a, small, t, b, e, &acc[(static_cast<size_t>(w) * tensors + t) * R]);
    });
  };
  split.run(work);
  for (int t = 0; t < tensors; ++t)
    for (int r = 0; r < R; ++r) {
      double s = 0.0;
      for (int w = 0; w < threads; ++w) s += acc[(static_cast<size_t>(w) * tensors + t) * R + r];
      sums[t * R + r] = static_cast<float>(s);
    }
}

// ---- the update pass ------------------------------------------------------------------------
//
// hrnn._fused_guarded_step: after XLA has run the Tensor and Global GRUs on the row pass's sums, one
// more loop over the rows makes the new log step length and the update (the RNN term at its
// per-tensor scale plus the nominal term), and applies the Keras optimizer's guard: if any
// gradient or update is not finite, every output keeps the old state and the updates are 0.

// exp(x) as float32's own: +inf above its largest finite result, 0 far below, NaN for NaN
// (exp_f clamps instead, which is right for the GRU's gates but would hide an overflow here).
LO_INLINE float exp_full(float x) {
  const float r = exp_f(x);
  return pick(x > 88.7228394f, INFINITY, pick(x < -103.972084f, 0.0f, r));
}

LO_INLINE float clamp_f(float x, float limit) {
  return pick(x > limit, limit, pick(x < -limit, -limit, x));
}

// The update pass's inputs for one call (pointers and per-call scalars).
struct UpdateArgs {
  const float* grad; const float* direction; const float* nominal; const float* delta;
  const float* log_lr; const float* per_tensor;
  float* log_lr_out;
  float momentum, anchor, limit, offset, scale;
  bool anchored;
};

// Rows [begin, end) of tensor t, whose first row is `base`: writes their updates (into
// `update`, the tensor's own output) and new log step lengths; returns the sum of (u - u) + (g - g) over them, which is 0 when
// every update u and gradient g is finite and NaN otherwise. A function of its own, with
// every pointer and scalar in a local: called through the thread pool's std::function, a
// lambda reading them through its captures ran 4x slower than inline (measured, 1M rows).
float update_rows(const UpdateArgs a, int t, int64_t base, int64_t begin, int64_t end,
                  float* update) {
  const float* __restrict grad = a.grad;
  const float* __restrict direction = a.direction;
  const float* __restrict nominal = a.nominal;
  const float* __restrict delta = a.delta;
  const float* __restrict log_lr = a.log_lr;
  float* __restrict log_lr_out = a.log_lr_out;
  float* __restrict out = update;   // out[i - base]: row i of the flat vector
  const float factor = a.per_tensor[2 * t], magnitude = a.per_tensor[2 * t + 1];
  const float momentum = a.momentum, anchor = a.anchor, limit = a.limit, offset = a.offset,
              scale = a.scale;
  const bool anchored = a.anchored;
  float nonfinite = 0.0f;   // x - x is 0 for finite x and NaN otherwise
#pragma omp simd reduction(+ : nonfinite)
  for (int64_t i = begin; i < end; ++i) {
    const float d = delta[i];
    const float step = clamp_f(log_lr[i] + d, limit);
    const float target = pick(anchored, clamp_f(anchor + d, limit), step);
    log_lr_out[i] = momentum * log_lr[i] + (1.0f - momentum) * target;
    const float u = exp_full(step + offset) * (direction[i] * factor) + magnitude * nominal[i];
    out[i - base] = u * scale;
    nonfinite += (u - u) + (grad[i] - grad[i]);
  }
  return nonfinite;
}

// Operands 0-14 (kernels.update_pass): grad, direction, nominal, delta_log_lr, log_lr [N];
// per_tensor [T, 2] (the RNN term's factor, the nominal term's magnitude); small[6]
// (lr_momentum, anchor, max_log_lr, log_step_offset, scale, anchored); the row pass's new
// param_hidden, momentum, mean_square, nominal_rms; the old ones. Operand 15: the config.
// Outputs: T updates (one per tensor, times scale), param_hidden, momentum, mean_square,
// nominal_rms, log_lr, finite (float32 scalar, 1 or 0).
template <typename Store, int K, int S>
void update_run(void* out, const void** in, const Config& cfg) {
  void** outs = reinterpret_cast<void**>(out);
  const float* small = static_cast<const float*>(in[6]);
  const int tensors = static_cast<int>(cfg.offsets.size()) - 1;
  UpdateArgs a;
  a.grad = static_cast<const float*>(in[0]);
  a.direction = static_cast<const float*>(in[1]);
  a.nominal = static_cast<const float*>(in[2]);
  a.delta = static_cast<const float*>(in[3]);
  a.log_lr = static_cast<const float*>(in[4]);
  a.per_tensor = static_cast<const float*>(in[5]);
  a.log_lr_out = static_cast<float*>(outs[tensors + 4]);
  a.momentum = small[0]; a.anchor = small[1]; a.limit = small[2]; a.offset = small[3];
  a.scale = small[4]; a.anchored = small[5] != 0.0f;
  // Split as the row pass, from 65,536 rows per thread: a row here costs a tenth of one there.
  const Split split(cfg, 65536);
  std::vector<float> bad(static_cast<size_t>(split.threads), 0.0f);
  auto work = [&](int w) {
    float nonfinite = 0.0f;
    split.tensors(w, [&](int t, int64_t b, int64_t e) {
      nonfinite += update_rows(a, t, cfg.offsets[t], b, e, static_cast<float*>(outs[t]));
    });
    bad[static_cast<size_t>(w)] = nonfinite;
  };
  split.run(work);
  bool finite = true;
  for (float b : bad) finite = finite && b == 0.0f;
  // The new state, or (skipped step) the old one, the old log step lengths and no updates;
  // copied in the same row chunks.
  const size_t row_bytes[5] = {sizeof(Store) * K, sizeof(Store) * S, sizeof(Store) * S,
                               sizeof(float), sizeof(float)};
  auto copy = [&](int w) {
    const int64_t lo = split.begin(w), hi = split.begin(w + 1);
    for (int f = 0; f < (finite ? 4 : 5); ++f) {
      const void* from = f < 4 ? in[(finite ? 7 : 11) + f] : in[4];
      std::memcpy(static_cast<char*>(outs[tensors + f]) + row_bytes[f] * lo,
                  static_cast<const char*>(from) + row_bytes[f] * lo, row_bytes[f] * (hi - lo));
    }
  };
  split.run(copy);
  if (!finite) {
    for (int t = 0; t < tensors; ++t)
      std::memset(outs[t], 0, sizeof(float) * (cfg.offsets[t + 1] - cfg.offsets[t]));
  }
  *static_cast<float*>(outs[tensors + 5]) = finite ? 1.0f : 0.0f;
}

// One library per Parameter-GRU shape and storage type, chosen when it is compiled
// (kernels/__init__.py passes -DLO_UNITS, -DLO_TIMESCALES, -DLO_BF16): compiling every shape
// into one library took ~12 s, one takes ~3.
#if !defined(LO_UNITS) || !defined(LO_TIMESCALES) || !defined(LO_BF16)
#error "compile with -DLO_UNITS=<K> -DLO_TIMESCALES=<S> -DLO_BF16=<0|1>"
#endif
using LoStore = std::conditional_t<LO_BF16 != 0, uint16_t, float>;

using GlobalFn = void* (*)();
using RegisterFn = void (*)(void*, const std::string&, void*, const std::string&);

}  // namespace

extern "C" {

// XLA's custom-call signature. custom_call_v2 emits API_VERSION_STATUS_RETURNING_UNIFIED,
// (out, in, opaque, opaque_len, status), but only (out, in) are read, so a call through the
// original (out, in) signature works too. hrnn only calls shapes this library was built for
// (kernels.supports), so there is no failure to report through the status.
void learned_opt_row_pass(void* out, const void** in) {
  const Config cfg = parse(static_cast<const int64_t*>(in[10]));
  if (cfg.units != LO_UNITS || cfg.timescales != LO_TIMESCALES || cfg.bf16 != LO_BF16)
    std::abort();   // kernels/__init__.py registers each library under its shape's own name
  run<LoStore, LO_UNITS, LO_TIMESCALES>(out, in, cfg);
}

void learned_opt_update_pass(void* out, const void** in) {
  const Config cfg = parse(static_cast<const int64_t*>(in[15]));
  if (cfg.units != LO_UNITS || cfg.timescales != LO_TIMESCALES || cfg.bf16 != LO_BF16)
    std::abort();
  update_run<LoStore, LO_UNITS, LO_TIMESCALES>(out, in, cfg);
}

// Registers the two passes under `row_name` and `update_name` for XLA's "Host" platform,
// given the addresses of xla::CustomCallTargetRegistry::Global and ::Register in
// TensorFlow's library.
void learned_opt_register(void* global_fn, void* register_fn, const char* row_name,
                          const char* update_name) {
  void* registry = reinterpret_cast<GlobalFn>(global_fn)();
  const auto add = reinterpret_cast<RegisterFn>(register_fn);
  add(registry, std::string(row_name), reinterpret_cast<void*>(&learned_opt_row_pass),
      std::string("Host"));
  add(registry, std::string(update_name), reinterpret_cast<void*>(&learned_opt_update_pass),
      std::string("Host"));
}

}  // extern "C"
