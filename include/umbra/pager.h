/*
 * umbra/pager.h - the host pager: guest memory swapped out to a file and
 * brought back on every access path.
 *
 * Two parts, one per section below:
 *
 *   swap file   checksummed 4 KiB slots in one file, written and read in
 *               batches (pager/swap.c);
 *   pager       memory objects whose pages are evicted to swap slots (host
 *               memory freed with a hole punched in their memfd) and brought
 *               back by userfaultfd on any access (pager/pager.c,
 *               pager/uffd.c).
 *
 * docs/pager.md describes both.  Errors are 0 or a negative errno; the
 * library never prints or exits.
 */
#ifndef UMBRA_PAGER_H
#define UMBRA_PAGER_H

#include <stdbool.h>
#include <stdint.h>

#include "umbra/notifier.h"
#include "umbra/shadow.h"

#define PAGER_PAGE_SIZE 4096u

/* ---- swap file ------------------------------------------------------ */

struct pager_swap;

struct pager_swap_config {
	const char *path;	/* NULL: a sparse temp file, removed at destroy */
	uint64_t nr_slots;	/* capacity in 4 KiB slots */
};

/* One page of a batch: the slot, its 4 KiB buffer, and the page's result. */
struct pager_io {
	uint64_t slot;
	void *buf;		/* PAGER_PAGE_SIZE bytes */
	int result;		/* 0 or -errno, per page */
};

struct pager_swap_stats {
	uint64_t nr_slots;	/* capacity */
	uint64_t slots_used;	/* allocated now */
	uint64_t pages_written;
	uint64_t pages_read;
	uint64_t write_errors;
	uint64_t read_errors;	/* I/O errors and checksum mismatches */
};

/*
 * All swap functions are thread-safe (state under the swap's lock) and may
 * block (I/O).
 */
int pager_swap_create(const struct pager_swap_config *cfg, struct pager_swap **out);
void pager_swap_destroy(struct pager_swap *swap);
/* Allocate a free slot into *@slot; -ENOSPC when full. */
int pager_swap_alloc(struct pager_swap *swap, uint64_t *slot);
void pager_swap_free(struct pager_swap *swap, uint64_t slot);
/* Writes a batch (one submission, not one syscall per page), records each
 * slot's checksum; returns 0 if every page was written, else the first
 * -errno (see each result). */
int pager_swap_write(struct pager_swap *swap, struct pager_io *ios, unsigned int n);
/* Reads a batch and verifies each slot's checksum (-EBADMSG on mismatch,
 * -EIO...); returns 0 or the first -errno (see each result). */
int pager_swap_read(struct pager_swap *swap, struct pager_io *ios, unsigned int n);
void pager_swap_stats(const struct pager_swap *swap, struct pager_swap_stats *st);

/* ---- pager ---------------------------------------------------------- */

/*
 * A pager manages memory objects (struct notifier_object) whose pages live in
 * a memfd mapped MAP_SHARED, read-write, at one host address: the mapping the
 * VMM gives KVM as the memslot and the shadow MMU as the slot's host pointer.
 * It registers that mapping with its userfaultfd (missing and write-protect
 * modes), so that:
 *
 *   - an evicted page (a hole in the memfd, its content in a swap slot) is
 *     brought back with its content by whoever touches it: a shadow fault
 *     (the slot's get_page, pager_slot_ops), umbra's own reads and writes, a
 *     vCPU's direct access through KVM; several at once read the slot once;
 *   - a page brought back from swap is mapped write-protected and keeps its
 *     slot: evicting it again before anything wrote it costs no I/O (the swap
 *     cache); the first write is caught and makes it dirty;
 *   - a page being evicted is write-protected from before its content is
 *     copied until its hole is punched, so no write is lost.
 *
 * A hole that was never evicted is a page nobody wrote: it is filled with
 * zeros.  Only the registered mapping is covered: any other mapping of the
 * memfd, or write()/read() on it, bypasses the pager (docs/pager.md).
 *
 * Threads: one userfaultfd handler thread per pager, started by
 * pager_create().  Every function below may block.
 *
 * Locks: each object's lock (UMBRA_LOCK_RANK_PAGER_OBJECT) guards its page
 * states and counters; it is a leaf held for no call out of the pager (no
 * swap I/O, no notifier call, no ioctl).  pager_evict() and get_page run the
 * notifier and swap calls with no pager lock held; their callers must hold no
 * shadow lock (the invalidation's callbacks take mmu_lock).
 */
struct pager;

