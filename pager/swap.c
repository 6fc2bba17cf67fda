/*
 * The swap file: fixed 4 KiB slots, a next-fit slot allocator over a bitmap,
 * a crc32 per slot kept in memory and verified on every read, and batched
 * I/O through one io_uring (docs/pager.md, "The swap file").
 *
 * Locks (docs/locking.md), outermost first:
 *   io_lock (PAGER_SWAP_IO)  the ring and the scratch arrays of a batch;
 *                            held across a chunk's submission and the wait
 *                            for its completions (it blocks on I/O)
 *   lock (PAGER_SWAP)        the slot map, checksums, injection and
 *                            counters; held for a few instructions, taken
 *                            inside io_lock or alone, never across I/O
 * Both are leaves of the rest of umbra: nothing else is taken under them.
 */
#include <errno.h>
#include <fcntl.h>
#include <liburing.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>
#include <zlib.h>

#include "umbra/lock.h"
#include "umbra/pager.h"
#include "umbra/trace.h"

/* ios[i].result while the page is still to be done (never returned). */
#define IO_PENDING 1

/* What became of page i of a chunk before its I/O (state[i]). */
enum page_state {
	PAGE_REFUSED,		/* -EINVAL or -ENODATA: not counted as an I/O error */
	PAGE_IO,		/* went to the file, or failed as if it had */
	PAGE_IO_CORRUPT,	/* PAGER_INJECT_CORRUPT fires on it after its write */
};

struct swap_inject {
	uint64_t countdown;	/* 0: off; else the page that fires, counting down */
	int err;
};

struct pager_swap {
	int fd;
	uint64_t nr_slots;
	unsigned int depth;		/* pages per submission, ring entries */
	bool fixed_file;		/* fd registered with the ring as file 0 */

	/* lock (UMBRA_LOCK_RANK_PAGER_SWAP): everything below up to io_lock. */
	struct umbra_mutex lock;
	uint64_t *used;			/* bitmap: slot allocated */
	uint64_t *valid;		/* bitmap: slot holds a written page */
	uint32_t *crc;			/* [nr_slots]: crc32 of a valid slot */
	uint64_t cursor;		/* next-fit: where the next search starts */
	struct swap_inject inject[PAGER_INJECT_NR];
	struct pager_swap_stats st;	/* nr_slots, slots_* kept here too */

	/* io_lock (UMBRA_LOCK_RANK_PAGER_SWAP_IO): the ring and the scratch
	 * of the chunk in flight.  Taken before lock when both are held. */
	struct umbra_mutex io_lock;
	struct io_uring ring;
	int broken;			/* a failed submission: -errno for all I/O */
	struct iovec *iov;		/* [depth] */
	uint32_t *done;			/* [depth]: bytes of page i done */
	uint32_t *sum;			/* [depth]: expected / computed crc32 */
	uint8_t *state;			/* [depth]: enum page_state */
};

/* ---- slot map (under lock) ----------------------------------------- */

static bool bit_test(const uint64_t *map, uint64_t i)
{
	return map[i / 64] >> (i % 64) & 1;
}

static void bit_set(uint64_t *map, uint64_t i)
{
	map[i / 64] |= 1ull << (i % 64);
}

static void bit_clear(uint64_t *map, uint64_t i)
{
	map[i / 64] &= ~(1ull << (i % 64));
}

/* The first free slot at or after @from (not wrapping), or nr_slots. */
static uint64_t find_free_from(const struct pager_swap *swap, uint64_t from)
{
	uint64_t nr_words = (swap->nr_slots + 63) / 64;

	for (uint64_t w = from / 64; w < nr_words; w++) {
		uint64_t free_bits = ~swap->used[w];

		if (w == from / 64)
			free_bits &= ~0ull << (from % 64);
		if (free_bits) {
			uint64_t slot = w * 64 + (uint64_t)__builtin_ctzll(free_bits);

			return slot < swap->nr_slots ? slot : swap->nr_slots;
		}
	}
	return swap->nr_slots;
}

