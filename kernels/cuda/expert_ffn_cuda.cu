#include "kernels/cuda/expert_ffn_cuda.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <string>

namespace moe::cuda {
namespace {

__global__ void SiluMulKernel(const float* gate_up, int64_t tokens, int64_t ffn, float* act) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= tokens * ffn) return;
  const int64_t t = i / ffn, j = i % ffn;
  const float g = gate_up[t * 2 * ffn + j];
  const float u = gate_up[t * 2 * ffn + ffn + j];
  act[i] = g / (1.0f + __expf(-g)) * u;
}

absl::Status CublasError(cublasStatus_t s, const char* what) {
  return absl::InternalError(std::string("cuBLAS ") + what + " failed with status " + std::to_string(s));
}

// Y[tokens, out] = X[tokens, in] * W^T, W BF16 row-major [out, in]; column-major view: Y^T = W * X^T.
cublasStatus_t Linear(cublasHandle_t h, const uint16_t* w, const float* x, float* y, int64_t tokens,
                      int64_t in, int64_t out) {
  // X is F32; cuBLAS GemmEx requires matching A/B types, so weights are BF16 and activations are
  // converted by the caller in a production path. Here both sides use F32 compute with BF16 weights
  // through cublasGemmEx's mixed mode (A: BF16, B: F32 is not allowed), hence SgemmEx on BF16 A.
  const float alpha = 1.0f, beta = 0.0f;
  return cublasSgemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(out), static_cast<int>(tokens),
                       static_cast<int>(in), &alpha, w, CUDA_R_16BF, static_cast<int>(in), x, CUDA_R_32F,
                       static_cast<int>(in), &beta, y, CUDA_R_32F, static_cast<int>(out));
}

}  // namespace

absl::Status ExpertFfnCuda(const ExpertWeightsDevice& w, const float* x, int64_t tokens, float* scratch,
                           float* out, void* stream) {
  if (tokens == 0) return absl::OkStatus();
  static thread_local cublasHandle_t handle = nullptr;
  if (handle == nullptr && cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) {
    return absl::InternalError("cublasCreate failed");
  }
  cublasSetStream(handle, static_cast<cudaStream_t>(stream));
  float* gate_up = scratch;
  float* act = scratch + tokens * 2 * w.ffn;
  if (auto s = Linear(handle, w.gate_up, x, gate_up, tokens, w.hidden, 2 * w.ffn); s != CUBLAS_STATUS_SUCCESS) {
    return CublasError(s, "gate_up");
  }
  const int64_t n = tokens * w.ffn;
  SiluMulKernel<<<static_cast<unsigned>((n + 255) / 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(
      gate_up, tokens, w.ffn, act);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) {
    return absl::InternalError(std::string("SiluMulKernel launch: ") + cudaGetErrorString(e));
  }
  if (auto s = Linear(handle, w.down, act, out, tokens, w.ffn, w.hidden); s != CUBLAS_STATUS_SUCCESS) {
    return CublasError(s, "down");
  }
  return absl::OkStatus();
}

}  // namespace moe::cuda
