/*
 * pager/: the host pager library (docs/pager.md is the design as built,
 * docs/locking.md the lock order).
 *
 * Pieces, one mechanism per file:
 *   swap.c   the swap file: fixed 4 KiB slots, a slot allocator, a checksum
 *            per slot, batched I/O through one io_uring
 *
 * Errors are 0 or -errno; the library never prints or exits.
 */
#ifndef UMBRA_PAGER_H
#define UMBRA_PAGER_H

#include <stdint.h>

/* ---- swap file ------------------------------------------------------- */

/* One slot holds one page. */
#define PAGER_SLOT_SIZE 4096u
#define PAGER_SLOT_SHIFT 12
/* Most slots one swap file can have (2^32 slots: 16 TiB). */
#define PAGER_SWAP_MAX_SLOTS (1ull << 32)
/* Pages one io_uring submission carries unless the config says otherwise;
 * a larger batch is cut into submissions of this many pages. */
#define PAGER_SWAP_DEFAULT_QUEUE_DEPTH 512u
/* At most one iovec per page of a merged run: IOV_MAX (1024). */
#define PAGER_SWAP_MAX_QUEUE_DEPTH 1024u

struct pager_swap;

struct pager_swap_config {
	/* The file, created (mode 0600) or truncated, opened O_CLOEXEC.  NULL:
	 * a temporary file in $TMPDIR (or /tmp), unlinked as soon as it is
	 * open, so that it is gone at destroy and if the process dies. */
	const char *path;
	/* Capacity in 4 KiB slots, 1..PAGER_SWAP_MAX_SLOTS.  The file is sized
	 * to it with ftruncate: sparse, it takes disk space as slots are
	 * written. */
	uint64_t nr_slots;
	/* Most pages per io_uring submission (the ring's size), 0 for
	 * PAGER_SWAP_DEFAULT_QUEUE_DEPTH, at most PAGER_SWAP_MAX_QUEUE_DEPTH. */
	unsigned int queue_depth;
};

/*
 * Creates a swap file of @cfg->nr_slots free slots and its io_uring.
 * May block (file creation).  Returns 0 and sets *@out; -EINVAL for a bad
 * config; -ENOMEM; or the -errno of open/mkstemp, ftruncate or
 * io_uring_queue_init.
 */
int pager_swap_create(const struct pager_swap_config *cfg, struct pager_swap **out);
/* Closes the file (a temporary one is already unlinked) and frees the
 * swap.  No call on @swap may be running.  NULL is allowed. */
void pager_swap_destroy(struct pager_swap *swap);

/*
 * Allocates a free slot and sets *@slot.  Slots are handed out next-fit
 * (the one after the last allocated, wrapping), so that the slots of one
 * batch of allocations are usually consecutive and their I/O is merged.
 * The slot holds no valid content until a pager_swap_write() of it
 * succeeds.  Thread-safe; takes the swap's lock briefly, never waits for
 * I/O.  Returns 0, or -ENOSPC when every slot is in use (counted in
 * full_refusals).
 */
int pager_swap_alloc(struct pager_swap *swap, uint64_t *slot);
/* Frees @slot, allocated and with no I/O of it running; its content is
 * forgotten.  Thread-safe; takes the swap's lock briefly.  Debug builds
 * abort on a slot that is not allocated; release builds ignore it. */
void pager_swap_free(struct pager_swap *swap, uint64_t slot);

/* One page of a batch.  @buf is 4 KiB (any alignment); @result is set by
 * the call: 0 or -errno for this page. */
struct pager_io {
	uint64_t slot;
	void *buf;
	int result;
};

/*
 * Writes a batch of @n pages, ios[i].buf to slot ios[i].slot, and records
 * each slot's checksum (crc32).  The pages go to the kernel in one io_uring
 * submission per queue depth of pages (not one system call per
 * page), pages of consecutive slots (consecutive in @ios too) merged into
 * one vectored write; short writes are continued.  Each slot must be
 * allocated, appear once in @ios, be written by no other running call,
 * and not be read or freed meanwhile.
 *
 * Per page, ios[i].result: 0 when the page is in its slot; -EINVAL for a
 * slot out of range or not allocated; the file system's -errno (-ENOSPC,
 * -EIO, -EFBIG, ...) or an injected one (testing, below).  A slot whose
 * write failed holds no valid content (a read gives -ENODATA) and stays
 * allocated: the caller keeps its page and may free the slot or retry.
 * Failures are counted in write_errors.  The buffers are only read.
 *
 * Thread-safe: the I/O of concurrent calls is serialised on the swap's
 * ring (io_lock); alloc, free and stats do not wait for it.  May block.
 * Returns 0 if every page was written, else the first page's -errno in
 * @ios order.
 */
