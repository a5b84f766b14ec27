// Runs `main` of a TVM Relax VM library (model.so of `dcpnas compile` for aarch64) on N images, with the
// aarch64 TVM runtime of the PyPI wheels; used by dcpnas.compiler.arm_parity under qemu-user (or on a board).
// usage: vm_harness LIB.so IN.f32 N C H W OUT.f32  (runs main on each of N images [1,C,H,W])
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/container/tensor.h>
#include <dlpack/dlpack.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <vector>
namespace ffi = tvm::ffi;
struct CPUAlloc {
  void AllocData(DLTensor* t) { size_t n = 4; for (int i = 0; i < t->ndim; ++i) n *= t->shape[i]; t->data = std::aligned_alloc(64, (n + 63) / 64 * 64); }
  void FreeData(DLTensor* t) { std::free(t->data); }
};
int main(int argc, char** argv) {
  if (argc != 8) { fprintf(stderr, "usage: %s LIB IN N C H W OUT\n", argv[0]); return 2; }
  int64_t n = atoll(argv[3]), c = atoll(argv[4]), h = atoll(argv[5]), w = atoll(argv[6]);
  std::vector<float> in(n * c * h * w);
  std::ifstream fi(argv[2], std::ios::binary);
  fi.read((char*)in.data(), in.size() * 4);
  if (!fi) { fprintf(stderr, "short input file\n"); return 2; }
  ffi::Module lib = ffi::Module::LoadFromFile(argv[1]);
  ffi::Module vm = lib->GetFunction("vm_load_executable").value()().cast<ffi::Module>();
  vm->GetFunction("vm_initialization").value()((int)kDLCPU, 0, 2);
  ffi::Function main_fn = vm->GetFunction("main").value();
  std::ofstream fo(argv[7], std::ios::binary);
  int64_t shape[4] = {1, c, h, w};
  for (int64_t i = 0; i < n; ++i) {
    ffi::Tensor x = ffi::Tensor::FromNDAlloc(CPUAlloc(), ffi::ShapeView(shape, 4), DLDataType{kDLFloat, 32, 1},
                                             DLDevice{kDLCPU, 0});
    std::memcpy(x.data_ptr(), in.data() + i * c * h * w, c * h * w * 4);
    ffi::Tensor y = main_fn(x).cast<ffi::Tensor>();
    fo.write((const char*)y.data_ptr(), y.numel() * 4);
  }
  return 0;
}
