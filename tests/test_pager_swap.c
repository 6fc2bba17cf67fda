/*
 * The pager's swap file (pager/swap.c): round trips through batches,
 * checksums, injected and real I/O errors, a full swap, concurrency.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tests.h"
#include "test_util.h"
#include "umbra/pager.h"

#define PAGE PAGER_SLOT_SIZE

/* A temporary path for a swap file the test opens itself; the file is
 * removed by swap_with_path's caller through unlink_path(). */
struct named_swap {
	char path[64];
	struct pager_swap *swap;
};

static void named_swap_create(struct named_swap *ns, const char *dir, uint64_t nr_slots)
{
	struct pager_swap_config cfg = { .path = ns->path, .nr_slots = nr_slots };
	int fd;

	snprintf(ns->path, sizeof(ns->path), "%s/umbra-test-swap-XXXXXX", dir);
	fd = mkstemp(ns->path);
	ck_assert_int_ge(fd, 0);
	close(fd);
	ck_assert_int_eq(pager_swap_create(&cfg, &ns->swap), 0);
}

static void named_swap_destroy(struct named_swap *ns)
{
	pager_swap_destroy(ns->swap);
	unlink(ns->path);
}

static struct pager_swap *temp_swap(uint64_t nr_slots)
{
	struct pager_swap_config cfg = { .nr_slots = nr_slots };
	struct pager_swap *swap = NULL;

	ck_assert_int_eq(pager_swap_create(&cfg, &swap), 0);
	return swap;
}

/* n pages of random content, and the ios to write them to fresh slots. */
struct batch {
	unsigned int n;
	uint8_t *data;		/* n pages written */
	uint8_t *back;		/* n pages read back */
	struct pager_io *ios;
};

static void batch_init(struct batch *b, struct pager_swap *swap, unsigned int n, uint64_t seed)
{
	b->n = n;
	b->data = aligned_alloc(PAGE, (size_t)n * PAGE);
	b->back = aligned_alloc(PAGE, (size_t)n * PAGE);
	b->ios = calloc(n, sizeof(*b->ios));
	ck_assert(b->data && b->back && b->ios);
	for (size_t i = 0; i < (size_t)n * PAGE / 8; i++)
		((uint64_t *)b->data)[i] = test_rnd(&seed);
	memset(b->back, 0, (size_t)n * PAGE);
	for (unsigned int i = 0; i < n; i++) {
		ck_assert_int_eq(pager_swap_alloc(swap, &b->ios[i].slot), 0);
		b->ios[i].buf = b->data + (size_t)i * PAGE;
	}
}

/* Points the ios at the read-back buffer. */
static void batch_for_read(struct batch *b)
{
	for (unsigned int i = 0; i < b->n; i++) {
		b->ios[i].buf = b->back + (size_t)i * PAGE;
		b->ios[i].result = 12345;
	}
}

static void batch_exit(struct batch *b, struct pager_swap *swap)
{
	for (unsigned int i = 0; i < b->n; i++)
		pager_swap_free(swap, b->ios[i].slot);
	free(b->data);
	free(b->back);
	free(b->ios);
}

static bool page_matches(const struct batch *b, unsigned int i)
{
	return memcmp(b->data + (size_t)i * PAGE, b->back + (size_t)i * PAGE, PAGE) == 0;
}

/* ---- round trips ----------------------------------------------------- */

static const struct {
	unsigned int pages;
	bool shuffled;		/* slots not consecutive: no merged runs */
	unsigned int queue_depth;
} round_trips[] = {
	{ 1, false, 0 },
	{ 7, false, 0 },
	{ 64, false, 0 },
	{ 512, false, 0 },
	{ 64, true, 0 },
	{ 512, true, 0 },
	{ 512, false, 64 },	/* 8 submissions */
	{ 100, true, 16 },
};

