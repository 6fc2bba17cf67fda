/*
 * The swap file: fixed 4 KiB slots in one file, a slot allocator (a bitmap),
 * a CRC-32 per slot recorded at write and verified at read.
 *
 * Locks: the swap's lock guards the bitmap, the checksums and the counters;
 * it is not held across I/O.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "umbra/lock.h"
#include "umbra/pager.h"

struct pager_swap {
	int fd;
	char *path;		/* the temp file's, removed at destroy; NULL otherwise */
	uint64_t nr_slots;
	/* lock (unranked leaf): used[], crc[], the counters. */
	struct umbra_mutex lock;
	uint64_t *used;		/* bitmap of allocated slots */
	uint32_t *crc;		/* [nr_slots] checksum of each written slot */
	struct pager_swap_stats st;
};

int pager_swap_create(const struct pager_swap_config *cfg, struct pager_swap **out)
{
	struct pager_swap *swap;
	char tmpl[] = "/tmp/umbra-swap-XXXXXX";
	int ret = -ENOMEM;

	if (!cfg || !out)
		return -EINVAL;
	swap = calloc(1, sizeof(*swap));
	if (!swap)
		return -ENOMEM;
	swap->fd = -1;
	swap->nr_slots = cfg->nr_slots;
	swap->used = calloc(cfg->nr_slots / 64 + 1, sizeof(*swap->used));
	swap->crc = calloc(cfg->nr_slots + 1, sizeof(*swap->crc));
	if (!swap->used || !swap->crc)
		goto free_swap;
	if (cfg->path) {
		swap->fd = open(cfg->path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	} else {
		swap->fd = mkostemp(tmpl, O_CLOEXEC);
		swap->path = swap->fd >= 0 ? strdup(tmpl) : NULL;
	}
	if (swap->fd < 0) {
		ret = -errno;
		goto free_swap;
	}
	umbra_mutex_init(&swap->lock, "pager.swap.lock", UMBRA_LOCK_RANK_NONE);
	swap->st.nr_slots = cfg->nr_slots;
	*out = swap;
	return 0;
free_swap:
	free(swap->used);
	free(swap->crc);
	free(swap);
	return ret;
}

void pager_swap_destroy(struct pager_swap *swap)
{
	if (!swap)
		return;
	close(swap->fd);
	if (swap->path)
		unlink(swap->path);
	free(swap->path);
	umbra_mutex_exit(&swap->lock);
	free(swap->used);
	free(swap->crc);
	free(swap);
}

int pager_swap_alloc(struct pager_swap *swap, uint64_t *slot)
{
	int ret = -ENOSPC;

	umbra_mutex_lock(&swap->lock);
	for (uint64_t s = 0; s < swap->nr_slots; s++) {
		if (!(swap->used[s / 64] & (1ull << (s % 64)))) {
			swap->used[s / 64] |= 1ull << (s % 64);
			swap->st.slots_used++;
			*slot = s;
			ret = 0;
			break;
		}
	}
	umbra_mutex_unlock(&swap->lock);
	return ret;
}

void pager_swap_free(struct pager_swap *swap, uint64_t slot)
{
	umbra_mutex_lock(&swap->lock);
	swap->used[slot / 64] &= ~(1ull << (slot % 64));
	swap->st.slots_used--;
	umbra_mutex_unlock(&swap->lock);
}

static uint32_t page_crc(const void *buf)
{
	return (uint32_t)crc32(0L, buf, PAGER_PAGE_SIZE);
}

int pager_swap_write(struct pager_swap *swap, struct pager_io *ios, unsigned int n)
{
	int first = 0;

	for (unsigned int i = 0; i < n; i++) {
		ssize_t w = pwrite(swap->fd, ios[i].buf, PAGER_PAGE_SIZE,
				   (off_t)(ios[i].slot * PAGER_PAGE_SIZE));

		ios[i].result = w == PAGER_PAGE_SIZE ? 0 : w < 0 ? -errno : -EIO;
		umbra_mutex_lock(&swap->lock);
		if (ios[i].result) {
			swap->st.write_errors++;
		} else {
			swap->crc[ios[i].slot] = page_crc(ios[i].buf);
			swap->st.pages_written++;
		}
		umbra_mutex_unlock(&swap->lock);
		if (ios[i].result && !first)
			first = ios[i].result;
	}
	return first;
}

int pager_swap_read(struct pager_swap *swap, struct pager_io *ios, unsigned int n)
{
	int first = 0;

	for (unsigned int i = 0; i < n; i++) {
		ssize_t r = pread(swap->fd, ios[i].buf, PAGER_PAGE_SIZE,
				  (off_t)(ios[i].slot * PAGER_PAGE_SIZE));

		ios[i].result = r == PAGER_PAGE_SIZE ? 0 : r < 0 ? -errno : -EIO;
		umbra_mutex_lock(&swap->lock);
		if (!ios[i].result && swap->crc[ios[i].slot] != page_crc(ios[i].buf))
			ios[i].result = -EBADMSG;
		if (ios[i].result)
			swap->st.read_errors++;
		else
			swap->st.pages_read++;
		umbra_mutex_unlock(&swap->lock);
		if (ios[i].result && !first)
			first = ios[i].result;
	}
	return first;
}

void pager_swap_stats(const struct pager_swap *swap, struct pager_swap_stats *st)
{
	struct pager_swap *s = (struct pager_swap *)swap;

	umbra_mutex_lock(&s->lock);
	*st = s->st;
	umbra_mutex_unlock(&s->lock);
}
