/* Private to shadow/: the pool's descriptors. */
#ifndef UMBRA_SHADOW_INTERNAL_H
#define UMBRA_SHADOW_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "shadow.h"
#include "spte.h"

/* One per pool page. level 0 means free. */
struct shadow_page {
	int level;
	uint32_t next_free; /* index of the next free page, when free */
};

struct shadow_pool {
	int fd;
	size_t nr_pages;
	uint64_t *base; /* host mapping of the whole pool */
	struct shadow_page *pages;
	/* lock protects pages[], free_head and in_use[]. A leaf lock: nothing is
	 * taken while it is held. */
	pthread_mutex_t lock;
	uint32_t free_head; /* UINT32_MAX when the pool is full */
	size_t in_use[SPTE_LEVELS + 1];
};

#endif