START_TEST(test_round_trip_batches)
{
	struct pager_swap_config cfg = { .nr_slots = 2048, .queue_depth = round_trips[_i].queue_depth };
	unsigned int n = round_trips[_i].pages, depth = cfg.queue_depth ? cfg.queue_depth : PAGER_SWAP_DEFAULT_QUEUE_DEPTH;
	uint64_t seed = 42 + (uint64_t)_i;
	struct pager_swap_stats st;
	struct pager_swap *swap;
	struct batch b;

	ck_assert_int_eq(pager_swap_create(&cfg, &swap), 0);
	batch_init(&b, swap, n, seed);
	if (round_trips[_i].shuffled)
		for (unsigned int i = n - 1; i > 0; i--) {
			unsigned int j = (unsigned int)(test_rnd(&seed) % (i + 1));
			uint64_t t = b.ios[i].slot;

			b.ios[i].slot = b.ios[j].slot;
			b.ios[j].slot = t;
		}
	ck_assert_int_eq(pager_swap_write(swap, b.ios, n), 0);
	for (unsigned int i = 0; i < n; i++)
		ck_assert_int_eq(b.ios[i].result, 0);
	pager_swap_stats(swap, &st);
	ck_assert_uint_eq(st.writes, n);
	ck_assert_uint_eq(st.bytes_written, (uint64_t)n * PAGE);
	ck_assert_uint_eq(st.slots_valid, n);
	/* One submission per queue depth of pages, not one per page. */
	ck_assert_uint_eq(st.submissions, (n + depth - 1) / depth);

	batch_for_read(&b);
	ck_assert_int_eq(pager_swap_read(swap, b.ios, n), 0);
	for (unsigned int i = 0; i < n; i++) {
		ck_assert_int_eq(b.ios[i].result, 0);
		ck_assert_msg(page_matches(&b, i), "page %u of %u differs after the round trip", i, n);
	}
	pager_swap_stats(swap, &st);
	ck_assert_uint_eq(st.reads, n);
	ck_assert_uint_eq(st.bytes_read, (uint64_t)n * PAGE);
	ck_assert_uint_eq(st.submissions, 2 * ((n + depth - 1) / depth));
	ck_assert_uint_eq(st.write_errors + st.read_errors + st.checksum_failures, 0);
	batch_exit(&b, swap);
	pager_swap_stats(swap, &st);
	ck_assert_uint_eq(st.slots_in_use, 0);
	ck_assert_uint_eq(st.slots_valid, 0);
	pager_swap_destroy(swap);
}
END_TEST

/* A page rewritten in place reads back as its new content. */
START_TEST(test_rewrite_replaces_content)
{
	struct pager_swap *swap = temp_swap(4);
	struct batch b;

	batch_init(&b, swap, 2, 7);
	ck_assert_int_eq(pager_swap_write(swap, b.ios, 2), 0);
	memset(b.data, 0x5a, PAGE);
	ck_assert_int_eq(pager_swap_write(swap, b.ios, 1), 0);
	batch_for_read(&b);
	ck_assert_int_eq(pager_swap_read(swap, b.ios, 2), 0);
	ck_assert(page_matches(&b, 0) && page_matches(&b, 1));
	batch_exit(&b, swap);
	pager_swap_destroy(swap);
}
END_TEST

/* Slots that are free, out of range or never written are refused, and the
 * other pages of the batch are fine. */
