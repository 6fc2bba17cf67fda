/*
 * bench-evict: the cost to evict a segment mapped by many VMs through the
 * pager, with real swap I/O, for shared canonical shadow tables against
 * private ones and range against per-page notifier delivery.  Prints
 * Markdown tables (docs/bench-pager.md has results, method and command).
 *
 *   bench-evict [--mib N] [--vms N] [--runs N] [--call-pages N]
 *
 * defaults 1024 MiB, 64 VMs, 5 runs, and the whole segment in one
 * pager_evict() call (--call-pages: pages per call instead).
 *
 * The segment is a shmem memfd of N MiB under a pager (one object), its
 * shadow slot from pager_object_slot(); every VM (a shadow MMU with one
 * software vCPU) maps it with 2 MiB guest pages and faults every page, so
 * that every VM maps all of it.  Timed: pager_evict() of the whole segment
 * in batches of 256 pages, each batch one SWAPOUT invalidation, one batched
 * write to a swap file in $TMPDIR (or /tmp), one hole punched in the memfd.
 * Four configurations: the segment added with shadow_mmu_add_segment()
 * (canonical tables shared by every VM) or shadow_mmu_add_slot() (a private
 * slot per VM), and the object in range or per-page delivery.  Between runs
 * (untimed) the segment is made resident and dirty again and every VM
 * faults it back.  A raw 4 KiB pwrite of the same bytes to a fresh file
 * (and over the blocks it allocated) is measured after each run of the
 * shared configurations, as an I/O anchor.
 *
 * Checked, exit 1 on failure: before each eviction every page resident and
 * dirty, the memfd's st_blocks the whole segment, every VM reaching the
 * segment; after it, every page written to swap (no cached eviction),
 * st_blocks 0 (the freed memory is the whole segment), no VM reaching it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#define BENCH_NAME "bench-evict"
#include "bench_util.h"
#include "umbra/notifier.h"
#include "umbra/pager.h"
#include "umbra/shadow.h"
#include "spte.h"

#define PAGE 4096ull
#define MIB (1ull << 20)
#define RUN (2ull * MIB)
#define PAGES_PER_RUN 512ull
#define EVICT_BATCH 256ull
#define MAX_RUNS 50

#define GUEST_VA 0x00007f0000000000ull	/* 1 GiB-aligned */
#define RAM_PAGES 16ull			/* each VM's RAM: its guest tables */
#define PML4_GPA 0x1000ull
#define PDPT_GPA 0x2000ull
#define PD_GPA 0x3000ull		/* one per GiB from here */
#define SEG_GPA RUN			/* the segment at 2 MiB guest-physical */
#define SEG_MPA (1ull << 30)		/* and at 1 GiB machine address */


/* The segment under the pager, and the bytes it holds. */
struct segment {
	uint64_t npages;
	int memfd;
	uint8_t *host;			/* the registered MAP_SHARED mapping */
	uint8_t *content;		/* what the segment holds, for refills */
	struct notifier_object *obj;
	struct pager_swap *swap;
	struct pager *pager;
	int id;
};

struct vm {
	struct notifier_object *ram;
	uint8_t *ram_host;
	struct shadow_mmu *mmu;
	struct shadow_vcpu *vcpu;
};

enum config { SHARED_RANGE, SHARED_PAGE, PRIVATE_RANGE, PRIVATE_PAGE, NR_CONFIGS };

static const char *const config_names[NR_CONFIGS] = {
	[SHARED_RANGE] = "shared tables (add_segment), range delivery",
	[SHARED_PAGE] = "shared tables (add_segment), per-page delivery",
	[PRIVATE_RANGE] = "private slot per VM (add_slot), range delivery",
	[PRIVATE_PAGE] = "private slot per VM (add_slot), per-page delivery",
};

/* What one timed eviction measured. */
struct sample {
	double ns;
	uint64_t freed;			/* st_blocks bytes before - after */
	uint64_t callbacks;		/* subscriber invalidations, all VMs */
	double flushes_mean;		/* TLB flushes each vCPU received */
	uint64_t flushes_min, flushes_max;
	uint64_t submissions;		/* swap io_uring submissions */
};

