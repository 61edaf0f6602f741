/* What these cores' arithmetic allows: register-only loops of the instructions the engine's products are
 * made of, on 1 and on all of the given threads, each instruction on independent accumulators so that
 * only its throughput counts. Figures in docs/benchmarks.md ("what the arithmetic allows") come from it.
 *   cc -O2 -o target/peak_loops scripts/bench/peak_loops.c -lpthread && target/peak_loops [THREADS]
 * f32: vfmadd231ps on 8 or 16 lanes (2 FLOP a lane). int8: u8 x i8 products added into i32 lanes, by
 * vpmaddubsw + vpmaddwd + vpaddd on 8 lanes (AVX2: 32 products) and by vpdpbusd on 16 (AVX-512 VNNI:
 * 64 products). bf16: vdpbf16ps, pairs of bf16 products added into 16 f32 lanes (2 FLOP a product). The AVX-512 loops run only where CPUID shows AVX-512 (so not under avx2-only). */
#include <cpuid.h>
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define STEPS 50000000L
#define KEEP(v) __asm__ volatile("" : "+x"(v))
#define KEEPZ(v) __asm__ volatile("" : "+v"(v))

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

/* Each loop: STEPS iterations of 8 (int8) or 12 (f32) independent instructions; returns its work done. */
__attribute__((target("avx2,fma"))) static double fma_ymm(void) {
    __m256 x = _mm256_set1_ps(1.0000001f), y = _mm256_set1_ps(0.9999999f), a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps((float)i);
    for (long n = 0; n < STEPS; n++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], x, y);
        KEEP(x);
    }
    volatile float s = 0;
    for (int i = 0; i < 12; i++) s += _mm256_cvtss_f32(a[i]);
    return (double)STEPS * 12 * 8 * 2;
}

__attribute__((target("avx512f"))) static double fma_zmm(void) {
    __m512 x = _mm512_set1_ps(1.0000001f), y = _mm512_set1_ps(0.9999999f), a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < STEPS; n++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm512_fmadd_ps(a[i], x, y);
        KEEPZ(x);
    }
    volatile float s = 0;
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(a[i]);
    return (double)STEPS * 12 * 16 * 2;
}

__attribute__((target("avx2"))) static double int8_avx2(void) {
    __m256i x = _mm256_set1_epi8(3), w = _mm256_set1_epi8(-2), one = _mm256_set1_epi16(1), a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm256_set1_epi32(i);
    for (long n = 0; n < STEPS; n++) {
        /* w passes through an empty asm after each use, so no two products are the same expression. */
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) {
            a[i] = _mm256_add_epi32(a[i], _mm256_madd_epi16(_mm256_maddubs_epi16(x, w), one));
            KEEP(w);
        }
    }
    volatile int s = 0;
    for (int i = 0; i < 8; i++) s += _mm256_extract_epi32(a[i], 0);
    return (double)STEPS * 8 * 32;
}

__attribute__((target("avx512f,avx512bw,avx512vnni"))) static double int8_vnni(void) {
    __m512i x = _mm512_set1_epi8(3), w = _mm512_set1_epi8(-2), a[8];
    for (int i = 0; i < 8; i++) a[i] = _mm512_set1_epi32(i);
    for (long n = 0; n < STEPS; n++) {
#pragma GCC unroll 8
        for (int i = 0; i < 8; i++) a[i] = _mm512_dpbusd_epi32(a[i], x, w);
        KEEPZ(x);
    }
    volatile int s = 0;
    for (int i = 0; i < 8; i++) s += _mm512_reduce_add_epi32(a[i]);
    return (double)STEPS * 8 * 64;
}

__attribute__((target("avx512f,avx512bf16"))) static double bf16_zmm(void) {
    __m512 a[12];
    __m512bh x = (__m512bh)_mm512_set1_epi32(0x3f803f80), y = (__m512bh)_mm512_set1_epi32(0x3f803f80);
    for (int i = 0; i < 12; i++) a[i] = _mm512_set1_ps((float)i);
    for (long n = 0; n < STEPS; n++) {
#pragma GCC unroll 12
        for (int i = 0; i < 12; i++) a[i] = _mm512_dpbf16_ps(a[i], x, y);
        KEEPZ(x);
    }
    volatile float s = 0;
    for (int i = 0; i < 12; i++) s += _mm512_reduce_add_ps(a[i]);
    return (double)STEPS * 12 * 32 * 2;
}

typedef double (*loop_fn)(void);
static void *run(void *f) {
    double *work = malloc(sizeof *work);
    *work = ((loop_fn)f)();
    return work;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "usage: %s [THREADS (1-256)]\n", argv[0]);
        return 2;
    }
    unsigned a, b, c, d;
    int avx512 = __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & (1u << 16)) && (b & (1u << 30));
    int vnni = avx512 && (c & (1u << 11));
    unsigned a1 = 0, b1, c1, d1;
    int bf16 = avx512 && __get_cpuid_count(7, 1, &a1, &b1, &c1, &d1) && (a1 & (1u << 5));
    struct { const char *name, *unit; loop_fn f; int on; } loops[] = {
        {"f32 FMA, 8 lanes (AVX2)", "GFLOP/s", fma_ymm, 1},
        {"f32 FMA, 16 lanes (AVX-512)", "GFLOP/s", fma_zmm, avx512},
        {"int8 vpmaddubsw+vpmaddwd+vpaddd, 8 lanes (AVX2)", "G products/s", int8_avx2, 1},
        {"int8 vpdpbusd, 16 lanes (AVX-512 VNNI)", "G products/s", int8_vnni, vnni},
        {"bf16 vdpbf16ps, 32 pairs (AVX512-BF16)", "GFLOP/s", bf16_zmm, bf16},
    };
    for (size_t l = 0; l < sizeof loops / sizeof loops[0]; l++) {
        if (!loops[l].on) {
            printf("%-50s not on this CPU (CPUID)\n", loops[l].name);
            continue;
        }
        printf("%-50s", loops[l].name);
        for (int t = 1; t <= threads; t = t < threads && 2 * t > threads ? threads : 2 * t) {
            pthread_t th[256];
            double t0 = now(), work = 0;
            for (int i = 0; i < t; i++) pthread_create(&th[i], 0, run, (void *)loops[l].f);
            for (int i = 0; i < t; i++) {
                void *w;
                pthread_join(th[i], &w);
                work += *(double *)w;
                free(w);
            }
            printf("  %d thread%s %7.1f %s", t, t > 1 ? "s" : " ", work / (now() - t0) / 1e9, loops[l].unit);
        }
        printf("\n");
    }
    return 0;
}
