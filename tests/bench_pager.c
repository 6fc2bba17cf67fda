/*
 * bench-pager: swap-out and swap-in through the pager's swap file, in
 * batches of 64 pages (and of 1), next to raw 4 KiB pwrite/pread of the same
 * data on the same file system, measured in the same run.  Prints a
 * Markdown table (docs/bench-pager.md has results and the command).
 *
 *   bench-pager [PAGES [ROUNDS]]      defaults: 16384 pages (64 MiB), 7 rounds
 *
 * "Scattered" puts page i at a random place scatter[i] (one permutation for
 * the run), in the swap (its slot) and in the raw file (its offset) alike,
 * so that no two pages of a swap batch are neighbours and no I/O merges.
 *
 * "Over written" rows write every page a second time after the read pass,
 * over the blocks the first pass allocated (a swap file in steady state).
 *
 * Every round uses fresh files in $TMPDIR (or /tmp): the swap's own
 * temporary file and a raw file of the same size (both sparse, so that
 * both allocate their blocks while written); the order of raw and swap
 * alternates between rounds.  Writes and reads are buffered (page cache),
 * the same for both.  Each figure is the median over ROUNDS of MB/s of one
 * pass over PAGES pages, with the slowest and fastest round.  The swap's
 * reads verify each page's crc32; the program also compares every page
 * read back and exits 1 on a difference.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define BENCH_NAME "bench-pager"
#include "bench_util.h"
#include "umbra/pager.h"

#define PAGE PAGER_SLOT_SIZE
#define BATCH 64u
#define MAX_ROUNDS 100

enum figure {
	RAW_WRITE, SWAP_WRITE, SWAP_WRITE_1, RAW_WRITE_SCATTERED, SWAP_WRITE_SCATTERED,
	RAW_REWRITE, SWAP_REWRITE, RAW_REWRITE_SCATTERED, SWAP_REWRITE_SCATTERED,
	RAW_READ, SWAP_READ, SWAP_READ_1, RAW_READ_SCATTERED, SWAP_READ_SCATTERED, NR_FIGURES
};

/* The raw figure each figure is compared with. */
static const enum figure baseline[NR_FIGURES] = {
	[RAW_WRITE] = RAW_WRITE, [SWAP_WRITE] = RAW_WRITE, [SWAP_WRITE_1] = RAW_WRITE,
	[RAW_WRITE_SCATTERED] = RAW_WRITE_SCATTERED, [SWAP_WRITE_SCATTERED] = RAW_WRITE_SCATTERED,
	[RAW_REWRITE] = RAW_REWRITE, [SWAP_REWRITE] = RAW_REWRITE,
	[RAW_REWRITE_SCATTERED] = RAW_REWRITE_SCATTERED,
	[SWAP_REWRITE_SCATTERED] = RAW_REWRITE_SCATTERED,
	[RAW_READ] = RAW_READ, [SWAP_READ] = RAW_READ, [SWAP_READ_1] = RAW_READ,
	[RAW_READ_SCATTERED] = RAW_READ_SCATTERED, [SWAP_READ_SCATTERED] = RAW_READ_SCATTERED,
};

static const char *const figure_names[NR_FIGURES] = {
	[RAW_WRITE] = "raw pwrite, 4 KiB per call",
	[RAW_WRITE_SCATTERED] = "raw pwrite, 4 KiB per call, scattered offsets",
	[SWAP_WRITE] = "pager_swap_write, batches of 64",
	[SWAP_WRITE_SCATTERED] = "pager_swap_write, batches of 64, scattered slots",
	[SWAP_WRITE_1] = "pager_swap_write, batches of 1",
	[RAW_REWRITE] = "raw pwrite, 4 KiB per call, over written blocks",
	[SWAP_REWRITE] = "pager_swap_write, batches of 64, over written slots",
	[RAW_REWRITE_SCATTERED] = "raw pwrite, 4 KiB per call, scattered, over written blocks",
	[SWAP_REWRITE_SCATTERED] = "pager_swap_write, batches of 64, scattered, over written slots",
	[RAW_READ] = "raw pread, 4 KiB per call",
	[RAW_READ_SCATTERED] = "raw pread, 4 KiB per call, scattered offsets",
	[SWAP_READ] = "pager_swap_read, batches of 64 (crc32 verified)",
	[SWAP_READ_SCATTERED] = "pager_swap_read, batches of 64, scattered slots (crc32 verified)",
	[SWAP_READ_1] = "pager_swap_read, batches of 1 (crc32 verified)",
};

