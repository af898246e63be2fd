// The emulation runtime: fibers, barriers, the block scheduler, the worker pool and
// the C entry points that src/backend/gpu/emu.rs calls. See emu.h.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdarg>
#include <condition_variable>
#include <functional>
#include <iterator>
#include <thread>

#include "worker.h"

namespace emu {

thread_local ThreadCtx* g_thread = nullptr;
thread_local BlockCtx* g_block = nullptr;

namespace rt {

std::map<std::string, Kernel>& registry(int copy) {
    static std::map<std::string, Kernel> copies[kCopies];
    return copies[copy];
}

Worker::Worker() : fibers(kMaxThreads), threads(kMaxThreads), pending(kMaxThreads), committed(kMaxThreads) {
    size_t total = kMaxThreads * (kPage + kStack);
    void* p = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) trap("cannot map fiber stacks");
    stacks = static_cast<unsigned char*>(p);
    // A guard page below each stack turns an overflow into a fault, not corruption.
    for (unsigned i = 0; i < kMaxThreads; i++) mprotect(stacks + i * (kPage + kStack), kPage, PROT_NONE);
    // A fixed window, so that the mem check knows where the block's bytes may lie.
    p = mmap(nullptr, kSmemWindow, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED) trap("cannot map shared memory");
    smem = static_cast<unsigned char*>(p);
    shadow_init(*this);
}

Worker::~Worker() {
    shadow_free(*this);
    munmap(smem, kSmemWindow);
    munmap(stacks, kMaxThreads * (kPage + kStack));
}

thread_local Worker* t_worker = nullptr;

}  // namespace rt

using namespace rt;

