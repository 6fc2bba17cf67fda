/*
 * umbra/pager.h - the host pager: guest memory swapped out to a file and
 * brought back on every access path.
 *
 * Pieces, one mechanism per file:
 *   swap.c   the swap file: fixed 4 KiB slots, a slot allocator, a checksum
 *            per slot, batched I/O through one io_uring;
 *   pager.c, evict.c, uffd.c
 *            memory objects whose pages are evicted to swap slots (host
 *            memory freed with a hole punched in their memfd) and brought
 *            back by userfaultfd on any access;
 *   clock.c  the CLOCK (second-chance) victim policy over the pages of
 *            several objects, by the notifier's young functions (private:
 *            pager/clock.h);
 *   reclaim.c
 *            the memory budget: a reclaimer thread and direct reclaim that
 *            evict victims chosen by a policy to keep present pages under
 *            a limit.
 *
 * docs/pager.md describes them, docs/locking.md the lock order.  Errors are
 * 0 or a negative errno; the library never prints or exits.
 */
#ifndef UMBRA_PAGER_H
#define UMBRA_PAGER_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "umbra/notifier.h"
#include "umbra/shadow.h"

#define PAGER_PAGE_SIZE 4096u

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
 * zeros on first touch.  A page whose slot cannot be read back is lost: the
 * user is told (ops.page_lost) before the faulting thread is released onto
 * a poison page (PAGER_POISON_WORD), so that no thread waits forever.  A
 * pinned page (pager_pin) is never evicted.  A page nobody needs any more
 * (pager_discard) becomes a hole again, its memory and slot freed.  Only the
 * registered mapping is covered: any other mapping of the memfd, or
 * write()/read() on it, bypasses the pager (docs/pager.md).
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
	uint64_t resident;		/* pages neither swapped out nor lost (holes included) */
	uint64_t swapped;		/* pages whose content is only in swap */
	uint64_t swapouts_io;		/* evictions that wrote the page */
	uint64_t swapouts_cached;	/* evictions of clean pages: no I/O */
	uint64_t swapins;		/* pages read back from swap */
	uint64_t zero_fills;		/* never-evicted holes filled with zeros */
	uint64_t write_errors;		/* evictions failed: page left resident (no slot, I/O...) */
	uint64_t busy_refusals;		/* evictions a subscriber refused without blocking
					 * (pager_set_nonblocking: -EAGAIN): page left resident */
	uint64_t read_errors;		/* swap-ins whose read failed (the page is lost) */
	uint64_t host_bytes;		/* memory of the memfd(s): st_blocks * 512 */
	uint64_t present;		/* pages in host memory (what the budget counts) */
	uint64_t pinned;		/* pages pinned at least once */
	uint64_t refaults;		/* swap-ins within the refault window */
	uint64_t lost;			/* pages that could not be brought back (stay lost until discarded) */
	uint64_t discarded_pages;	/* pages that held memory or a slot, made holes by pager_discard */
	/* Latency of swap-ins (from the decision to read the slot to the page
	 * installed), from a histogram with buckets 2^(k/4) ns per object
	 * (summed for id -1): a percentile is its bucket's upper bound, at
	 * most the maximum; 0 without swap-ins. */
	uint64_t swapin_ns_p50, swapin_ns_p99, swapin_ns_max;
};

/*
 * Callbacks to the pager's user.
 */
struct pager_ops {
	/* Page @page of object @id could not be brought back from swap (@err:
	 * -EIO or another read error, -EBADMSG for a checksum mismatch) for
	 * thread @tid: the thread whose access faulted (the userfaultfd
	 * message's thread id, UFFD_FEATURE_THREAD_ID; 0 if the kernel does
	 * not give it), or the caller of pager_get_page()/pager_pin()
	 * (gettid()).  Called once per failed access, before that thread is
	 * released, from the handler thread or the caller, with no pager lock
	 * held.  Must not touch guest memory, block on reclaim or call the
	 * pager; may take leaf locks and send signals (the VMM kicks the
	 * faulting vCPU out of KVM_RUN so it runs no further guest
	 * instruction, and stops its VM).  May be NULL. */
	void (*page_lost)(void *priv, int id, uint64_t page, int err, pid_t tid);
	/* An eviction could not write a page out (@err: -ENOSPC for a full swap
	 * file, -EIO, -EFBIG...); the page stayed resident and intact.  Called
	 * by the reclaiming thread with no pager lock held, at most once per
	 * distinct @err value per pager (the VMM warns once per cause).  May
	 * be NULL. */
	void (*write_error)(void *priv, int err);
};

/*
 * What a thread reads from a lost page: this 8-byte value ("LOSTPAGE" in
 * little-endian bytes) repeated over the 4 KiB.
 */
