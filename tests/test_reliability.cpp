// Issue 17: nothing a caller passes can corrupt memory, hang, or turn finite inputs into NaN.
// One group of test cases per numbered decision of the issue (the comment before each says
// which), for the case the decision names and for its class (other overflow pairs, other axes
// of a view, other fields, other policies), on attnkit::attention and on
// attnkit::reference::attention alike.
//
// Calls that a broken library would crash or hang in (impossible views, overflowing fields)
// run in a forked child with a time limit and a memory limit, so that a failure is reported as
// a failed check and the suite still finishes. Re-entrant and throwing callbacks (decisions 1
// and 11) need the library's worker threads, which do not survive fork(): they run in a fresh
// process (this program re-executed on the hidden test case [reliability-child]). Set
// ATTNKIT_TEST_NO_FORK=1 to run everything in-process (for a debugger). Set
// ATTNKIT_TEST_SEED to replay a failing run.
#include <catch2/catch.hpp>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <initializer_list>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include <fcntl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <attnkit/attnkit.hpp>

#include "test_helpers.hpp"

using namespace attnkit_test;
using attnkit::bf16;
using attnkit::f16;
using attnkit::index_t;

namespace {

constexpr float finf = std::numeric_limits<float>::infinity();
constexpr float fnan = std::numeric_limits<float>::quiet_NaN();
constexpr index_t max_index = std::numeric_limits<index_t>::max();
constexpr index_t pow2(int e) { return index_t(1) << e; }
/// 3 * wraps_to_2 = 2^64 + 2: a product that wraps around to 2 in 64-bit arithmetic.
constexpr index_t wraps_to_2 = 6148914691236517206;
static_assert(static_cast<std::uint64_t>(wraps_to_2) * 3u == 2u, "3 * wraps_to_2 wraps to 2");

/// Pairs whose 64-bit product overflows (to 0, to a small positive number, or negative).
const std::vector<std::pair<index_t, index_t>>& overflow_pairs() {
  static const std::vector<std::pair<index_t, index_t>> pairs{
      {pow2(62), 4}, {4, pow2(62)}, {pow2(32), pow2(32)}, {3, wraps_to_2}, {wraps_to_2, 3}, {max_index, 2}};
  return pairs;
}

/// x, hidden from the optimiser (so that it does not fold huge constants into the library's
/// loops and warn about what those loops would do with them).
index_t opaque(index_t x) {
  volatile index_t v = x;
  return v;
}

problem make_problem(index_t B, index_t Hq, index_t Hkv, index_t Nq, index_t Nk, index_t D, index_t Dv) {
  problem s;
  s.B = B, s.Hq = Hq, s.Hkv = Hkv, s.Nq = Nq, s.Nk = Nk, s.D = D, s.Dv = Dv;
  return s;
}

// ---------------------------------------------------------------------------------------------
// Isolation: run a call in a forked child with a time and memory limit.
// ---------------------------------------------------------------------------------------------

bool isolation_off() {
  const char* s = std::getenv("ATTNKIT_TEST_NO_FORK");
  return s != nullptr && *s != '\0' && *s != '0';
}

struct child_outcome {
  bool finished = false;  // exited normally (payload is complete)
  std::string status;     // "finished", or how it ended
  std::string payload;    // what the child's function returned
};

/// The child's address space may grow by at most 2 GiB beyond what it maps when forked (a
/// broken size computation fails to allocate instead of eating the machine's memory).
void limit_child_memory() {
  std::ifstream statm("/proc/self/statm");
  unsigned long long pages = 0;
  if (!(statm >> pages) || pages == 0) return;
  const unsigned long long bytes = pages * static_cast<unsigned long long>(sysconf(_SC_PAGESIZE)) + (2ull << 30);
  rlimit r{};
  r.rlim_cur = r.rlim_max = static_cast<rlim_t>(bytes);
  setrlimit(RLIMIT_AS, &r);
}

/// Timeouts so far: once a run has hung three times (it is failing anyway), later children get
/// one second instead of `seconds`, so that a broken library still finishes the suite quickly.
int& timeouts_so_far() {
  static int n = 0;
  return n;
}

void write_all(int fd, const std::string& s) {
  const char* p = s.data();
  std::size_t left = s.size();
  while (left > 0) {
    const ssize_t n = write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;
    p += n;
    left -= static_cast<std::size_t>(n);
  }
}

/// Reads what child `pid` writes to `fd` until it closes it (or `seconds` pass: then the child
/// is killed), and reaps the child.
child_outcome collect_child(pid_t pid, int fd, double seconds) {
  child_outcome r;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  bool timed_out = false;
  for (;;) {
    const auto left =
        std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now()).count();
    if (left <= 0) {
      timed_out = true;
      break;
    }
    pollfd pfd{fd, POLLIN, 0};
    const int ready = poll(&pfd, 1, static_cast<int>(left));
    if (ready < 0 && errno == EINTR) continue;
    if (ready == 0) {
      timed_out = true;
      break;
    }
    char buf[1 << 14];
    const ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;  // end of file: the child is exiting
    r.payload.append(buf, static_cast<std::size_t>(n));
  }
  close(fd);
  int st = 0;
  if (timed_out) {
    kill(pid, SIGKILL);
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    ++timeouts_so_far();
    std::ostringstream o;
    o << "did not finish within " << seconds << " s (hang?); killed";
    r.status = o.str();
    return r;
  }
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) {
    r.finished = true;
    r.status = "finished";
  } else if (WIFSIGNALED(st)) {
    r.status = std::string("crashed: signal ") + std::to_string(WTERMSIG(st)) + " (" + strsignal(WTERMSIG(st)) + ")";
  } else {
    r.status = "crashed: exit code " + std::to_string(WEXITSTATUS(st));
  }
  return r;
}

/// fork() after flushing our output; the child gets the default signal dispositions (not
/// Catch's fatal-signal handlers).
pid_t fork_quietly() {
  std::cout.flush();
  std::cerr.flush();
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0)
    for (int sig : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGABRT, SIGTERM, SIGINT}) std::signal(sig, SIG_DFL);
  return pid;
}

/// Runs f() (returning std::string) in a forked child and returns what it returned, or how the
/// child ended: crashed (signal / exit code) or killed after `seconds`. The child has only the
/// calling thread: the library's pool workers, if the pool exists already, do not survive
/// fork() (calls still complete, on the calling thread alone); see run_in_fresh_process.
template <class F>
child_outcome run_isolated(F&& f, double seconds = 5) {
  if (isolation_off()) return {true, "finished (in-process)", f()};
  if (timeouts_so_far() >= 3) seconds = std::min(seconds, 1.0);
  int fds[2];
  if (pipe(fds) != 0) return {false, "pipe() failed", {}};
  const pid_t pid = fork_quietly();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return {false, "fork() failed", {}};
  }
  if (pid == 0) {  // the child: no destructors, no Catch reporting
    close(fds[0]);
    limit_child_memory();
    std::string out;
    try {
      out = f();
    } catch (...) {
      out = "an exception escaped the isolated function";
    }
    write_all(fds[1], out);
    _exit(0);
  }
  close(fds[1]);
  return collect_child(pid, fds[0], seconds);
}

/// The scenarios of run_in_fresh_process (defined with the hidden test case at the end).
std::string run_scenario(const std::string& scenario);

/// Runs run_scenario(scenario) in a fresh process, with the library's worker threads: this
/// test program re-executed on its hidden test case [reliability-child], which writes the
/// scenario's result to a pipe. Same outcome as run_isolated.
child_outcome run_in_fresh_process(const std::string& scenario, double seconds) {
  if (isolation_off()) return {true, "finished (in-process)", run_scenario(scenario)};
  if (timeouts_so_far() >= 3) seconds = std::min(seconds, 1.0);
  int fds[2];
  if (pipe(fds) != 0) return {false, "pipe() failed", {}};
  const pid_t pid = fork_quietly();
  if (pid < 0) {
    close(fds[0]);
    close(fds[1]);
    return {false, "fork() failed", {}};
  }
  if (pid == 0) {
    close(fds[0]);
    const int devnull = open("/dev/null", O_WRONLY);
    if (devnull >= 0) dup2(devnull, STDOUT_FILENO);  // the child's Catch report is not ours
    setenv("ATTNKIT_RELIABILITY_SCENARIO", scenario.c_str(), 1);
    setenv("ATTNKIT_RELIABILITY_FD", std::to_string(fds[1]).c_str(), 1);
    execl("/proc/self/exe", "test_reliability", "[reliability-child]", static_cast<char*>(nullptr));
    _exit(97);  // could not re-execute (e.g. under qemu-user without binfmt_misc)
  }
  close(fds[1]);
  child_outcome r = collect_child(pid, fds[0], seconds);
  if (r.status == "crashed: exit code 97" && r.payload.empty()) {
    r = run_isolated([&] { return run_scenario(scenario); }, seconds);
    r.status += " (in a forked child: this program could not be re-executed)";
  }
  return r;
}

// ---------------------------------------------------------------------------------------------
// "error": throws attnkit::error naming the field; out and lse untouched.
// ---------------------------------------------------------------------------------------------

/// Does `msg` name `field` as a word (not inside a longer identifier: "q" is named by
/// "q.seq()" but not by "seq")?
bool names(const std::string& msg, const std::string& field) {
  const auto word = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '_'; };
  for (std::size_t at = msg.find(field); at != std::string::npos; at = msg.find(field, at + 1)) {
    const bool left = at == 0 || !word(msg[at - 1]);
    const bool right = at + field.size() >= msg.size() || !word(msg[at + field.size()]);
    if (left && right) return true;
  }
  return false;
}

bool names_one_of(const std::string& msg, const std::vector<std::string>& fields) {
  return std::any_of(fields.begin(), fields.end(), [&](const std::string& f) { return names(msg, f); });
}

std::string joined(const std::vector<std::string>& fields) {
  std::string s;
  for (const auto& f : fields) s += (s.empty() ? "" : ", ") + f;
  return s;
}

/// Memory that must be byte-for-byte unchanged by a rejected call.
struct watched_bytes {
  const void* p;
  std::size_t n;
};
template <class T>
watched_bytes bytes_of(const tensor<T>& t) {
  return {t.mem.data(), t.mem.size() * sizeof(T)};
}
template <class T>
watched_bytes bytes_of(const std::vector<T>& v) {
  return {v.data(), v.size() * sizeof(T)};
}

/// Runs call() (isolated) and CHECKs that it throws attnkit::error whose message names one of
/// `fields`, and that every watched byte is unchanged.
template <class Call>
void check_error(const std::string& what, const std::vector<std::string>& fields,
                 const std::vector<watched_bytes>& watched, Call&& call) {
  const child_outcome r = run_isolated([&]() -> std::string {
    std::vector<std::string> before;
    for (const auto& w : watched) before.emplace_back(static_cast<const char*>(w.p), w.n);
    const auto unchanged = [&] {
      for (std::size_t i = 0; i < watched.size(); ++i)
        if (watched[i].n && std::memcmp(before[i].data(), watched[i].p, watched[i].n) != 0) return '0';
      return '1';
    };
    try {
      call();
    } catch (const attnkit::error& e) {
      return std::string("E") + unchanged() + e.what();
    } catch (const std::exception& e) {
      return std::string("X") + unchanged() + typeid(e).name() + ": " + e.what();
    } catch (...) {
      return std::string("X") + unchanged() + "an exception of unknown type";
    }
    return std::string("R") + unchanged();
  });
  INFO(what);
  INFO("the call " << r.status);
  CHECK(r.finished);
  CHECK(r.payload.size() >= 2);
  if (!r.finished || r.payload.size() < 2) return;
  const char kind = r.payload[0];
  const std::string message = r.payload.substr(2);
  const std::string verdict = kind == 'E'   ? "threw attnkit::error"
                              : kind == 'X' ? "threw another exception: " + message
                                            : std::string("returned normally");
  INFO("message: " << message);
  CHECK(verdict == "threw attnkit::error");
  if (kind == 'E') {
    INFO("the message should name one of: " << joined(fields));
    CHECK(names_one_of(message, fields));
  }
  INFO("out / lse (and any other watched memory) unchanged");
  CHECK(r.payload[1] == '1');
}

/// check_error on attnkit::attention and on attnkit::reference::attention.
template <class P, class Q, class K, class V, class O>
void check_rejected(const std::string& what, const std::vector<std::string>& fields, const P& p,
                    attnkit::tensor_view<Q> q, attnkit::tensor_view<K> k, attnkit::tensor_view<V> v,
                    attnkit::tensor_view<O> out, const attnkit::options& o, const std::vector<watched_bytes>& watched) {
  check_error(what + " [attnkit::attention]", fields, watched, [&] { attnkit::attention(p, q, k, v, out, o); });
  check_error(what + " [reference::attention]", fields, watched,
              [&] { attnkit::reference::attention(p, q, k, v, out, o); });
}

/// Valid small inputs, an out tensor and an lse buffer (both sentinel-filled, with guards).
struct call_setup {
  problem s;
  qkv<float> in;
  result<float> res;