int pager_swap_alloc(struct pager_swap *swap, uint64_t *slot)
{
	uint64_t s;
	int ret = 0;

	umbra_mutex_lock(&swap->lock);
	if (swap->st.slots_in_use == swap->nr_slots) {
		swap->st.full_refusals++;
		ret = -ENOSPC;
		goto unlock;
	}
	s = find_free_from(swap, swap->cursor);
	if (s == swap->nr_slots)
		s = find_free_from(swap, 0);
	bit_set(swap->used, s);
	swap->st.slots_in_use++;
	swap->cursor = s + 1 == swap->nr_slots ? 0 : s + 1;
	*slot = s;
unlock:
	umbra_mutex_unlock(&swap->lock);
	return ret;
}

static void slot_invalidate_locked(struct pager_swap *swap, uint64_t slot)
{
	umbra_mutex_assert_held(&swap->lock);
	if (bit_test(swap->valid, slot)) {
		bit_clear(swap->valid, slot);
		swap->st.slots_valid--;
	}
}

void pager_swap_free(struct pager_swap *swap, uint64_t slot)
{
	umbra_mutex_lock(&swap->lock);
	if (slot >= swap->nr_slots || !bit_test(swap->used, slot)) {
#if UMBRA_LOCK_DEBUG
		umbra_lock_violation("pager_swap_free of a slot that is not allocated",
				     swap->lock.name, swap->lock.rank);
#endif
		goto unlock;
	}
	slot_invalidate_locked(swap, slot);
	bit_clear(swap->used, slot);
	swap->st.slots_in_use--;
unlock:
	umbra_mutex_unlock(&swap->lock);
}

void pager_swap_stats(const struct pager_swap *swap, struct pager_swap_stats *st)
{
	/* The lock is the only state a reader changes: cast it away there. */
	struct umbra_mutex *lock = (struct umbra_mutex *)&swap->lock;

	umbra_mutex_lock(lock);
	*st = swap->st;
	umbra_mutex_unlock(lock);
}

int pager_swap_fd(const struct pager_swap *swap)
{
	return swap->fd;
}

/* ---- fault injection (under lock) ------------------------------------ */

int pager_swap_inject(struct pager_swap *swap, enum pager_inject_kind kind, uint64_t n, int err)
{
	if ((unsigned int)kind >= PAGER_INJECT_NR)
		return -EINVAL;
	if (kind != PAGER_INJECT_CORRUPT && n && (err >= 0 || err < -4095))
		return -EINVAL;
	umbra_mutex_lock(&swap->lock);
	swap->inject[kind].countdown = n;
	swap->inject[kind].err = err;
	umbra_mutex_unlock(&swap->lock);
	return 0;
}

/* True when the armed @kind fires for this page (then it disarms). */
static bool inject_fires_locked(struct pager_swap *swap, enum pager_inject_kind kind)
{
	struct swap_inject *in = &swap->inject[kind];

	umbra_mutex_assert_held(&swap->lock);
	if (!in->countdown)
		return false;
	return --in->countdown == 0;
}

/* ---- batched I/O through the ring (under io_lock) -------------------- */

static uint32_t page_crc(const void *buf)
{
	return (uint32_t)crc32(crc32(0L, Z_NULL, 0), buf, PAGER_SLOT_SIZE);
}

/*
 * Queues one vectored read or write for the run of pending pages starting
 * at @first of ios[0..n): the pages after it whose slots follow on and that
 * have nothing done yet.  Returns the index after the run.
 */
static unsigned int queue_run(struct pager_swap *swap, struct pager_io *ios, unsigned int first,
			      unsigned int n, bool write)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&swap->ring);
	unsigned int end = first + 1;
	uint64_t off = ios[first].slot * PAGER_SLOT_SIZE + swap->done[first];
	int fd = swap->fixed_file ? 0 : swap->fd;

	while (end < n && ios[end].result == IO_PENDING && swap->done[end] == 0 &&
	       ios[end].slot == ios[end - 1].slot + 1)
		end++;
	for (unsigned int i = first; i < end; i++) {
		swap->iov[i].iov_base = (char *)ios[i].buf + swap->done[i];
		swap->iov[i].iov_len = PAGER_SLOT_SIZE - swap->done[i];
	}
	/* The ring has depth entries and a chunk at most depth pages. */
	if (write)
		io_uring_prep_writev(sqe, fd, &swap->iov[first], end - first, off);
	else
		io_uring_prep_readv(sqe, fd, &swap->iov[first], end - first, off);
	if (swap->fixed_file)
		sqe->flags |= IOSQE_FIXED_FILE;
	io_uring_sqe_set_data64(sqe, first);
	return end;
}

