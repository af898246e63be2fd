// The race, init and mem checks: the hooks that the instrumented copy of the kernels
// (kernels_checked.cpp, -fsanitize=thread without its runtime) calls before every load
// and store, and the shadow state they keep. See kernels/README.md.
//
// Each access is classified by address: the fiber stacks (the kernel's locals) and
// the runtime's own state pass; the worker's dynamic shared memory window and this OS
// thread's TLS block (where `__shared__`, a static thread_local on the host, lives)
// are shared memory, shadowed byte by byte; anything else is global memory and must
// lie inside one of the emulated device's allocations.
#include <dlfcn.h>
#include <link.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>

#include "worker.h"

namespace emu {
namespace rt {
namespace {

std::mutex g_alloc_mu;
std::map<uintptr_t, size_t> g_allocs;  // the emulated device's live allocations

constexpr uint8_t kWritten = 1, kRead = 2, kReadersOneWarp = 4, kReadersManyWarps = 8;

// ---------------------------------------------------------------- access sites

// The module holding `pc` and the address to give addr2line for it.
struct Module {
    uintptr_t pc;
    std::string path;
    uintptr_t rel = 0;
    bool found = false;
};

int find_module(dl_phdr_info* info, size_t, void* data) {
    auto* m = static_cast<Module*>(data);
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        uintptr_t lo = info->dlpi_addr + ph.p_vaddr;
        if (ph.p_type == PT_LOAD && m->pc >= lo && m->pc < lo + ph.p_memsz) {
            if (info->dlpi_name && *info->dlpi_name) {
                m->path = info->dlpi_name;
            } else {  // the executable: resolved here, as /proc/self means addr2line there
                char exe[4096];
                ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
                m->path = k > 0 ? std::string(exe, (size_t)k) : "/proc/self/exe";
            }
            m->rel = m->pc - info->dlpi_addr;
            m->found = true;
            return 1;
        }
    }
    return 0;
}

// `kernels/...:LINE` of a source path as the compiler recorded it.
std::string short_path(std::string p) {
    for (size_t k; (k = p.find("/emu/../")) != std::string::npos;) p.erase(k, 7);
    size_t k = p.rfind("kernels/");
    return k == std::string::npos ? p : p.substr(k);
}

// The source lines of a kernel instruction, innermost first ("kernels/mma.cuh:140 <-
// kernels/conv.cu:250"), from the line tables of the instrumented copy through
// addr2line; the module offset when that is not available. Failure paths only.
std::string site(uintptr_t pc) {
    static std::mutex mu;
    static std::map<uintptr_t, std::string> cache;
    std::lock_guard<std::mutex> g(mu);
    auto it = cache.find(pc);
    if (it != cache.end()) return it->second;
    Module m{pc - 1};  // inside the call instruction, not after it
    dl_iterate_phdr(find_module, &m);
    char where[64];
    std::snprintf(where, sizeof where, "pc %#lx", (unsigned long)(m.found ? m.rel : pc));
    std::string out = where;
    if (m.found) {
        char cmd[1200];
        std::snprintf(cmd, sizeof cmd, "addr2line -i -e '%s' %#lx 2>/dev/null", m.path.c_str(), (unsigned long)m.rel);
        std::vector<std::string> frames;  // innermost first
        if (FILE* f = popen(cmd, "r")) {
            char buf[512];
            while (std::fgets(buf, sizeof buf, f)) {
                std::string l(buf);
                while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
                size_t d = l.find(" (discriminator");
                if (d != std::string::npos) l.erase(d);
                if (!l.empty() && l[0] != '?') frames.push_back(short_path(l));
            }
            pclose(f);
        }
        // The line itself and, when that is in a header (a wrapper of mma.cuh, the
        // emulated dialect), the kernel line it was inlined into.
        auto in_header = [](const std::string& l) { return l.find(".cuh:") != std::string::npos || l.find(".h:") != std::string::npos; };
        if (!frames.empty()) {
            out = frames[0];
            if (in_header(frames[0]))
                for (auto& f : frames)
                    if (!in_header(f)) {
                        out += " (inlined into " + f + ")";
                        break;
                    }
        }
    }
    cache[pc] = out;
    return out;
}

// ---------------------------------------------------------------- classification

std::string thread_name(const Worker& w, unsigned linear) {
    const dim3& b = w.block.bdim;
    char s[48];
    std::snprintf(s, sizeof s, "(%u,%u,%u)", linear % b.x, (linear / b.x) % b.y, linear / (b.x * b.y));
    return s;
}

// The running thread and where it stands, fixed for one access (all its bytes).
struct Who {
    unsigned me, warp;
    uint32_t gen, wgen;  // block / own-warp barrier generations now
    unsigned checks;
};

// Accesses of threads `a` (the earlier one, at block / warp generations `gen`, `wgen`)
// and the running thread are ordered: one thread, a block barrier between them, or a
// warp barrier between two lanes of one warp.
inline bool ordered(const Who& n, unsigned a, uint32_t gen, uint32_t wgen) {
    return a == n.me || gen != n.gen || (a / 32 == n.warp && wgen != n.wgen);
}

// "byte 12 of dynamic shared memory" / "static __shared__ memory at 0x...".
std::string where(const char* region, size_t off, uintptr_t addr) {
    char s[96];
    if (region)
        std::snprintf(s, sizeof s, "byte %zu of %s", off, region);
    else
        std::snprintf(s, sizeof s, "static __shared__ memory at %#lx", (unsigned long)addr);
    return s;
}

[[noreturn]] void race(const Worker& w, const char* what, const std::string& at, unsigned other, uintptr_t other_pc,
                       uintptr_t pc) {
    std::string here = site(pc), there = site(other_pc);
    check_failed("race", here.c_str(), 0,
                 "%s %s while thread %s accessed it at %s in the same barrier interval (no __syncthreads / "
                 "__syncwarp between them)",
                 what, at.c_str(), thread_name(w, other).c_str(), there.c_str());
}

// One byte of shared memory (cell `c`; byte `off` of `region`, or static shared memory
// at `addr` when `region` is null) accessed by the running thread `n`.
inline void shadow_byte(Worker& w, const Who& n, Cell& c, bool write, uintptr_t pc, const char* region, size_t off,
                        uintptr_t addr) {
    if (c.stamp != w.stamp) {
        c.stamp = w.stamp;
        c.flags = 0;
    }
    bool fresh_reads = (c.flags & kRead) && c.rgen == n.gen;
    if (!write) {
        if (!(c.flags & kWritten)) {
            if (n.checks & kCheckInit) {
                std::string here = site(pc);
                check_failed("init", here.c_str(), 0,
                             "reads %s, which no thread of this block has written (stale or poisoned data)",
                             where(region, off, addr).c_str());
            }
        } else if ((n.checks & kCheckRace) && !ordered(n, c.writer, c.wgen, c.wwgen)) {
            race(w, "reads", where(region, off, addr), c.writer, c.wpc, pc);
        }
        if (!fresh_reads) {
            c.flags = (uint8_t)((c.flags & kWritten) | kRead);
            c.reader = (uint16_t)n.me;
            c.rwarp = (uint16_t)n.warp;
            c.rgen = n.gen;
            c.rwgen = n.wgen;
            c.rpc = pc;
        } else if (c.reader != n.me && !(c.flags & kReadersManyWarps)) {  // many warps: nothing more to learn
            c.flags |= c.rwarp == n.warp ? kReadersOneWarp : kReadersManyWarps;
            c.reader = (uint16_t)n.me;
            c.rwarp = (uint16_t)n.warp;
            c.rwgen = n.wgen;  // the latest: a warp barrier after it orders them all only if after every read
            c.rpc = pc;
        }
        return;
    }
    if (n.checks & kCheckRace) {
        if ((c.flags & kWritten) && !ordered(n, c.writer, c.wgen, c.wwgen))
            race(w, "writes", where(region, off, addr), c.writer, c.wpc, pc);
        if (fresh_reads) {
            bool ok;
            if (c.flags & kReadersManyWarps)
                ok = false;
            else if (c.flags & kReadersOneWarp)
                ok = c.rwarp == n.warp && c.rwgen != n.wgen;
            else
                ok = ordered(n, c.reader, c.rgen, c.rwgen);
            if (!ok) race(w, "writes", where(region, off, addr), c.reader, c.rpc, pc);
        }
    }
    c.flags = kWritten;
    c.writer = (uint16_t)n.me;
    c.wgen = n.gen;
    c.wwgen = n.wgen;
    c.wpc = pc;
}

void global_access(Worker& w, uintptr_t p, size_t n, bool write, uintptr_t pc) {
    const auto& a = w.launch->allocs;
    // The last allocation whose start is <= p.
    auto it = std::upper_bound(a.begin(), a.end(), std::make_pair(p, UINTPTR_MAX));
    if (it != a.begin() && p + n <= std::prev(it)->second) return;
    char near[160] = "";
    if (it != a.begin() && p >= std::prev(it)->first) {
        auto& r = *std::prev(it);
        std::snprintf(near, sizeof near, ": %zu bytes past the end of the %zu-byte allocation at %#lx",
                      (size_t)(p + n - r.second), (size_t)(r.second - r.first), (unsigned long)r.first);
    } else if (it != a.end()) {
        std::snprintf(near, sizeof near, ": %zu bytes before the allocation at %#lx", (size_t)(it->first - p),
                      (unsigned long)it->first);
    }
    std::string here = site(pc);
    check_failed("mem", here.c_str(), 0, "%s of %zu bytes at %#lx lies outside every device allocation%s",
                 write ? "write" : "read", n, (unsigned long)p, near);
}

}  // namespace

void shadow_access(const void* addr, size_t n, bool write, uintptr_t pc) {
    Worker* w = t_worker;
    if (!w || !w->shadow_on || n == 0) return;
    uintptr_t p = reinterpret_cast<uintptr_t>(addr);
    const LaunchState& l = *w->launch;
    size_t cell, off;
    const char* region;
    uintptr_t dyn = reinterpret_cast<uintptr_t>(w->smem);
    if (p - dyn < kSmemWindow) {
        off = p - dyn;
        if (off + n > l.smem) {
            if (l.checks & kCheckMem) {
                std::string here = site(pc);
                check_failed("mem", here.c_str(), 0,
                             "%s of %zu bytes at byte %zu of dynamic shared memory: the launch gave the block %u bytes",
                             write ? "write" : "read", n, off, l.smem);
            }
            return;
        }
        cell = off;
        region = "dynamic shared memory";
    } else if (p - w->tls < w->tls_len) {
        if (p == reinterpret_cast<uintptr_t>(&g_thread) || p == reinterpret_cast<uintptr_t>(&g_block)) return;
        off = p - w->tls;
        cell = kSmemWindow + off;
        region = nullptr;
        if (off + n > w->tls_len) return;
    } else {
        // The kernel's locals and the runtime's state the kernel code reads (threadIdx,
        // blockDim, the parameter block, the warp exchange area) pass; the rest is global.
        if (p - reinterpret_cast<uintptr_t>(w->stacks) < kMaxThreads * (kPage + kStack)) return;
        if (p - reinterpret_cast<uintptr_t>(w) < sizeof(Worker)) return;
        if (p - reinterpret_cast<uintptr_t>(w->threads.data()) < w->threads.size() * sizeof(ThreadCtx)) return;
        if (p - reinterpret_cast<uintptr_t>(l.params) < l.params_len) return;
        if (l.checks & kCheckMem) global_access(*w, p, n, write, pc);
        return;
    }
    if (!(l.checks & (kCheckRace | kCheckInit))) return;
    unsigned me = g_thread->linear;
    Who who{me, me / 32, w->gen, w->warps[me / 32].gen, l.checks};
    Cell* c = w->cells + cell;
    for (size_t i = 0; i < n; i++) shadow_byte(*w, who, c[i], write, pc, region, off + i, p + i);
}

namespace {
int find_tls(dl_phdr_info* info, size_t, void* data) {
    auto* w = static_cast<Worker*>(data);
    uintptr_t probe = reinterpret_cast<uintptr_t>(&g_thread);
    for (int i = 0; i < info->dlpi_phnum; i++) {
        const ElfW(Phdr)& ph = info->dlpi_phdr[i];
        uintptr_t lo = reinterpret_cast<uintptr_t>(info->dlpi_tls_data);
        if (ph.p_type == PT_TLS && lo && probe - lo < ph.p_memsz) {
            w->tls = lo;
            w->tls_len = ph.p_memsz;
            return 1;
        }
    }
    return 0;
}
}  // namespace

void shadow_init(Worker& w) {
    // The TLS block of the module holding the runtime: the kernels' `__shared__` arrays
    // are thread_locals of that same module (static linking puts them together).
    dl_iterate_phdr(find_tls, &w);
}

void shadow_begin_block(Worker& w) {
    if (!w.cells) {
        size_t bytes = (kSmemWindow + w.tls_len) * sizeof(Cell);
        void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (p == MAP_FAILED) trap("cannot map the shadow memory of the race / init checks");
        w.cells = static_cast<Cell*>(p);
    }
    // A new stamp makes every cell stale (unwritten) at once; at the wrap, clear them.
    if (++w.stamp == 0) {
        std::memset(w.cells, 0, (kSmemWindow + w.tls_len) * sizeof(Cell));
        w.stamp = 1;
    }
}

void shadow_free(Worker& w) {
    if (w.cells) munmap(w.cells, (kSmemWindow + w.tls_len) * sizeof(Cell));
}

void snapshot_allocs(LaunchState& l) {
    std::lock_guard<std::mutex> g(g_alloc_mu);
    l.allocs.clear();
    for (auto& [p, n] : g_allocs) l.allocs.emplace_back(p, p + n);
}

}  // namespace rt
}  // namespace emu

