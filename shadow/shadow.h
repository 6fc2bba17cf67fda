/*
 * shadow/: the shadow MMU library.
 *
 * Today: the table pool, one memfd-backed region of 4 KiB table pages that the
 * VMM will map read-only into every VM at the same guest-physical address
 * (SHADOW_POOL_GPA), so that a table page is valid for all its sharers.
 * Table pages are addressed by their guest-physical address in the pool.
 */
#ifndef UMBRA_SHADOW_H
#define UMBRA_SHADOW_H

#include <stddef.h>
#include <stdint.h>

/* Guest-physical base of the pool in every VM: above any guest RAM (64 GiB). */
#define SHADOW_POOL_GPA (1ull << 36)
#define SHADOW_PAGE_SIZE 4096u

struct shadow_pool;

/*
 * Creates a pool of nr_pages table pages backed by a memfd (its fd is given by
 * shadow_pool_fd for the VMM to map). Returns 0 or -errno. May block.
 */
int shadow_pool_create(size_t nr_pages, struct shadow_pool **out);
/* Frees the pool; every page must have been freed. */
void shadow_pool_destroy(struct shadow_pool *pool);
int shadow_pool_fd(const struct shadow_pool *pool);
size_t shadow_pool_nr_pages(const struct shadow_pool *pool);

/*
 * Allocates one zeroed table page at the given level (1..4) and returns its
 * guest-physical address in *gpa. Returns 0, or -ENOMEM when the pool is full,
 * -EINVAL for a bad level. Thread-safe; takes the pool's lock.
 */
int shadow_pool_alloc(struct shadow_pool *pool, int level, uint64_t *gpa);
/* Returns a page to the pool. -EINVAL if gpa is not an allocated page. */
int shadow_pool_free(struct shadow_pool *pool, uint64_t gpa);
/* Host pointer to the 512 entries of the page at gpa, or NULL if gpa is not
 * a page of the pool. */
uint64_t *shadow_pool_table(struct shadow_pool *pool, uint64_t gpa);
/* Pages in use at a level (1..4), or in all levels for level 0. */
size_t shadow_pool_pages_in_use(struct shadow_pool *pool, int level);

#endif