  call_setup(const problem& s_, std::mt19937& gen)
      : s(s_), in(random_qkv<float>(s_, gen)), res(make_result<float>(s_, layout::bhsd)) {}
  attnkit::options opts(int threads = 0) {
    attnkit::options o;
    o.lse = res.lse_ptr();
    o.lse_size = s.rows();
    o.threads = threads;
    return o;
  }
  std::vector<watched_bytes> watched() const { return {bytes_of(res.out), bytes_of(res.lse_mem)}; }
};

template <class P>
void check_policy_rejected(const std::string& what, const std::vector<std::string>& fields, const P& p,
                           call_setup& c) {
  check_rejected(what, fields, p, c.in.q.cview(), c.in.k.cview(), c.in.v.cview(), c.res.out.view, c.opts(),
                 c.watched());
}

// ---------------------------------------------------------------------------------------------
// Numerics: fast path vs the float64 reference on extreme but well-conditioned inputs.
// ---------------------------------------------------------------------------------------------

template <class O>
bool no_nan(const result<O>& r) {
  bool ok = true;
  r.out.for_each([&](index_t b, index_t h, index_t s, index_t d) { ok = ok && !std::isnan(r.out.get(b, h, s, d)); });
  const index_t rows = r.out.ext[0] * r.out.ext[1] * r.out.ext[2];
  for (index_t i = 0; i < rows; ++i) ok = ok && !std::isnan(r.lse(i));
  return ok;
}

/// Tolerances scaled by the magnitude of v (an attention output is a weighted mean of v rows,
/// so its rounding error is relative to max |v|): float_tol / half_tol for |v| <= 1.
template <class In, class Out>
tolerance extreme_tol(double vmax) {
  const double m = std::max(1.0, vmax);
  if (std::is_same_v<In, float> && std::is_same_v<Out, float>) return {2e-5 * m, 1e-5, 1e-4, 1e-6};
  return {1e-2 * m, 1e-2, 1e-2, 1e-3};
}

/// CHECKs out and lse of `fast` against `ref` (identical infinities accepted) and the guards.
template <class A, class B>
void check_close(const result<A>& fast, const result<B>& ref, const tolerance& tol) {
  const auto out_cmp = compare_out(fast.out, ref.out, tol.atol, tol.rtol);
  INFO(out_cmp.second);
  CHECK(out_cmp.first);
  const index_t rows = fast.out.ext[0] * fast.out.ext[1] * fast.out.ext[2];
  const auto lse_cmp = compare_lse(fast.lse_mem, ref.lse_mem, rows, tol.lse_atol, tol.lse_rtol);
  INFO(lse_cmp.second);
  CHECK(lse_cmp.first);
  CHECK(guards_intact(fast.out));
}

/// The reference (output type O: its own conversion decides what is out of O's range) has no
/// NaN; the fast path with threads 1, 2 and 0 has none either, matches it, and is bitwise the
/// same for every thread count.
template <class O, class P, class Q, class K, class V>
void check_fast_finite(const P& p, const tensor<Q>& q, const tensor<K>& k, const tensor<V>& v,
                       const tolerance& tol) {
  const result<O> ref = run_ref<O>(p, q, k, v);
  {
    INFO("the reference itself gives NaN");
    CHECK(no_nan(ref));
  }
  std::optional<result<O>> first;
  for (int threads : {1, 2, 0}) {
    INFO("threads = " << threads);
    const result<O> fast = run_fast<O>(p, q, k, v, layout::bhsd, threads);
    {
      INFO("NaN in the fast path's out or lse");
      CHECK(no_nan(fast));
    }
    check_close(fast, ref, tol);
    if (!first) {
      first = fast;
    } else {
      INFO("bitwise identical whatever the thread count");
      CHECK(same_bits(fast.out, first->out));
      CHECK(same_bits(fast.lse_mem, first->lse_mem));
    }
  }
}

/// Extreme input families, each well conditioned (exact ties, or a huge margin).
enum class scene {
  qk_1e20_tie,        // q = k = 1e20 everywhere: q.k overflows float; every score ties
  qk_1e20_signs,      // q rows +-1e20, k rows +-1e20: scores +-D*1e40*scale, ties within a sign
  q_3e38_k_0,         // D = 1, q = +-3e38, k = 0: every score is 0
  q_3e38_k_tiny,      // D = 1, q = +-3e38, k = +-[2^-126, 2^-125): moderate scores from huge q
  v_1e38,             // v = +-1e38 per channel, the same for every key: out = v exactly
  v_pm_3e38,          // v = +-3e38 at random, q and k in [-1, 1]
  v_halves_tie,       // v = +3e38 for the first half of the keys, -3e38 for the rest; q = k = 1
  v_halves_weighted,  // the same v; k = +1 on the first half, -1 on the rest, q = 1
  qk_65504_tie,       // q = 65504, k = 1: finite scores near 1e5 that tie; v in [-1, 1]
};

const char* name(scene s) {
  switch (s) {
    case scene::qk_1e20_tie: return "q = k = 1e20 (ties)";
    case scene::qk_1e20_signs: return "q, k = +-1e20 (ties within a sign, huge margin across)";
    case scene::q_3e38_k_0: return "D = 1, q = +-3e38, k = 0";
    case scene::q_3e38_k_tiny: return "D = 1, q = +-3e38, k = +-2^-126";
    case scene::v_1e38: return "v = +-1e38 (constant over keys)";
    case scene::v_pm_3e38: return "v = +-3e38 at random";
    case scene::v_halves_tie: return "v = +3e38 / -3e38 by halves, ties";
    case scene::v_halves_weighted: return "v = +3e38 / -3e38 by halves, weighted";
    case scene::qk_65504_tie: return "q = 65504, k = 1 (ties near 1e5)";
  }
  return "?";
}

// qk_65504_tie found by the fuzzer: split-key partials kept m + log2(l) in float, which at
// m ~ 1e5 rounds log2(l) to 1/32 and weighed the splits up to 1% wrong.
constexpr scene all_scenes[] = {scene::qk_1e20_tie,   scene::qk_1e20_signs, scene::q_3e38_k_0,
                                scene::q_3e38_k_tiny, scene::v_1e38,        scene::v_pm_3e38,
                                scene::v_halves_tie,  scene::v_halves_weighted, scene::qk_65504_tie};

bool needs_dim_1(scene sc) { return sc == scene::q_3e38_k_0 || sc == scene::q_3e38_k_tiny; }

/// Inputs of a scene for problem s (D forced to 1 where the scene needs it); vmax = max |v|.
template <class T>
qkv<T> scene_inputs(scene sc, problem s, std::mt19937& gen, double& vmax) {
  if (needs_dim_1(sc)) s.D = 1;
  qkv<T> in = random_qkv<T>(s, gen);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::bernoulli_distribution coin(0.5);
  const auto sign = [&] { return coin(gen) ? 1.f : -1.f; };
  vmax = 1;
  const auto rows = [](const tensor<T>& t, auto&& f) {  // f(b, h, s) -> value for the whole row
    for (index_t b = 0; b < t.ext[0]; ++b)
      for (index_t h = 0; h < t.ext[1]; ++h)
        for (index_t i = 0; i < t.ext[2]; ++i) {
          const float x = f(b, h, i);
          for (index_t d = 0; d < t.ext[3]; ++d) t.set(b, h, i, d, x);
        }
  };
  const index_t half = s.Nk / 2;
  switch (sc) {
    case scene::qk_1e20_tie:
      rows(in.q, [](index_t, index_t, index_t) { return 1e20f; });
      rows(in.k, [](index_t, index_t, index_t) { return 1e20f; });
      break;
    case scene::qk_1e20_signs:
      rows(in.q, [&](index_t, index_t, index_t) { return sign() * 1e20f; });
      rows(in.k, [&](index_t, index_t, index_t) { return sign() * 1e20f; });
      break;
    case scene::q_3e38_k_0:
      rows(in.q, [&](index_t, index_t, index_t) { return sign() * 3e38f; });
      rows(in.k, [](index_t, index_t, index_t) { return 0.f; });
      break;
    case scene::q_3e38_k_tiny:
      rows(in.q, [&](index_t, index_t, index_t) { return sign() * 3e38f; });
      rows(in.k, [&](index_t, index_t, index_t) {
        return sign() * std::ldexp(1.f + 0.5f * (u(gen) + 1.f) * 0.99f, -126);
      });
      break;
    case scene::v_1e38:
      in.v.for_each([&](index_t b, index_t h, index_t i, index_t d) { in.v.set(b, h, i, d, d % 2 ? -1e38f : 1e38f); });
      vmax = 1e38;
      break;
    case scene::v_pm_3e38:
      in.v.for_each([&](index_t b, index_t h, index_t i, index_t d) { in.v.set(b, h, i, d, sign() * 3e38f); });
      vmax = 3e38;
      break;
    case scene::v_halves_tie:
    case scene::v_halves_weighted:
      rows(in.q, [](index_t, index_t, index_t) { return 1.f; });
      rows(in.k, [&](index_t, index_t, index_t j) {
        return sc == scene::v_halves_tie ? 1.f : (j < half ? 1.f : -1.f);
      });
      in.v.for_each([&](index_t b, index_t h, index_t j, index_t d) { in.v.set(b, h, j, d, j < half ? 3e38f : -3e38f); });
      vmax = 3e38;
      break;
    case scene::qk_65504_tie:
      rows(in.q, [](index_t, index_t, index_t) { return 65504.f; });
      rows(in.k, [](index_t, index_t, index_t) { return 1.f; });
      break;
  }
  return in;
}

/// Every scene on policy p and problem s: check_fast_finite with In = Out = float.
template <class P>
void check_scenes(const std::string& label, const P& p, const problem& s, std::mt19937& gen) {
  for (scene sc : all_scenes) {
    INFO(label << "; " << describe(s) << "; scene: " << name(sc));
    double vmax = 1;
    const qkv<float> in = scene_inputs<float>(sc, s, gen, vmax);
    check_fast_finite<float>(p, in.q, in.k, in.v, extreme_tol<float, float>(vmax));
  }
}

/// bf16 q, k, v (out float, and out bf16 too when `bf16_out`; on both bf16 ways) on a few scenes.
template <bool bf16_out = false, class P>
void check_scenes_bf16(const std::string& label, const P& p, const problem& s, std::mt19937& gen) {
  for (scene sc : {scene::qk_1e20_signs, scene::q_3e38_k_0, scene::v_1e38, scene::v_halves_weighted}) {
    INFO(label << "; " << describe(s) << "; bf16 inputs; scene: " << name(sc));
    double vmax = 1;
    const qkv<bf16> in = scene_inputs<bf16>(sc, s, gen, vmax);
    for_each_bf16_way([&] {
      {
        INFO("out float");
        check_fast_finite<float>(p, in.q, in.k, in.v, extreme_tol<bf16, float>(vmax));
      }
      if constexpr (bf16_out) {
        INFO("out bf16");
        check_fast_finite<bf16>(p, in.q, in.k, in.v, extreme_tol<bf16, bf16>(vmax));
      }
    });
  }
}

/// The softmax-family policies of the numeric tests, by name.
attnkit::softmax softmax_of(bool causal, index_t window_left = -1, float softcap = 0, const float* slopes = nullptr) {
  attnkit::softmax p;
  p.causal = causal;
  p.window_left = window_left;
  p.softcap = softcap;
  p.alibi_slopes = slopes;
  return p;
}

attnkit::power power_of(index_t block, index_t window, index_t sink, bool causal, index_t max_power = -1) {
  attnkit::power p;
  p.block_size = block;
  p.window_blocks = window;
  p.sink_blocks = sink;
  p.causal = causal;
  p.max_power = max_power;
  return p;
}

attnkit::radial radial_of(index_t frames, index_t tpf, bool official, index_t block = 128) {
  attnkit::radial p;
  p.frames = frames;
  p.tokens_per_frame = tpf;
  p.mode = official ? attnkit::radial::mode_kind::official_blocks : attnkit::radial::mode_kind::token;
  p.block_size = block;
  return p;
}

template <int R>
attnkit::neighborhood<R> neighborhood_of(std::array<index_t, R> shape, std::array<index_t, R> kernel) {
  attnkit::neighborhood<R> p;
  p.shape = shape;
  p.kernel = kernel;
  return p;
}

/// The keep predicates of the custom policies here, as one type (one instantiation of the
/// engine): every key; causal (bottom-right for Nq = Nk) or every fifth key; j % 3 != 1.
struct test_keep {
  enum kind_t { all, causal_or_fifth, not_1_mod_3 } kind = all;
  bool operator()(index_t, index_t, index_t i, index_t j) const {
    if (kind == causal_or_fifth) return j <= i || j % 5 == 0;
    if (kind == not_1_mod_3) return j % 3 != 1;
    return true;
  }
};
const test_keep keep_all{test_keep::all};
const test_keep causal_or_fifth{test_keep::causal_or_fifth};
const test_keep keep_not_1_mod_3{test_keep::not_1_mod_3};

