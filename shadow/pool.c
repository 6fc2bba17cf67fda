/*
 * The table pool: a memfd of 4 KiB pages with a descriptor each.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "shadow_internal.h"

#define NO_PAGE UINT32_MAX

int shadow_pool_create(size_t nr_pages, struct shadow_pool **out)
{
	struct shadow_pool *pool;
	int ret;

	if (nr_pages == 0 || nr_pages >= NO_PAGE)
		return -EINVAL;
	pool = calloc(1, sizeof(*pool));
	if (!pool)
		return -ENOMEM;
	pool->nr_pages = nr_pages;
	pool->pages = calloc(nr_pages, sizeof(*pool->pages));
	if (!pool->pages) {
		ret = -ENOMEM;
		goto free_pool;
	}
	pool->fd = memfd_create("umbra-shadow-pool", MFD_CLOEXEC);
	if (pool->fd < 0) {
		ret = -errno;
		goto free_pages;
	}
	if (ftruncate(pool->fd, (off_t)(nr_pages * SHADOW_PAGE_SIZE)) < 0) {
		ret = -errno;
		goto close_fd;
	}
	pool->base = mmap(NULL, nr_pages * SHADOW_PAGE_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED,
			  pool->fd, 0);
	if (pool->base == MAP_FAILED) {
		ret = -errno;
		goto close_fd;
	}
	for (size_t i = 0; i < nr_pages; i++)
		pool->pages[i].next_free = i + 1 < nr_pages ? (uint32_t)(i + 1) : NO_PAGE;
	pool->free_head = 0;
	pthread_mutex_init(&pool->lock, NULL);
	*out = pool;
	return 0;

close_fd:
	close(pool->fd);
free_pages:
	free(pool->pages);
free_pool:
	free(pool);
	return ret;
}

void shadow_pool_destroy(struct shadow_pool *pool)
{
	if (!pool)
		return;
	munmap(pool->base, pool->nr_pages * SHADOW_PAGE_SIZE);
	close(pool->fd);
	pthread_mutex_destroy(&pool->lock);
	free(pool->pages);
	free(pool);
}

int shadow_pool_fd(const struct shadow_pool *pool)
{
	return pool->fd;
}

size_t shadow_pool_nr_pages(const struct shadow_pool *pool)
{
	return pool->nr_pages;
}

static int page_index(const struct shadow_pool *pool, uint64_t gpa, size_t *index)
{
	if (gpa < SHADOW_POOL_GPA || gpa % SHADOW_PAGE_SIZE)
		return -EINVAL;
	uint64_t i = (gpa - SHADOW_POOL_GPA) / SHADOW_PAGE_SIZE;
	if (i >= pool->nr_pages)
		return -EINVAL;
	*index = (size_t)i;
	return 0;
}

int shadow_pool_alloc(struct shadow_pool *pool, int level, uint64_t *gpa)
{
	if (level < 1 || level > SPTE_LEVELS)
		return -EINVAL;
	pthread_mutex_lock(&pool->lock);
	uint32_t i = pool->free_head;
	if (i == NO_PAGE) {
		pthread_mutex_unlock(&pool->lock);
		return -ENOMEM;
	}
	pool->free_head = pool->pages[i].next_free;
	pool->pages[i].level = level;
	pool->in_use[level]++;
	pthread_mutex_unlock(&pool->lock);
	memset((char *)pool->base + (size_t)i * SHADOW_PAGE_SIZE, 0, SHADOW_PAGE_SIZE);
	*gpa = SHADOW_POOL_GPA + (uint64_t)i * SHADOW_PAGE_SIZE;
	return 0;
}

int shadow_pool_free(struct shadow_pool *pool, uint64_t gpa)
{
	size_t i;

	if (page_index(pool, gpa, &i))
		return -EINVAL;
	pthread_mutex_lock(&pool->lock);
	if (pool->pages[i].level == 0) {
		pthread_mutex_unlock(&pool->lock);
		return -EINVAL;
	}
	pool->in_use[pool->pages[i].level]--;
	pool->pages[i].level = 0;
	pool->pages[i].next_free = pool->free_head;
	pool->free_head = (uint32_t)i;
	pthread_mutex_unlock(&pool->lock);
	return 0;
}

uint64_t *shadow_pool_table(struct shadow_pool *pool, uint64_t gpa)
{
	size_t i;

	if (page_index(pool, gpa, &i))
		return NULL;
	return pool->base + i * SPTE_ENTRIES;
}

size_t shadow_pool_pages_in_use(struct shadow_pool *pool, int level)
{
	size_t n = 0;

	if (level < 0 || level > SPTE_LEVELS)
		return 0;
	pthread_mutex_lock(&pool->lock);
	for (int l = level ? level : 1; l <= (level ? level : SPTE_LEVELS); l++)
		n += pool->in_use[l];
	pthread_mutex_unlock(&pool->lock);
	return n;
}