int pager_swap_write(struct pager_swap *swap, struct pager_io *ios, unsigned int n);

/*
 * Reads a batch of @n pages, slot ios[i].slot into ios[i].buf, as
 * pager_swap_write() writes them (one submission per queue depth, merged
 * runs, short reads continued), and verifies each page's crc32 against the
 * one recorded when the slot was written.
 *
 * Per page, ios[i].result: 0 when the page is in @buf and matched its
 * checksum; -EBADMSG when it did not (counted in checksum_failures; @buf
 * holds what the file held); -ENODATA for an allocated slot with no valid
 * content (never written, or its last write failed); -EINVAL for a slot
 * out of range or not allocated; -EIO or another -errno of the file
 * (counted in read_errors).  The slot keeps its content and its checksum
 * either way.  Thread-safe and may block, as pager_swap_write().  Returns
 * 0 if every page was read and verified, else the first page's -errno.
 */
int pager_swap_read(struct pager_swap *swap, struct pager_io *ios, unsigned int n);

/* Counters since create; each read under the swap's lock (a consistent
 * snapshot). */
struct pager_swap_stats {
	uint64_t nr_slots;		/* capacity */
	uint64_t slots_in_use;		/* allocated */
	uint64_t slots_valid;		/* allocated and holding a written page */
	uint64_t writes;		/* pages written */
	uint64_t reads;			/* pages read and verified */
	uint64_t bytes_written;
	uint64_t bytes_read;
	uint64_t write_errors;		/* pages whose write failed */
	uint64_t read_errors;		/* pages whose read failed (not checksums) */
	uint64_t checksum_failures;	/* pages read whose crc32 did not match */
	uint64_t full_refusals;		/* pager_swap_alloc() answered -ENOSPC */
	uint64_t submissions;		/* io_uring_submit calls */
};

/* Fills *@st.  Thread-safe; takes the swap's lock briefly. */
void pager_swap_stats(const struct pager_swap *swap, struct pager_swap_stats *st);

/* ---- swap file: testing ----------------------------------------------- */

/*
 * Fault injection, compiled into every build type and off until armed: a
 * test makes the swap fail or corrupt one chosen page of its I/O.  The
 * cost when off is one comparison per page.
 *
 * Counting starts when armed: n = 1 is the next page of that kind of I/O
 * that reaches the file (a page refused with -EINVAL does not count),
 * in @ios order within a batch, across every thread's calls.
 *
 *   PAGER_INJECT_WRITE_ERROR  the n-th page written fails with @err
 *                             (negative errno) without I/O: as a failed
 *                             write of the file system (slot invalid,
 *                             counted in write_errors)
 *   PAGER_INJECT_READ_ERROR   the n-th page read fails with @err without
 *                             I/O (counted in read_errors)
 *   PAGER_INJECT_CORRUPT      the n-th page written is written, then one
 *                             byte of its slot in the file is flipped
 *                             behind the checksum's back: the next read of
 *                             that slot gives -EBADMSG (@err is ignored)
 *
 * Each kind fires once, then disarms itself.  Arming a kind again replaces
 * its count; n = 0 disarms it.  Thread-safe (under the swap's lock).
 * Returns 0, or -EINVAL for an unknown kind or an error kind whose @err is
 * not a negative errno.
 */
enum pager_inject_kind {
	PAGER_INJECT_WRITE_ERROR,
	PAGER_INJECT_READ_ERROR,
	PAGER_INJECT_CORRUPT,
	PAGER_INJECT_NR,
};
int pager_swap_inject(struct pager_swap *swap, enum pager_inject_kind kind, uint64_t n, int err);

/* The swap file's descriptor (tests: to damage a slot behind the swap's
 * back with pwrite at slot * PAGER_SLOT_SIZE).  Valid until destroy. */
int pager_swap_fd(const struct pager_swap *swap);

#endif /* UMBRA_PAGER_H */