/// A result's out and lse as bytes (to bring them back from an isolated child).
std::string pack(const result<float>& r) {
  return std::string(reinterpret_cast<const char*>(r.out.mem.data()), r.out.mem.size() * sizeof(float)) +
         std::string(reinterpret_cast<const char*>(r.lse_mem.data()), r.lse_mem.size() * sizeof(float));
}
bool unpack(const std::string& bytes, result<float>& r) {
  const std::size_t a = r.out.mem.size() * sizeof(float), b = r.lse_mem.size() * sizeof(float);
  if (bytes.size() != a + b) return false;
  std::memcpy(r.out.mem.data(), bytes.data(), a);
  std::memcpy(r.lse_mem.data(), bytes.data() + a, b);
  return true;
}

/// The view t with extent / stride of one axis replaced (-1: kept).
template <class T>
attnkit::tensor_view<T> with_axis(attnkit::tensor_view<T> t, int axis, index_t extent, index_t stride = -1) {
  auto e = t.extents();
  auto st = t.strides();
  if (extent >= 0) e[static_cast<std::size_t>(axis)] = extent;
  if (stride >= 0) st[static_cast<std::size_t>(axis)] = stride;
  return attnkit::tensor_view<T>(t.data(), e, st);
}

const char* axis_name(int a) {
  static const char* const n[] = {"batch", "heads", "seq", "dim"};
  return n[a];
}

}  // namespace

// =============================================================================================
// Decision 1: attention() called from inside a custom callback (keep / score / block) is
// supported and correct; with threads 0, 1, 2 the outer result equals the reference.
// =============================================================================================

namespace {

/// The inputs of one re-entrancy run, from a seed (the fresh process rebuilds them): the outer
/// problem, and nested ones larger (more scratch) and smaller than it.
struct reentrancy_case {
  problem outer = make_problem(1, 2, 1, 70, 70, 16, 16);
  problem big_s = make_problem(1, 2, 1, 60, 60, 64, 64), small_s = make_problem(1, 1, 1, 5, 5, 4, 4);
  qkv<float> in, big, small;
  explicit reentrancy_case(std::uint32_t seed) {
    std::mt19937 gen(seed);
    in = random_qkv<float>(outer, gen);
    big = random_qkv<float>(big_s, gen);
    small = random_qkv<float>(small_s, gen);
  }
  static attnkit::softmax big_policy() { return softmax_of(true); }
};

/// Calls attnkit::attention on the larger and on the smaller problem and checks the results
/// bitwise against the same calls made outside any callback (counts calls and mismatches).
struct nested_calls {
  const reentrancy_case* c;
  const result<float>* big_want;
  const result<float>* small_want;
  int threads;
  std::atomic<int>* calls;
  std::atomic<int>* wrong;

  void operator()() const {
    const result<float> b = run_fast(reentrancy_case::big_policy(), c->big.q, c->big.k, c->big.v, layout::bhsd, threads);
    const result<float> s = run_fast(attnkit::softmax{}, c->small.q, c->small.k, c->small.v, layout::bhsd, threads);
    if (!same_bits(b.out, big_want->out) || !same_bits(b.lse_mem, big_want->lse_mem) ||
        !same_bits(s.out, small_want->out) || !same_bits(s.lse_mem, small_want->lse_mem))
      ++*wrong;
    ++*calls;
  }
};

struct callback_failure {
  int call;
};

/// The callables of the custom policy of decisions 1 and 11, as one type (one instantiation of
/// the engine), each doing a runtime-chosen action when called: nothing, a nested call (keep
/// and score now and then, block every time), or throwing callback_failure from the
/// (after + 1)-th call on. keep is causal (j <= i) or keeps every key.
struct probe {
  enum action_t { none, nest, throw_after } keep = none, score = none, block = none;
  bool causal = true;
  const nested_calls* nested = nullptr;
  std::atomic<int>* count = nullptr;
  int after = 0;

  void act(action_t a, bool nest_here) const {
    if (a == nest && nest_here) (*nested)();
    if (a == throw_after) {
      const int n = ++*count;
      if (n > after) throw callback_failure{n};
    }
  }
  static bool nests_at(index_t i, index_t j) { return (i * 7 + j) % 97 == 0; }
};
struct probe_keep {
  const probe* p;
  bool operator()(index_t, index_t, index_t i, index_t j) const {
    p->act(p->keep, probe::nests_at(i, j));
    return !p->causal || j <= i;
  }
};
struct probe_score {
  const probe* p;
  template <class S>
  S operator()(S s, index_t, index_t, index_t i, index_t j) const {
    p->act(p->score, probe::nests_at(i, j));
    return s;
  }
};
struct probe_block {
  const probe* p;
  attnkit::block_kind operator()(index_t, index_t, index_t, index_t, index_t, index_t) const {
    p->act(p->block, true);
    return attnkit::block_kind::partial;
  }
};

/// f(policy): the probe policy with `action` in callable `which` (0 keep, 1 score, 2 block).
template <class F>
void with_probe_policy(int which, probe pr, probe::action_t action, F&& f) {
  (which == 0 ? pr.keep : which == 1 ? pr.score : pr.block) = action;
  f(attnkit::make_custom(probe_keep{&pr}, probe_score{&pr}, probe_block{&pr}));
}

/// f(policy) with the probe policy whose `which` callable nests.
template <class F>
void with_nesting_policy(int which, const nested_calls& nest, F&& f) {
  probe pr;
  pr.nested = &nest;
  with_probe_policy(which, pr, probe::nest, f);
}

/// The fast call of a re-entrancy run: "calls wrong\n" + the packed result.
std::string reentrancy_scenario(int which, int threads, std::uint32_t seed) {
  const reentrancy_case c(seed);
  const result<float> big_want = run_fast(reentrancy_case::big_policy(), c.big.q, c.big.k, c.big.v, layout::bhsd, threads);
  const result<float> small_want = run_fast(attnkit::softmax{}, c.small.q, c.small.k, c.small.v, layout::bhsd, threads);
  std::atomic<int> calls{0}, wrong{0};
  std::string out;
  with_nesting_policy(which, nested_calls{&c, &big_want, &small_want, threads, &calls, &wrong}, [&](const auto& p) {
    const result<float> fast = run_fast(p, c.in.q, c.in.k, c.in.v, layout::bhsd, threads);
    out = std::to_string(calls.load()) + " " + std::to_string(wrong.load()) + "\n" + pack(fast);
  });
  return out;
}

}  // namespace

TEST_CASE("decision 1: attention() nested in a keep / score / block callback (larger and smaller problems) is correct",
          "[reliability][reentrancy]") {
  ATTNKIT_SEEDED_RNG(gen);
  const int which = GENERATE(0, 1, 2);  // the callback that nests: keep, score, block
  const int threads = GENERATE(0, 1, 2);
  const std::uint32_t seed = gen();
  INFO("nesting callback: " << (which == 0 ? "keep" : which == 1 ? "score" : "block") << ", threads = " << threads);

  const reentrancy_case c(seed);
  // The nested results outside any callback, against the reference.
  const result<float> big_want = run_fast(reentrancy_case::big_policy(), c.big.q, c.big.k, c.big.v, layout::bhsd, threads);
  const result<float> small_want = run_fast(attnkit::softmax{}, c.small.q, c.small.k, c.small.v, layout::bhsd, threads);
  check_matches(big_want, run_ref(reentrancy_case::big_policy(), c.big.q, c.big.k, c.big.v), float_tol);
  check_matches(small_want, run_ref(attnkit::softmax{}, c.small.q, c.small.k, c.small.v), float_tol);

  // The fast call runs in a fresh process (with worker threads): a nested call that reuses the
  // outer call's scratch can crash.
  std::ostringstream scenario;
  scenario << "reentrancy " << which << " " << threads << " " << seed;
  const child_outcome r = run_in_fresh_process(scenario.str(), 60);
  INFO("the outer call " << r.status);
  REQUIRE(r.finished);
  const std::size_t eol = r.payload.find('\n');
  REQUIRE(eol != std::string::npos);
  int fast_calls = -1, fast_wrong = -1;
  std::istringstream(r.payload.substr(0, eol)) >> fast_calls >> fast_wrong;
  result<float> fast = make_result<float>(c.outer, layout::bhsd);
  REQUIRE(unpack(r.payload.substr(eol + 1), fast));
  INFO("nested calls made by the fast path: " << fast_calls << ", with a wrong result: " << fast_wrong);
  CHECK(fast_calls > 0);
  CHECK(fast_wrong == 0);

  std::atomic<int> calls{0}, wrong{0};
  with_nesting_policy(which, nested_calls{&c, &big_want, &small_want, threads, &calls, &wrong}, [&](const auto& p) {
    const result<float> ref = run_ref(p, c.in.q, c.in.k, c.in.v);
    INFO("nested calls made by the reference: " << calls.load() << ", with a wrong result: " << wrong.load());
    CHECK(wrong.load() == 0);
    CHECK(no_nan(fast));
    check_matches(fast, ref, float_tol);
  });
  // The mask is causal whatever nests: the reference of softmax{causal} agrees.
  check_matches(fast, run_ref(softmax_of(true), c.in.q, c.in.k, c.in.v), float_tol);
}

// =============================================================================================
// Decision 11: a callback that throws: the exception reaches the caller with its own type;
// no crash, no hang; the library works normally afterwards.
// =============================================================================================

namespace {

/// f(policy) with the probe policy whose `which` callable throws (keep every key).
template <class F>
void with_throwing_policy(int which, std::atomic<int>* count, F&& f) {
  probe pr;
  pr.causal = false;
  pr.count = count;
  pr.after = which == 2 ? 2 : 5;
  with_probe_policy(which, pr, probe::throw_after, f);
}

problem throwing_problem(bool decode) {
  return decode ? make_problem(1, 4, 2, 1, 2048, 16, 16) : make_problem(2, 2, 1, 70, 70, 16, 16);
}

/// The fast call with a throwing callback, then a normal call: what each did.
std::string throwing_scenario(int which, int threads, bool decode, std::uint32_t seed) {
  const problem s = throwing_problem(decode);
  std::mt19937 gen(seed);
  const qkv<float> in = random_qkv<float>(s, gen);
  std::atomic<int> count{0};
  std::string verdict;
  with_throwing_policy(which, &count, [&](const auto& p) {
    try {
      (void)run_fast(p, in.q, in.k, in.v, layout::bhsd, threads);
      verdict = "returned normally";
    } catch (const callback_failure& e) {
      verdict = e.call > (which == 2 ? 2 : 5) ? "threw callback_failure" : "threw callback_failure too early";
    } catch (const std::exception& e) {
      verdict = std::string("threw ") + typeid(e).name() + ": " + e.what();
    } catch (...) {
      verdict = "threw an exception of another type";
    }
  });
  // The library still works: a normal call from the same thread, on the same pool.
  const result<float> next = run_fast(softmax_of(true), in.q, in.k, in.v, layout::bhsd, threads);
  const result<float> want = run_ref(softmax_of(true), in.q, in.k, in.v);
  const auto cmp = compare_out(next.out, want.out, float_tol.atol, float_tol.rtol);
  const auto lcmp = compare_lse(next.lse_mem, want.lse_mem, s.rows(), float_tol.lse_atol, float_tol.lse_rtol);
  verdict += cmp.first && lcmp.first ? "; follow-up call correct" : "; follow-up call WRONG: " + cmp.second + " " + lcmp.second;
  return verdict;
}

}  // namespace

TEST_CASE("decision 11: a keep / score / block callback that throws reaches the caller unchanged, for threads 0, 1, 2",
          "[reliability][callbacks]") {
  ATTNKIT_SEEDED_RNG(gen);
  const int which = GENERATE(0, 1, 2);  // keep, score, block
  const int threads = GENERATE(0, 1, 2);
  const bool decode = GENERATE(false, true);  // decode: keys split across work items, then merged
  const std::uint32_t seed = gen();
  INFO("throwing callback: " << (which == 0 ? "keep" : which == 1 ? "score" : "block") << ", threads = " << threads
                             << ", " << describe(throwing_problem(decode)));
  std::ostringstream scenario;
  scenario << "throwing " << which << " " << threads << " " << decode << " " << seed;
  const child_outcome r = run_in_fresh_process(scenario.str(), 30);
  INFO("the call " << r.status);
  REQUIRE(r.finished);
  CHECK(r.payload == "threw callback_failure; follow-up call correct");
  if (which != 2) {  // the reference calls keep and score too (it ignores the block predicate)
    std::mt19937 g(seed);
    const qkv<float> in = random_qkv<float>(throwing_problem(decode), g);
    std::atomic<int> count{0};
    with_throwing_policy(which, &count, [&](const auto& p) { CHECK_THROWS_AS(run_ref(p, in.q, in.k, in.v), callback_failure); });
  }
}

// =============================================================================================
// Decision 2: dense_mask(policy, nq, nk): nq * nk overflowing, or nq or nk above 2^31 - 1,
// is an error.
// =============================================================================================