namespace {

// Owns the thread's Worker, so that its stacks (68 MiB of address space and ~2000
// mappings: a guard page per stack) go when the thread does. A test harness runs each
// test on a thread of its own, and every launching thread works too: leaked Workers
// used to exhaust the process's mapping limit (vm.max_map_count) after ~30 tests.
thread_local std::unique_ptr<Worker> t_worker_owner;
Worker& worker() {
    if (!t_worker) {
        t_worker_owner.reset(new Worker());
        t_worker = t_worker_owner.get();
    }
    return *t_worker;
}

// ---------------------------------------------------------------- context switch
#if defined(__x86_64__)
// Saves the callee-saved registers on the current stack, stores the stack pointer in
// *save, switches to `load` and restores from there.
extern "C" void ds_emu_switch(void** save, void* load);
asm(R"(
.text
.p2align 4
.type ds_emu_switch,@function
ds_emu_switch:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
.size ds_emu_switch,.-ds_emu_switch
)");
#endif

// Fibers pass control round robin among themselves (one stack switch per hand-over);
// the scheduler gets it back only when the block's last fiber returns.
void switch_fiber(unsigned from, unsigned to) {
    Worker& w = *t_worker;
    w.cur = to;
    g_thread = &w.threads[to];
#if defined(__x86_64__)
    ds_emu_switch(&w.fibers[from].sp, w.fibers[to].sp);
#else
    swapcontext(&w.fibers[from].ctx, &w.fibers[to].ctx);
#endif
}

[[noreturn]] void deadlock() {
    check_failed("sync", "", 0,
                 "deadlock: threads wait at barriers that can never complete (divergent __syncthreads "
                 "or warp primitives)");
}

// Lands every copy of thread `t` in a group older than the `keep` most recent.
void land(Worker& w, unsigned t, unsigned keep) {
    auto& p = w.pending[t];
    unsigned done = w.committed[t] > keep ? w.committed[t] - keep : 0;
    size_t k = 0;
    for (auto& c : p) {
        if (c.group < done) {
            shadow_access(c.dst, c.bytes, true, c.pc);
            std::memcpy(c.dst, c.data.data(), c.bytes);
        }
        else
            p[k++] = c;
    }
    p.resize(k);
}

// Called by a fiber whose barrier is still closed: lets the next live fiber run.
void wait_turn() {
    Worker& w = *t_worker;
    // Every live fiber woke up once more without any barrier opening: nothing can change.
    if (++w.idle > 2ull * w.nt + 2) deadlock();
    unsigned me = w.cur;
    if (w.fibers[me].next == me) deadlock();  // the only live fiber waits for others
    switch_fiber(me, w.fibers[me].next);
}

void note_progress() {
    Worker& w = *t_worker;
    w.progress++;
    w.idle = 0;
}

void release_block_barrier_if_complete(Worker& w) {
    if (w.count > 0 && w.count == w.live) {
        w.count = 0;
        w.gen++;
    }
}
void release_warp_barrier_if_complete(WarpSync& s) {
    if (s.count > 0 && s.count == s.live) {
        s.count = 0;
        s.gen++;
    }
}

extern "C" void ds_emu_fiber_entry() {
    Worker& w = *t_worker;
    w.kernel->fn(w.params);
    // The thread has returned: it no longer takes part in barriers. Its copies still
    // in flight land (the hardware finishes them too).
    unsigned me = w.cur;
    w.committed[me] += 1;
    land(w, me, 0);
    w.fibers[me].done = true;
    w.live--;
    release_block_barrier_if_complete(w);
    WarpSync& ws = w.warps[w.threads[me].warp];
    ws.live--;
    release_warp_barrier_if_complete(ws);
    note_progress();
    unsigned next = w.fibers[me].next, prev = w.fibers[me].prev;
    if (w.live == 0) {
#if defined(__x86_64__)
        ds_emu_switch(&w.fibers[me].sp, w.sched_sp);
#else
        swapcontext(&w.fibers[me].ctx, &w.sched);
#endif
    } else {
        w.fibers[prev].next = next;
        w.fibers[next].prev = prev;
        switch_fiber(me, next);
    }
    trap("a finished fiber was resumed");
}

#if !defined(__x86_64__)
void fiber_entry_ucontext() { ds_emu_fiber_entry(); }
#endif

void init_fiber(Worker& w, unsigned i) {
    Fiber& f = w.fibers[i];
    f.done = false;
#if defined(__x86_64__)
    // At the trampoline's entry (reached by `ret`) rsp must be 8 mod 16, as after a call.
    uintptr_t top = reinterpret_cast<uintptr_t>(w.stack_top(i));
    top = (top & ~uintptr_t(15)) - 8;
    void** sp = reinterpret_cast<void**>(top);
    *--sp = reinterpret_cast<void*>(&ds_emu_fiber_entry);
    for (int r = 0; r < 6; r++) *--sp = nullptr;  // rbp rbx r12 r13 r14 r15
    f.sp = sp;
#else
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = w.stack_top(i) - kStack;
    f.ctx.uc_stack.ss_size = kStack;
    f.ctx.uc_link = nullptr;
    makecontext(&f.ctx, fiber_entry_ucontext, 0);
#endif
}

uint64_t splitmix(uint64_t z) {
    z += 0x9e3779b97f4a7c15ull;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void run_block(Worker& w, const Kernel& k, const void* params, dim3 bid, dim3 bdim, dim3 gdim, size_t smem,
               LaunchState& launch) {
    if (launch.failed.load()) return;  // a block already failed a check: the launch fails
    unsigned nt = bdim.x * bdim.y * bdim.z;
    w.launch = &launch;
    w.site = Site{};
    w.kernel = &k;
    w.params = params;
    w.block.bid = bid;
    w.block.bdim = bdim;
    w.block.gdim = gdim;
    // Poison dynamic shared memory (NaN bit patterns), as outputs are poisoned.
    std::memset(w.smem, 0xff, smem + 16);
    w.block.dyn_smem = w.smem;  // page-aligned
    w.shadow_on = (launch.checks & kShadowChecks) != 0;
    if (w.shadow_on) shadow_begin_block(w);
    w.live = nt;
    w.count = 0;
    w.gen = 0;
    for (unsigned i = 0; i < (nt + 31) / 32; i++) {
        w.warps[i].live = (i + 1) * 32 <= nt ? 32 : nt - i * 32;
        w.warps[i].count = 0;
        w.warps[i].gen = 0;
        w.warps[i].site = Site{};
    }
    for (unsigned i = 0; i < nt; i++) {
        ThreadCtx& t = w.threads[i];
        t.linear = i;
        t.tid.x = i % bdim.x;
        t.tid.y = (i / bdim.x) % bdim.y;
        t.tid.z = i / (bdim.x * bdim.y);
        t.lane = i % 32;
        t.warp = i / 32;
        init_fiber(w, i);
        w.pending[i].clear();
        w.committed[i] = 0;
    }
    // The order the fibers run in: 0, 1, 2, ... or, with the sched check, a permutation
    // seeded by the launch's seed and the block (a missing barrier then shows).
    std::vector<unsigned> order(nt);
    for (unsigned i = 0; i < nt; i++) order[i] = i;
    if (launch.checks & kCheckSched) {
        uint64_t s = splitmix(launch.seed ^ splitmix(((uint64_t)bid.z << 42) ^ ((uint64_t)bid.y << 21) ^ bid.x));
        for (unsigned i = nt - 1; i > 0; i--) {
            s = splitmix(s);
            std::swap(order[i], order[s % (i + 1)]);
        }
    }
    for (unsigned i = 0; i < nt; i++) {
        w.fibers[order[i]].next = order[(i + 1) % nt];
        w.fibers[order[i]].prev = order[(i + nt - 1) % nt];
    }
    w.nt = nt;
    w.idle = 0;
    g_block = &w.block;
    // Control comes back here when the last fiber returns (or a check ends the block).
    unsigned first = order[0];
    w.cur = first;
    g_thread = &w.threads[first];
#if defined(__x86_64__)
    ds_emu_switch(&w.sched_sp, w.fibers[first].sp);
#else
    swapcontext(&w.sched, &w.fibers[first].ctx);
#endif
    g_thread = nullptr;
    g_block = nullptr;
    w.launch = nullptr;
    w.shadow_on = false;
}

// ---------------------------------------------------------------- worker pool
class Pool {
public:
    static Pool& get() {
        // Never destroyed: detached workers wait on its condition variables at exit.
        static Pool* p = new Pool();
        return *p;
    }
    // Runs job(block_index) for every index in [0, n), spread over the pool; returns
    // when all are done.
    template <class F>
    void run(unsigned long long n, F&& job) {
        std::lock_guard<std::mutex> launch_lock(launch_mu_);
        std::function<void(unsigned long long)> f = job;
        {
            std::lock_guard<std::mutex> g(mu_);
            job_ = &f;
            n_ = n;
            next_.store(0);
            active_ = (unsigned)workers_.size();
            epoch_++;
        }
        cv_.notify_all();
        work(f, n);  // the caller works too
        std::unique_lock<std::mutex> g(mu_);
        done_cv_.wait(g, [&] { return active_ == 0; });
        job_ = nullptr;
    }

private:
    Pool() {
        unsigned n = std::thread::hardware_concurrency();
        if (const char* e = std::getenv("DS_EMU_THREADS")) n = (unsigned)std::atoi(e);
        if (n < 1) n = 1;
        for (unsigned i = 1; i < n; i++) workers_.emplace_back([this] { loop(); });
        for (auto& t : workers_) t.detach();
    }
    void work(const std::function<void(unsigned long long)>& f, unsigned long long n) {
        for (;;) {
            unsigned long long i = next_.fetch_add(1);
            if (i >= n) break;
            f(i);
        }
    }
    void loop() {
        unsigned long long seen = 0;
        for (;;) {
            const std::function<void(unsigned long long)>* f;
            unsigned long long n;
            {
                std::unique_lock<std::mutex> g(mu_);
                cv_.wait(g, [&] { return epoch_ != seen; });
                seen = epoch_;
                f = job_;
                n = n_;
            }
            work(*f, n);
            std::lock_guard<std::mutex> g(mu_);
            if (--active_ == 0) done_cv_.notify_all();
        }
    }
    std::vector<std::thread> workers_;
    std::mutex launch_mu_, mu_;
    std::condition_variable cv_, done_cv_;
    const std::function<void(unsigned long long)>* job_ = nullptr;
    unsigned long long n_ = 0, epoch_ = 0;
    unsigned active_ = 0;
    std::atomic<unsigned long long> next_{0};
};

}  // namespace

Registrar::Registrar(const char* name, Invoker f, size_t param_size, const char* params, int copy) {
    registry(copy)[name] = Kernel{f, param_size, params};
}

// The sync check: every thread of one barrier generation arrives from one call site.
void check_site(Site& open, unsigned count, const char* what, const char* file, int line) {
    Worker& w = *t_worker;
    if (!(w.launch && (w.launch->checks & kCheckSync))) return;
    if (count == 0) {
        open = Site{file, line, g_thread->linear};
    } else if (open.line != line || std::strcmp(open.file, file) != 0) {
        check_failed("sync", file, line, "%s reached here while thread %u waits at %s:%d (a divergent barrier)", what,
                     open.thread, open.file, open.line);
    }
}

unsigned checks() {
    Worker* w = t_worker;
    return w && w->launch ? w->launch->checks : 0;
}

void check_failed(const char* check, const char* file, int line, const char* fmt, ...) {
    Worker& w = *t_worker;
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    std::vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    const ThreadCtx& t = *g_thread;
    char msg[1024];
    std::snprintf(msg, sizeof msg, "emu check `%s`: kernel %s, block (%u,%u,%u), thread (%u,%u,%u): %s%s%s%s", check,
                  w.launch ? w.launch->kernel : "?", w.block.bid.x, w.block.bid.y, w.block.bid.z, t.tid.x, t.tid.y,
                  t.tid.z, what, *file ? " at " : "", file, line > 0 ? (":" + std::to_string(line)).c_str() : "");
    if (!w.launch) trap(msg);
    {
        std::lock_guard<std::mutex> g(w.launch->mu);
        if (!w.launch->failed.load()) w.launch->error = msg;
        w.launch->failed.store(true);
    }
    // End the block: back to the scheduler; its fibers are never resumed.
    unsigned me = w.cur;
#if defined(__x86_64__)
    ds_emu_switch(&w.fibers[me].sp, w.sched_sp);
#else
    swapcontext(&w.fibers[me].ctx, &w.sched);
#endif
    trap("a failed block was resumed");
}

void syncthreads(const char* file, int line) {
    Worker& w = *t_worker;
    check_site(w.site, w.count, "__syncthreads", file, line);
    unsigned g = w.gen;
    note_progress();
    if (++w.count == w.live) {
        w.count = 0;
        w.gen++;
        return;
    }
    while (w.gen == g) wait_turn();
}

namespace {
// The warp barrier; true for the lane that completes it (it runs on at once, before
// any other lane of the warp resumes).
bool warp_barrier(const char* file, int line) {
    Worker& w = *t_worker;
    WarpSync& s = w.warps[g_thread->warp];
    check_site(s.site, s.count, "a warp collective", file, line);
    unsigned g = s.gen;
    note_progress();
    if (++s.count == s.live) {
        s.count = 0;
        s.gen++;
        return true;
    }
    while (s.gen == g) wait_turn();
    return false;
}
}  // namespace

void syncwarp(const char* file, int line) { warp_barrier(file, line); }

unsigned char* warp_publish_first(const void* mine, size_t bytes, bool* first, const char* file, int line) {
    if (bytes > kXchg) trap("warp_publish: more than 128 bytes per lane");
    WarpSync& s = t_worker->warps[g_thread->warp];
    // The area of this barrier's generation (every lane arrives while gen is the same).
    unsigned char* area = s.xchg[s.gen & 1];
    std::memcpy(area + g_thread->lane * kXchg, mine, bytes);
    *first = warp_barrier(file, line);
    return area;
}

const unsigned char* warp_publish(const void* mine, size_t bytes, const char* file, int line) {
    bool first;
    return warp_publish_first(mine, bytes, &first, file, line);
}

void async_copy(void* dst, const void* src, size_t bytes, bool valid, const char* file, int line) {
    unsigned c = checks();
    auto d = reinterpret_cast<uintptr_t>(dst), s = reinterpret_cast<uintptr_t>(src);
    if ((c & kCheckAlign) && ((d % bytes) != 0 || (valid && (s % bytes) != 0)))
        check_failed("align", file, line, "cp.async of %zu bytes from %p to %p: both must be %zu-byte aligned", bytes,
                     src, dst, bytes);
    // The kernel instruction this copy belongs to (the wrapper is inlined there).
    uintptr_t pc = reinterpret_cast<uintptr_t>(__builtin_return_address(0));
    if (valid) shadow_access(src, bytes, false, pc);
    // Written from issue on (the async check lands it again at its wait).
    shadow_access(dst, bytes, true, pc);
    if (!(c & kCheckAsync)) {
        if (valid)
            std::memcpy(dst, src, bytes);
        else
            std::memset(dst, 0, bytes);
        return;
    }
    // Read now, land at the wait: until then the destination holds NaN bit patterns.
    Worker& w = *t_worker;
    unsigned t = g_thread->linear;
    Pending p{static_cast<unsigned char*>(dst), {}, bytes, w.committed[t], pc};
    if (valid)
        std::memcpy(p.data.data(), src, bytes);
    else
        p.data.fill(0);
    std::memset(dst, 0xff, bytes);
    w.pending[t].push_back(p);
}

void async_commit() {
    if (checks() & kCheckAsync) t_worker->committed[g_thread->linear]++;
}

void async_wait(int pending) {
    if (checks() & kCheckAsync) land(*t_worker, g_thread->linear, (unsigned)pending);
}

void warp_exchange(const void* mine, void* all, size_t bytes, const char* file, int line) {
    const unsigned char* area = warp_publish(mine, bytes, file, line);
    for (unsigned l = 0; l < 32; l++)
        std::memcpy(static_cast<unsigned char*>(all) + l * bytes, area + l * kXchg, bytes);
}

void trap(const char* what) {
    std::fprintf(stderr, "emu: %s\n", what);
    std::abort();
}

}  // namespace emu