#define PAGER_POISON_WORD 0x4c4f535450414745ull

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
 * The objects' swapped-out contents will not be needed once the pager is
 * destroyed (a program at exit, whose memfds are closed next): when @discard,
 * pager_destroy frees their slots without reading them back, so that it
 * costs no I/O and brings no memory back; the swapped pages are then holes
 * that read as zeros.  Set before pager_destroy; any thread.
 */
void pager_set_discard_at_destroy(struct pager *pager, bool discard);
/*
 * With @nonblocking, the pager's evictions (reclaim and pager_evict*)
 * invalidate as Linux's OOM reaper does: the range is not blockable
 * (no NOTIFIER_RANGE_MAY_BLOCK), so a subscriber that would have to sleep
 * (a VM whose mmu_lock is busy) answers -EAGAIN; the pages of that range
 * stay resident and intact, each counted in busy_refusals, and are not an
 * error (a later eviction may take them).  Off by default; any thread,
 * for the evictions that start after it.
 */
void pager_set_nonblocking(struct pager *pager, bool nonblocking);

/*
 * Put @obj (of @size bytes, a multiple of PAGER_PAGE_SIZE equal to its page
 * count) under the pager: @memfd backs it, mapped MAP_SHARED read-write at
 * @host for @size bytes.  Takes a reference on @obj.  The pages that hold
 * data in the memfd (lseek SEEK_DATA/SEEK_HOLE) are resident and counted
 * present; the others are holes, filled with zeros on first touch.  The mapping is
 * registered with the userfaultfd; the memfd must be a shmem memfd (holes
 * punched with fallocate).  Returns 0 and the object's id in *@id (>= 0),
 * -EINVAL (bad size or alignment), -ENOSPC (PAGER_MAX_OBJECTS), -ENOMEM, or
 * the errno of the registration.
 */
#define PAGER_MAX_OBJECTS 1024
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

/* One page of one object, for pager_evict_list(). */
struct pager_victim {
	int id;
	uint64_t page;
};

/*
 * Evict the @n pages of @v, of one object or of several, as pager_evict()
 * does a range: the list is sorted by object and page, and every batch of
 * up to 256 victims has one invalidation per contiguous run per object and
 * one pager_swap_write() for the dirty pages of all its objects (one
 * io_uring submission per swap queue depth of pages).  Pages not resident,
 * busy or pinned are skipped; a page listed twice is evicted once.  Caller
 * holds no shadow or pager lock.  Returns 0, the first -errno of a page that
 * stayed resident, -EINVAL (a bad id or page: nothing is evicted), -ENOMEM,
 * or the error of an invalidation.
 */
int pager_evict_list(struct pager *pager, const struct pager_victim *v, unsigned int n);

/*
 * Make page @page of object @id resident with its content: if it is swapped
 * out, read its slot and install it (once, however many threads ask); if it
 * is a never-written hole, fill it with zeros; if another thread is evicting
 * or swapping it in, wait for that.  Before a swap-in or zero fill it lets
 * the budget reclaim (it may evict pages itself).  Returns 0, -EINVAL, or
 * the error of a page that could not be brought back (-EIO, -EBADMSG...):
 * that page is lost for good (a poison page of PAGER_POISON_WORD is
 * installed, ops.page_lost called for the calling thread, here and at
 * every later call).  Caller holds no shadow or pager lock.
 */
int pager_get_page(struct pager *pager, int id, uint64_t page);

/*
 * Make pages [@first, @first + @npages) of object @id resident (each as
 * pager_get_page) and pin them: a pinned page is never evicted (pager_evict
 * and the reclaimer skip it) until as many pager_unpin() calls.  Returns 0,
 * -EINVAL (bad id/range), -EOVERFLOW (a page pinned 65535 times), -ENOMEM,
 * or a swap-in error (the pins this call took are dropped again).  No lock
 * held.
 */
int pager_pin(struct pager *pager, int id, uint64_t first, uint64_t npages);
/* Drops one pin of each page of the range (pinned by pager_pin).  No lock
 * held; never blocks on I/O. */
void pager_unpin(struct pager *pager, int id, uint64_t first, uint64_t npages);