/*
 * Accounts @res bytes (or -errno) of the run starting at @first: full
 * pages are done (result 0), a partial page keeps its progress in done[]
 * and stays pending with the rest, to be queued again.  A run that moved
 * no byte fails with @res or, at 0 bytes, -EIO (end of file, a file that
 * would not grow).
 */
static void complete_run(struct pager_swap *swap, struct pager_io *ios, unsigned int first,
			 unsigned int n, int res)
{
	unsigned int i = first;

	if (res == -EINTR || res == -EAGAIN)
		return;			/* queued again as it was */
	if (res <= 0) {
		int err = res < 0 ? res : -EIO;

		do
			ios[i++].result = err;
		while (i < n && ios[i].result == IO_PENDING && swap->done[i] == 0 &&
		       ios[i].slot == ios[i - 1].slot + 1);
		return;
	}
	for (uint32_t left = (uint32_t)res; left; i++) {
		uint32_t step = PAGER_SLOT_SIZE - swap->done[i];

		if (step > left)
			step = left;
		swap->done[i] += step;
		left -= step;
		if (swap->done[i] == PAGER_SLOT_SIZE)
			ios[i].result = 0;
	}
}

static void fail_pending(struct pager_io *ios, unsigned int n, int err)
{
	for (unsigned int i = 0; i < n; i++)
		if (ios[i].result == IO_PENDING)
			ios[i].result = err;
}

/* Submits the @queued SQEs without waiting; 0 or -errno. */
static int submit_all(struct pager_swap *swap, unsigned int queued)
{
	unsigned int submitted = 0;
	int ret;

	while (submitted < queued) {
		ret = io_uring_submit(&swap->ring);
		if (ret == -EINTR || ret == -EAGAIN)
			continue;
		if (ret < 0)
			return ret;
		submitted += (unsigned int)ret;
	}
	umbra_mutex_lock(&swap->lock);
	swap->st.submissions++;
	umbra_mutex_unlock(&swap->lock);
	return 0;
}

/*
 * Waits for the @queued completions of a submission and accounts them:
 * one system call for all of them (a wait per completion would sleep and
 * be woken once per request).
 */
static void reap_all(struct pager_swap *swap, struct pager_io *ios, unsigned int n,
		     unsigned int queued)
{
	unsigned int reaped = 0;

	while (reaped < queued) {
		struct io_uring_cqe *cqe;
		unsigned int head, seen = 0;
		int ret = io_uring_wait_cqe_nr(&swap->ring, &cqe, queued - reaped);

		/* Only -EINTR is possible with SQEs in flight; giving up
		 * would let the kernel write into freed buffers. */
		if (ret == -EINTR)
			continue;
		if (ret < 0)
			abort();
		io_uring_for_each_cqe(&swap->ring, head, cqe) {
			complete_run(swap, ios, (unsigned int)io_uring_cqe_get_data64(cqe), n, cqe->res);
			seen++;
		}
		io_uring_cq_advance(&swap->ring, seen);
		reaped += seen;
	}
}

/* The crc32 of every page of a write still to be done, into sum[]. */
static void sum_pending(struct pager_swap *swap, const struct pager_io *ios, unsigned int n)
{
	for (unsigned int i = 0; i < n; i++)
		if (ios[i].result == IO_PENDING)
			swap->sum[i] = page_crc(ios[i].buf);
}

/*
 * Does the I/O of every pending page of ios[0..n) (n <= depth): queues a
 * run per stretch of consecutive slots, submits them all at once, waits for
 * every completion, and again for what short transfers left.  A write's
 * checksums are computed between the submission and the wait, while the
 * kernel's workers copy the pages of the writes it could not do inline.
 * A failed submission fails the pages it carried.
 */