/* Counters of one object, or of all (pager_stats with id -1). */
struct pager_stats {
	uint64_t npages;		/* size of the object(s) in pages */
	uint64_t resident;		/* pages not swapped out (holes included) */
	uint64_t swapped;		/* pages whose content is only in swap */
	uint64_t swapouts_io;		/* evictions that wrote the page */
	uint64_t swapouts_cached;	/* evictions of clean pages: no I/O */
	uint64_t swapins;		/* pages read back from swap */
	uint64_t zero_fills;		/* never-evicted holes filled with zeros */
	uint64_t write_errors;		/* evictions failed: page left resident (no slot, I/O...) */
	uint64_t read_errors;		/* swap-ins that failed (page stays out) */
	uint64_t host_bytes;		/* memory of the memfd(s): st_blocks * 512 */
};

/*
 * Create a pager that swaps to @swap (which must outlive it) and start its
 * userfaultfd handler thread.  Returns 0 and *@out, -ENOMEM, or the errno of
 * userfaultfd (tried as a system call, then through /dev/userfaultfd; -EPERM
 * when neither is allowed: vm.unprivileged_userfaultfd is 0 and the process
 * lacks CAP_SYS_PTRACE and access to /dev/userfaultfd) or of its API
 * handshake (-EINVAL when the kernel lacks write-protect on shmem, < 5.19).
 */
int pager_create(struct pager_swap *swap, struct pager **out);

/*
 * Bring every swapped-out page of every object back (so nothing is lost),
 * unregister the mappings, stop the handler thread, free the slots and the
 * pager.  Nothing else may use the pager while it runs or after; the memfds
 * and mappings stay the caller's.
 */
void pager_destroy(struct pager *pager);

/*
 * Put @obj (of @size bytes, a multiple of PAGER_PAGE_SIZE equal to its page
 * count) under the pager: @memfd backs it, mapped MAP_SHARED read-write at
 * @host for @size bytes.  Takes a reference on @obj.  The mapping is
 * registered with the userfaultfd; the memfd must be a shmem memfd (holes
 * punched with fallocate).  Returns 0 and the object's id in *@id (>= 0),
 * -EINVAL (bad size or alignment), -ENOSPC (PAGER_MAX_OBJECTS), -ENOMEM, or
 * the errno of the registration.
 */
#define PAGER_MAX_OBJECTS 64
int pager_add_object(struct pager *pager, struct notifier_object *obj, int memfd, void *host,
		     uint64_t size, int *id);

/*
 * Evict pages [@first, @first + @npages) of object @id, in one batch:
 *
 *   1. pages not resident or busy (being evicted or swapped in by another
 *      thread) are skipped;
 *   2. for each contiguous run of the rest, one SWAPOUT invalidation (range
 *      start) makes every VM and vCPU drop them, and the run is
 *      write-protected in the registered mapping;
 *   3. the dirty pages are copied (pread on the memfd) and written to new
 *      swap slots in one pager_swap_write(); clean pages (swapped in and not
 *      written since) keep their slot and cost no I/O;
 *   4. every page whose content is safely in its slot is released with
 *      fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE); a page whose
 *      slot could not be allocated or written stays resident, its content
 *      intact, counted in write_errors;
 *   5. the protection is lifted, the waiting writers woken, each run's
 *      invalidation ended.
 *
 * Caller holds no shadow or pager lock.  Returns 0 if every resident page of
 * the range was evicted (skipped pages are not errors), the first -errno of a
 * page that stayed resident (-ENOSPC, -EIO...), -EINVAL for a bad id or range,
 * -ENOMEM, or the error of an invalidation (that run stays resident).
 */
int pager_evict(struct pager *pager, int id, uint64_t first, uint64_t npages);

/*
 * Make page @page of object @id resident with its content: if it is swapped
 * out, read its slot and install it (once, however many threads ask); if
 * another thread is evicting or swapping it in, wait for that.  Returns 0,
 * -EINVAL, or the read's error (-EIO, -EBADMSG: the page stays swapped out).
 * Caller holds no shadow or pager lock.
 */
int pager_get_page(struct pager *pager, int id, uint64_t page);

/* True if page @page of object @id is swapped out (a hole in its memfd). */
bool pager_is_swapped(struct pager *pager, int id, uint64_t page);

/*
 * A shadow slot for object @id: fills @slot's obj, host, ops
 * (pager_slot_ops, whose get_page is pager_get_page) and priv; the caller
 * sets mpa and readonly.
 */
void pager_object_slot(struct pager *pager, int id, struct shadow_slot *slot);
extern const struct shadow_slot_ops pager_slot_ops;

/*
 * Counters of object @id, or the sum over every object when @id is -1
 * (host_bytes from fstat() of each memfd).  Returns 0, -EINVAL, or fstat's
 * error.
 */
int pager_stats(struct pager *pager, int id, struct pager_stats *st);

#endif /* UMBRA_PAGER_H */
