/*
 * The reverse map: for each backing page of a slot, the shadow entries that
 * map it (like KVM's rmap_head / pte_list_desc: one entry inline, an array
 * beyond).  Every function here runs under the owning MMU's mmu_lock.
 */
#include <errno.h>
#include <stdlib.h>

#include "shadow_internal.h"

int rmap_add(struct shadow_rmap *rmap, shadow_sptep_t sptep)
{
	if (rmap->cap <= 1) {
		if (rmap->nr == 0) {
			rmap->one = sptep;
			rmap->cap = 1;
			rmap->nr = 1;
			return 0;
		}
		shadow_sptep_t *many = malloc(4 * sizeof(*many));

		if (!many)
			return -ENOMEM;
		many[0] = rmap->one;
		many[1] = sptep;
		rmap->many = many;
		rmap->cap = 4;
		rmap->nr = 2;
		return 0;
	}
	if (rmap->nr == rmap->cap) {
		shadow_sptep_t *many = realloc(rmap->many, 2 * rmap->cap * sizeof(*many));

		if (!many)
			return -ENOMEM;
		rmap->many = many;
		rmap->cap *= 2;
	}
	rmap->many[rmap->nr++] = sptep;
	return 0;
}

void rmap_del(struct shadow_rmap *rmap, shadow_sptep_t sptep)
{
	if (rmap->cap <= 1) {
		if (rmap->nr == 1 && rmap->one == sptep)
			rmap->nr = 0;
		return;
	}
	for (uint32_t i = 0; i < rmap->nr; i++) {
		if (rmap->many[i] == sptep) {
			rmap->many[i] = rmap->many[--rmap->nr];
			break;
		}
	}
	if (rmap->nr == 1) {
		shadow_sptep_t last = rmap->many[0];

		free(rmap->many);
		rmap->one = last;
		rmap->cap = 1;
	} else if (rmap->nr == 0) {
		free(rmap->many);
		rmap->cap = 0;
	}
}

void rmap_free(struct shadow_rmap *rmap)
{
	if (rmap->cap > 1)
		free(rmap->many);
	rmap->nr = rmap->cap = 0;
}