struct bench {
	struct segment seg;
	unsigned int nvms, runs;
	uint64_t call_pages;		/* pages per pager_evict() call */
	struct vm *vms;
	struct sample s[NR_CONFIGS][MAX_RUNS];
	double raw_fresh[MAX_RUNS], raw_over[MAX_RUNS];
	unsigned int nraw;
	double first_evict_ns, setup_ns[2], refill_ns, refault_ns;
};

static uint64_t memfd_bytes(const struct segment *seg)
{
	struct stat sb;

	CHECK(fstat(seg->memfd, &sb) < 0 ? -errno : 0);
	return (uint64_t)sb.st_blocks * 512;
}

/* ---- the segment ------------------------------------------------------- */

static void segment_create(struct segment *seg, uint64_t bytes)
{
	struct pager_swap_config cfg = { .nr_slots = bytes / PAGE };

	seg->npages = bytes / PAGE;
	seg->content = bench_mmap(bytes);
	/* Non-zero and different in every page (nothing to deduplicate). */
	for (uint64_t i = 0; i < bytes / 8; i++)
		((uint64_t *)seg->content)[i] = (i * 0x9e3779b97f4a7c15ull) ^ (i >> 9);
	seg->memfd = memfd_create("bench-evict-segment", MFD_CLOEXEC);
	CHECK(seg->memfd < 0 ? -errno : 0);
	CHECK(ftruncate(seg->memfd, (off_t)bytes) < 0 ? -errno : 0);
	CHECK(pwrite(seg->memfd, seg->content, bytes, 0) == (ssize_t)bytes ? 0 : -EIO);
	seg->host = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, seg->memfd, 0);
	CHECK(seg->host == MAP_FAILED ? -errno : 0);
	CHECK(notifier_object_create("bench-evict-segment", seg->npages, &seg->obj));
	/* One slot per page: after the first eviction (untimed) every
	 * eviction writes over blocks the file already has. */
	CHECK(pager_swap_create(&cfg, &seg->swap));
	CHECK(pager_create(seg->swap, &seg->pager));
	CHECK(pager_add_object(seg->pager, seg->obj, seg->memfd, seg->host, bytes, &seg->id));
}

static void segment_destroy(struct segment *seg)
{
	pager_destroy(seg->pager);
	pager_swap_destroy(seg->swap);
	notifier_object_destroy(seg->obj);
	munmap(seg->host, seg->npages * PAGE);
	munmap(seg->content, seg->npages * PAGE);
	close(seg->memfd);
}

/*
 * Makes every page resident and dirty again, without a fault through the
 * mapping: the content goes back into the memfd's holes with one pwrite,
 * then pager_get_page() of each page finds it filled behind the mapping
 * (its UFFDIO_COPY answers EEXIST) and settles it dirty, its slot freed.
 * Each page still costs one slot read.
 */
static void segment_refill(struct segment *seg)
{
	uint64_t bytes = seg->npages * PAGE;
	struct pager_stats st;

	CHECK(pwrite(seg->memfd, seg->content, bytes, 0) == (ssize_t)bytes ? 0 : -EIO);
	for (uint64_t p = 0; p < seg->npages; p++)
		CHECK(pager_get_page(seg->pager, seg->id, p));
	CHECK(pager_stats(seg->pager, seg->id, &st));
	ENSURE(st.swapped == 0 && st.host_bytes == bytes, "%llu pages swapped, %llu bytes resident",
	       (unsigned long long)st.swapped, (unsigned long long)st.host_bytes);
}

/* ---- VMs ------------------------------------------------------------------ */

static uint64_t seg_runs(const struct segment *seg)
{
	return seg->npages / PAGES_PER_RUN;
}

/* Guest tables: PML4 -> PDPT -> one PD per GiB -> 2 MiB pages onto the
 * segment, contiguously. */