struct bench {
	uint64_t pages;
	uint8_t *data, *back;
	struct pager_io *ios;	/* [pages]: slot i for page i */
	uint64_t *scatter;	/* [pages]: a permutation of 0..pages-1 */
	double mbs[NR_FIGURES][MAX_ROUNDS];
};

static uint64_t xorshift(uint64_t *s)
{
	*s ^= *s << 13, *s ^= *s >> 7, *s ^= *s << 17;
	return *s;
}

static double mb_per_s(uint64_t pages, double ns)
{
	return (double)pages * PAGE / 1e6 / (ns / 1e9);
}

static void check_back(const struct bench *b, const char *what)
{
	if (memcmp(b->data, b->back, b->pages * PAGE)) {
		fprintf(stderr, "%s: %s read back different data\n", BENCH_NAME, what);
		exit(1);
	}
	memset(b->back, 0, b->pages * PAGE);
}

static int raw_file(uint64_t bytes)
{
	const char *dir = getenv("TMPDIR");
	char path[4096];
	int fd;

	snprintf(path, sizeof(path), "%s/bench-pager-raw-XXXXXX", dir && *dir ? dir : "/tmp");
	fd = mkostemp(path, O_CLOEXEC);
	CHECK(fd < 0 ? -errno : 0);
	unlink(path);
	CHECK(ftruncate(fd, (off_t)bytes) < 0 ? -errno : 0);
	return fd;
}

/* One pass of pwrite (@write) or pread of every page, page i at offset i
 * (or scatter[i]) pages; MB/s. */
static double raw_pass(struct bench *b, int fd, bool scattered, bool write)
{
	double t = now_ns();

	for (uint64_t i = 0; i < b->pages; i++) {
		off_t off = (off_t)((scattered ? b->scatter[i] : i) * PAGE);
		ssize_t done = write ? pwrite(fd, b->data + i * PAGE, PAGE, off)
				     : pread(fd, b->back + i * PAGE, PAGE, off);

		CHECK(done == PAGE ? 0 : -EIO);
	}
	return mb_per_s(b->pages, now_ns() - t);
}

/* Write, read back, write again: a fresh file, then its blocks allocated. */
static void raw_round(struct bench *b, int r, bool scattered)
{
	int fd = raw_file(b->pages * PAGE);

	b->mbs[scattered ? RAW_WRITE_SCATTERED : RAW_WRITE][r] = raw_pass(b, fd, scattered, true);
	b->mbs[scattered ? RAW_READ_SCATTERED : RAW_READ][r] = raw_pass(b, fd, scattered, false);
	check_back(b, "raw pread");
	b->mbs[scattered ? RAW_REWRITE_SCATTERED : RAW_REWRITE][r] = raw_pass(b, fd, scattered, true);
	close(fd);
}

/* One pass of writes (@write) or reads over every page, @batch at a time;
 * MB/s. */
static double swap_pass(struct bench *b, struct pager_swap *swap, unsigned int batch, bool write)
{
	double t = now_ns();

	for (uint64_t i = 0; i < b->pages; i += batch) {
		unsigned int n = b->pages - i < batch ? (unsigned int)(b->pages - i) : batch;

		for (unsigned int k = 0; k < n; k++)
			b->ios[i + k].buf = (write ? b->data : b->back) + (i + k) * PAGE;
		CHECK(write ? pager_swap_write(swap, &b->ios[i], n) : pager_swap_read(swap, &b->ios[i], n));
	}
	return mb_per_s(b->pages, now_ns() - t);
}

/* A fresh swap with every slot allocated: page i in slot i, or (@scattered)
 * in slot scatter[i], so that no two pages of a batch are neighbours in
 * the file and no write is merged. */
static struct pager_swap *fresh_swap(struct bench *b, bool scattered)
{
	struct pager_swap_config cfg = { .nr_slots = b->pages };
	struct pager_swap *swap;

	CHECK(pager_swap_create(&cfg, &swap));
	for (uint64_t i = 0; i < b->pages; i++)
		CHECK(pager_swap_alloc(swap, &b->ios[i].slot));
	for (uint64_t i = 0; scattered && i < b->pages; i++)
		b->ios[i].slot = b->scatter[i];
	return swap;
}