START_TEST(test_bad_slots_refused_per_page)
{
	struct pager_swap *swap = temp_swap(8);
	struct pager_swap_stats st;
	struct batch b;
	uint64_t unwritten;

	batch_init(&b, swap, 4, 9);
	ck_assert_int_eq(pager_swap_alloc(swap, &unwritten), 0);
	b.ios[1].slot = 8;		/* out of range */
	b.ios[2].slot = 7;		/* never allocated */
	ck_assert_int_eq(pager_swap_write(swap, b.ios, 4), -EINVAL);
	ck_assert_int_eq(b.ios[0].result, 0);
	ck_assert_int_eq(b.ios[1].result, -EINVAL);
	ck_assert_int_eq(b.ios[2].result, -EINVAL);
	ck_assert_int_eq(b.ios[3].result, 0);
	batch_for_read(&b);
	b.ios[1].slot = unwritten;
	ck_assert_int_eq(pager_swap_read(swap, b.ios, 4), -ENODATA);
	ck_assert_int_eq(b.ios[0].result, 0);
	ck_assert_int_eq(b.ios[1].result, -ENODATA);
	ck_assert_int_eq(b.ios[2].result, -EINVAL);
	ck_assert_int_eq(b.ios[3].result, 0);
	ck_assert(page_matches(&b, 0) && page_matches(&b, 3));
	pager_swap_stats(swap, &st);
	ck_assert_uint_eq(st.write_errors + st.read_errors, 0);
	pager_swap_free(swap, unwritten);
	b.ios[1].slot = 1;	/* allocated by batch_init: freed by batch_exit */
	b.ios[2].slot = 2;
	batch_exit(&b, swap);
	pager_swap_destroy(swap);
}
END_TEST

/* ---- checksums ------------------------------------------------------- */

/* Damage behind the swap's back (pwrite to the file) and through the hook:
 * both are caught on read, only on the damaged page. */
START_TEST(test_checksum_mismatch_detected)
{
	struct named_swap ns;
	struct pager_swap_stats st;
	struct batch b;
	int fd;
	uint8_t byte = 0;

	named_swap_create(&ns, "/tmp", 16);
	batch_init(&b, ns.swap, 6, 11);
	/* The 5th page written from here is corrupted by the hook. */
	ck_assert_int_eq(pager_swap_inject(ns.swap, PAGER_INJECT_CORRUPT, 5, 0), 0);
	ck_assert_int_eq(pager_swap_write(ns.swap, b.ios, 6), 0);

	fd = open(ns.path, O_RDWR | O_CLOEXEC);
	ck_assert_int_ge(fd, 0);
	off_t off = (off_t)(b.ios[1].slot * PAGE + 100);
	ck_assert_int_eq(pread(fd, &byte, 1, off), 1);
	byte ^= 1;	/* one bit */
	ck_assert_int_eq(pwrite(fd, &byte, 1, off), 1);
	close(fd);

	batch_for_read(&b);
	ck_assert_int_eq(pager_swap_read(ns.swap, b.ios, 6), -EBADMSG);
	for (unsigned int i = 0; i < 6; i++) {
		int want = i == 1 || i == 4 ? -EBADMSG : 0;

		ck_assert_msg(b.ios[i].result == want, "page %u: result %d, expected %d", i,
			      b.ios[i].result, want);
		if (!want)
			ck_assert(page_matches(&b, i));
	}
	pager_swap_stats(ns.swap, &st);
	ck_assert_uint_eq(st.checksum_failures, 2);
	ck_assert_uint_eq(st.reads, 4);
	ck_assert_uint_eq(st.read_errors, 0);
	/* The hook fired once: a rewrite of the slot is clean again. */
	b.ios[4].buf = b.data + 4 * PAGE;
	ck_assert_int_eq(pager_swap_write(ns.swap, &b.ios[4], 1), 0);
	b.ios[4].buf = b.back + 4 * PAGE;
	ck_assert_int_eq(pager_swap_read(ns.swap, &b.ios[4], 1), 0);
	ck_assert(page_matches(&b, 4));
	batch_exit(&b, ns.swap);
	named_swap_destroy(&ns);
}
END_TEST

/* ---- injected I/O errors ----------------------------------------------- */

static const struct {
	enum pager_inject_kind kind;
	uint64_t nth;
	int err;
} injected[] = {
	{ PAGER_INJECT_WRITE_ERROR, 1, -EIO },
	{ PAGER_INJECT_WRITE_ERROR, 33, -ENOSPC },
	{ PAGER_INJECT_WRITE_ERROR, 64, -EIO },
	{ PAGER_INJECT_READ_ERROR, 1, -EIO },
	{ PAGER_INJECT_READ_ERROR, 40, -EIO },
};