static void vm_guest_tables(struct vm *v, const struct segment *seg)
{
	uint64_t *g = (uint64_t *)v->ram_host;
	const uint64_t flags = SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER;

	ENSURE(PD_GPA / PAGE + (seg_runs(seg) + 511) / 512 <= RAM_PAGES, "segment too large");
	g[(PML4_GPA + SPTE_INDEX(GUEST_VA, 4) * 8) / 8] = PDPT_GPA | flags;
	for (uint64_t k = 0; k < seg_runs(seg); k++) {
		uint64_t va = GUEST_VA + k * RUN, pd = PD_GPA + (k / 512) * PAGE;

		g[(PDPT_GPA + SPTE_INDEX(va, 3) * 8) / 8] = pd | flags;
		g[(pd + SPTE_INDEX(va, 2) * 8) / 8] = (SEG_GPA + k * RUN) | flags | SPTE_LARGE;
	}
}

static void vm_create(struct vm *v, struct shadow_pool *pool, struct segment *seg, bool shared)
{
	struct shadow_mmu_config cfg = { .pool = pool, .mode = shadow_default_mode };
	struct shadow_vcpu_config vcfg = { .tlb_entries = 64 };
	struct shadow_slot slot = { 0 };
	int ram_id, seg_id;

	cfg.max_gpa = SEG_GPA + seg->npages * PAGE;
	CHECK(shadow_mmu_create(&cfg, &v->mmu));
	v->ram_host = bench_mmap(RAM_PAGES * PAGE);
	CHECK(notifier_object_create("bench-evict-ram", RAM_PAGES, &v->ram));
	slot.obj = v->ram;
	slot.host = v->ram_host;
	CHECK(shadow_mmu_add_slot(v->mmu, &slot, &ram_id));
	CHECK(shadow_mmu_map_gpa(v->mmu, 0, RAM_PAGES, ram_id, 0));
	memset(&slot, 0, sizeof(slot));
	pager_object_slot(seg->pager, seg->id, &slot);
	slot.mpa = SEG_MPA;
	CHECK(shared ? shadow_mmu_add_segment(v->mmu, &slot, &seg_id)
		     : shadow_mmu_add_slot(v->mmu, &slot, &seg_id));
	CHECK(shadow_mmu_map_gpa(v->mmu, SEG_GPA, seg->npages, seg_id, 0));
	vm_guest_tables(v, seg);
	CHECK(shadow_vcpu_create(v->mmu, &vcfg, &v->vcpu));
	CHECK(shadow_vcpu_load_cr3(v->vcpu, PML4_GPA));
}

static void vm_destroy(struct vm *v)
{
	shadow_vcpu_destroy(v->vcpu);
	shadow_mmu_destroy(v->mmu);
	notifier_object_destroy(v->ram);
	munmap(v->ram_host, RAM_PAGES * PAGE);
}

static void vm_fault_all(struct vm *v, const struct segment *seg)
{
	for (uint64_t p = 0; p < seg->npages; p++) {
		uint32_t ec = 0;
		int ret = shadow_mmu_fault(v->mmu, PML4_GPA, GUEST_VA + p * PAGE, SHADOW_ACCESS_USER,
					   &ec);

		ENSURE(ret == SHADOW_FAULT_FIXED, "fault on page %llu: %d (error code %#x)",
		       (unsigned long long)p, ret, ec);
	}
}

/* Every vCPU reaches one page of every 2 MiB run without a fault
 * (@mapped), or none does. */
static void vms_verify(struct bench *b, bool mapped)
{
	for (unsigned int k = 0; k < b->nvms; k++) {
		for (uint64_t r = 0; r < seg_runs(&b->seg); r++) {
			struct shadow_vcpu_result res;
			uint64_t va = GUEST_VA + r * RUN + (r % PAGES_PER_RUN) * PAGE;
			int ret = shadow_vcpu_access(b->vms[k].vcpu, va, SHADOW_ACCESS_USER, &res);

			ENSURE(mapped ? ret == 0 : ret == -EFAULT, "VM %u, va %#llx: access %d", k,
			       (unsigned long long)va, ret);
		}
	}
}

