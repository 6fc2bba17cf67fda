/*
 * Freestanding memory and string helpers (guest/runtime/string.c): the libc functions the
 * runtime and images use, and that the compiler may emit calls to, plus the
 * FNV-1a hash.  They depend on nothing else in the runtime.
 */
#ifndef UMBRA_GUEST_STRING_H
#define UMBRA_GUEST_STRING_H

#include <stddef.h>
#include <stdint.h>

void *memset(void *dst, int c, size_t n);
void *memcpy(void *dst, const void *src, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);

/* FNV-1a, 64-bit, over len bytes (continuing from hash; start with FNV_OFFSET). */
#define FNV_OFFSET 0xcbf29ce484222325ull
uint64_t fnv1a(uint64_t hash, const void *data, size_t len);

#endif