// ---------------------------------------------------------------- C entry points
extern "C" {

int ds_emu_kernels_anchor();
int ds_emu_kernels_anchor_1();
int ds_emu_kernels_anchor_2();

// Launches `name` over grid x block with `smem` bytes of dynamic shared memory and
// one parameter struct, under the checks `checks` (emu::Check bits; `seed` for sched);
// returns 0, or non-zero with a message in err (a bad launch or a failed check).
int ds_emu_launch(const char* name, const unsigned grid[3], const unsigned block[3], unsigned smem,
                  const void* params, size_t params_size, unsigned checks, unsigned long long seed, char* err,
                  size_t err_len) {
    auto fail = [&](const std::string& m) {
        std::snprintf(err, err_len, "%s", m.c_str());
        return 1;
    };
    ds_emu_kernels_anchor();
    ds_emu_kernels_anchor_1();
    ds_emu_kernels_anchor_2();
    // race / init / mem run the instrumented copy of the kernels, fma the contracted one.
    bool shadow = (checks & emu::rt::kShadowChecks) != 0, fma = (checks & emu::kModeFma) != 0;
    if (shadow && fma) return fail("the fma mode cannot be combined with the race, init or mem checks");
    int copy = shadow ? 1 : fma ? 2 : 0;
    static const char* const kCopyNames[emu::rt::kCopies] = {"", " (instrumented copy)", " (FMA copy)"};
    auto& reg = emu::rt::registry(copy);
    auto it = reg.find(name);
    if (it == reg.end())
        return fail(std::string("no kernel named ") + name + " in the emulated build" + kCopyNames[copy]);
    const emu::rt::Kernel& k = it->second;
    if (params_size != k.param_size)
        return fail(std::string(name) + ": parameter block of " + std::to_string(params_size) +
                    " bytes, the kernel takes " + std::to_string(k.param_size));
    unsigned long long nt = (unsigned long long)block[0] * block[1] * block[2];
    if (nt == 0 || nt > emu::rt::kMaxThreads || block[2] > 64)
        return fail(std::string(name) + ": invalid block shape");
    if (grid[0] == 0 || grid[1] == 0 || grid[2] == 0 || grid[1] > 65535 || grid[2] > 65535)
        return fail(std::string(name) + ": invalid grid shape");
    if (smem > emu::rt::kMaxSmem) return fail(std::string(name) + ": too much dynamic shared memory");
    // Copy the parameters: the kernel may outlive nothing, but keep the caller's bytes
    // immutable during the launch as on a GPU.
    std::vector<unsigned char> pbuf((const unsigned char*)params, (const unsigned char*)params + params_size);
    dim3 g{grid[0], grid[1], grid[2]};
    dim3 b{block[0], block[1], block[2]};
    unsigned long long nblocks = (unsigned long long)g.x * g.y * g.z;
    emu::rt::LaunchState state;
    state.kernel = it->first.c_str();
    state.checks = checks;
    state.seed = seed;
    state.smem = smem;
    state.params = pbuf.data();
    state.params_len = pbuf.size();
    if (checks & emu::kCheckMem) emu::rt::snapshot_allocs(state);
    emu::Pool::get().run(nblocks, [&](unsigned long long i) {
        dim3 bid{(unsigned)(i % g.x), (unsigned)((i / g.x) % g.y), (unsigned)(i / ((unsigned long long)g.x * g.y))};
        emu::run_block(emu::worker(), k, pbuf.data(), bid, b, g, smem, state);
    });
    if (state.failed.load()) return fail(state.error);
    return 0;
}

// Parameter-block size of a kernel (0 when unknown), so the host side can check its
// #[repr(C)] mirrors against the C structs.
size_t ds_emu_param_size(const char* name) {
    ds_emu_kernels_anchor();
    auto& reg = emu::rt::registry(0);
    auto it = reg.find(name);
    return it == reg.end() ? 0 : it->second.param_size;
}

// Name of the parameter struct of a kernel (null when unknown).
const char* ds_emu_param_struct(const char* name) {
    ds_emu_kernels_anchor();
    auto& reg = emu::rt::registry(0);
    auto it = reg.find(name);
    return it == reg.end() ? nullptr : it->second.params;
}

// The i-th registered kernel's name (null past the last), so that the host can check
// that every kernel's parameter block is mirrored.
const char* ds_emu_kernel_name(size_t i) {
    ds_emu_kernels_anchor();
    auto& reg = emu::rt::registry(0);
    if (i >= reg.size()) return nullptr;
    auto it = reg.begin();
    std::advance(it, i);
    return it->first.c_str();
}

}  // extern "C"