START_TEST(test_injected_error_per_page)
{
	unsigned int bad = (unsigned int)injected[_i].nth - 1;
	bool on_write = injected[_i].kind == PAGER_INJECT_WRITE_ERROR;
	struct pager_swap *swap = temp_swap(128);
	struct pager_swap_stats st;
	struct batch b;
	int ret;

	batch_init(&b, swap, 64, 13 + (uint64_t)_i);
	ck_assert_int_eq(pager_swap_inject(swap, injected[_i].kind, injected[_i].nth, injected[_i].err), 0);
	ret = pager_swap_write(swap, b.ios, 64);
	ck_assert_int_eq(ret, on_write ? injected[_i].err : 0);
	batch_for_read(&b);
	ret = pager_swap_read(swap, b.ios, 64);
	/* A failed write leaves its slot without content: -ENODATA on read. */
	ck_assert_int_eq(ret, on_write ? -ENODATA : injected[_i].err);
	for (unsigned int i = 0; i < 64; i++) {
		if (i == bad) {
			ck_assert_int_eq(b.ios[i].result, on_write ? -ENODATA : injected[_i].err);
			continue;
		}
		ck_assert_msg(b.ios[i].result == 0, "page %u: %d", i, b.ios[i].result);
		ck_assert(page_matches(&b, i));
	}
	pager_swap_stats(swap, &st);
	ck_assert_uint_eq(st.write_errors, on_write ? 1 : 0);
	ck_assert_uint_eq(st.read_errors, on_write ? 0 : 1);
	ck_assert_uint_eq(st.writes, on_write ? 63 : 64);
	ck_assert_uint_eq(st.reads, 63);
	ck_assert_uint_eq(st.slots_valid, on_write ? 63 : 64);
	ck_assert_uint_eq(st.slots_in_use, 64);
	/* Fired once: the same batch again is clean. */
	for (unsigned int i = 0; i < 64; i++)
		b.ios[i].buf = b.data + (size_t)i * PAGE;
	ck_assert_int_eq(pager_swap_write(swap, b.ios, 64), 0);
	batch_for_read(&b);
	ck_assert_int_eq(pager_swap_read(swap, b.ios, 64), 0);
	batch_exit(&b, swap);
	pager_swap_destroy(swap);
}
END_TEST

START_TEST(test_inject_contract)
{
	struct pager_swap *swap = temp_swap(4);
	struct batch b;

	ck_assert_int_eq(pager_swap_inject(swap, PAGER_INJECT_NR, 1, -EIO), -EINVAL);
	ck_assert_int_eq(pager_swap_inject(swap, PAGER_INJECT_WRITE_ERROR, 1, 0), -EINVAL);
	ck_assert_int_eq(pager_swap_inject(swap, PAGER_INJECT_WRITE_ERROR, 1, EIO), -EINVAL);
	/* Armed, then disarmed with n = 0: nothing fires. */
	ck_assert_int_eq(pager_swap_inject(swap, PAGER_INJECT_WRITE_ERROR, 1, -EIO), 0);
	ck_assert_int_eq(pager_swap_inject(swap, PAGER_INJECT_WRITE_ERROR, 0, 0), 0);
	batch_init(&b, swap, 2, 5);
	ck_assert_int_eq(pager_swap_write(swap, b.ios, 2), 0);
	batch_exit(&b, swap);
	pager_swap_destroy(swap);
}
END_TEST

/* ---- a full swap ------------------------------------------------------- */

