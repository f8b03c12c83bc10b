/* Shared by nasprobe's C kernels: nas_kernels.c (the loops) and ckernels.c (their Python
 * bindings). Plain C99 plus, with gcc on x86-64 Linux, target clones of the hot loops. */
#ifndef NASPROBE_CKERNELS_H
#define NASPROBE_CKERNELS_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 12 && !defined(__clang__) \
    && defined(__linux__)   /* x86-64-v3/v4 clones: gcc 12 on glibc (ifunc) */
#define NP_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define NP_HAVE_CLONES 1
#else
#define NP_CLONES
#endif

/* Locations per tile: the second pass over a tile's C channels then reads what the first left in
 * L1/L2 (128 measured 15 % faster than 256 on taps fresh from memory, the same in cache). */
#define BLOCK 128

/* Locations of one image in blocked layout transposed at a time (np_gather_tile). */
#define TILE 64

/* NAS of n <= BLOCK locations of one row viewed as (C, inner) with channel stride inner, less
 * bias per channel, into out; cnt, when not NULL, gets per channel the values above zero. */
void np_nas_block(const float *restrict x, Py_ssize_t C, Py_ssize_t inner, Py_ssize_t n,
                  const float *restrict bias, float *restrict out, int64_t *restrict cnt);

/* n <= TILE locations of one image in blocked layout (blocks of B channels, nblk blocks, step
 * floats apart) transposed into dst as (nblk * B, TILE). */
void np_gather_tile(const float *restrict x, Py_ssize_t nblk, Py_ssize_t B, Py_ssize_t step,
                    Py_ssize_t n, float *restrict dst);

/* Adds to cnt, per channel, the values above zero of one row viewed as (C, inner). */
void np_count_block(const float *restrict x, Py_ssize_t C, Py_ssize_t inner,
                    int64_t *restrict cnt);

#endif
