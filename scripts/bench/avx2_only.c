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

/* The program's own SIGSEGV action (a stack-overflow guard, a crash reporter): sigaction() and the
 * signal() family for SIGSEGV are kept here instead of replacing on_segv, which passes it every SIGSEGV
 * that is not a faulting CPUID. on_segv itself runs with SIGSEGV unblocked (SA_NODEFER, and SIGSEGV left
 * out of every signal mask the program sets), so that a CPUID inside a handler, or in a thread that
 * blocks signals, is still answered.
 * Not covered: actions set by raw system calls after start, statically linked programs, children started
 * with an empty environment, CPUID run before this library's constructor (IFUNC resolvers, and constructors
 * of the libraries the program links where -z initfirst does not win), alternate signal stacks smaller than
 * the CPU's signal frame. Each emulated CPUID costs tens of microseconds. */
static struct sigaction program = {.sa_handler = SIG_DFL};
static int seen_program;
static int (*real_sigaction)(int, const struct sigaction *, struct sigaction *);
static int (*real_sigprocmask)(int, const sigset_t *, sigset_t *);
static int (*real_pthread_sigmask)(int, const sigset_t *, sigset_t *);

static void resolve(void) {
    if (!real_sigaction) real_sigaction = dlsym(RTLD_NEXT, "sigaction");
    if (!real_sigprocmask) real_sigprocmask = dlsym(RTLD_NEXT, "sigprocmask");
    if (!real_pthread_sigmask) real_pthread_sigmask = dlsym(RTLD_NEXT, "pthread_sigmask");
}

/* The default action, now: SIGSEGV's default handler restored and unblocked, and the signal raised
 * again, so a fault or a sent SIGSEGV ends the process as it would without this library. */
static void die(int sig) {
    struct sigaction dfl;
    memset(&dfl, 0, sizeof dfl);
    dfl.sa_handler = SIG_DFL;
    real_sigaction(sig, &dfl, NULL);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, sig);
    real_sigprocmask(SIG_UNBLOCK, &s, NULL);
    raise(sig);
}

static void on_segv(int sig, siginfo_t *si, void *uc) {
    greg_t *g = ((ucontext_t *)uc)->uc_mcontext.gregs;
    /* A faulting CPUID is a general-protection fault: SI_KERNEL, with RIP on the instruction. */
    if (si->si_code == SI_KERNEL) {
        const unsigned char *ip = (const unsigned char *)g[REG_RIP];
        if (ip[0] == 0x0f && ip[1] == 0xa2) {
            unsigned leaf = (unsigned)g[REG_RAX], sub = (unsigned)g[REG_RCX], a, b, c, d;
            set_cpuid(1);
            __cpuid_count(leaf, sub, a, b, c, d);
            set_cpuid(0);
            mask(leaf, sub, &a, &b, &c, &d);
            g[REG_RAX] = a; g[REG_RBX] = b; g[REG_RCX] = c; g[REG_RDX] = d;
            g[REG_RIP] += 2;
            return;
        }
    }
    struct sigaction act = program;
    int sent = si->si_code <= 0; /* raise(), kill(), sigqueue(): not a fault of the instruction */
    if (act.sa_handler == SIG_IGN && sent) return;
    if (act.sa_handler == SIG_DFL || act.sa_handler == SIG_IGN) {
        die(sig); /* a fault cannot be ignored: the kernel would end the process too */
        return;
    }
    if (act.sa_flags & SA_RESETHAND) {
        memset(&program, 0, sizeof program);
        program.sa_handler = SIG_DFL;
    }
    if (act.sa_flags & SA_SIGINFO) {
        act.sa_sigaction(sig, si, uc);
    } else {
        act.sa_handler(sig);
    }
}

static int install(int flags, const sigset_t *mask_during) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_segv;
    /* The program's flags (SA_ONSTACK above all: a stack-overflow handler runs on its own stack), less
     * those on_segv applies itself. */
    sa.sa_flags = (flags & ~SA_RESETHAND) | SA_SIGINFO | SA_NODEFER;
    if (mask_during) sa.sa_mask = *mask_during;
    sigdelset(&sa.sa_mask, SIGSEGV);
    return real_sigaction(SIGSEGV, &sa, NULL);
}

int sigaction(int sig, const struct sigaction *act, struct sigaction *old) {
    resolve();
    if (sig != SIGSEGV) {
        if (!act) return real_sigaction(sig, act, old);
        struct sigaction a = *act;
        sigdelset(&a.sa_mask, SIGSEGV);
        return real_sigaction(sig, &a, old);
    }
    if (old) *old = program;
    if (act) {
        program = *act;
        seen_program = 1;
        return install(act->sa_flags, &act->sa_mask);
    }
    return 0;
}

/* Signal masks never hold SIGSEGV, so that CPUID works in every thread. */
static sigset_t *without_segv(int how, const sigset_t *set, sigset_t *copy) {
    if (!set || how == SIG_UNBLOCK) return (sigset_t *)set;
    *copy = *set;
    sigdelset(copy, SIGSEGV);
    return copy;
}

int sigprocmask(int how, const sigset_t *set, sigset_t *old) {
    resolve();
    sigset_t copy;
    return real_sigprocmask(how, without_segv(how, set, &copy), old);
}

int pthread_sigmask(int how, const sigset_t *set, sigset_t *old) {
    resolve();
    sigset_t copy;
    return real_pthread_sigmask(how, without_segv(how, set, &copy), old);
}

/* The signal() family, for SIGSEGV through the sigaction() above (glibc's own call an internal one that
 * no preload sees); for every other signal glibc's own. */
static sighandler_t set_segv(sighandler_t handler, int flags) {
    if (handler == SIG_HOLD) return program.sa_handler; /* SIGSEGV is never held (above) */
    struct sigaction act, old;
    memset(&act, 0, sizeof act);
    act.sa_handler = handler;
    act.sa_flags = flags;
    if (sigaction(SIGSEGV, &act, &old) != 0) return SIG_ERR;
    return old.sa_handler;
}

#define FORWARD(name)                                                      \
    sighandler_t name(int sig, sighandler_t handler) {                     \
        static sighandler_t (*real)(int, sighandler_t);                    \
        if (sig == SIGSEGV) return set_segv(handler, name##_FLAGS);       \
        if (!real) real = (sighandler_t(*)(int, sighandler_t))dlsym(RTLD_NEXT, #name); \
        return real(sig, handler);                                         \
    }
#define signal_FLAGS SA_RESTART
#define bsd_signal_FLAGS SA_RESTART
#define sysv_signal_FLAGS (SA_RESETHAND | SA_NODEFER)
#define sigset_FLAGS 0
FORWARD(signal)
FORWARD(bsd_signal)
FORWARD(sysv_signal)
FORWARD(sigset)

__attribute__((constructor)) static void init(void) {
    resolve();
    /* An action set before this library ran (a linked library's constructor, a raw system call) is
     * the program's. */
    if (!seen_program) {
        struct sigaction cur;
        if (real_sigaction(SIGSEGV, NULL, &cur) == 0 && cur.sa_sigaction != on_segv) program = cur;
    }
    install(program.sa_flags, &program.sa_mask);
    if (set_cpuid(0) != 0) {
        int e = errno;
        fprintf(stderr, "avx2-only: arch_prctl(ARCH_SET_CPUID): %s: %s\n", strerror(e),
                e == ENODEV ? "this CPU or kernel has no CPUID faulting (no cpuid_fault in /proc/cpuinfo)"
                            : "this process may not turn on CPUID faulting (a seccomp policy, say)");
        exit(2);
    }
}