// ---------------------------------------------------------------- C entry points
extern "C" {

// The emulated device's allocations (src/backend/gpu/emu.rs), for the mem check.
void ds_emu_note_alloc(const void* p, size_t bytes) {
    std::lock_guard<std::mutex> g(emu::rt::g_alloc_mu);
    emu::rt::g_allocs[reinterpret_cast<uintptr_t>(p)] = bytes;
}
void ds_emu_note_free(const void* p) {
    std::lock_guard<std::mutex> g(emu::rt::g_alloc_mu);
    emu::rt::g_allocs.erase(reinterpret_cast<uintptr_t>(p));
}

// The hooks GCC's -fsanitize=thread emits (the instrumented copy only; each is called
// before the access). Atomics would call __tsan_atomic*, which are not defined: the
// kernels use none yet, and a new one fails the link by name.
#define DS_PC reinterpret_cast<uintptr_t>(__builtin_return_address(0))
#define DS_HOOKS(n)                                                                                  \
    void __tsan_read##n(void* a) { emu::rt::shadow_access(a, n, false, DS_PC); }                   \
    void __tsan_write##n(void* a) { emu::rt::shadow_access(a, n, true, DS_PC); }                   \
    void __tsan_unaligned_read##n(void* a) { emu::rt::shadow_access(a, n, false, DS_PC); }         \
    void __tsan_unaligned_write##n(void* a) { emu::rt::shadow_access(a, n, true, DS_PC); }
DS_HOOKS(1)
DS_HOOKS(2)
DS_HOOKS(4)
DS_HOOKS(8)
DS_HOOKS(16)
#undef DS_HOOKS
void __tsan_read_range(void* a, size_t n) { emu::rt::shadow_access(a, n, false, DS_PC); }
void __tsan_write_range(void* a, size_t n) { emu::rt::shadow_access(a, n, true, DS_PC); }
#undef DS_PC
void __tsan_init() {}
void __tsan_func_entry(void*) {}
void __tsan_func_exit() {}

}  // extern "C"