TEST_CASE("decision 2: dense_mask with nq * nk overflowing or nq, nk above 2^31 - 1 throws, for every policy",
          "[reliability][dense_mask]") {
  const std::vector<std::string> n_fields{"nq", "nk"};
  const std::vector<std::pair<index_t, index_t>> sizes{{wraps_to_2, 3},     {3, wraps_to_2},   {pow2(32), pow2(32)},
                                                        {max_index, 2},     {pow2(31), 1},     {1, pow2(31)},
                                                        {pow2(33), pow2(31)}, {pow2(31), pow2(31)}};
  for (const auto& [nq, nk] : sizes) {
    std::ostringstream o;
    o << "dense_mask(p, " << nq << ", " << nk << ")";
    const std::string at = o.str();
    check_error("softmax: " + at, n_fields, {}, [nq = opaque(nq), nk = opaque(nk)] { (void)attnkit::dense_mask(attnkit::softmax{}, nq, nk); });
    check_error("softmax causal, windows: " + at, n_fields, {}, [nq = opaque(nq), nk = opaque(nk)] {
      attnkit::softmax p = softmax_of(true, 3);
      p.window_right = 2;
      (void)attnkit::dense_mask(p, nq, nk);
    });
    check_error("power: " + at, n_fields, {}, [nq = opaque(nq), nk = opaque(nk)] { (void)attnkit::dense_mask(attnkit::power{}, nq, nk); });
    check_error("custom: " + at, n_fields, {},
                [nq = opaque(nq), nk = opaque(nk)] { (void)attnkit::dense_mask(attnkit::make_custom(keep_all), nq, nk); });
  }
  // Policies whose dense_mask needs nq == nk (radial) or nq == nk == prod(shape) (neighborhood).
  for (index_t n_ : {pow2(31), pow2(32), pow2(33)}) {
    const index_t n = opaque(n_);
    std::ostringstream o;
    o << "dense_mask(p, " << n << ", " << n << ")";
    check_error("radial token (1 frame of 1 token): " + o.str(), n_fields, {},
                [n] { (void)attnkit::dense_mask(radial_of(1, 1, false), n, n); });
    check_error("radial official_blocks (1 frame of 1 token, block 1): " + o.str(), n_fields, {},
                [n] { (void)attnkit::dense_mask(radial_of(1, 1, true, 1), n, n); });
    check_error("neighborhood<1> shape {n}, kernel {1}: " + o.str(), {"nq", "nk", "shape"}, {},
                [n] { (void)attnkit::dense_mask(neighborhood_of<1>({n}, {1}), n, n); });
  }
  check_error("neighborhood<2> shape {2^16, 2^16}: dense_mask(p, 2^32, 2^32)", {"nq", "nk", "shape"}, {},
              [] {
                (void)attnkit::dense_mask(neighborhood_of<2>({opaque(pow2(16)), opaque(pow2(16))}, {1, 1}),
                                          opaque(pow2(32)), opaque(pow2(32)));
              });
  check_error("neighborhood<3> shape {2^11, 2^11, 2^10}: dense_mask(p, 2^32, 2^32)", {"nq", "nk", "shape"}, {}, [] {
    (void)attnkit::dense_mask(neighborhood_of<3>({opaque(pow2(11)), opaque(pow2(11)), opaque(pow2(10))}, {1, 1, 1}),
                              opaque(pow2(32)), opaque(pow2(32)));
  });
}

// =============================================================================================
// Decision 3: views whose element count or byte span is not representable, or beyond the
// limits (seq <= 2^31 - 1, dim <= 65536, bytes <= 2^56), are errors naming the view;
// view_bhsd / view_bshd throw when their stride products overflow.
// =============================================================================================

TEST_CASE("decision 3: a view with a huge stride on any axis (byte span > 2^56 or overflowing) is rejected, naming it",
          "[reliability][views]") {
  ATTNKIT_SEEDED_RNG(gen);
  // Every extent >= 2, so that every axis' stride matters.
  call_setup c(make_problem(2, 2, 2, 3, 4, 4, 3), gen);
  const attnkit::softmax p{};
  const char* const view_names[] = {"q", "k", "v", "out"};
  for (int which = 0; which < 4; ++which)
    for (int axis = 0; axis < 4; ++axis)
      for (index_t stride : {pow2(61), pow2(55), max_index / 2}) {
        auto q = c.in.q.cview(), k = c.in.k.cview(), v = c.in.v.cview();
        auto out = c.res.out.view;
        if (which == 0) q = with_axis(q, axis, -1, stride);
        if (which == 1) k = with_axis(k, axis, -1, stride);
        if (which == 2) v = with_axis(v, axis, -1, stride);
        if (which == 3) out = with_axis(out, axis, -1, stride);
        std::ostringstream o;
        o << view_names[which] << ".stride(" << axis_name(axis) << ") = " << stride;
        check_rejected(o.str(), {view_names[which]}, p, q, k, v, out, c.opts(), c.watched());
      }
}

TEST_CASE("decision 3: views with a huge extent on any axis (element count overflows) are rejected, naming one",
          "[reliability][views]") {
  ATTNKIT_SEEDED_RNG(gen);
  call_setup c(make_problem(2, 2, 2, 3, 4, 4, 3), gen);
  const attnkit::softmax p{};
  // Each row: the views made huge on one axis (others follow, so that shapes still agree).
  struct variant {
    const char* what;
    int axis;
    bool q, k, v, out;
  };
  const variant variants[] = {
      {"batch of every view", 0, true, true, true, true}, {"heads of every view", 1, true, true, true, true},
      {"q.seq and out.seq", 2, true, false, false, true}, {"k.seq and v.seq", 2, false, true, true, false},
      {"q.dim and k.dim", 3, true, true, false, false},   {"v.dim and out.dim", 3, false, false, true, true}};
  for (const variant& w : variants)
    for (index_t extent : {pow2(62), max_index, wraps_to_2}) {
      auto q = c.in.q.cview(), k = c.in.k.cview(), v = c.in.v.cview();
      auto out = c.res.out.view;
      std::vector<std::string> fields;
      if (w.q) q = with_axis(q, w.axis, extent), fields.push_back("q");
      if (w.k) k = with_axis(k, w.axis, extent), fields.push_back("k");
      if (w.v) v = with_axis(v, w.axis, extent), fields.push_back("v");
      if (w.out) out = with_axis(out, w.axis, extent), fields.push_back("out");
      std::ostringstream o;
      o << w.what << " = " << extent << " (real pointers to small buffers)";
      check_rejected(o.str(), fields, p, q, k, v, out, c.opts(), c.watched());
      check_rejected(o.str() + ", power", fields, attnkit::power{}, q, k, v, out, c.opts(), c.watched());
      check_rejected(o.str() + ", custom", fields, attnkit::make_custom(keep_all), q, k, v, out, c.opts(),
                     c.watched());
    }
}

TEST_CASE("decision 3: four views with every extent 2^16, and seq 2^62 with a real pointer, are rejected",
          "[reliability][views]") {
  std::vector<float> qm(64, 0.5f), km(64, 0.25f), vm(64, -0.5f), om(64, -12345.f), lse(8, -777.f);
  const std::array<index_t, 4> e16{pow2(16), pow2(16), pow2(16), pow2(16)};
  const std::array<index_t, 4> s16{pow2(48), pow2(32), pow2(16), 1};
  attnkit::options o;
  o.lse = lse.data();
  const std::vector<watched_bytes> watched{bytes_of(om), bytes_of(lse)};
  {
    const attnkit::tensor_view<const float> q(qm.data(), e16, s16), k(km.data(), e16, s16), v(vm.data(), e16, s16);
    const attnkit::tensor_view<float> out(om.data(), e16, s16);
    check_rejected("every extent of q, k, v, out is 2^16 (softmax)", {"q", "k", "v", "out"}, attnkit::softmax{}, q, k, v,
                   out, o, watched);
    check_rejected("every extent of q, k, v, out is 2^16 (custom)", {"q", "k", "v", "out"},
                   attnkit::make_custom(keep_all), q, k, v, out, o, watched);
  }
  {
    const attnkit::tensor_view<const float> q(qm.data(), {1, 1, pow2(62), 4}, {0, 0, 4, 1});
    const attnkit::tensor_view<const float> k(km.data(), {1, 1, 4, 4}, {16, 16, 4, 1}), v(vm.data(), {1, 1, 4, 4}, {16, 16, 4, 1});
    const attnkit::tensor_view<float> out(om.data(), {1, 1, pow2(62), 4}, {0, 0, 4, 1});
    check_rejected("q.seq() = out.seq() = 2^62 with real pointers", {"q", "out"}, attnkit::softmax{}, q, k, v, out, o,
                   watched);
    const attnkit::tensor_view<const float> q1(qm.data(), {1, 1, 2, 4}, {8, 8, 4, 1});
    const attnkit::tensor_view<const float> k62(km.data(), {1, 1, pow2(62), 4}, {0, 0, 4, 1});
    const attnkit::tensor_view<const float> v62(vm.data(), {1, 1, pow2(62), 4}, {0, 0, 4, 1});
    const attnkit::tensor_view<float> out1(om.data(), {1, 1, 2, 4}, {8, 8, 4, 1});
    check_rejected("k.seq() = v.seq() = 2^62 with real pointers (power)", {"k", "v"}, attnkit::power{}, q1, k62, v62,
                   out1, o, watched);
  }
}

TEST_CASE("decision 3: seq above 2^31 - 1 and dim above 65536 are rejected even when the memory is real",
          "[reliability][views]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto policies = [](auto&& f) {
    f("softmax", attnkit::softmax{});
    f("power", attnkit::power{});
    f("custom", attnkit::make_custom(keep_all));
  };
  {
    // k.seq() = v.seq() = 2^31 over one real key (seq stride 0: a broadcast, which is allowed).
    call_setup c(make_problem(1, 2, 1, 3, 1, 4, 4), gen);
    const auto k = with_axis(c.in.k.cview(), 2, pow2(31), 0), v = with_axis(c.in.v.cview(), 2, pow2(31), 0);
    policies([&](const char* name, const auto& p) {
      check_rejected(std::string(name) + ": k.seq() = 2^31 (seq stride 0)", {"k", "v"}, p, c.in.q.cview(), k, v,
                     c.res.out.view, c.opts(), c.watched());
    });
  }
  {
    // q.seq() = 2^31 over one real query (stride 0); out cannot be real at that size, so it has
    // stride 0 too (an overlap of out with itself, also an error): either may be named.
    call_setup c(make_problem(1, 1, 1, 1, 4, 4, 4), gen);
    const auto q = with_axis(c.in.q.cview(), 2, pow2(31), 0);
    const auto out = with_axis(c.res.out.view, 2, pow2(31), 0);
    attnkit::options o;  // no lse: it would need 2^31 floats
    policies([&](const char* name, const auto& p) {
      check_rejected(std::string(name) + ": q.seq() = 2^31 (seq stride 0)", {"q", "out"}, p, q, c.in.k.cview(),
                     c.in.v.cview(), out, o, c.watched());
    });
  }
  {
    call_setup c(make_problem(1, 1, 1, 2, 3, 65537, 4), gen);
    policies([&](const char* name, const auto& p) {
      check_policy_rejected(std::string(name) + ": q.dim() = k.dim() = 65537", {"q", "k"}, p, c);
    });
  }
  {
    call_setup c(make_problem(1, 1, 1, 2, 3, 4, 65537), gen);
    policies([&](const char* name, const auto& p) {
      check_policy_rejected(std::string(name) + ": v.dim() = out.dim() = 65537", {"v", "out"}, p, c);
    });
  }
}

TEST_CASE("decision 3: q.dim() = v.dim() = 65536 (the limit) is accepted and correct", "[reliability][views]") {
  ATTNKIT_SEEDED_RNG(gen);
  for (const problem& s : {make_problem(1, 1, 1, 1, 3, 65536, 8), make_problem(1, 1, 1, 2, 3, 8, 65536)}) {
    INFO(describe(s));
    const qkv<float> in = random_qkv<float>(s, gen);
    attnkit::softmax p;
    p.scale = 0.01f;
    check_matches(run_fast(p, in.q, in.k, in.v), run_ref(p, in.q, in.k, in.v), float_tol);
  }
}

TEST_CASE("decision 3: view_bhsd / view_bshd throw attnkit::error when their stride products overflow",
          "[reliability][views]") {
  float x = 0;
  CHECK_THROWS_AS(attnkit::view_bhsd(&x, 1, pow2(32), pow2(32), 1), attnkit::error);
  CHECK_THROWS_AS(attnkit::view_bhsd(&x, 2, pow2(21), pow2(21), pow2(21)), attnkit::error);
  CHECK_THROWS_AS(attnkit::view_bhsd(&x, 1, 1, pow2(62), 4), attnkit::error);
  CHECK_THROWS_AS(attnkit::view_bhsd(&x, 1, 3, 1, wraps_to_2), attnkit::error);
  CHECK_THROWS_AS(attnkit::view_bshd(&x, 1, pow2(32), pow2(32), 1), attnkit::error);
  CHECK_THROWS_AS(attnkit::view_bshd(&x, 1, pow2(62), 1, 4), attnkit::error);
  CHECK_THROWS_AS(attnkit::view_bshd(&x, 1, 1, 3, wraps_to_2), attnkit::error);
  const float* cx = &x;
  CHECK_THROWS_AS(attnkit::view_bhsd(cx, 1, pow2(32), pow2(32), 1), attnkit::error);
  CHECK_THROWS_AS(attnkit::view_bshd(cx, 1, pow2(32), pow2(32), 1), attnkit::error);
  // Products that fit are fine (the view is only a description; nothing is read here).
  CHECK_NOTHROW(attnkit::view_bhsd(&x, 1, 1, 1, 1));
  CHECK_NOTHROW(attnkit::view_bshd(&x, 2, 3, 4, 5));
}