START_TEST(test_full_swap_refuses_then_recovers)
{
	struct pager_swap *swap = temp_swap(100);
	struct pager_swap_stats st;
	uint64_t slots[100], slot;
	uint8_t seen[100] = { 0 };

	for (unsigned int i = 0; i < 100; i++) {
		ck_assert_int_eq(pager_swap_alloc(swap, &slots[i]), 0);
		ck_assert_uint_lt(slots[i], 100);
		ck_assert_msg(!seen[slots[i]]++, "slot %llu handed out twice",
			      (unsigned long long)slots[i]);
	}
	ck_assert_int_eq(pager_swap_alloc(swap, &slot), -ENOSPC);
	ck_assert_int_eq(pager_swap_alloc(swap, &slot), -ENOSPC);
	pager_swap_stats(swap, &st);
	ck_assert_uint_eq(st.full_refusals, 2);
	ck_assert_uint_eq(st.slots_in_use, 100);
	pager_swap_free(swap, slots[37]);
	pager_swap_free(swap, slots[99]);
	for (unsigned int i = 0; i < 2; i++) {
		ck_assert_int_eq(pager_swap_alloc(swap, &slot), 0);
		ck_assert(slot == slots[37] || slot == slots[99]);
	}
	ck_assert_int_eq(pager_swap_alloc(swap, &slot), -ENOSPC);
	pager_swap_stats(swap, &st);
	ck_assert_uint_eq(st.full_refusals, 3);
	for (unsigned int i = 0; i < 100; i++)
		pager_swap_free(swap, slots[i]);
	pager_swap_stats(swap, &st);
	ck_assert_uint_eq(st.slots_in_use, 0);
	pager_swap_destroy(swap);
}
END_TEST

/* ---- real file-system errors ------------------------------------------- */

/*
 * EFBIG from the file system: RLIMIT_FSIZE below the 20th slot, SIGXFSZ
 * ignored (unprivileged).  The pages below the limit are written, those at
 * and above it fail with -EFBIG and are counted; nothing already written is
 * lost.  Runs in Check's forked child (the limit stays there); without
 * CK_FORK=no the limit would outlive the test, so it restores it.
 */
START_TEST(test_efbig_from_file_system)
{
	struct pager_swap *swap = temp_swap(64);
	struct rlimit old, lim;
	struct pager_swap_stats st;
	struct batch b;
	void (*old_handler)(int);

	batch_init(&b, swap, 40, 17);
	ck_assert_int_eq(getrlimit(RLIMIT_FSIZE, &old), 0);
	lim = old;
	lim.rlim_cur = 20 * PAGE + PAGE / 2;	/* half of slot 20 fits */
	old_handler = signal(SIGXFSZ, SIG_IGN);
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &lim), 0);
	ck_assert_int_eq(pager_swap_write(swap, b.ios, 40), -EFBIG);
	ck_assert_int_eq(setrlimit(RLIMIT_FSIZE, &old), 0);
	signal(SIGXFSZ, old_handler);
	for (unsigned int i = 0; i < 40; i++)
		ck_assert_msg(b.ios[i].result == (b.ios[i].slot < 20 ? 0 : -EFBIG),
			      "page %u (slot %llu): %d", i, (unsigned long long)b.ios[i].slot,
			      b.ios[i].result);
	pager_swap_stats(swap, &st);
	ck_assert_uint_eq(st.writes, 20);
	ck_assert_uint_eq(st.write_errors, 20);
	ck_assert_uint_eq(st.slots_valid, 20);
	batch_for_read(&b);
	ck_assert_int_eq(pager_swap_read(swap, b.ios, 40), -ENODATA);
	for (unsigned int i = 0; i < 40; i++) {
		ck_assert_int_eq(b.ios[i].result, b.ios[i].slot < 20 ? 0 : -ENODATA);
		if (b.ios[i].slot < 20)
			ck_assert(page_matches(&b, i));
	}
	batch_exit(&b, swap);
	pager_swap_destroy(swap);
}
END_TEST

/*
 * ENOSPC from a full file system: a 64 KiB tmpfs (16 pages) holding a swap
 * of 64 slots.  Needs CAP_SYS_ADMIN for the mount (root here and in the
 * sandbox); where mounting is not allowed the test says so and passes
 * without checking (the EFBIG test above covers the error path
 * unprivileged).
 */
