/*
 * The reverse map: for each backing page of a memory object, the shadow
 * entries (leaves, in any VM's tables) that map it (like KVM's rmap_head /
 * pte_list_desc: one entry inline, an array beyond).  The map of a page
 * belongs to its object's struct pool_obj, shared by every VM's slot of it.
 *
 * Locks: none taken.  The caller holds the stripe of the page whose map it
 * reads or changes (struct pool_obj, the leaf rule), or, for the checker of
 * a quiescent pool, pool->objs_lock.
 */
#include <errno.h>
#include <stdlib.h>

#include "shadow_internal.h"

/* The array's first size, when a second entry arrives. */
#define RMAP_MANY_FIRST_CAP 4u

int rmap_add(struct shadow_rmap *rmap, shadow_sptep_t sptep)
{
	if (rmap->cap <= 1) {
		if (rmap->nr == 0) {
			rmap->one = sptep;
			rmap->cap = 1;
			rmap->nr = 1;
			return 0;
		}
		shadow_sptep_t *many = malloc(RMAP_MANY_FIRST_CAP * sizeof(*many));

		if (!many)
			return -ENOMEM;
		many[0] = rmap->one;
		many[1] = sptep;
		rmap->many = many;
		rmap->cap = RMAP_MANY_FIRST_CAP;
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

bool rmap_del(struct shadow_rmap *rmap, shadow_sptep_t sptep)
{
	bool found = false;

	if (!rmap)
		return false;
	if (rmap->cap <= 1) {
		if (rmap->nr == 1 && rmap->one == sptep) {
			rmap->nr = 0;
			return true;
		}
		return false;
	}
	for (uint32_t i = 0; i < rmap->nr; i++) {
		if (rmap->many[i] == sptep) {
			rmap->many[i] = rmap->many[--rmap->nr];
			found = true;
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
	return found;
}

void rmap_free(struct shadow_rmap *rmap)
{
	if (rmap->cap > 1)
		free(rmap->many);
	rmap->nr = rmap->cap = 0;
}
