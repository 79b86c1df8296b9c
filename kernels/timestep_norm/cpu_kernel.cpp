// TimestepNorm forward without autograd on the CPU, fused: one read of each token's group for its statistics
// (mean, then the centred second moment, from L1), the running statistics in float64 (Welford's merge of
// the token's mean and variance into the running ones), and the normalisation and affine in the same visit,
// so about one read and one write of x. Threads split the groups; each walks the tokens in order.
// The PyTorch reference (reference.py) is the oracle; see cpu_impl.py.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <cmath>
#include <vector>

// x [B, L, D] float32 contiguous; weight, bias [D] float32 (scale applied as weight + 1); state: count [B] int64,
// mean, var [B, G] float32. Returns y [B, L, D] and the state's new mean and var [B, G] (the count is count + L).
std::vector<torch::Tensor> tsn_forward(torch::Tensor x, torch::Tensor weight, torch::Tensor bias, int64_t G,
                                       double eps, torch::Tensor count, torch::Tensor mean0, torch::Tensor var0) {
  TORCH_CHECK(x.dim() == 3 && x.scalar_type() == torch::kFloat32 && x.is_contiguous(), "x: contiguous float32 [B, L, D]");
  const int64_t B = x.size(0), L = x.size(1), D = x.size(2), dg = D / G;
  auto y = torch::empty_like(x);
  auto mean_out = torch::empty({B, G}, x.options());
  auto var_out = torch::empty({B, G}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  const float* wp = weight.data_ptr<float>();
  const float* bp = bias.data_ptr<float>();
  const int64_t* cp = count.data_ptr<int64_t>();
  const float* m0 = mean0.data_ptr<float>();
  const float* v0 = var0.data_ptr<float>();
  float* mo = mean_out.data_ptr<float>();
  float* vo = var_out.data_ptr<float>();
  for (int64_t b = 0; b < B; ++b) {
    at::parallel_for(0, G, 1, [&](int64_t g0, int64_t g1) {
      const int64_t ng = g1 - g0;
      std::vector<double> n(ng), mu(ng), m2(ng);  // tokens so far, running mean, running sum of squared deviations
      for (int64_t k = 0; k < ng; ++k) {
        const int64_t bg = b * G + g0 + k;
        n[k] = static_cast<double>(cp[b]);
        mu[k] = m0[bg];
        m2[k] = static_cast<double>(v0[bg]) * n[k];
      }
      for (int64_t l = 0; l < L; ++l) {
        for (int64_t k = 0; k < ng; ++k) {
          const int64_t g = g0 + k;
          const float* xr = xp + (b * L + l) * D + g * dg;
          float* yr = yp + (b * L + l) * D + g * dg;
          const float* w = wp + g * dg;
          const float* bb = bp + g * dg;
          float s = 0.f;
#pragma omp simd reduction(+ : s)
          for (int64_t j = 0; j < dg; ++j) s += xr[j];
          const float mt = s / static_cast<float>(dg);
          float q = 0.f;
#pragma omp simd reduction(+ : q)
          for (int64_t j = 0; j < dg; ++j) {
            const float d = xr[j] - mt;
            q += d * d;
          }
          n[k] += 1.0;
          const double delta = mt - mu[k];
          mu[k] += delta / n[k];
          m2[k] += static_cast<double>(q) / static_cast<double>(dg) + delta * (static_cast<double>(mt) - mu[k]);
          const double var = m2[k] > 0.0 ? m2[k] / n[k] : 0.0;
          const float r = static_cast<float>(1.0 / std::sqrt(var + eps));
          // x - mean as (x - token mean) - (mean - token mean): both differences small where the stream's mean is
          // large, so float32 keeps them (the token mean's own rounding cancels)
          const float centre = static_cast<float>(mu[k] - static_cast<double>(mt));
#pragma omp simd
          for (int64_t j = 0; j < dg; ++j) yr[j] = ((xr[j] - mt) - centre) * r * (w[j] + 1.f) + bb[j];
        }
      }
      for (int64_t k = 0; k < ng; ++k) {
        const int64_t bg = b * G + g0 + k;
        mo[bg] = static_cast<float>(mu[k]);
        vo[bg] = L > 0 && n[k] > 0 ? static_cast<float>(m2[k] > 0.0 ? m2[k] / n[k] : 0.0) : v0[bg];
      }
    });
  }
  return {y, mean_out, var_out};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.def("tsn_forward", &tsn_forward, "fused TimestepNorm forward (no grad)"); }
