// Runs functions of a TVM-exported aarch64 library on tensors read from a file (under qemu-user or on a
// board), with the aarch64 TVM runtime from the PyPI wheels. Used (and built) by dcpnas.compiler.kernels.arm_emu.
// usage: kernel_harness LIB.so TENSORS.bin "fn:i,j,...;fn2:..." OUT_INDEX OUT.bin [ITERS]
// TENSORS.bin: "DCPT", uint32 count, then per tensor: uint8 dtype code (0 int, 1 uint, 2 float),
// uint8 bits, uint16 ndim, int64 shape[ndim], raw little-endian data. OUT.bin: raw data of tensor OUT_INDEX.
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/container/tensor.h>  // TypeTraits<DLTensor*>
#include <dlpack/dlpack.h>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>
namespace ffi = tvm::ffi;

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<char> data;
  DLTensor dl;
};

int main(int argc, char** argv) {
  if (argc < 6) { fprintf(stderr, "usage: %s LIB TENSORS CALLS OUT_INDEX OUT [ITERS]\n", argv[0]); return 2; }
  std::ifstream in(argv[2], std::ios::binary);
  char magic[4]; uint32_t count = 0;
  in.read(magic, 4); in.read((char*)&count, 4);
  if (!in || std::string(magic, 4) != "DCPT") { fprintf(stderr, "bad tensor file %s\n", argv[2]); return 2; }
  std::vector<Tensor> ts(count);
  for (auto& t : ts) {
    uint8_t code, bits; uint16_t ndim;
    in.read((char*)&code, 1); in.read((char*)&bits, 1); in.read((char*)&ndim, 2);
    t.shape.resize(ndim);
    in.read((char*)t.shape.data(), 8 * ndim);
    size_t n = bits / 8;
    for (auto s : t.shape) n *= s;
    t.data.resize(n);
    in.read(t.data.data(), n);
    if (!in) { fprintf(stderr, "truncated tensor file\n"); return 2; }
    t.dl = DLTensor{t.data.data(), DLDevice{kDLCPU, 0}, (int32_t)ndim, DLDataType{code, bits, 1}, t.shape.data(), nullptr, 0};
  }
  ffi::Module mod = ffi::Module::LoadFromFile(argv[1]);
  struct Call { ffi::Function f; std::vector<int> idx; };
  std::vector<Call> calls;
  std::stringstream ss(argv[3]);
  std::string item;
  while (std::getline(ss, item, ';')) {
    auto colon = item.find(':');
    Call c{mod->GetFunction(item.substr(0, colon)).value(), {}};
    std::stringstream is(item.substr(colon + 1));
    std::string num;
    while (std::getline(is, num, ',')) c.idx.push_back(std::atoi(num.c_str()));
    calls.push_back(c);
  }
  auto run = [&]() {
    for (auto& c : calls) {
      std::vector<ffi::AnyView> args;
      for (int i : c.idx) args.emplace_back(&ts[i].dl);
      ffi::Any rv;
      c.f.CallPacked(args.data(), (int32_t)args.size(), &rv);
    }
  };
  run();
  int out = std::atoi(argv[4]);
  std::ofstream o(argv[5], std::ios::binary);
  o.write(ts[out].data.data(), ts[out].data.size());
  int iters = argc > 6 ? std::atoi(argv[6]) : 0;
  if (iters > 0) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) run();
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / iters;
    printf("%.4f ms/iter\n", ms);
  }
  return 0;
}