// =============================================================================================
// Decision 4: neighborhood: kernel[a] * dilation[a] overflowing, or prod(shape) overflowing,
// is an error (fast path, reference and dense_mask; no hang).
// =============================================================================================

namespace {

template <int R>
void check_neighborhood_rejected(const std::string& what, const std::vector<std::string>& fields,
                                 const attnkit::neighborhood<R>& p, index_t n, std::mt19937& gen) {
  call_setup c(make_problem(1, 2, 1, n, n, 4, 4), gen);
  check_policy_rejected(what, fields, p, c);
  check_error(what + " [dense_mask]", fields, {}, [&] { (void)attnkit::dense_mask(p, n, n); });
}

}  // namespace

TEST_CASE("decision 4: neighborhood kernel * dilation overflowing is rejected on every axis of every rank",
          "[reliability][neighborhood]") {
  ATTNKIT_SEEDED_RNG(gen);
  const std::vector<std::string> fields{"kernel", "dilation"};
  for (const auto& [kernel, dilation] : overflow_pairs()) {
    std::ostringstream o;
    o << "kernel " << kernel << ", dilation " << dilation;
    attnkit::neighborhood<1> p1 = neighborhood_of<1>({10}, {3});
    p1.kernel = {kernel}, p1.dilation = {dilation};
    check_neighborhood_rejected("neighborhood<1> shape {10}: " + o.str(), fields, p1, 10, gen);
  }
  // The issue's pair (2^62, 4) and the pair that wraps to 0, on every axis of 2-D and 3-D grids.
  for (const auto& [kernel, dilation] : {std::make_pair(pow2(62), index_t(4)), std::make_pair(pow2(32), pow2(32)),
                                         std::make_pair(index_t(3), wraps_to_2)}) {
    for (int a = 0; a < 2; ++a) {
      attnkit::neighborhood<2> p = neighborhood_of<2>({6, 7}, {3, 3});
      p.kernel[static_cast<std::size_t>(a)] = kernel, p.dilation[static_cast<std::size_t>(a)] = dilation;
      std::ostringstream o;
      o << "neighborhood<2> shape {6, 7}, axis " << a << ": kernel " << kernel << ", dilation " << dilation;
      check_neighborhood_rejected(o.str(), fields, p, 42, gen);
    }
    for (int a = 0; a < 3; ++a) {
      attnkit::neighborhood<3> p = neighborhood_of<3>({3, 4, 5}, {3, 3, 3});
      p.kernel[static_cast<std::size_t>(a)] = kernel, p.dilation[static_cast<std::size_t>(a)] = dilation;
      std::ostringstream o;
      o << "neighborhood<3> shape {3, 4, 5}, axis " << a << ": kernel " << kernel << ", dilation " << dilation;
      check_neighborhood_rejected(o.str(), fields, p, 60, gen);
    }
  }
}

TEST_CASE("decision 4: neighborhood prod(shape) overflowing is rejected", "[reliability][neighborhood]") {
  ATTNKIT_SEEDED_RNG(gen);
  // prod(shape) = 2^64 + 2 wraps to 2: the call's sequences have 2 tokens.
  check_neighborhood_rejected("neighborhood<2> shape {3, (2^64 + 2) / 3}", {"shape"},
                              neighborhood_of<2>({3, wraps_to_2}, {1, 1}), 2, gen);
  check_neighborhood_rejected("neighborhood<2> shape {(2^64 + 2) / 3, 3}", {"shape"},
                              neighborhood_of<2>({wraps_to_2, 3}, {1, 1}), 2, gen);
  check_neighborhood_rejected("neighborhood<3> shape {3, 2, (2^64 + 2) / 6}", {"shape"},
                              neighborhood_of<3>({3, 2, wraps_to_2 / 2}, {1, 1, 1}), 2, gen);
  // prod(shape) = 2^64 wraps to 0: empty sequences.
  check_neighborhood_rejected("neighborhood<2> shape {2^32, 2^32}", {"shape"},
                              neighborhood_of<2>({pow2(32), pow2(32)}, {1, 1}), 0, gen);
  check_neighborhood_rejected("neighborhood<3> shape {2^21, 2^21, 2^22}", {"shape"},
                              neighborhood_of<3>({pow2(21), pow2(21), pow2(22)}, {1, 1, 1}), 0, gen);
}

// =============================================================================================
// Decision 5: radial: frames * tokens_per_frame overflowing is an error, immediately;
// official_blocks mode with block_size > N is an error.
// =============================================================================================

TEST_CASE("decision 5: radial frames * tokens_per_frame overflowing is rejected at once, both modes",
          "[reliability][radial]") {
  ATTNKIT_SEEDED_RNG(gen);
  const std::vector<std::string> fields{"frames", "tokens_per_frame"};
  std::vector<std::pair<index_t, index_t>> pairs{{pow2(62) + 1, 4}, {4, pow2(62) + 1}, {pow2(62), pow2(62)}};
  for (const auto& pr : overflow_pairs()) pairs.push_back(pr);
  for (const bool official : {false, true})
    for (const auto& [frames, tpf] : pairs) {
      std::ostringstream o;
      o << "radial " << (official ? "official_blocks" : "token") << ": frames " << frames << ", tokens_per_frame "
        << tpf << ", N = 8";
      const attnkit::radial p = radial_of(frames, tpf, official, 4);
      call_setup c(make_problem(1, 2, 1, 8, 8, 4, 4), gen);
      check_policy_rejected(o.str(), fields, p, c);
      check_error(o.str() + " [dense_mask]", fields, {}, [&] { (void)attnkit::dense_mask(p, 8, 8); });
    }
}

TEST_CASE("decision 5: radial official_blocks with block_size > N is rejected; token mode ignores block_size",
          "[reliability][radial]") {
  ATTNKIT_SEEDED_RNG(gen);
  call_setup c(make_problem(1, 2, 1, 12, 12, 8, 8), gen);
  for (index_t block : {index_t(13), index_t(64), pow2(62), max_index}) {
    std::ostringstream o;
    o << "radial official_blocks, 3 frames x 4 tokens, N = 12, block_size " << block;
    const attnkit::radial p = radial_of(3, 4, true, block);
    check_policy_rejected(o.str(), {"block_size"}, p, c);
    check_error(o.str() + " [dense_mask]", {"block_size"}, {}, [&] { (void)attnkit::dense_mask(p, 12, 12); });
  }
  // Accepted: official_blocks with block_size == N, and token mode with any block_size.
  for (const auto& [official, block] : {std::make_pair(true, index_t(12)), std::make_pair(false, index_t(13)),
                                        std::make_pair(false, max_index)}) {
    INFO("radial " << (official ? "official_blocks" : "token") << ", block_size " << block << " (accepted)");
    const attnkit::radial p = radial_of(3, 4, official, block);
    check_matches(run_fast(p, c.in.q, c.in.k, c.in.v), run_ref(p, c.in.q, c.in.k, c.in.v), float_tol);
    CHECK(attnkit::dense_mask(p, 12, 12).size() == 144u);
  }
}

// =============================================================================================
// Decision 6: power: sink_blocks * block_size saturates (every key is a sink); max_power 62
// or 63 means unlimited, like -1, on the fast path, in dense_mask and in the reference.
// =============================================================================================

TEST_CASE("decision 6: power sink_blocks * block_size overflowing saturates: every key is a sink",
          "[reliability][power]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(64, 64), std::make_pair(20, 64), std::make_pair(1, 64));
  const bool causal = GENERATE(true, false);
  const problem s = make_problem(1, 2, 1, n.first, n.second, 16, 16);
  const qkv<float> in = random_qkv<float>(s, gen);
  // Every key a sink: the causal (bottom-right) or dense softmax.
  const result<float> want = run_ref(softmax_of(causal), in.q, in.k, in.v);
  const auto want_mask = attnkit::dense_mask(softmax_of(causal), s.Nq, s.Nk);
  for (const auto& [sink, block] : {std::make_pair(pow2(62), index_t(4)), std::make_pair(pow2(61) + 1, index_t(4)),
                                    std::make_pair(max_index, index_t(4)), std::make_pair(max_index / 2, index_t(2)),
                                    std::make_pair(wraps_to_2, index_t(3))}) {
    INFO(describe(s) << "; power causal = " << causal << ", sink_blocks " << sink << ", block_size " << block
                     << ", window_blocks 1, max_power 0");
    const attnkit::power p = power_of(block, 1, sink, causal, 0);
    CHECK(attnkit::dense_mask(p, s.Nq, s.Nk) == want_mask);
    const result<float> ref = run_ref(p, in.q, in.k, in.v);
    check_matches(ref, want, float_tol);
    for (int threads : {0, 1, 2}) {
      INFO("threads = " << threads);
      check_matches(run_fast(p, in.q, in.k, in.v, layout::bhsd, threads), want, float_tol);
    }
  }
}

TEST_CASE("decision 6: power max_power 62 and 63 mean unlimited (like -1): fast path, dense_mask and reference agree",
          "[reliability][power]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(64, 64), std::make_pair(30, 64), std::make_pair(64, 30));
  const bool causal = GENERATE(true, false);
  const problem s = make_problem(1, 2, 1, n.first, n.second, 16, 16);
  const qkv<float> in = random_qkv<float>(s, gen);
  for (index_t block : {index_t(1), index_t(2)}) {
    const attnkit::power unlimited = power_of(block, 1, 0, causal, -1);
    const result<float> want = run_ref(unlimited, in.q, in.k, in.v);
    const result<float> want_fast = run_fast(unlimited, in.q, in.k, in.v);
    const auto want_mask = attnkit::dense_mask(unlimited, s.Nq, s.Nk);
    for (index_t max_power : {index_t(62), index_t(63)}) {
      INFO(describe(s) << "; power block " << block << ", window 1, sink 0, causal = " << causal
                       << ", max_power " << max_power << " vs -1");
      const attnkit::power p = power_of(block, 1, 0, causal, max_power);
      CHECK(attnkit::dense_mask(p, s.Nq, s.Nk) == want_mask);
      const result<float> ref = run_ref(p, in.q, in.k, in.v);
      CHECK(same_bits(ref.out, want.out));
      const result<float> fast = run_fast(p, in.q, in.k, in.v);
      check_matches(fast, want, float_tol);
      CHECK(same_bits(fast.out, want_fast.out));
    }
  }
}

// =============================================================================================
// Decision 7: softmax window_left / window_right = INT64_MAX mean unbounded (like -1), fast
// path and reference alike, also with Nq != Nk.
// =============================================================================================

TEST_CASE("decision 7: softmax windows of INT64_MAX (and other huge values) equal unbounded windows",
          "[reliability][softmax][windows]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(20, 20), std::make_pair(7, 30), std::make_pair(30, 7), std::make_pair(1, 50));
  const bool causal = GENERATE(false, true);
  const problem s = make_problem(1, 4, 2, n.first, n.second, 16, 16);
  const qkv<float> in = random_qkv<float>(s, gen);
  constexpr index_t B = -2;  // placeholder: the huge value under test
  const std::pair<index_t, index_t> windows[] = {{B, -1}, {-1, B}, {B, B}, {B, 0}, {0, B}, {B, 3}, {3, B}};
  for (index_t big : {max_index, max_index - 1, pow2(62)})
    for (const auto& [l, r] : windows) {
      attnkit::softmax p = softmax_of(causal), unbounded = softmax_of(causal);
      p.window_left = l == B ? big : l, p.window_right = r == B ? big : r;
      unbounded.window_left = l == B ? -1 : l, unbounded.window_right = r == B ? -1 : r;
      INFO(describe(s) << "; " << describe(p) << " vs " << describe(unbounded));
      const result<float> want = run_ref(unbounded, in.q, in.k, in.v);
      CHECK(attnkit::dense_mask(p, s.Nq, s.Nk) == attnkit::dense_mask(unbounded, s.Nq, s.Nk));
      const result<float> ref = run_ref(p, in.q, in.k, in.v);
      CHECK(same_bits(ref.out, want.out));
      CHECK(same_bits(ref.lse_mem, want.lse_mem));
      check_matches(run_fast(p, in.q, in.k, in.v), want, float_tol);
    }
}