static void do_chunk_io(struct pager_swap *swap, struct pager_io *ios, unsigned int n, bool write)
{
	umbra_mutex_assert_held(&swap->io_lock);
	if (swap->broken) {
		fail_pending(ios, n, swap->broken);
		return;
	}
	memset(swap->done, 0, n * sizeof(*swap->done));
	for (bool first = true;; first = false) {
		unsigned int queued = 0;
		int ret;

		for (unsigned int i = 0; i < n;) {
			if (ios[i].result != IO_PENDING) {
				i++;
				continue;
			}
			i = queue_run(swap, ios, i, n, write);
			queued++;
		}
		if (!queued)
			return;
		ret = submit_all(swap, queued);
		if (ret < 0) {
			/* The kernel may hold SQEs that point at this chunk's
			 * buffers: the ring is not used again. */
			swap->broken = ret;
			fail_pending(ios, n, ret);
			return;
		}
		if (write && first)
			sum_pending(swap, ios, n);
		reap_all(swap, ios, n, queued);
	}
}

/* ---- write and read ------------------------------------------------- */

/* Flips one byte of @slot in the file (PAGER_INJECT_CORRUPT); false if
 * the file would not let it. */
static bool corrupt_slot(struct pager_swap *swap, uint64_t slot)
{
	off_t off = (off_t)(slot * PAGER_SLOT_SIZE + PAGER_SLOT_SIZE / 2);
	uint8_t byte;

	if (pread(swap->fd, &byte, 1, off) != 1)
		return false;
	byte ^= 0xff;
	return pwrite(swap->fd, &byte, 1, off) == 1;
}

static bool slot_is_allocated_locked(struct pager_swap *swap, uint64_t slot)
{
	umbra_mutex_assert_held(&swap->lock);
	return slot < swap->nr_slots && bit_test(swap->used, slot);
}

/* Decides page i's fate before its write: refused, injected error, or I/O. */
static void write_prepare_locked(struct pager_swap *swap, struct pager_io *io, unsigned int i)
{
	swap->state[i] = PAGE_REFUSED;
	io->result = -EINVAL;
	if (!slot_is_allocated_locked(swap, io->slot))
		return;
	slot_invalidate_locked(swap, io->slot);
	swap->state[i] = PAGE_IO;
	io->result = IO_PENDING;
	if (inject_fires_locked(swap, PAGER_INJECT_WRITE_ERROR))
		io->result = swap->inject[PAGER_INJECT_WRITE_ERROR].err;
	else if (inject_fires_locked(swap, PAGER_INJECT_CORRUPT))
		swap->state[i] = PAGE_IO_CORRUPT;
}

/* Records page i's checksum and counts it, after its write. */
static void write_finish_locked(struct pager_swap *swap, struct pager_io *io, unsigned int i)
{
	umbra_mutex_assert_held(&swap->lock);
	if (swap->state[i] == PAGE_REFUSED)
		return;
	if (io->result) {
		swap->st.write_errors++;
		return;
	}
	swap->st.writes++;
	swap->st.bytes_written += PAGER_SLOT_SIZE;
	if (!slot_is_allocated_locked(swap, io->slot))
		return;		/* freed meanwhile, against the contract */
	swap->crc[io->slot] = swap->sum[i];
	bit_set(swap->valid, io->slot);
	swap->st.slots_valid++;
}

static void write_chunk(struct pager_swap *swap, struct pager_io *ios, unsigned int n)
{
	umbra_mutex_lock(&swap->lock);
	for (unsigned int i = 0; i < n; i++)
		write_prepare_locked(swap, &ios[i], i);
	umbra_mutex_unlock(&swap->lock);
	do_chunk_io(swap, ios, n, true);
	for (unsigned int i = 0; i < n; i++) {
		/* sum[i] was computed during the I/O (do_chunk_io).  Where
		 * the file cannot be damaged, the recorded checksum is: the
		 * next read fails its check all the same. */
		if (!ios[i].result && swap->state[i] == PAGE_IO_CORRUPT &&
		    !corrupt_slot(swap, ios[i].slot))
			swap->sum[i] ^= 1;
	}
	umbra_mutex_lock(&swap->lock);
	for (unsigned int i = 0; i < n; i++)
		write_finish_locked(swap, &ios[i], i);
	umbra_mutex_unlock(&swap->lock);
}

