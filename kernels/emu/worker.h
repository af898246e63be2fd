// The emulation runtime's internal state, shared by runtime.cpp (fibers, barriers,
// launches) and memcheck.cpp (the race / init / mem checks): what one launch carries
// and what each OS thread that runs blocks owns. Not seen by kernel code.
#pragma once

#include "emu.h"

#include <array>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

namespace emu {
namespace rt {

constexpr size_t kStack = 64 * 1024;  // per CUDA thread
constexpr size_t kPage = 4096;
constexpr unsigned kMaxThreads = 1024;
constexpr size_t kMaxSmem = 227 * 1024;
constexpr size_t kXchg = kWarpSlot;  // bytes per lane in warp exchanges
// The dynamic shared memory window of a worker: the largest block's bytes plus room
// to align its start to 16 bytes and the 16 poisoned bytes after it.
constexpr size_t kSmemWindow = kMaxSmem + 32;
// The checks that need every memory access seen: they run the instrumented copy of
// the kernels (copy 1, kernels_checked.cpp) and the hooks of memcheck.cpp.
constexpr unsigned kShadowChecks = kCheckRace | kCheckInit | kCheckMem;

struct Kernel {
    Invoker fn;
    size_t param_size;
    const char* params;  // the parameter struct's name
};
// The kernels by name of one copy (emu.h's Registrar: 0 plain, 1 instrumented, 2 FMA).
constexpr int kCopies = 3;
std::map<std::string, Kernel>& registry(int copy);

// One launch's checks and its first failure (blocks run on several OS threads).
struct LaunchState {
    const char* kernel = "";
    unsigned checks = 0;
    unsigned long long seed = 0;
    unsigned smem = 0;  // dynamic shared memory bytes per block
    // The launch's own copy of the parameter block (the kernels read it).
    const unsigned char* params = nullptr;
    size_t params_len = 0;
    // mem check: the emulated device's allocations [begin, end) when the launch began,
    // sorted by address.
    std::vector<std::pair<uintptr_t, uintptr_t>> allocs;
    std::atomic<bool> failed{false};
    std::mutex mu;
    std::string error;
};

// A cp.async issued under the async check: its bytes (read at issue) land at the wait
// that covers its group.
struct Pending {
    unsigned char* dst;
    std::array<unsigned char, 16> data;
    size_t bytes;
    unsigned group;
    uintptr_t pc;  // the issuing instruction, for the race check's report
};

// Where a barrier was reached first in its current generation, for the sync check.
struct Site {
    const char* file = nullptr;
    int line = 0;
    unsigned thread = 0;
};

struct Fiber {
#if defined(__x86_64__)
    void* sp = nullptr;
#else
    ucontext_t ctx;
#endif
    bool done = false;
    unsigned next = 0, prev = 0;  // neighbours in the ring of the block's live fibers
};

struct WarpSync {
    unsigned live = 0, count = 0, gen = 0;
    Site site;
    // Two exchange areas, used by alternate barrier generations: a lane can publish
    // into one only after the barrier between, which every lane reaches after reading
    // it, so no second barrier is needed to protect the readers.
    alignas(16) unsigned char xchg[2][32 * kXchg];
};

// Shadow state of one byte of shared memory for the race and init checks: whether this
// block wrote it, by whom and in which barrier interval, and who read it since.
struct Cell {
    uint32_t stamp;        // the block run this state belongs to (stale: never written)
    uint32_t wgen, wwgen;  // block / writer's-warp barrier generation of the last write
    uint32_t rgen, rwgen;  // the same for the reads since
    uint16_t writer, reader, rwarp;
    uint8_t flags;
    uintptr_t wpc, rpc;  // the accesses' instructions
};

struct Worker {
    unsigned char* stacks = nullptr;  // kMaxThreads * (guard page + kStack)
    std::vector<Fiber> fibers;
    std::vector<ThreadCtx> threads;
    WarpSync warps[kMaxThreads / 32];
    unsigned char* smem = nullptr;  // kSmemWindow bytes; the block's starts at block.dyn_smem
    BlockCtx block;
    unsigned live = 0, count = 0, gen = 0;  // block barrier
    unsigned cur = 0;
    const Kernel* kernel = nullptr;
    const void* params = nullptr;
    unsigned long long progress = 0;  // barrier arrivals and exits
    unsigned long long idle = 0;      // consecutive wake-ups that found their barrier closed
    unsigned nt = 0;                  // block size
    LaunchState* launch = nullptr;
    Site site;                                  // of the open block barrier
    std::vector<std::vector<Pending>> pending;  // per thread (async check)
    std::vector<unsigned> committed;            // per thread: cp.async groups committed
    // race / init / mem: on for the running block; static __shared__ lives in this
    // thread's TLS block [tls, tls + tls_len); shadow cells cover the dynamic window
    // then the TLS block; `stamp` numbers the block runs.
    bool shadow_on = false;
    uintptr_t tls = 0;
    size_t tls_len = 0;
    Cell* cells = nullptr;
    uint32_t stamp = 0;
#if defined(__x86_64__)
    void* sched_sp = nullptr;
#else
    ucontext_t sched;
#endif
    Worker();
    ~Worker();
    unsigned char* stack_top(unsigned i) { return stacks + i * (kPage + kStack) + kPage + kStack; }
};

// The Worker of the calling OS thread (null before its first block).
extern thread_local Worker* t_worker;

// memcheck.cpp: finds this thread's TLS block; prepares a block run's shadow state.
void shadow_init(Worker& w);
void shadow_begin_block(Worker& w);
void shadow_free(Worker& w);
// The runtime's own accesses on behalf of the running thread (cp.async), checked as
// the instrumented kernels' are; `pc`: the kernel instruction they belong to.
void shadow_access(const void* addr, size_t bytes, bool write, uintptr_t pc);
// The allocations a launch may touch (mem check).
void snapshot_allocs(LaunchState& l);

}  // namespace rt
}  // namespace emu
