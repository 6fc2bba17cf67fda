/*
 * A growable array of 32-bit values (pool indices, entry locations): on the
 * stack up to U32_VEC_INLINE, then on the heap.  Not to be copied.  No
 * locks: the owner's.  For the walks up the users lists (pmd_rmap.c,
 * privatize.c), which collect what they find under a table lock and follow
 * it after dropping the lock.
 */
#ifndef UMBRA_SHADOW_U32_VEC_H
#define UMBRA_SHADOW_U32_VEC_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define U32_VEC_INLINE 16u

struct u32_vec {
	uint32_t *v;
	uint32_t nr, cap;
	uint32_t stack[U32_VEC_INLINE];
};

static inline void u32_vec_init(struct u32_vec *a)
{
	a->v = a->stack;
	a->nr = 0;
	a->cap = U32_VEC_INLINE;
}

/* Appends @x.  Returns 0, or -ENOMEM (the array unchanged). */
static inline int u32_vec_push(struct u32_vec *a, uint32_t x)
{
	if (a->nr == a->cap) {
		uint32_t *n = malloc(2 * (size_t)a->cap * sizeof(*n));

		if (!n)
			return -ENOMEM;
		memcpy(n, a->v, a->nr * sizeof(*n));
		if (a->v != a->stack)
			free(a->v);
		a->v = n;
		a->cap *= 2;
	}
	a->v[a->nr++] = x;
	return 0;
}

static inline void u32_vec_fini(struct u32_vec *a)
{
	if (a->v != a->stack)
		free(a->v);
}

#endif
