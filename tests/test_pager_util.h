/*
 * The pager suite's fixture: one pager over one memfd-backed object of
 * patterned pages, and the measures the tests read (counters, the memfd's
 * allocated blocks).  Header-only, for test_pager.c, test_pager_account.c
 * and test_pager_discard.c.
 */
#ifndef UMBRA_TEST_PAGER_UTIL_H
#define UMBRA_TEST_PAGER_UTIL_H

#include <check.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "umbra/pager.h"

#define NPAGES 64
#define PG PAGER_PAGE_SIZE

/* One pager over one memfd-backed object. */
struct pfix {
	struct pager_swap *swap;
	struct pager *pager;
	struct notifier_object *obj;
	int memfd;
	uint8_t *host;
	uint64_t npages;
	int id;
};

/* The pattern of word @w of page @p. */
static inline uint64_t pattern(uint64_t p, uint64_t w)
{
	return (p << 32) ^ (w * 0x9e3779b97f4a7c15ull) ^ 0x5a5a;
}

static inline void fill_page(struct pfix *f, uint64_t p)
{
	uint64_t *w = (uint64_t *)(f->host + p * PG);

	for (uint64_t i = 0; i < PG / 8; i++)
		__atomic_store_n(&w[i], pattern(p, i), __ATOMIC_RELAXED);
}

/* Word index of the first mismatch of page @p, or -1 if it is intact. */
static inline long check_page(const uint8_t *host, uint64_t p)
{
	const uint64_t *w = (const uint64_t *)(host + p * PG);

	for (uint64_t i = 0; i < PG / 8; i++) {
		if (__atomic_load_n(&w[i], __ATOMIC_RELAXED) != pattern(p, i))
			return (long)i;
	}
	return -1;
}

/* What the fixture sets up besides its size: pages left holes (bit p of
 * @holes: page p, p < 64, is never written), the pager's ops, and whether
 * the memfd allows seals (MFD_ALLOW_SEALING). */
struct pfix_opts {
	const char *path;
	uint64_t holes;
	const struct pager_ops *ops;
	void *priv;
	bool sealable;
};

static inline void pfix_init_opts(struct pfix *f, const struct pfix_opts *o, uint64_t nr_slots,
			   uint64_t npages)
{
	struct pager_swap_config cfg = { .path = o->path, .nr_slots = nr_slots };

	memset(f, 0, sizeof(*f));
	ck_assert_int_eq(notifier_thread_init(), 0);
	f->npages = npages;
	ck_assert_int_eq(pager_swap_create(&cfg, &f->swap), 0);
	ck_assert_int_eq(pager_create(f->swap, &f->pager), 0);
	if (o->ops)
		pager_set_ops(f->pager, o->ops, o->priv);
	ck_assert_int_eq(notifier_object_create("paged", npages, &f->obj), 0);
	f->memfd = memfd_create("paged", MFD_CLOEXEC | (o->sealable ? MFD_ALLOW_SEALING : 0));
	ck_assert_int_ge(f->memfd, 0);
	ck_assert_int_eq(ftruncate(f->memfd, (off_t)(npages * PG)), 0);
	f->host = mmap(NULL, npages * PG, PROT_READ | PROT_WRITE, MAP_SHARED, f->memfd, 0);
	ck_assert_ptr_ne(f->host, MAP_FAILED);
	for (uint64_t p = 0; p < npages; p++) {
		if (p >= 64 || !(o->holes >> p & 1))
			fill_page(f, p);
	}
	ck_assert_int_eq(pager_add_object(f->pager, f->obj, f->memfd, f->host, npages * PG, &f->id), 0);
}

static inline void pfix_init_at(struct pfix *f, const char *path, uint64_t nr_slots, uint64_t npages)
{
	struct pfix_opts o = { .path = path };

	pfix_init_opts(f, &o, nr_slots, npages);
}

static inline void pfix_init(struct pfix *f, uint64_t nr_slots, uint64_t npages)
{
	pfix_init_at(f, NULL, nr_slots, npages);
}

static inline void pfix_fini(struct pfix *f)
{
	struct pager_swap_stats ss;

	pager_destroy(f->pager); /* NULL if the test destroyed it */
	pager_swap_stats(f->swap, &ss);
	ck_assert_msg(ss.slots_in_use == 0, "expected every slot freed, got %llu in use",
		      (unsigned long long)ss.slots_in_use);
	pager_swap_destroy(f->swap);
	munmap(f->host, f->npages * PG);
	close(f->memfd);
	notifier_object_destroy(f->obj);
}

static inline struct pager_stats pstats(struct pfix *f)
{
	struct pager_stats st;

	ck_assert_int_eq(pager_stats(f->pager, f->id, &st), 0);
	return st;
}

static inline uint64_t swap_reads(struct pfix *f)
{
	struct pager_swap_stats ss;

	pager_swap_stats(f->swap, &ss);
	return ss.reads;
}

static inline uint64_t swap_writes(struct pfix *f)
{
	struct pager_swap_stats ss;

	pager_swap_stats(f->swap, &ss);
	return ss.writes;
}

/* Pages of host memory the memfd holds, from st_blocks. */
static inline uint64_t memfd_pages(struct pfix *f)
{
	struct stat sb;

	ck_assert_int_eq(fstat(f->memfd, &sb), 0);
	return (uint64_t)sb.st_blocks * 512 / PG;
}

/* The accounting and lost-page cases of the pager suite
 * (test_pager_account.c). */
void pager_account_tcases(Suite *s);

#endif /* UMBRA_TEST_PAGER_UTIL_H */