/* Decides page i's fate before its read, and notes its expected checksum. */
static void read_prepare_locked(struct pager_swap *swap, struct pager_io *io, unsigned int i)
{
	swap->state[i] = PAGE_REFUSED;
	io->result = -EINVAL;
	if (!slot_is_allocated_locked(swap, io->slot))
		return;
	io->result = -ENODATA;
	if (!bit_test(swap->valid, io->slot))
		return;
	swap->state[i] = PAGE_IO;
	swap->sum[i] = swap->crc[io->slot];
	io->result = IO_PENDING;
	if (inject_fires_locked(swap, PAGER_INJECT_READ_ERROR))
		io->result = swap->inject[PAGER_INJECT_READ_ERROR].err;
}

static void read_finish_locked(struct pager_swap *swap, struct pager_io *io, unsigned int i)
{
	umbra_mutex_assert_held(&swap->lock);
	if (swap->state[i] == PAGE_REFUSED)
		return;
	if (io->result == -EBADMSG) {
		swap->st.checksum_failures++;
	} else if (io->result) {
		swap->st.read_errors++;
	} else {
		swap->st.reads++;
		swap->st.bytes_read += PAGER_SLOT_SIZE;
	}
}

static void read_chunk(struct pager_swap *swap, struct pager_io *ios, unsigned int n)
{
	umbra_mutex_lock(&swap->lock);
	for (unsigned int i = 0; i < n; i++)
		read_prepare_locked(swap, &ios[i], i);
	umbra_mutex_unlock(&swap->lock);
	do_chunk_io(swap, ios, n, false);
	for (unsigned int i = 0; i < n; i++)
		if (!ios[i].result && page_crc(ios[i].buf) != swap->sum[i])
			ios[i].result = -EBADMSG;
	umbra_mutex_lock(&swap->lock);
	for (unsigned int i = 0; i < n; i++)
		read_finish_locked(swap, &ios[i], i);
	umbra_mutex_unlock(&swap->lock);
}

/* Runs @chunk over ios[0..n) a queue depth at a time under io_lock; the
 * first page's error in @ios order, or 0. */
static int do_batch(struct pager_swap *swap, struct pager_io *ios, unsigned int n,
		    void (*chunk)(struct pager_swap *, struct pager_io *, unsigned int))
{
	umbra_mutex_lock(&swap->io_lock);
	for (unsigned int i = 0; i < n; i += swap->depth)
		chunk(swap, ios + i, n - i < swap->depth ? n - i : swap->depth);
	umbra_mutex_unlock(&swap->io_lock);
	for (unsigned int i = 0; i < n; i++)
		if (ios[i].result)
			return ios[i].result;
	return 0;
}

/* A swap batch's span in a --trace: pages, the first page's swap slot, the
 * first error. */
static void trace_batch(const char *name, uint64_t t0, const struct pager_io *ios, unsigned int n,
			int ret)
{
	umbra_trace_span(UMBRA_TRACE_SWAP, name, t0, &(struct umbra_trace_args){
		.key = { "pages", "slot", "errno" },
		.val = { n, n ? ios[0].slot : 0, ret < 0 ? (uint64_t)-ret : 0 } });
}

int pager_swap_write(struct pager_swap *swap, struct pager_io *ios, unsigned int n)
{
	const uint64_t t0 = umbra_trace_begin_ns(UMBRA_TRACE_SWAP);
	const int ret = do_batch(swap, ios, n, write_chunk);

	if (t0)
		trace_batch("swap out", t0, ios, n, ret);
	return ret;
}

int pager_swap_read(struct pager_swap *swap, struct pager_io *ios, unsigned int n)
{
	const uint64_t t0 = umbra_trace_begin_ns(UMBRA_TRACE_SWAP);
	const int ret = do_batch(swap, ios, n, read_chunk);

	if (t0)
		trace_batch("swap in", t0, ios, n, ret);
	return ret;
}

/* ---- create / destroy ------------------------------------------------ */