/* ---- one eviction ---------------------------------------------------------- */

static uint64_t vcpu_flushes(struct shadow_vcpu *v)
{
	struct shadow_vcpu_stats st;

	shadow_vcpu_stats(v, &st);
	return st.flushes_all + st.flushes_va;
}

static void counters_read(struct bench *b, uint64_t *callbacks, uint64_t *flushes,
			  struct pager_stats *pst, struct pager_swap_stats *sst)
{
	*callbacks = 0;
	for (unsigned int k = 0; k < b->nvms; k++) {
		struct shadow_mmu_stats st;

		shadow_mmu_stats(b->vms[k].mmu, &st);
		*callbacks += st.invalidations;
		flushes[k] = vcpu_flushes(b->vms[k].vcpu);
	}
	CHECK(pager_stats(b->seg.pager, b->seg.id, pst));
	pager_swap_stats(b->seg.swap, sst);
}

/* Evicts the whole segment in batches; the time, and the counters into @s. */
static void evict_once(struct bench *b, struct sample *s)
{
	struct segment *seg = &b->seg;
	uint64_t *f0 = calloc(b->nvms, sizeof(*f0)), *f1 = calloc(b->nvms, sizeof(*f1));
	uint64_t cb0, cb1, before, after;
	struct pager_stats p0, p1;
	struct pager_swap_stats s0, s1;
	double t0;

	if (!f0 || !f1)
		abort();
	vms_verify(b, true);
	before = memfd_bytes(seg);
	ENSURE(before == seg->npages * PAGE, "%llu bytes resident before",
	       (unsigned long long)before);
	counters_read(b, &cb0, f0, &p0, &s0);
	t0 = now_ns();
	for (uint64_t p = 0; p < seg->npages; p += b->call_pages)
		CHECK(pager_evict(seg->pager, seg->id, p, b->call_pages));
	s->ns = now_ns() - t0;
	after = memfd_bytes(seg);
	counters_read(b, &cb1, f1, &p1, &s1);
	ENSURE(p1.swapouts_io - p0.swapouts_io == seg->npages && p1.swapouts_cached == p0.swapouts_cached,
	       "%llu pages written, %llu evicted without I/O",
	       (unsigned long long)(p1.swapouts_io - p0.swapouts_io),
	       (unsigned long long)(p1.swapouts_cached - p0.swapouts_cached));
	ENSURE(after == 0, "%llu bytes still resident", (unsigned long long)after);
	vms_verify(b, false);
	s->freed = before - after;
	s->callbacks = cb1 - cb0;
	s->submissions = s1.submissions - s0.submissions;
	s->flushes_min = UINT64_MAX;
	s->flushes_max = 0;
	s->flushes_mean = 0;
	for (unsigned int k = 0; k < b->nvms; k++) {
		uint64_t f = f1[k] - f0[k];

		s->flushes_mean += (double)f / b->nvms;
		s->flushes_min = f < s->flushes_min ? f : s->flushes_min;
		s->flushes_max = f > s->flushes_max ? f : s->flushes_max;
	}
	free(f0);
	free(f1);
}

/* Resident, dirty, and mapped by every VM again (shared tables: one VM's
 * faults refill the canonical tables every VM links). */
static void refault(struct bench *b, bool shared)
{
	double t0 = now_ns(), t1;

	segment_refill(&b->seg);
	t1 = now_ns();
	for (unsigned int k = 0; k < (shared ? 1 : b->nvms); k++)
		vm_fault_all(&b->vms[k], &b->seg);
	b->refill_ns += t1 - t0;
	b->refault_ns += now_ns() - t1;
}

/* ---- raw I/O anchor ---------------------------------------------------------- */

/* pwrite of the segment's bytes, 4 KiB per call, to a fresh sparse file in
 * $TMPDIR, then over the blocks that allocated; ns of each pass. */