START_TEST(test_enospc_from_small_tmpfs)
{
	char dir[] = "/tmp/umbra-test-tmpfs-XXXXXX";
	struct pager_swap_stats st;
	struct named_swap ns;
	struct batch b;
	unsigned int ok = 0;

	ck_assert_ptr_nonnull(mkdtemp(dir));
	if (mount("tmpfs", dir, "tmpfs", 0, "size=64k") != 0) {
		fprintf(stderr, "pager_swap: cannot mount a tmpfs (%s): ENOSPC test not run\n",
			strerror(errno));
		rmdir(dir);
		return;
	}
	named_swap_create(&ns, dir, 64);
	batch_init(&b, ns.swap, 64, 19);
	ck_assert_int_eq(pager_swap_write(ns.swap, b.ios, 64), -ENOSPC);
	for (unsigned int i = 0; i < 64; i++) {
		ck_assert_msg(b.ios[i].result == 0 || b.ios[i].result == -ENOSPC, "page %u: %d", i,
			      b.ios[i].result);
		ok += b.ios[i].result == 0;
	}
	ck_assert_uint_gt(ok, 0);
	ck_assert_uint_le(ok, 16);
	pager_swap_stats(ns.swap, &st);
	ck_assert_uint_eq(st.writes, ok);
	ck_assert_uint_eq(st.write_errors, 64 - ok);
	batch_for_read(&b);
	pager_swap_read(ns.swap, b.ios, 64);
	for (unsigned int i = 0; i < 64; i++)
		if (b.ios[i].result == 0)
			ck_assert(page_matches(&b, i));
		else
			ck_assert_int_eq(b.ios[i].result, -ENODATA);
	batch_exit(&b, ns.swap);
	named_swap_destroy(&ns);
	ck_assert_int_eq(umount(dir), 0);
	rmdir(dir);
}
END_TEST

/* ---- concurrency -------------------------------------------------------- */

#define THREADS 4

struct worker {
	struct pager_swap *swap;
	struct test_failures *failures;
	unsigned int id;
	uint64_t pages_checked;
};

/* Each round: alloc a batch, write it, read it back and compare, free it;
 * the threads share the swap and its ring. */
static void *worker_run(void *arg)
{
	struct worker *w = arg;
	unsigned int rounds = TEST_TSAN ? 40 : 200;
	uint64_t seed = 1000 + w->id;
	uint8_t *data = malloc(16 * PAGE), *back = malloc(16 * PAGE);
	struct pager_io ios[16];

	for (unsigned int r = 0; r < rounds && !test_failed(w->failures); r++) {
		unsigned int n = 1 + (unsigned int)(test_rnd(&seed) % 16);

		for (size_t i = 0; i < (size_t)n * PAGE / 8; i++)
			((uint64_t *)data)[i] = test_rnd(&seed);
		for (unsigned int i = 0; i < n; i++) {
			if (pager_swap_alloc(w->swap, &ios[i].slot)) {
				test_fail(w->failures, "thread %u: alloc failed", w->id);
				n = i;
				break;
			}
			ios[i].buf = data + (size_t)i * PAGE;
		}
		if (pager_swap_write(w->swap, ios, n))
			test_fail(w->failures, "thread %u: write failed", w->id);
		for (unsigned int i = 0; i < n; i++)
			ios[i].buf = back + (size_t)i * PAGE;
		if (pager_swap_read(w->swap, ios, n))
			test_fail(w->failures, "thread %u: read failed", w->id);
		if (memcmp(data, back, (size_t)n * PAGE))
			test_fail(w->failures, "thread %u: data differs in round %u", w->id, r);
		w->pages_checked += n;
		for (unsigned int i = 0; i < n; i++)
			pager_swap_free(w->swap, ios[i].slot);
	}
	free(data);
	free(back);
	return NULL;
}