TEST_CASE("decision 7: INT64_MAX windows with per-batch key_lens / query_lens equal unbounded windows",
          "[reliability][softmax][windows]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(20, 20), std::make_pair(7, 30), std::make_pair(30, 7), std::make_pair(1, 50));
  const bool causal = GENERATE(false, true);
  const problem s = make_problem(2, 2, 1, n.first, n.second, 16, 16);
  const qkv<float> in = random_qkv<float>(s, gen);
  const std::int32_t key_lens[] = {static_cast<std::int32_t>(s.Nk), static_cast<std::int32_t>(s.Nk / 2)};
  const std::int32_t query_lens[] = {static_cast<std::int32_t>((s.Nq + 1) / 2), static_cast<std::int32_t>(s.Nq)};
  for (const auto& [l, r] : {std::make_pair(max_index, index_t(-1)), std::make_pair(index_t(-1), max_index),
                             std::make_pair(max_index, max_index), std::make_pair(max_index, index_t(2)),
                             std::make_pair(index_t(2), max_index)}) {
    attnkit::softmax p = softmax_of(causal), unbounded = softmax_of(causal);
    p.key_lens = unbounded.key_lens = key_lens;
    p.query_lens = unbounded.query_lens = query_lens;
    p.window_left = l, p.window_right = r;
    unbounded.window_left = l == max_index ? -1 : l, unbounded.window_right = r == max_index ? -1 : r;
    INFO(describe(s) << "; key_lens {" << key_lens[0] << ", " << key_lens[1] << "}, query_lens {" << query_lens[0]
                     << ", " << query_lens[1] << "}; " << describe(p) << " vs " << describe(unbounded));
    const result<float> want = run_ref(unbounded, in.q, in.k, in.v);
    const result<float> ref = run_ref(p, in.q, in.k, in.v);
    CHECK(same_bits(ref.out, want.out));
    CHECK(same_bits(ref.lse_mem, want.lse_mem));
    for (int threads : {1, 2}) check_matches(run_fast(p, in.q, in.k, in.v, layout::bhsd, threads), want, float_tol);
  }
}

// =============================================================================================
// Decision 8: field bounds. scale 0 or finite with 2^-126 <= |scale| <= 2^127 (below, scale *
// log2(e) is subnormal and imprecise); softcap 0 or in [2^-126, 2^127];
// |alibi_slopes[h]| <= 2^127 and finite. Outside: error naming the field.
// =============================================================================================

namespace {

/// f(name, policy) for every policy with a scale field, on 12 tokens (with that scale).
template <class F>
void for_each_policy_with_scale(float scale, F&& f) {
  attnkit::softmax sm;
  sm.scale = scale;
  f("softmax", sm);
  auto n1 = neighborhood_of<1>({12}, {3});
  n1.scale = scale;
  f("neighborhood<1>", n1);
  auto n2 = neighborhood_of<2>({3, 4}, {3, 3});
  n2.scale = scale;
  f("neighborhood<2>", n2);
  auto n3 = neighborhood_of<3>({2, 2, 3}, {1, 2, 3});
  n3.scale = scale;
  f("neighborhood<3>", n3);
  attnkit::power pw = power_of(4, 1, 1, true);
  pw.scale = scale;
  f("power", pw);
  attnkit::radial rt = radial_of(3, 4, false, 4);
  rt.scale = scale;
  f("radial token", rt);
  attnkit::radial ro = radial_of(3, 4, true, 4);
  ro.scale = scale;
  f("radial official_blocks", ro);
  f("custom", attnkit::make_custom(keep_all, scale));
}

std::string float_text(float x) {
  std::ostringstream o;
  o.precision(9);
  o << x;
  return o.str();
}

}  // namespace

TEST_CASE("decision 8: scale beyond 2^127, below 2^-126 (but not 0) or not finite is rejected for every policy",
          "[reliability][fields]") {
  ATTNKIT_SEEDED_RNG(gen);
  call_setup c(make_problem(1, 2, 1, 12, 12, 4, 4), gen);
  const float above = std::nextafter(std::ldexp(1.f, 127), finf), below = std::nextafter(std::ldexp(1.f, -126), 0.f);
  const float tiny = std::numeric_limits<float>::denorm_min();
  for (float scale : {3e38f, -3e38f, above, -above, std::numeric_limits<float>::max(), finf, -finf, fnan, below, -below,
                      1e-44f, tiny, -tiny})
    for_each_policy_with_scale(scale, [&](const char* name, const auto& p) {
      check_policy_rejected(std::string(name) + ": scale = " + float_text(scale), {"scale"}, p, c);
    });
}

TEST_CASE("decision 8: softcap outside {0} U [2^-126, 2^127] is rejected", "[reliability][fields][softmax]") {
  ATTNKIT_SEEDED_RNG(gen);
  call_setup c(make_problem(1, 2, 1, 12, 12, 4, 4), gen);
  const float below = std::nextafter(std::ldexp(1.f, -126), 0.f), above = std::nextafter(std::ldexp(1.f, 127), finf);
  for (float cap : {3e38f, 1e-44f, std::ldexp(1.f, -127), below, above, std::numeric_limits<float>::denorm_min(),
                    -1.f, -1e-44f, finf, fnan})
    for (bool causal : {false, true})
      check_policy_rejected("softmax: softcap = " + float_text(cap) + (causal ? ", causal" : ""), {"softcap"},
                            softmax_of(causal, -1, cap), c);
}

TEST_CASE("decision 8: an ALiBi slope beyond 2^127 (or not finite) is rejected, in any head", "[reliability][fields][softmax]") {
  ATTNKIT_SEEDED_RNG(gen);
  call_setup c(make_problem(1, 3, 1, 12, 12, 4, 4), gen);
  const float above = std::nextafter(std::ldexp(1.f, 127), finf);
  for (float slope : {3e38f, -3e38f, above, -above, finf, -finf, fnan})
    for (int head : {0, 2}) {
      std::vector<float> slopes{0.5f, 0.25f, 0.125f};
      slopes[static_cast<std::size_t>(head)] = slope;
      check_policy_rejected("softmax: alibi_slopes[" + std::to_string(head) + "] = " + float_text(slope),
                            {"alibi_slopes", "alibi", "slope", "slopes"}, softmax_of(false, -1, 0, slopes.data()), c);
    }
}

TEST_CASE("decision 8: scale, softcap and slopes at the bounds are accepted and finite (extreme scores)",
          "[reliability][fields][numerics]") {
  ATTNKIT_SEEDED_RNG(gen);
  const problem s = make_problem(1, 2, 1, 12, 12, 8, 8);
  // scale +-2^127 (and +-2^-126): q, k = +-1 rows give scores +-8 * 2^127, a huge margin
  // between signs and exact ties within one.
  for (float scale : {std::ldexp(1.f, 127), -std::ldexp(1.f, 127), std::ldexp(1.f, -126), -std::ldexp(1.f, -126)})
    for_each_policy_with_scale(scale, [&](const char* name, const auto& p) {
      INFO(name << ": scale = " << float_text(scale));
      qkv<float> in = random_qkv<float>(s, gen);
      std::bernoulli_distribution coin(0.5);
      for (tensor<float>* t : {&in.q, &in.k})
        for (index_t h = 0; h < t->ext[1]; ++h)
          for (index_t i = 0; i < t->ext[2]; ++i) {
            const float x = coin(gen) ? 1.f : -1.f;
            for (index_t d = 0; d < t->ext[3]; ++d) t->set(0, h, i, d, x);
          }
      check_fast_finite<float>(p, in.q, in.k, in.v, float_tol);
    });
  // softcap 2^-126 and 2^127 on moderate and on 1e20 scores.
  for (float cap : {std::ldexp(1.f, -126), std::ldexp(1.f, 127)})
    for (scene sc : {scene::v_pm_3e38, scene::qk_1e20_signs, scene::qk_1e20_tie})
      for (bool causal : {false, true}) {
        INFO("softmax: softcap = " << float_text(cap) << ", causal " << causal << "; scene: " << name(sc));
        double vmax = 1;
        const qkv<float> in = scene_inputs<float>(sc, make_problem(1, 2, 1, 40, 40, 16, 16), gen, vmax);
        check_fast_finite<float>(softmax_of(causal, -1, cap), in.q, in.k, in.v, extreme_tol<float, float>(vmax));
      }
}

TEST_CASE("decision 8: ALiBi slopes of +-1e38 and +-2^127 give the reference's result, no NaN",
          "[reliability][fields][softmax][numerics]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto n = GENERATE(std::make_pair(12, 12), std::make_pair(5, 12), std::make_pair(12, 5), std::make_pair(1, 300));
  const bool causal = GENERATE(false, true);
  const problem s = make_problem(1, 3, 1, n.first, n.second, 8, 8);
  const qkv<float> in = random_qkv<float>(s, gen);
  // Scores differ by at least |slope| between distances, so the farthest (negative slopes) or the
  // nearest (positive slopes) keys win by a huge margin; equally far keys tie exactly.
  for (float slope : {-1e38f, 1e38f, -std::ldexp(1.f, 127), std::ldexp(1.f, 127)}) {
    const std::vector<float> slopes{slope, 0.5f, -slope};
    INFO(describe(s) << "; causal " << causal << "; alibi_slopes {" << slope << ", 0.5, " << -slope << "}");
    check_fast_finite<float>(softmax_of(causal, -1, 0, slopes.data()), in.q, in.k, in.v, float_tol);
  }
}

// =============================================================================================
// Decision 9: finite in, finite out: for finite q, k, v and valid fields the fast path gives
// the float64 reference's answer to float tolerance, never NaN; values beyond the output
// type's range are +-inf exactly as the reference's own conversion gives them.
// =============================================================================================

TEST_CASE("decision 9: the issue's cases (q = k = 1e20; D = 1, q = 3e38, k = 0; split-key decode with v = +-3e38; v = 1e38)",
          "[reliability][numerics][softmax]") {
  ATTNKIT_SEEDED_RNG(gen);
  double vmax = 1;
  {
    INFO("q = k = 1e20: q.k overflows float");
    const qkv<float> in = scene_inputs<float>(scene::qk_1e20_tie, make_problem(1, 2, 1, 70, 70, 16, 16), gen, vmax);
    check_fast_finite<float>(attnkit::softmax{}, in.q, in.k, in.v, float_tol);
  }
  {
    INFO("D = 1, q = 3e38, k = 0");
    problem s = make_problem(1, 2, 1, 70, 70, 1, 8);
    qkv<float> in = random_qkv<float>(s, gen);
    in.q.for_each([&](index_t b, index_t h, index_t i, index_t d) { in.q.set(b, h, i, d, 3e38f); });
    in.k.for_each([&](index_t b, index_t h, index_t i, index_t d) { in.k.set(b, h, i, d, 0.f); });
    check_fast_finite<float>(attnkit::softmax{}, in.q, in.k, in.v, float_tol);
  }
  {
    INFO("decode Nq = 1, Nk = 2048, 4 query heads: v = +3e38 on half the keys, -3e38 on the rest");
    const problem s = make_problem(1, 4, 2, 1, 2048, 16, 16);
    for (scene sc : {scene::v_halves_tie, scene::v_halves_weighted}) {
      INFO(name(sc));
      const qkv<float> in = scene_inputs<float>(sc, s, gen, vmax);
      check_fast_finite<float>(attnkit::softmax{}, in.q, in.k, in.v, extreme_tol<float, float>(vmax));
    }
    // Interleaved signs: every split of the keys holds both.
    qkv<float> in = random_qkv<float>(s, gen);
    in.v.for_each([&](index_t b, index_t h, index_t j, index_t d) { in.v.set(b, h, j, d, j % 2 ? -3e38f : 3e38f); });
    INFO("interleaved +-3e38");
    check_fast_finite<float>(attnkit::softmax{}, in.q, in.k, in.v, extreme_tol<float, float>(3e38));
  }
  {
    INFO("v = 1e38 everywhere gives 1e38, not inf");
    for (const problem& s : {make_problem(1, 2, 1, 70, 70, 16, 16), make_problem(1, 4, 2, 1, 2048, 16, 16)}) {
      INFO(describe(s));
      qkv<float> in = random_qkv<float>(s, gen);
      in.v.for_each([&](index_t b, index_t h, index_t j, index_t d) { in.v.set(b, h, j, d, 1e38f); });
      check_fast_finite<float>(attnkit::softmax{}, in.q, in.k, in.v, extreme_tol<float, float>(1e38));
      const result<float> fast = run_fast(attnkit::softmax{}, in.q, in.k, in.v);
      bool all_1e38 = true;
      fast.out.for_each([&](index_t b, index_t h, index_t i, index_t d) {
        all_1e38 = all_1e38 && std::abs(fast.out.get(b, h, i, d) - 1e38) <= 1e33;
      });
      CHECK(all_1e38);
    }
  }
}

TEST_CASE("decision 9: softmax (dense, causal + window + GQA, few rows, split-key decode, softcap + ALiBi): extreme inputs",
          "[reliability][numerics][softmax]") {
  ATTNKIT_SEEDED_RNG(gen);
  check_scenes("softmax dense", attnkit::softmax{}, make_problem(1, 2, 1, 70, 70, 16, 16), gen);
  check_scenes("softmax causal, window_left 9, GQA", softmax_of(true, 9), make_problem(1, 4, 2, 20, 33, 16, 16), gen);
  check_scenes("softmax, few query rows", attnkit::softmax{}, make_problem(1, 2, 1, 5, 300, 16, 16), gen);
  check_scenes("softmax decode (split keys)", attnkit::softmax{}, make_problem(1, 4, 2, 1, 2048, 16, 16), gen);
  check_scenes("softmax causal decode (split keys)", softmax_of(true), make_problem(2, 4, 1, 1, 2100, 8, 8), gen);
  const std::vector<float> slopes = attnkit::alibi_slopes(2);
  check_scenes("softmax softcap 30 + ALiBi", softmax_of(false, -1, 30.f, slopes.data()),
               make_problem(1, 2, 1, 40, 40, 16, 16), gen);
}