static void swap_round(struct bench *b, int r)
{
	struct pager_swap *swap = fresh_swap(b, false);

	b->mbs[SWAP_WRITE][r] = swap_pass(b, swap, BATCH, true);
	b->mbs[SWAP_READ][r] = swap_pass(b, swap, BATCH, false);
	check_back(b, "pager_swap_read (64)");
	b->mbs[SWAP_REWRITE][r] = swap_pass(b, swap, BATCH, true);
	pager_swap_destroy(swap);
	swap = fresh_swap(b, true);
	b->mbs[SWAP_WRITE_SCATTERED][r] = swap_pass(b, swap, BATCH, true);
	b->mbs[SWAP_READ_SCATTERED][r] = swap_pass(b, swap, BATCH, false);
	check_back(b, "pager_swap_read (64, scattered)");
	b->mbs[SWAP_REWRITE_SCATTERED][r] = swap_pass(b, swap, BATCH, true);
	pager_swap_destroy(swap);
	swap = fresh_swap(b, false);
	b->mbs[SWAP_WRITE_1][r] = swap_pass(b, swap, 1, true);
	b->mbs[SWAP_READ_1][r] = swap_pass(b, swap, 1, false);
	check_back(b, "pager_swap_read (1)");
	pager_swap_destroy(swap);
}

static void min_max(const double *v, int n, double *lo, double *hi)
{
	*lo = *hi = v[0];
	for (int i = 1; i < n; i++) {
		*lo = v[i] < *lo ? v[i] : *lo;
		*hi = v[i] > *hi ? v[i] : *hi;
	}
}

static void print_table(struct bench *b, int rounds)
{
	printf("bench-pager: %llu pages (%llu MiB) per pass, %d rounds, buffered I/O in %s\n\n",
	       (unsigned long long)b->pages, (unsigned long long)(b->pages * PAGE >> 20), rounds,
	       getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	printf("| operation | MB/s (median) | slowest .. fastest round | baseline | ratio to baseline |\n");
	printf("| --- | ---: | ---: | --- | ---: |\n");
	for (int f = 0; f < NR_FIGURES; f++) {
		int base = (int)baseline[f];
		double m = median(b->mbs[f], rounds), lo, hi;

		min_max(b->mbs[f], rounds, &lo, &hi);
		printf("| %s | %.0f | %.0f .. %.0f | %s | %.2f |\n", figure_names[f], m, lo, hi,
		       f == base ? "-" : figure_names[base], m / median(b->mbs[base], rounds));
	}
	printf("\nbatched swap-out / raw pwrite (goal >= 0.80): fresh file %.2f consecutive slots, "
	       "%.2f scattered; over written blocks %.2f consecutive, %.2f scattered\n",
	       median(b->mbs[SWAP_WRITE], rounds) / median(b->mbs[RAW_WRITE], rounds),
	       median(b->mbs[SWAP_WRITE_SCATTERED], rounds) / median(b->mbs[RAW_WRITE_SCATTERED], rounds),
	       median(b->mbs[SWAP_REWRITE], rounds) / median(b->mbs[RAW_REWRITE], rounds),
	       median(b->mbs[SWAP_REWRITE_SCATTERED], rounds) / median(b->mbs[RAW_REWRITE_SCATTERED], rounds));
}

int main(int argc, char **argv)
{
	struct bench b = { .pages = argc > 1 ? strtoull(argv[1], NULL, 0) : 16384 };
	int rounds = argc > 2 ? atoi(argv[2]) : 7;
	uint64_t seed = 0x9e3779b97f4a7c15ull;

	if (b.pages < 1 || b.pages > (1u << 22) || rounds < 1 || rounds > MAX_ROUNDS) {
		fprintf(stderr, "usage: %s [PAGES (1..4194304) [ROUNDS (1..%d)]]\n", argv[0], MAX_ROUNDS);
		return 2;
	}
	b.data = bench_mmap(b.pages * PAGE);
	b.back = bench_mmap(b.pages * PAGE);
	b.ios = calloc(b.pages, sizeof(*b.ios));
	b.scatter = calloc(b.pages, sizeof(*b.scatter));
	if (!b.ios || !b.scatter)
		return 1;
	for (uint64_t i = 0; i < b.pages * PAGE / 8; i++)
		((uint64_t *)b.data)[i] = xorshift(&seed);
	for (uint64_t i = 0; i < b.pages; i++)
		b.scatter[i] = i;
	for (uint64_t i = b.pages - 1; i > 0; i--) {
		uint64_t j = xorshift(&seed) % (i + 1), t = b.scatter[i];

		b.scatter[i] = b.scatter[j];
		b.scatter[j] = t;
	}
	for (int r = 0; r < rounds; r++) {
		if (r % 2) {
			swap_round(&b, r);
			raw_round(&b, r, false);
			raw_round(&b, r, true);
		} else {
			raw_round(&b, r, true);
			raw_round(&b, r, false);
			swap_round(&b, r);
		}
	}
	print_table(&b, rounds);
	free(b.ios);
	free(b.scatter);
	munmap(b.data, b.pages * PAGE);
	munmap(b.back, b.pages * PAGE);
	return 0;
}
