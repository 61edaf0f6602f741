/* An AVX2-only CPU as software sees it, on a CPU with AVX-512: loaded with LD_PRELOAD (through
 * scripts/bench/avx2-only), it turns on the kernel's CPUID faulting (arch_prctl ARCH_SET_CPUID) and answers
 * every CPUID instruction of the process and its children with the real answer less the AVX-512 family,
 * AVX-VNNI and AVX512-BF16 bits. Every library that picks its kernels from CPUID (the engine, the gemm
 * crate, OpenBLAS, faiss's loader, oneDNN, PyTorch, ONNX Runtime's MLAS, numpy) then runs its AVX2 code on
 * the same core, memory and clock. It is a benchmark tool: the core is still the AVX-512 CPU's (its caches,
 * its AVX2 throughput), so figures taken under it stand for "AVX2 kernels on that CPU", not for another CPU.
 * CPUID faulting needs Linux and the CPU's "cpuid_fault" flag (/proc/cpuinfo). */
#define _GNU_SOURCE
#include <asm/prctl.h>
#include <cpuid.h>
#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <ucontext.h>
#include <unistd.h>

static long set_cpuid(unsigned long on) { return syscall(SYS_arch_prctl, ARCH_SET_CPUID, on); }

/* CPUID leaf 7: EBX AVX512 F, DQ, IFMA, PF, ER, CD, BW, VL; ECX AVX512 VBMI, VBMI2, VNNI, BITALG,
 * VPOPCNTDQ; EDX AVX512 4VNNIW, 4FMAPS, VP2INTERSECT, FP16; sub-leaf 1 EAX AVX-VNNI, AVX512-BF16. */
static void mask(unsigned leaf, unsigned sub, unsigned *a, unsigned *b, unsigned *c, unsigned *d) {
    if (leaf == 7 && sub == 0) {
        *b &= ~((1u << 16) | (1u << 17) | (1u << 21) | (1u << 26) | (1u << 27) | (1u << 28) | (1u << 30) | (1u << 31));
        *c &= ~((1u << 1) | (1u << 6) | (1u << 11) | (1u << 12) | (1u << 14));
        *d &= ~((1u << 2) | (1u << 3) | (1u << 8) | (1u << 23));
    } else if (leaf == 7 && sub == 1) {
        *a &= ~((1u << 4) | (1u << 5));
    }
}

/* The program's own SIGSEGV action (a stack-overflow guard, a crash reporter): sigaction() calls for
 * SIGSEGV are kept here instead of replacing on_segv, which passes it every fault that is not a CPUID. */
static struct sigaction program = {.sa_handler = SIG_DFL};
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);

static void on_segv(int sig, siginfo_t *si, void *uc) {
    greg_t *g = ((ucontext_t *)uc)->uc_mcontext.gregs;
    /* A faulting CPUID is a general-protection fault: SI_KERNEL, with RIP on the instruction. */
    const unsigned char *ip = (const unsigned char *)g[REG_RIP];
    if (si->si_code == SI_KERNEL && ip[0] == 0x0f && ip[1] == 0xa2) {
        unsigned leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX], a, b, c, d;
        set_cpuid(1);
        __cpuid_count(leaf, sub, a, b, c, d);
        set_cpuid(0);
        mask(leaf, sub, &a, &b, &c, &d);
        g[REG_RAX] = a; g[REG_RBX] = b; g[REG_RCX] = c; g[REG_RDX] = d;
        g[REG_RIP] += 2;
        return;
    }
    if (program.sa_flags & SA_SIGINFO) {
        program.sa_sigaction(sig, si, uc);
    } else if (program.sa_handler != SIG_DFL && program.sa_handler != SIG_IGN) {
        program.sa_handler(sig);
    } else {
        /* A real fault and no handler of the program's: the default action, when the instruction runs
         * again on return. */
        struct sigaction dfl;
        memset(&dfl, 0, sizeof dfl);
        dfl.sa_handler = SIG_DFL;
        real_sigaction(sig, &dfl, NULL);
    }
}

static int install(int flags, const sigset_t *mask_during) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    /* The program's flags (SA_ONSTACK above all: a stack-overflow handler runs on its own stack). */
    sa.sa_flags = (flags & ~(SA_RESETHAND | SA_NODEFER)) | SA_SIGINFO;
    if (mask_during) sa.sa_mask = *mask_during;
    return real_sigaction(SIGSEGV, &sa, NULL);
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    if (sig != SIGSEGV) return real_sigaction(sig, act, old);
    if (old) *old = program;
    if (act) {
        program = *act;
        return install(act->sa_flags, &act->sa_mask);
    }
    return 0;
}

/* signal() as glibc's, through the sigaction() above for SIGSEGV (glibc's own calls it internally). */
sighandler_t signal(int sig, sighandler_t handler) {
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    act.sa_flags = SA_RESTART;
    if (sigaction(sig, &act, &old) != 0) return SIG_ERR;
    return old.sa_handler;
}

__attribute__((constructor)) static void init(void) {
    real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    install(0, NULL);
    if (set_cpuid(0) != 0) {
        int e = errno;
        fprintf(stderr, "avx2-only: arch_prctl(ARCH_SET_CPUID): %s: %s\n", strerror(e),
                e == ENODEV ? "this CPU or kernel has no CPUID faulting (no cpuid_fault in /proc/cpuinfo)"
                            : "this process may not turn on CPUID faulting (a seccomp policy, say)");
        exit(2);
    }
}