TEST_CASE("decision 9: neighborhood 1-D, 2-D (strips and tiles) and 3-D: extreme inputs", "[reliability][numerics][neighborhood]") {
  ATTNKIT_SEEDED_RNG(gen);
  auto n1 = neighborhood_of<1>({50}, {7});
  n1.dilation = {2};
  check_scenes("neighborhood<1> {50} kernel 7 dilation 2", n1, make_problem(1, 2, 1, 50, 50, 16, 16), gen);
  const auto strips = neighborhood_of<2>({24, 40}, {7, 7});
  REQUIRE(attnkit::detail::flash::strips::preferred(strips));  // the strip path is what runs
  check_scenes("neighborhood<2> {24, 40} kernel {7, 7} (strips)", strips, make_problem(1, 1, 1, 960, 960, 16, 16), gen);
  auto tiles = neighborhood_of<2>({9, 11}, {5, 3});
  tiles.causal = {true, false};
  check_scenes("neighborhood<2> {9, 11} kernel {5, 3} causal {1, 0}", tiles, make_problem(1, 2, 1, 99, 99, 16, 16), gen);
  auto n3 = neighborhood_of<3>({4, 5, 6}, {3, 3, 3});
  n3.dilation = {1, 1, 2};
  check_scenes("neighborhood<3> {4, 5, 6} kernel 3 dilation {1, 1, 2}", n3, make_problem(1, 2, 1, 120, 120, 16, 16), gen);
}

TEST_CASE("decision 9: power, radial (both modes) and custom: extreme inputs", "[reliability][numerics]") {
  ATTNKIT_SEEDED_RNG(gen);
  check_scenes("power block 4, window 2, sink 1, causal", power_of(4, 2, 1, true), make_problem(1, 2, 1, 64, 64, 16, 16), gen);
  check_scenes("power block 4, window 2, sink 1, non-causal", power_of(4, 2, 1, false),
               make_problem(1, 2, 1, 64, 64, 16, 16), gen);
  check_scenes("power decode (split keys)", power_of(64, 2, 1, true), make_problem(1, 4, 2, 1, 2048, 16, 16), gen);
  attnkit::radial token = radial_of(4, 8, false);
  check_scenes("radial token, 4 frames x 8 + 4 global tokens", token, make_problem(1, 2, 1, 36, 36, 16, 16), gen);
  check_scenes("radial official_blocks, 4 frames x 8, block 8", radial_of(4, 8, true, 8),
               make_problem(1, 2, 1, 32, 32, 16, 16), gen);
  check_scenes("custom causal or every fifth key", attnkit::make_custom(causal_or_fifth),
               make_problem(1, 2, 1, 70, 70, 16, 16), gen);
  check_scenes("custom decode (split keys)", attnkit::make_custom(keep_not_1_mod_3),
               make_problem(1, 4, 2, 1, 2048, 16, 16), gen);
}

TEST_CASE("decision 9: bf16 inputs (float outputs; bf16 outputs for softmax) with extreme values", "[reliability][numerics][half]") {
  ATTNKIT_SEEDED_RNG(gen);
  check_scenes_bf16<true>("softmax dense", attnkit::softmax{}, make_problem(1, 2, 1, 70, 70, 16, 16), gen);
  check_scenes_bf16<true>("softmax decode (split keys)", attnkit::softmax{}, make_problem(1, 4, 2, 1, 2048, 16, 16), gen);
  check_scenes_bf16("neighborhood<2> {24, 40} kernel {7, 7} (strips)", neighborhood_of<2>({24, 40}, {7, 7}),
                    make_problem(1, 1, 1, 960, 960, 16, 16), gen);
  check_scenes_bf16("custom", attnkit::make_custom(causal_or_fifth), make_problem(1, 2, 1, 70, 70, 16, 16), gen);
}

TEST_CASE("decision 9: outputs beyond the output type's range are +-inf as the reference converts them (f16 out, lse)",
          "[reliability][numerics][half]") {
  ATTNKIT_SEEDED_RNG(gen);
  const auto run = [&](const std::string& label, const auto& p, const problem& s) {
    INFO(label << "; " << describe(s));
    qkv<float> in = random_qkv<float>(s, gen);
    // v = +-1e5 (beyond f16's 65504) on even channels, +-3e4 (inside) on odd ones.
    in.v.for_each([&](index_t b, index_t h, index_t j, index_t d) {
      in.v.set(b, h, j, d, (d % 2 ? 3e4f : 1e5f) * (d % 4 < 2 ? 1.f : -1.f));
    });
    check_fast_finite<f16>(p, in.q, in.k, in.v, extreme_tol<float, f16>(1e5));
    const result<f16> fast = run_fast<f16>(p, in.q, in.k, in.v);
    bool infinities = true;
    fast.out.for_each([&](index_t b, index_t h, index_t i, index_t d) {
      const float x = fast.out.get(b, h, i, d);
      if (d % 2 == 0) infinities = infinities && x == (d % 4 < 2 ? finf : -finf);
    });
    CHECK(infinities);
    // lse beyond float: q = k = 1e20 rows (every score 4e40, lse +inf in float).
    double vmax = 1;
    const qkv<float> big = scene_inputs<float>(scene::qk_1e20_tie, s, gen, vmax);
    const result<float> r = run_fast(p, big.q, big.k, big.v);
    bool lse_inf = true;
    for (index_t i = 0; i < s.rows(); ++i) lse_inf = lse_inf && r.lse(i) == finf;
    CHECK(lse_inf);
    check_fast_finite<float>(p, big.q, big.k, big.v, float_tol);
  };
  run("softmax dense", attnkit::softmax{}, make_problem(1, 2, 1, 70, 70, 16, 16));
  run("softmax decode (split keys)", attnkit::softmax{}, make_problem(1, 4, 2, 1, 2048, 16, 16));
  run("neighborhood<2> strips", neighborhood_of<2>({24, 40}, {7, 7}), make_problem(1, 1, 1, 960, 960, 16, 16));
}

// =============================================================================================
// Decision 10: aliasing. out sharing any byte with q, k or v, out overlapping itself, or lse
// overlapping out, q, k or v: error. Inputs may overlap each other (and broadcast, stride 0).
// =============================================================================================

TEST_CASE("decision 10: out overlapping q, k, v or itself, or lse overlapping out, q, k, v, is rejected",
          "[reliability][aliasing]") {
  ATTNKIT_SEEDED_RNG(gen);
  // One buffer holds everything: q [1, 2, 6, 4] at 64, k [1, 1, 6, 4] at 120, v at 160.
  const problem s = make_problem(1, 2, 1, 6, 6, 4, 4);
  std::vector<float> mem(512, -12345.f), lse_mem(64, -777.f);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (float& x : mem) x = u(gen);
  const index_t qoff = 64, koff = 120, voff = 160, ooff = 256;
  const auto view = [&](index_t off, index_t heads) { return attnkit::view_bhsd(mem.data() + off, 1, heads, 6, 4); };
  const attnkit::tensor_view<const float> q = view(qoff, 2), k = view(koff, 1), v = view(voff, 1);
  const attnkit::tensor_view<float> out = view(ooff, 2);
  attnkit::options o;
  o.lse = lse_mem.data() + 16;
  o.lse_size = s.rows();
  const std::vector<watched_bytes> watched{bytes_of(mem), bytes_of(lse_mem)};
  const auto rejected = [&](const std::string& what, const std::vector<std::string>& fields, auto qv, auto kv, auto vv,
                            auto ov, const attnkit::options& opt) {
    check_rejected(what + " (softmax)", fields, attnkit::softmax{}, qv, kv, vv, ov, opt, watched);
    if constexpr (std::is_same_v<typename decltype(ov)::value_type, float>)  // (fewer instantiations)
      check_rejected(what + " (custom)", fields, attnkit::make_custom(keep_all), qv, kv, vv, ov, opt, watched);
  };

  rejected("out is q (the same view)", {"out", "q"}, q, k, v, view(qoff, 2), o);
  rejected("out overlaps v partly", {"out", "v"}, q, k, v, view(voff + 10, 2), o);
  rejected("out's last element is k's first", {"out", "k"}, q, k, v, view(koff - 47, 2), o);
  rejected("out's first element is q's last", {"out", "q"}, q, k, v, view(qoff + 47, 2), o);
  {
    // out f16 whose last element is the upper half of q's first float: 2 shared bytes.
    auto* base = reinterpret_cast<f16*>(mem.data() + qoff);
    const attnkit::tensor_view<f16> oh = attnkit::view_bhsd(base + 1 - 47, 1, 2, 6, 4);
    rejected("f16 out sharing 2 bytes with q", {"out", "q"}, q, k, v, oh, o);
  }
  // out overlapping itself: a zero stride (extent > 1) on each axis, or strides that coincide.
  rejected("out with seq stride 0", {"out"}, q, k, v, with_axis(out, 2, -1, 0), o);
  rejected("out with heads stride 0", {"out"}, q, k, v, with_axis(out, 1, -1, 0), o);
  rejected("out with dim stride 0", {"out"}, q, k, v, with_axis(out, 3, -1, 0), o);
  rejected("out with seq stride 1 = dim stride", {"out"}, q, k, v, with_axis(out, 2, -1, 1), o);
  rejected("out with heads stride 4 = seq stride", {"out"}, q, k, v, with_axis(out, 1, -1, 4), o);
  {
    const auto q2 = attnkit::tensor_view<const float>(q.data(), {2, 2, 6, 4}, {0, 24, 4, 1});  // broadcast: fine
    const auto k2 = attnkit::tensor_view<const float>(k.data(), {2, 1, 6, 4}, {0, 24, 4, 1});
    const auto v2 = attnkit::tensor_view<const float>(v.data(), {2, 1, 6, 4}, {0, 24, 4, 1});
    const auto o2 = attnkit::tensor_view<float>(out.data(), {2, 2, 6, 4}, {0, 24, 4, 1});
    attnkit::options o2opt;
    o2opt.lse = lse_mem.data() + 16;
    o2opt.lse_size = 24;
    rejected("out with batch stride 0 (batch 2)", {"out"}, q2, k2, v2, o2, o2opt);
  }
  // lse overlapping out, q, k or v (lse holds 12 floats).
  const auto with_lse = [&](float* p) {
    attnkit::options x;
    x.lse = p;
    x.lse_size = s.rows();
    return x;
  };
  rejected("lse inside out", {"lse"}, q, k, v, out, with_lse(mem.data() + ooff + 5));
  rejected("lse's last element is out's first", {"lse"}, q, k, v, out, with_lse(mem.data() + ooff - 11));
  rejected("lse's first element is out's last", {"lse"}, q, k, v, out, with_lse(mem.data() + ooff + 47));
  rejected("lse inside q", {"lse"}, q, k, v, out, with_lse(mem.data() + qoff + 3));
  rejected("lse is k", {"lse"}, q, k, v, out, with_lse(mem.data() + koff));
  rejected("lse's first element is v's last", {"lse"}, q, k, v, out, with_lse(mem.data() + voff + 23));
}

