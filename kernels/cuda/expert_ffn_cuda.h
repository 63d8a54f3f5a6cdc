// SwiGLU expert FFN on an NVIDIA GPU (cuBLAS GEMMs with F32 accumulation). Compiled whenever the CUDA
// toolkit is present; exercised only on a machine with a GPU.
#ifndef MOE_KERNELS_CUDA_EXPERT_FFN_CUDA_H_
#define MOE_KERNELS_CUDA_EXPERT_FFN_CUDA_H_

#include <cstdint>

#include "absl/status/status.h"

namespace moe::cuda {

// Device pointers of one expert's weights in checkpoint layout (row-major [out, in]), BF16.
struct ExpertWeightsDevice {
  const uint16_t* gate_up = nullptr;  // [2 * ffn, hidden]: gate rows then up rows
  const uint16_t* down = nullptr;     // [hidden, ffn]
  int64_t hidden = 0;
  int64_t ffn = 0;
};

// out[t] = down(silu(gate(x[t])) * up(x[t])) for t < tokens. x, out: device F32 [tokens, hidden];
// scratch: device F32 of at least 2 * tokens * ffn floats. Returns INTERNAL with the CUDA/cuBLAS error.
absl::Status ExpertFfnCuda(const ExpertWeightsDevice& w, const float* x, int64_t tokens, float* scratch,
                           float* out, void* stream);

}  // namespace moe::cuda

#endif  // MOE_KERNELS_CUDA_EXPERT_FFN_CUDA_H_