static void raw_anchor(struct bench *b)
{
	const char *dir = getenv("TMPDIR");
	uint64_t bytes = b->seg.npages * PAGE;
	char path[4096];
	double *out[2] = { &b->raw_fresh[b->nraw], &b->raw_over[b->nraw] };
	int fd;

	snprintf(path, sizeof(path), "%s/bench-evict-raw-XXXXXX", dir && *dir ? dir : "/tmp");
	fd = mkostemp(path, O_CLOEXEC);
	CHECK(fd < 0 ? -errno : 0);
	unlink(path);
	CHECK(ftruncate(fd, (off_t)bytes) < 0 ? -errno : 0);
	for (int pass = 0; pass < 2; pass++) {
		double t0 = now_ns();

		for (uint64_t off = 0; off < bytes; off += PAGE)
			CHECK(pwrite(fd, b->seg.content + off, PAGE, (off_t)off) == PAGE ? 0 : -EIO);
		*out[pass] = now_ns() - t0;
	}
	close(fd);
	b->nraw++;
}

/* ---- the runs ------------------------------------------------------------------ */

/* The VMs of one kind of slot; every configuration of it, b->runs times. */
static void bench_tables(struct bench *b, bool shared)
{
	enum config range = shared ? SHARED_RANGE : PRIVATE_RANGE;
	uint64_t runs = seg_runs(&b->seg);
	size_t pool_pages = shared ? 3 * b->nvms + runs + 64 : (3 + runs) * b->nvms + 64;
	struct shadow_pool *pool;
	double t0 = now_ns();

	CHECK(shadow_pool_create(pool_pages, &pool));
	for (unsigned int k = 0; k < b->nvms; k++) {
		vm_create(&b->vms[k], pool, &b->seg, shared);
		vm_fault_all(&b->vms[k], &b->seg);
	}
	b->setup_ns[!shared] = now_ns() - t0;
	if (shared) {
		/* The first eviction allocates the swap file's blocks. */
		struct sample first;

		evict_once(b, &first);
		b->first_evict_ns = first.ns;
		refault(b, shared);
	}
	for (unsigned int r = 0; r < b->runs; r++) {
		for (int i = 0; i < 2; i++) {
			/* Alternate which delivery goes first. */
			enum config c = range + ((unsigned int)i ^ (r & 1));

			CHECK(notifier_object_set_mode(b->seg.obj, c == range ? NOTIFIER_MODE_RANGE
									       : NOTIFIER_MODE_PAGE));
			evict_once(b, &b->s[c][r]);
			refault(b, shared);
		}
		if (shared)
			raw_anchor(b);
	}
	CHECK(notifier_object_set_mode(b->seg.obj, NOTIFIER_MODE_RANGE));
	for (unsigned int k = 0; k < b->nvms; k++)
		vm_destroy(&b->vms[k]);
	ENSURE(shadow_pool_pages_in_use(pool, 0) == 0, "tables left");
	shadow_pool_destroy(pool);
}

/* ---- output -------------------------------------------------------------------- */

static double sample_median(const struct bench *b, enum config c, double *lo, double *hi)
{
	double v[MAX_RUNS];

	for (unsigned int r = 0; r < b->runs; r++)
		v[r] = b->s[c][r].ns;
	*lo = *hi = v[0];
	for (unsigned int r = 1; r < b->runs; r++) {
		*lo = v[r] < *lo ? v[r] : *lo;
		*hi = v[r] > *hi ? v[r] : *hi;
	}
	return median(v, (int)b->runs);
}