TEST_CASE("decision 10: inputs may overlap each other and broadcast (stride 0); out may have stride 0 on an extent of 1",
          "[reliability][aliasing]") {
  ATTNKIT_SEEDED_RNG(gen);
  std::vector<float> mem(512);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (float& x : mem) x = u(gen);
  using cview = attnkit::tensor_view<const float>;
  const auto check = [&](const std::string& what, cview q, cview k, cview v, std::array<index_t, 4> out_strides,
                         bool lse_after_out = false) {
    INFO(what);
    const std::array<index_t, 4> oe{q.batch(), q.heads(), q.seq(), v.dim()};
    const index_t rows = oe[0] * oe[1] * oe[2], n = oe[0] * oe[1] * oe[2] * oe[3];
    for (int threads : {1, 0}) {
      std::vector<float> fast_mem(static_cast<std::size_t>(n + rows + 8), -1.f), ref_mem(fast_mem.size(), -1.f);
      std::vector<float> fast_lse(static_cast<std::size_t>(rows), -1.f), ref_lse(fast_lse.size(), -1.f);
      const attnkit::tensor_view<float> fo(fast_mem.data(), oe, out_strides), ro(ref_mem.data(), oe, out_strides);
      attnkit::options fopt, ropt;
      fopt.lse = lse_after_out ? fast_mem.data() + n : fast_lse.data();
      ropt.lse = lse_after_out ? ref_mem.data() + n : ref_lse.data();
      fopt.lse_size = ropt.lse_size = rows;
      fopt.threads = threads;
      for (const attnkit::softmax& p : {attnkit::softmax{}, softmax_of(true)}) {
        REQUIRE_NOTHROW(attnkit::attention(p, q, k, v, fo, fopt));
        REQUIRE_NOTHROW(attnkit::reference::attention(p, q, k, v, ro, ropt));
        bool close_all = true;
        for (std::size_t i = 0; i < fast_mem.size(); ++i)
          close_all = close_all && close(fast_mem[i], ref_mem[i], float_tol.atol, float_tol.rtol);
        for (std::size_t i = 0; i < fast_lse.size(); ++i)
          close_all = close_all && close(fast_lse[i], ref_lse[i], float_tol.lse_atol, float_tol.lse_rtol);
        CHECK(close_all);
      }
    }
  };
  const float* m = mem.data();
  const auto bhsd = [&](index_t off, index_t b, index_t h, index_t n, index_t d) {
    return cview(m + off, {b, h, n, d}, {h * n * d, n * d, d, 1});
  };
  const std::array<index_t, 4> dense{2 * 6 * 4, 6 * 4, 4, 1};
  check("k and v are the same view", bhsd(0, 1, 2, 6, 4), bhsd(64, 1, 1, 6, 4), bhsd(64, 1, 1, 6, 4), dense);
  check("q, k and v are the same view", bhsd(0, 1, 1, 6, 4), bhsd(0, 1, 1, 6, 4), bhsd(0, 1, 1, 6, 4), {24, 24, 4, 1});
  check("v overlaps k partly", bhsd(0, 1, 2, 6, 4), bhsd(64, 1, 1, 6, 4), bhsd(69, 1, 1, 6, 4), dense);
  check("q overlaps k partly", bhsd(60, 1, 2, 6, 4), bhsd(64, 1, 1, 6, 4), bhsd(200, 1, 1, 6, 4), dense);
  check("k broadcast over 2 kv heads (heads stride 0)", bhsd(0, 1, 2, 6, 4), cview(m + 64, {1, 2, 6, 4}, {24, 0, 4, 1}),
        bhsd(100, 1, 2, 6, 4), dense);
  check("q broadcast over batch 2 (batch stride 0)", cview(m, {2, 2, 6, 4}, {0, 24, 4, 1}),
        cview(m + 64, {2, 1, 6, 4}, {24, 24, 4, 1}), cview(m + 200, {2, 1, 6, 4}, {24, 24, 4, 1}),
        {2 * 6 * 4, 6 * 4, 4, 1});
  check("v seq stride 0 (one value row for every key)", bhsd(0, 1, 2, 6, 4), bhsd(64, 1, 1, 6, 4),
        cview(m + 100, {1, 1, 6, 4}, {24, 24, 0, 1}), dense);
  check("q dim stride 0", cview(m, {1, 2, 6, 4}, {12, 6, 1, 0}), bhsd(64, 1, 1, 6, 4), bhsd(100, 1, 1, 6, 4), dense);
  check("out batch stride 0 on batch 1", bhsd(0, 1, 2, 6, 4), bhsd(64, 1, 1, 6, 4), bhsd(100, 1, 1, 6, 4),
        {0, 24, 4, 1});
  check("out heads stride 0 on 1 head", bhsd(0, 1, 1, 6, 4), bhsd(64, 1, 1, 6, 4), bhsd(100, 1, 1, 6, 4),
        {24, 0, 4, 1});
  check("lse right after out (adjacent, not overlapping)", bhsd(0, 1, 2, 6, 4), bhsd(64, 1, 1, 6, 4),
        bhsd(100, 1, 1, 6, 4), dense, true);
}

// =============================================================================================
// Decision 12: merge_states: +inf or NaN in lse_a or lse_b is an error (out_a and lse_a
// untouched); -inf is allowed (an empty partial); huge finite outputs merge without overflow.
// =============================================================================================

TEST_CASE("decision 12: merge_states rejects +inf or NaN in lse_a or lse_b, touching nothing", "[reliability][merge]") {
  ATTNKIT_SEEDED_RNG(gen);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  const index_t B = 1, H = 2, N = 5, D = 3, rows = B * H * N;
  std::vector<float> a(static_cast<std::size_t>(rows * D)), b(a.size()), la(static_cast<std::size_t>(rows)), lb(la.size());
  for (auto* vec : {&a, &b, &la, &lb})
    for (float& x : *vec) x = u(gen);
  for (const bool in_a : {true, false})
    for (const float bad : {finf, fnan})
      for (const index_t r : {index_t(0), rows / 2, rows - 1}) {
        std::vector<float> la2 = la, lb2 = lb;
        (in_a ? la2 : lb2)[static_cast<std::size_t>(r)] = bad;
        std::ostringstream o;
        o << "merge_states: lse_" << (in_a ? "a" : "b") << "[" << r << "] = " << bad;
        check_error(o.str(), {"lse_a", "lse_b", "lse"}, {bytes_of(a), bytes_of(la2), bytes_of(b), bytes_of(lb2)}, [&] {
          attnkit::merge_states(attnkit::view_bhsd(a.data(), B, H, N, D), la2.data(),
                                attnkit::view_bhsd(static_cast<const float*>(b.data()), B, H, N, D), lb2.data());
        });
      }
}

TEST_CASE("decision 12: merge_states accepts -inf (empty partials) and merges huge finite outputs without overflow",
          "[reliability][merge]") {
  ATTNKIT_SEEDED_RNG(gen);
  const index_t B = 1, H = 2, N = 6, D = 4, rows = B * H * N;
  constexpr float fmax = std::numeric_limits<float>::max();
  std::uniform_real_distribution<float> u(-1.f, 1.f), lse_dist(-5.f, 5.f);
  // Merges in float64, as the reference of one row. (A struct, not a std::pair: returning
  // pair<double, double> by value draws GCC's -Wpsabi note on aarch64.)
  struct merged_row {
    double out, lse;
  };
  const auto merged = [](double oa, double la, double ob, double lb) {
    const double m = std::max(la, lb);
    if (m == -HUGE_VAL) return merged_row{0.0, -HUGE_VAL};
    const double wa = std::exp(la - m), wb = std::exp(lb - m);
    return merged_row{(wa * oa + wb * ob) / (wa + wb), m + std::log(wa + wb)};
  };
  struct case_t {
    const char* what;
    std::function<float(index_t, index_t)> oa, ob;  // (row, channel) -> value
    std::function<float(index_t)> la, lb;
  };
  const auto rnd = [&](float scale) {
    auto vals = std::make_shared<std::vector<float>>();
    for (index_t i = 0; i < rows * D; ++i) vals->push_back(scale * u(gen));
    return std::function<float(index_t, index_t)>([vals, dim = D](index_t r, index_t d) { return (*vals)[static_cast<std::size_t>(r * dim + d)]; });
  };
  const auto rnd_lse = [&] {
    auto vals = std::make_shared<std::vector<float>>();
    for (index_t i = 0; i < rows; ++i) vals->push_back(lse_dist(gen));
    return std::function<float(index_t)>([vals](index_t r) { return (*vals)[static_cast<std::size_t>(r)]; });
  };
  const auto cst = [](float x) { return std::function<float(index_t, index_t)>([x](index_t, index_t) { return x; }); };
  const auto lcst = [](float x) { return std::function<float(index_t)>([x](index_t) { return x; }); };
  const case_t cases[] = {
      {"lse_a = -inf everywhere (empty a)", rnd(1), rnd(1), lcst(-finf), rnd_lse()},
      {"lse_b = -inf everywhere (empty b)", rnd(1), rnd(1), rnd_lse(), lcst(-finf)},
      {"both -inf", rnd(1), rnd(1), lcst(-finf), lcst(-finf)},
      {"-inf on some rows", rnd(1), rnd(1), [](index_t r) { return r % 3 == 0 ? -finf : 0.5f * float(r); },
       [](index_t r) { return r % 2 == 0 ? -finf : -0.25f * float(r); }},
      {"out_a = out_b = 3e38, equal lse", cst(3e38f), cst(3e38f), lcst(1.f), lcst(1.f)},
      {"out_a = 3e38, out_b = -3e38, equal lse", cst(3e38f), cst(-3e38f), lcst(2.f), lcst(2.f)},
      {"out_a = out_b = FLT_MAX, lse 0 and ln 3", cst(fmax), cst(fmax), lcst(0.f), lcst(std::log(3.f))},
      {"out_a = 3e38, out_b = 1e38, lse_a = lse_b + ln 3", cst(3e38f), cst(1e38f), lcst(1.f + std::log(3.f)), lcst(1.f)},
      {"random +-3e38 outputs, random lse", rnd(3e38f), rnd(3e38f), rnd_lse(), rnd_lse()},
      {"huge finite lse: FLT_MAX and -FLT_MAX", rnd(3e38f), rnd(3e38f), lcst(fmax), lcst(-fmax)},
      {"huge finite lse: both FLT_MAX", rnd(3e38f), rnd(3e38f), lcst(fmax), lcst(fmax)},
  };
  for (const case_t& c : cases) {
    INFO(c.what);
    std::vector<float> a(static_cast<std::size_t>(rows * D)), b(a.size()), la(static_cast<std::size_t>(rows)), lb(la.size());
    for (index_t r = 0; r < rows; ++r) {
      la[static_cast<std::size_t>(r)] = c.la(r), lb[static_cast<std::size_t>(r)] = c.lb(r);
      for (index_t d = 0; d < D; ++d)
        a[static_cast<std::size_t>(r * D + d)] = c.oa(r, d), b[static_cast<std::size_t>(r * D + d)] = c.ob(r, d);
    }
    const std::vector<float> a0 = a, la0 = la;
    REQUIRE_NOTHROW(attnkit::merge_states(attnkit::view_bhsd(a.data(), B, H, N, D), la.data(),
                                          attnkit::view_bhsd(static_cast<const float*>(b.data()), B, H, N, D), lb.data()));
    index_t bad = 0;
    std::string first;
    for (index_t r = 0; r < rows; ++r) {
      const std::size_t row = static_cast<std::size_t>(r);
      const double l_want = merged(0, la0[row], 0, lb[row]).lse;
      const float l_got = la[row];
      bool ok = !std::isnan(l_got) && close(l_got, static_cast<float>(l_want), 1e-5, 1e-6);
      index_t bad_d = -1;
      for (index_t d = 0; d < D; ++d) {
        const std::size_t at = static_cast<std::size_t>(r * D + d);
        const double want = merged(a0[at], la0[row], b[at], lb[row]).out;
        const float got = a[at];
        const double magnitude = std::max({1.0, std::abs(double(a0[at])), std::abs(double(b[at]))});
        if (!(std::isfinite(got) && close(got, want, 1e-6 * magnitude, 1e-5)) && bad_d < 0) bad_d = d;
      }
      ok = ok && bad_d < 0;
      if (!ok && bad++ == 0) {
        const index_t d = std::max<index_t>(bad_d, 0);
        const std::size_t at = static_cast<std::size_t>(r * D + d);
        std::ostringstream o;
        o << "row " << r << ": out_a[" << d << "] = " << a[at] << " (want " << merged(a0[at], la0[row], b[at], lb[row]).out
          << "), lse_a = " << l_got << " (want " << l_want << ")";
        first = o.str();
      }
    }
    INFO(bad << " rows wrong; first: " << first);
    CHECK(bad == 0);
  }
  // bf16 outputs of 3e38 (bf16's range is float's).
  std::vector<bf16> a(static_cast<std::size_t>(rows * D), bf16(3e38f)), b(a.size(), bf16(3e38f));
  std::vector<float> la(static_cast<std::size_t>(rows), 0.f), lb(la.size(), 0.f);
  REQUIRE_NOTHROW(attnkit::merge_states(attnkit::view_bhsd(a.data(), B, H, N, D), la.data(),
                                        attnkit::view_bhsd(static_cast<const bf16*>(b.data()), B, H, N, D), lb.data()));
  bool all = true;
  for (const bf16& x : a) all = all && static_cast<float>(x) == static_cast<float>(bf16(3e38f));
  CHECK(all);
}

// =============================================================================================
// The fresh process of run_in_fresh_process: this program re-executed on this hidden test case.
// =============================================================================================

namespace {

std::string run_scenario(const std::string& scenario) {
  std::istringstream in(scenario);
  std::string kind;
  int which = 0, threads = 0, decode = 0;
  std::uint32_t seed = 0;
  in >> kind;
  if (kind == "reentrancy" && in >> which >> threads >> seed) return reentrancy_scenario(which, threads, seed);
  if (kind == "throwing" && in >> which >> threads >> decode >> seed)
    return throwing_scenario(which, threads, decode != 0, seed);
  return "unknown scenario: " + scenario;
}

}  // namespace

TEST_CASE("reliability: one scenario, run in a fresh process by the tests above", "[.][reliability-child]") {
  const char* scenario = std::getenv("ATTNKIT_RELIABILITY_SCENARIO");
  const char* fd = std::getenv("ATTNKIT_RELIABILITY_FD");
  if (scenario == nullptr || fd == nullptr) return;  // run by hand: nothing to do
  std::string out;
  try {
    out = run_scenario(scenario);
  } catch (...) {
    out = "an exception escaped the scenario";
  }
  write_all(std::atoi(fd), out);
}