/* Opens cfg->path, or a temporary file unlinked at once; fd or -errno. */
static int swap_open(const char *path)
{
	const char *dir = getenv("TMPDIR");
	char tmpl[4096];
	int fd;

	if (path) {
		fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
		return fd < 0 ? -errno : fd;
	}
	if (!dir || !*dir)
		dir = "/tmp";
	if (snprintf(tmpl, sizeof(tmpl), "%s/umbra-swap-XXXXXX", dir) >= (int)sizeof(tmpl))
		return -ENAMETOOLONG;
	fd = mkostemp(tmpl, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	unlink(tmpl);
	return fd;
}

/* The ring and the per-chunk scratch arrays; 0 or -errno. */
static int swap_ring_init(struct pager_swap *swap)
{
	int ret;

	swap->iov = calloc(swap->depth, sizeof(*swap->iov));
	swap->done = calloc(swap->depth, sizeof(*swap->done));
	swap->sum = calloc(swap->depth, sizeof(*swap->sum));
	swap->state = calloc(swap->depth, sizeof(*swap->state));
	if (!swap->iov || !swap->done || !swap->sum || !swap->state)
		return -ENOMEM;
	/* Completions from the kernel's workers do not interrupt the thread
	 * with an IPI each (it waits in io_uring_enter for all of them
	 * anyway); a kernel without it (before 5.19) gets a plain ring. */
	ret = io_uring_queue_init(swap->depth, &swap->ring, IORING_SETUP_COOP_TASKRUN);
	if (ret == -EINVAL)
		ret = io_uring_queue_init(swap->depth, &swap->ring, 0);
	if (ret < 0)
		return ret;
	/* A registered file saves a file-table lookup per I/O; optional. */
	swap->fixed_file = io_uring_register_files(&swap->ring, &swap->fd, 1) == 0;
	return 0;
}

static void swap_free_memory(struct pager_swap *swap)
{
	free(swap->iov);
	free(swap->done);
	free(swap->sum);
	free(swap->state);
	free(swap->crc);
	free(swap->valid);
	free(swap->used);
	free(swap);
}

int pager_swap_create(const struct pager_swap_config *cfg, struct pager_swap **out)
{
	struct pager_swap *swap;
	uint64_t nr_words;
	int ret;

	if (!cfg || !out || cfg->nr_slots == 0 || cfg->nr_slots > PAGER_SWAP_MAX_SLOTS ||
	    cfg->queue_depth > PAGER_SWAP_MAX_QUEUE_DEPTH)
		return -EINVAL;
	swap = calloc(1, sizeof(*swap));
	if (!swap)
		return -ENOMEM;
	swap->fd = -1;
	swap->nr_slots = cfg->nr_slots;
	swap->st.nr_slots = cfg->nr_slots;
	swap->depth = cfg->queue_depth ? cfg->queue_depth : PAGER_SWAP_DEFAULT_QUEUE_DEPTH;
	nr_words = (cfg->nr_slots + 63) / 64;
	swap->used = calloc(nr_words, sizeof(*swap->used));
	swap->valid = calloc(nr_words, sizeof(*swap->valid));
	swap->crc = calloc(cfg->nr_slots, sizeof(*swap->crc));
	ret = -ENOMEM;
	if (!swap->used || !swap->valid || !swap->crc)
		goto free_memory;
	ret = swap_open(cfg->path);
	if (ret < 0)
		goto free_memory;
	swap->fd = ret;
	if (ftruncate(swap->fd, (off_t)(cfg->nr_slots * PAGER_SLOT_SIZE)) < 0) {
		ret = -errno;
		goto close_fd;
	}
	ret = swap_ring_init(swap);
	if (ret < 0)
		goto close_fd;
	umbra_mutex_init(&swap->lock, "pager_swap.lock", UMBRA_LOCK_RANK_PAGER_SWAP);
	umbra_mutex_init(&swap->io_lock, "pager_swap.io_lock", UMBRA_LOCK_RANK_PAGER_SWAP_IO);
	*out = swap;
	return 0;
close_fd:
	close(swap->fd);
free_memory:
	swap_free_memory(swap);
	return ret;
}

void pager_swap_destroy(struct pager_swap *swap)
{
	if (!swap)
		return;
	/* Unregistering drops the ring's reference to the file now; the
	 * ring's own teardown is deferred by the kernel. */
	if (swap->fixed_file)
		io_uring_unregister_files(&swap->ring);
	io_uring_queue_exit(&swap->ring);
	close(swap->fd);
	umbra_mutex_exit(&swap->io_lock);
	umbra_mutex_exit(&swap->lock);
	swap_free_memory(swap);
}