/*
 * Pages [@first, @first + @npages) of object @id hold nothing anyone needs
 * (their last user is gone): each becomes a hole (PAGER_PAGE_HOLE) -- a
 * resident or clean page is punched out of the memfd (fallocate PUNCH_HOLE |
 * KEEP_SIZE), a swapped page's slot is freed, a lost page is cleared (its
 * poison page punched), pins are dropped; a page busy in an eviction or
 * swap-in is waited for first (as the other paths wait for busy pages).
 * Counted in the pager's and the object's statistics
 * (pager_stats.discarded_pages: the pages that held memory or a slot) and
 * present_pages goes down accordingly.  A later access zero-fills as for any
 * hole; the reclaimer and pager_evict never pick a hole.
 *
 * No VM may map the pages: the caller guarantees it (the shadow MMU's
 * put_page says the last mapping went), and no notifier invalidation is
 * made; the punch makes the host kernel's MMU notifier drop what KVM itself
 * maps of them.  An access racing the discard reads the old content or
 * zeros.  Caller holds no shadow or pager lock; may block.  Returns 0,
 * -EINVAL (bad id or range), or the -errno of the punch (the pages of the
 * run it failed on, and those after it, stay as they were; the ones before
 * are discarded).
 */
int pager_discard(struct pager *pager, int id, uint64_t first, uint64_t npages);

/* Set before the first pager_add_object(); @ops is copied. */
void pager_set_ops(struct pager *pager, const struct pager_ops *ops, void *priv);

/* Refault window: a swap-in of a page evicted fewer than @pages evictions
 * ago (over the whole pager) counts as a refault.  Default
 * PAGER_REFAULT_WINDOW_DEFAULT; the VMM sets it to the limit's pages.  Any
 * time, any thread. */
#define PAGER_REFAULT_WINDOW_DEFAULT 65536u
void pager_set_refault_window(struct pager *pager, uint64_t pages);

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

/* ---- budget and reclaim --------------------------------------------- */

/*
 * A memory budget over every object of a pager (docs/pager.md, "The budget
 * and the reclaimer"): present pages (in host memory, pinned included) are
 * kept under a hard limit by a background reclaimer thread, which wakes when
 * they pass high and evicts batches of victims down to low, and by direct
 * reclaim: a thread (not the userfaultfd handler) about to bring a page in
 * at the limit evicts one batch itself first.  The userfaultfd handler never
 * reclaims, so its fills may pass the limit until the reclaimer catches up
 * (counted in over_limit).
 *
 * Victims are chosen by a policy among the evictable pages (resident, idle,
 * not pinned); a batch whose pages could not be written (full swap, I/O
 * error) leaves them resident, reports the error once per cause through
 * pager_ops.write_error, and the reclaimer waits (100 ms doubling to 1.6 s)
 * before it tries again.
 */
enum pager_policy {
	PAGER_POLICY_CLOCK,		/* second chance by access tracking (clock.c) */
	PAGER_POLICY_ROUND_ROBIN,	/* the next evictable page, young or not */
};
struct pager_budget {
	uint64_t limit_pages;	/* hard limit on present pages over all objects (pinned included), > 0 */
	uint64_t high_pages;	/* the reclaimer wakes above this; 0: limit - max(limit/16, 1 batch) (at least 1) */
	uint64_t low_pages;	/* ... and evicts down to this; 0: high - max(limit/16, 1 batch) (at least 0) */
	enum pager_policy policy;
	unsigned int batch_pages; /* victims per eviction batch; 0: 256 */
};
/* Starts the reclaimer thread (registered with liburcu).  Objects added
 * before or after are covered.  Returns 0, -EINVAL (limit 0, high > limit,
 * low >= high when both are given, an unknown policy, a batch over 256),
 * -EALREADY, -ENOMEM, or pthread_create's -errno. */
int pager_budget_start(struct pager *pager, const struct pager_budget *budget);
/* Stops and joins the reclaimer (no-op if none); pager_destroy calls it.
 * Caller holds no pager lock; not from a pager callback. */
void pager_budget_stop(struct pager *pager);
/* Evicts up to @npages pages chosen by the budget's policy (CLOCK without a
 * budget), in the caller: tests and benchmarks.  Returns the pages evicted or
 * -errno (an error only when none was evicted).  Caller registered with
 * liburcu, holding no shadow or pager lock. */
int64_t pager_reclaim(struct pager *pager, uint64_t npages);
struct pager_reclaim_stats {
	uint64_t passes;	/* background reclaim passes (wake-ups that evicted) */
	uint64_t direct;	/* direct reclaims: a filling thread at the limit reclaimed itself */
	uint64_t reclaimed;	/* pages evicted by reclaim (background + direct + pager_reclaim) */
	uint64_t scanned;	/* pages the policy looked at */
	uint64_t backoffs;	/* passes that stopped on errors and waited before trying again */
	uint64_t over_limit;	/* fills past the hard limit (nothing could be evicted, or by the handler) */
	uint64_t peak_present;	/* most present pages seen (sampled at each fill notice and pass) */
};
/* Fills *@st (zeros before the first budget or pager_reclaim).  Any thread;
 * each counter read atomically. */
void pager_reclaim_stats(struct pager *pager, struct pager_reclaim_stats *st);

#endif /* UMBRA_PAGER_H */
