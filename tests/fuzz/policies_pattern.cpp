/// \file
/// Fuzz decoders of the static block patterns attnkit::power and attnkit::radial (both modes),
/// with extreme and invalid fields (tests/fuzz/harness.hpp).
#include "harness.hpp"

namespace attnkit_fuzz {

void decode_power(fuzz_case& c) {
  attnkit::power p;
  p.block_size = pick_field(c, "block_size", {4, 1, 2, 3, 8, 16, 64, 256, pow2_62, i64_max, 0, -1}, 10);
  p.window_blocks = pick_field(c, "window_blocks", {2, 0, 1, 3, 5, 8, pow2_62, i64_max, -1}, 8);
  p.sink_blocks = pick_field(c, "sink_blocks", {1, 0, 2, 3, pow2_62, i64_max, -1}, 6);
  p.max_power = pick_field(c, "max_power", {-1, 0, 1, 2, 3, 5, 61, 62, 63, 64, i64_max, -2}, 11);
  p.causal = c.r.flag("power_causal", true);
  p.scale = decode_scale(c);
  const problem pb = decode_problem(c, {});
  c.lf.scale = p.scale;
  c.policy = "power{block_size=" + fmt(p.block_size) + ", window_blocks=" + fmt(p.window_blocks) +
             ", sink_blocks=" + fmt(p.sink_blocks) + ", max_power=" + fmt(p.max_power) +
             ", causal=" + std::to_string(p.causal) + ", scale=" + fmt(double(p.scale)) + "}";
  run_policy(c, p, pb, type_set::float_f16);
}

void decode_radial(fuzz_case& c) {
  reader& r = c.r;
  attnkit::radial p;
  p.frames = 1 + static_cast<index_t>(r.take("frames", 4, 1));
  p.tokens_per_frame = 1 + static_cast<index_t>(r.take("tokens_per_frame", 16, 3));
  index_t n = p.frames * p.tokens_per_frame + static_cast<index_t>(r.take("global_tokens", 4, 0));
  p.sink_frames = pick_field(c, "sink_frames", {1, 0, 2, 3, p.frames, i64_max, -1}, 6);
  const int mode = static_cast<int>(r.take("radial_mode", 3, 0));
  p.mode = mode == 1 ? attnkit::radial::mode_kind::official_blocks
           : mode == 2 ? static_cast<attnkit::radial::mode_kind>(7)
                       : attnkit::radial::mode_kind::token;
  if (mode == 2) c.fault("mode = 7 (no such mode_kind)");
  switch (r.take("radial_fault", 5, 0)) {
    case 1:
      p.frames = pow2_62 + 1, p.tokens_per_frame = 4, n = 8;
      c.fault("frames * tokens_per_frame = (2^62 + 1) * 4 overflows");
      break;
    case 2:
      n = p.frames * p.tokens_per_frame - 1;
      c.fault("frames * tokens_per_frame > N");
      break;
    case 3:
      p.tokens_per_frame = 0;
      c.fault("tokens_per_frame = 0");
      break;
    case 4:
      p.frames = i64_max, p.tokens_per_frame = 2;
      c.fault("frames * tokens_per_frame = INT64_MAX * 2 overflows");
      break;
    default: break;
  }
  static const index_t block_sizes[10] = {2, 1, 4, 8, 16, -1 /* N */, -2 /* N + 1 */, 128, i64_max, 0};
  const std::size_t bi = static_cast<std::size_t>(r.take("radial_block_size", 10, 0));
  p.block_size = block_sizes[bi] == -1 ? n : block_sizes[bi] == -2 ? n + 1 : block_sizes[bi];
  if (p.block_size < 1) c.fault("block_size = " + fmt(p.block_size));
  else if (mode == 1 && p.block_size > n) c.fault("official_blocks with block_size " + fmt(p.block_size) + " > N = " + fmt(n));
  static const float decays[10] = {1.f, 0.5f, 2.f, 0.25f, 3e38f, 1e-44f, 0.f, -1.f, f_nan, f_inf};
  const std::size_t di = static_cast<std::size_t>(r.take("decay_factor", 10, 0));
  p.decay_factor = decays[di];
  if (di >= 6) c.fault("decay_factor = " + fmt(double(p.decay_factor)));
  p.causal = r.flag("radial_causal");
  p.scale = decode_scale(c);
  index_t nk = n;
  if (r.take("radial_fault_seq", 2, 0) == 1) {
    nk = n + 1;
    c.fault("k.seq() != q.seq() (radial is self-attention)");
  }
  const problem pb = decode_problem(c, {n, nk});
  c.lf.scale = p.scale;
  c.policy = "radial{frames=" + fmt(p.frames) + ", tokens_per_frame=" + fmt(p.tokens_per_frame) +
             ", sink_frames=" + fmt(p.sink_frames) + ", mode=" + std::to_string(static_cast<int>(p.mode)) +
             ", block_size=" + fmt(p.block_size) + ", decay_factor=" + fmt(double(p.decay_factor)) +
             ", causal=" + std::to_string(p.causal) + ", scale=" + fmt(double(p.scale)) + "}, N = " + fmt(n);
  run_policy(c, p, pb, type_set::float_bf16);
}

}  // namespace attnkit_fuzz
