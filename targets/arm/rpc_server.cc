// Minimal TVM RPC server (direct connection, no tracker) on the plain TVM runtime, for an aarch64
// board without Python or for qemu-user on an x86 host (timings under qemu are EMULATED).
// It speaks the handshake of python -m tvm.exec.rpc_server and serves each client with the
// runtime's own rpc.ServerLoop; uploads go to WORKDIR (tvm.rpc.server.workpath).
// build: aarch64-linux-gnu-g++ -O2 -std=c++17 rpc_server.cc -I$RT/tvm_ffi/include -L$RT/tvm_ffi/lib
//        -L$RT/tvm/lib -Wl,--no-as-needed -ltvm_runtime -ltvm_ffi -o dcpnas_rpc_server
// usage: dcpnas_rpc_server PORT WORKDIR [KEY]
#include <tvm/ffi/extra/module.h>
#include <tvm/ffi/function.h>
#include <tvm/ffi/string.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
namespace ffi = tvm::ffi;
static const int kRPCMagic = 0xff271;

static bool recv_all(int fd, void* buf, size_t n) {
  char* p = static_cast<char*>(buf);
  while (n) { ssize_t r = recv(fd, p, n, 0); if (r <= 0) return false; p += r; n -= r; }
  return true;
}
static bool send_all(int fd, const void* buf, size_t n) {
  const char* p = static_cast<const char*>(buf);
  while (n) { ssize_t r = send(fd, p, n, 0); if (r <= 0) return false; p += r; n -= r; }
  return true;
}

int main(int argc, char** argv) {
  if (argc < 3) { fprintf(stderr, "usage: %s PORT WORKDIR [KEY]\n", argv[0]); return 2; }
  int port = atoi(argv[1]);
  std::string workdir = argv[2], key = std::string("server:") + (argc > 3 ? argv[3] : "dcpnas");
  ffi::Function::SetGlobal("tvm.rpc.server.workpath", ffi::Function::FromTyped(
      [workdir](ffi::String name) -> ffi::String { return ffi::String(workdir + "/" + std::string(name)); }), true);
  if (!ffi::Function::GetGlobal("tvm.rpc.server.load_module")) {  // Python's server registers it in Python
    ffi::Function::SetGlobal("tvm.rpc.server.load_module", ffi::Function::FromTyped(
        [workdir](ffi::String name) -> ffi::Module {
          return ffi::Module::LoadFromFile(ffi::String(workdir + "/" + std::string(name)));
        }));
  }
  ffi::Function loop = ffi::Function::GetGlobal("rpc.ServerLoop").value();
  int ls = socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(port);
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(ls, (sockaddr*)&addr, sizeof(addr)) != 0 || listen(ls, 4) != 0) { perror("bind/listen"); return 1; }
  printf("dcpnas aarch64 rpc server on 127.0.0.1:%d\n", port);
  fflush(stdout);
  for (;;) {
    int fd = accept(ls, nullptr, nullptr);
    if (fd < 0) continue;
    int magic = 0, keylen = 0;
    if (!recv_all(fd, &magic, 4) || magic != kRPCMagic || !recv_all(fd, &keylen, 4) || keylen < 0 || keylen > 4096) {
      close(fd); continue;
    }
    std::string ckey(keylen, '\0');
    if (keylen && !recv_all(fd, &ckey[0], keylen)) { close(fd); continue; }
    int code = kRPCMagic, slen = static_cast<int>(key.size());
    if (!send_all(fd, &code, 4) || !send_all(fd, &slen, 4) || !send_all(fd, key.data(), slen)) { close(fd); continue; }
    loop(fd);  // serves this client until it disconnects
    close(fd);
  }
}