START_TEST(test_concurrent_writers_readers)
{
	struct pager_swap *swap = temp_swap(THREADS * 16);
	struct worker workers[THREADS];
	pthread_t threads[THREADS];
	struct test_failures failures;
	struct pager_swap_stats st;
	uint64_t pages = 0;

	test_failures_init(&failures);
	for (unsigned int t = 0; t < THREADS; t++) {
		workers[t] = (struct worker){ .swap = swap, .failures = &failures, .id = t };
		ck_assert_int_eq(pthread_create(&threads[t], NULL, worker_run, &workers[t]), 0);
	}
	for (unsigned int t = 0; t < THREADS; t++) {
		pthread_join(threads[t], NULL);
		pages += workers[t].pages_checked;
	}
	test_failures_assert_none(&failures);
	pager_swap_stats(swap, &st);
	ck_assert_uint_eq(st.writes, pages);
	ck_assert_uint_eq(st.reads, pages);
	ck_assert_uint_eq(st.slots_in_use, 0);
	ck_assert_uint_eq(st.write_errors + st.read_errors + st.checksum_failures + st.full_refusals, 0);
	test_failures_exit(&failures);
	pager_swap_destroy(swap);
}
END_TEST

/* ---- create ------------------------------------------------------------- */

START_TEST(test_create_contract)
{
	struct pager_swap_config cfg = { .nr_slots = 0 };
	struct pager_swap *swap = NULL;
	struct stat sb;

	ck_assert_int_eq(pager_swap_create(&cfg, &swap), -EINVAL);
	cfg.nr_slots = PAGER_SWAP_MAX_SLOTS + 1;
	ck_assert_int_eq(pager_swap_create(&cfg, &swap), -EINVAL);
	cfg = (struct pager_swap_config){ .nr_slots = 4, .queue_depth = PAGER_SWAP_MAX_QUEUE_DEPTH + 1 };
	ck_assert_int_eq(pager_swap_create(&cfg, &swap), -EINVAL);
	cfg = (struct pager_swap_config){ .path = "/nonexistent-dir/swap", .nr_slots = 4 };
	ck_assert_int_eq(pager_swap_create(&cfg, &swap), -ENOENT);
	/* A temporary file: sized to capacity, sparse, already unlinked. */
	cfg = (struct pager_swap_config){ .nr_slots = 1 << 20 };
	ck_assert_int_eq(pager_swap_create(&cfg, &swap), 0);
	ck_assert_int_eq(fstat(pager_swap_fd(swap), &sb), 0);
	ck_assert_int_eq(sb.st_size, (off_t)(1 << 20) * PAGE);
	ck_assert_int_lt(sb.st_blocks, 64);
	ck_assert_int_eq(sb.st_nlink, 0);
	ck_assert_int_ne(fcntl(pager_swap_fd(swap), F_GETFD) & FD_CLOEXEC, 0);
	pager_swap_destroy(swap);
	pager_swap_destroy(NULL);
}
END_TEST

Suite *pager_swap_suite(void)
{
	Suite *s = suite_create("pager_swap");
	TCase *tc = tcase_create("swap file");

	tcase_set_timeout(tc, 120);
	tcase_add_loop_test(tc, test_round_trip_batches, 0, sizeof(round_trips) / sizeof(round_trips[0]));
	tcase_add_test(tc, test_rewrite_replaces_content);
	tcase_add_test(tc, test_bad_slots_refused_per_page);
	tcase_add_test(tc, test_checksum_mismatch_detected);
	tcase_add_loop_test(tc, test_injected_error_per_page, 0, sizeof(injected) / sizeof(injected[0]));
	tcase_add_test(tc, test_inject_contract);
	tcase_add_test(tc, test_full_swap_refuses_then_recovers);
	tcase_add_test(tc, test_efbig_from_file_system);
	tcase_add_test(tc, test_enospc_from_small_tmpfs);
	tcase_add_test(tc, test_concurrent_writers_readers);
	tcase_add_test(tc, test_create_contract);
	suite_add_tcase(s, tc);
	return s;
}