static void print_results(const struct bench *b, double total_ns)
{
	uint64_t bytes = b->seg.npages * PAGE;
	double lo, hi, base = sample_median(b, PRIVATE_PAGE, &lo, &hi);
	double rf = median(b->raw_fresh, (int)b->nraw), ro = median(b->raw_over, (int)b->nraw);
	struct utsname un;

	if (uname(&un))
		memset(&un, 0, sizeof(un));
	printf("bench-evict: %llu MiB segment, %u VMs, %u runs, pager_evict() calls of %llu pages "
	       "(batches of %llu), swap in %s; "
	       "%s %s, %ld CPUs; %.0f s in all (VM setup %.0f s shared, %.0f s private; refills "
	       "%.0f s, shadow refaults %.0f s; first eviction, fresh swap file, shared range: "
	       "%.0f ms)\n\n",
	       (unsigned long long)(bytes / MIB), b->nvms, b->runs,
	       (unsigned long long)b->call_pages, EVICT_BATCH,
	       getenv("TMPDIR") && *getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp", un.sysname,
	       un.release, sysconf(_SC_NPROCESSORS_ONLN), total_ns / 1e9, b->setup_ns[0] / 1e9,
	       b->setup_ns[1] / 1e9, b->refill_ns / 1e9, b->refault_ns / 1e9,
	       b->first_evict_ns / 1e6);
	printf("| configuration | evict ms (median) | slowest .. fastest | MB/s | memory freed MiB | "
	       "invalidation callbacks | TLB flushes per vCPU: mean (min..max) | swap submissions | "
	       "time / baseline |\n");
	printf("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
	for (int c = 0; c < NR_CONFIGS; c++) {
		double m = sample_median(b, (enum config)c, &lo, &hi);
		const struct sample *s = &b->s[c][b->runs - 1];

		printf("| %s%s | %.0f | %.0f .. %.0f | %.0f | %.1f | %llu | %.1f (%llu..%llu) | %llu | "
		       "%.2f |\n",
		       config_names[c], c == PRIVATE_PAGE ? " (baseline)" : "", m / 1e6, lo / 1e6,
		       hi / 1e6, (double)bytes / 1e6 / (m / 1e9), (double)s->freed / MIB,
		       (unsigned long long)s->callbacks, s->flushes_mean,
		       (unsigned long long)s->flushes_min, (unsigned long long)s->flushes_max,
		       (unsigned long long)s->submissions, m / base);
	}
	printf("| raw pwrite of the same bytes, 4 KiB per call, fresh file | %.0f | - | %.0f | - | - "
	       "| - | - | %.2f |\n",
	       rf / 1e6, (double)bytes / 1e6 / (rf / 1e9), rf / base);
	printf("| raw pwrite, 4 KiB per call, over written blocks | %.0f | - | %.0f | - | - | - | - "
	       "| %.2f |\n",
	       ro / 1e6, (double)bytes / 1e6 / (ro / 1e9), ro / base);
}

int main(int argc, char **argv)
{
	static struct bench b;
	uint64_t mib = 1024;
	double t0 = now_ns();

	b.nvms = 64;
	b.runs = 5;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--mib") && i + 1 < argc)
			mib = strtoull(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--vms") && i + 1 < argc)
			b.nvms = (unsigned int)strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--call-pages") && i + 1 < argc)
			b.call_pages = strtoull(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--runs") && i + 1 < argc)
			b.runs = (unsigned int)strtoul(argv[++i], NULL, 0);
		else
			mib = 0;
	}
	if (!mib || mib % 2 || mib > 4096 || b.nvms < 1 || b.nvms > 256 || b.runs < 1 ||
	    b.runs > MAX_RUNS || (b.call_pages && (mib * MIB / PAGE) % b.call_pages)) {
		fprintf(stderr, "usage: %s [--mib N (even, 2..4096)] [--vms N (1..256)] "
				"[--runs N (1..%d)] [--call-pages N (dividing the segment)]\n",
			argv[0], MAX_RUNS);
		return 2;
	}
	b.vms = calloc(b.nvms, sizeof(*b.vms));
	if (!b.vms)
		return 1;
	if (!b.call_pages)
		b.call_pages = mib * MIB / PAGE;
	CHECK(notifier_thread_init());
	segment_create(&b.seg, mib * MIB);
	bench_tables(&b, true);
	bench_tables(&b, false);
	segment_destroy(&b.seg);
	notifier_barrier();
	notifier_thread_exit();
	print_results(&b, now_ns() - t0);
	free(b.vms);
	return 0;
}
