/*
 * bench-shadow: what a shadow page fault and a zap cost, next to what Linux
 * pays for a minor fault on a page-cached memfd page, measured in the same
 * run.  Prints a Markdown table (docs/bench-shadow.md has results and the
 * command).
 *
 *   bench-shadow [PAGES [ROUNDS]]     defaults: 4096 pages, 15 rounds
 *
 * Each figure is the median over ROUNDS of (time of one pass / operations).
 *  - shadow fault, warm tables: every leaf zapped through the reverse map,
 *    tables kept; then shadow_mmu_fault() on each page (guest walk with A/D,
 *    P2M, notifier read_begin/read_retry, install, rmap);
 *  - shadow fault, cold: every shadow table zapped first (zap_all);
 *  - two threads faulting one VM, warm tables: each faults its half of the
 *    pages (its own leaf tables), started together, each pinned to a CPU
 *    of its own (CPUs 0 and 1 of the process's set, where it has two: as
 *    vCPU threads run on CPUs of their own; unpinned, the scheduler often
 *    starts both woken threads on the waker's CPU and a round ends before
 *    it moves one); once both are awake they meet at a spin rendezvous, so
 *    that neither starts its clock while the other still waits to be
 *    scheduled (a futex wake-up here can take tens of microseconds, a
 *    tenth of a round); the wall time of both per fault, and the
 *    throughput against one thread faulting all pages in the same round;
 *  - software vCPU access after the fault (walk of the pool, TLB fill);
 *  - zap: shadow_mmu_zap_range() over all pages (rmap walk, flush of one
 *    registered vCPU, per page), and the same through the notifier:
 *    invalidate_range_start + end in range mode and in per-page mode;
 *  - Linux: a fresh MAP_SHARED mapping of a memfd whose pages are all in the
 *    page cache, one byte read (or written) per page; ns per page and, with
 *    the minor-fault count from getrusage(), ns per fault (read faults map
 *    several pages at once: fault-around).
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "umbra/notifier.h"
#define BENCH_NAME "bench-shadow"
#include "bench_trace.h"
#include "bench_util.h"
#include "umbra/shadow.h"
#include "spte.h"

#define PAGE 4096ull
#define TABLES 0x1000ull
#define DATA 0x400000ull /* 4 MiB: data pages from here */
#define VA_BASE 0x0000004000000000ull

static long minflt(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return ru.ru_minflt;
}

struct setup {
	uint64_t npages, ram_pages;
	uint8_t *host;
	struct notifier_object *ram;
	struct shadow_pool *pool;
	struct shadow_mmu *mmu;
	struct shadow_vcpu *vcpu;
	int slot;
	uint64_t cr3, next_table;
};

static uint64_t *g(struct setup *s, uint64_t gpa)
{
	return (uint64_t *)(s->host + gpa);
}

static uint64_t guest_entry(struct setup *s, uint64_t va, int level)
{
	uint64_t table = s->cr3;

	for (int l = 4; l > level; l--) {
		uint64_t *e = g(s, table + SPTE_INDEX(va, l) * 8);

		if (!(*e & SPTE_PRESENT)) {
			*e = s->next_table | SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER;
			s->next_table += PAGE;
		}
		table = spte_addr(*e);
	}
	return table + SPTE_INDEX(va, level) * 8;
}

static void setup(struct setup *s, uint64_t npages)
{
	struct shadow_mmu_config cfg = { 0 };
	struct shadow_slot slot = { 0 };
	struct shadow_vcpu_config vcfg = { .tlb_entries = 64 };

	s->npages = npages;
	s->ram_pages = DATA / PAGE + npages;
	s->host = bench_mmap(s->ram_pages * PAGE);
	CHECK(notifier_object_create("bench-ram", s->ram_pages, &s->ram));
	CHECK(shadow_pool_create(4 + 2 * (npages / 512 + 2), &s->pool));
	cfg.pool = s->pool;
	cfg.max_gpa = s->ram_pages * PAGE;
	cfg.mode = shadow_default_mode;
	CHECK(shadow_mmu_create(&cfg, &s->mmu));
	slot.obj = s->ram;
	slot.host = s->host;
	CHECK(shadow_mmu_add_slot(s->mmu, &slot, &s->slot));
	CHECK(shadow_mmu_map_gpa(s->mmu, 0, s->ram_pages, s->slot, 0));
	s->next_table = TABLES;
	s->cr3 = s->next_table;
	s->next_table += PAGE;
	for (uint64_t i = 0; i < npages; i++) {
		*g(s, guest_entry(s, VA_BASE + i * PAGE, 1)) =
			(DATA + i * PAGE) | SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER;
		if (s->next_table >= DATA) {
			fprintf(stderr, "bench-shadow: too many pages\n");
			exit(1);
		}
	}
	CHECK(shadow_vcpu_create(s->mmu, &vcfg, &s->vcpu));
	CHECK(shadow_vcpu_load_cr3(s->vcpu, s->cr3));
}

static void teardown(struct setup *s)
{
	shadow_vcpu_destroy(s->vcpu);
	shadow_mmu_destroy(s->mmu);
	notifier_object_destroy(s->ram);
	shadow_pool_destroy(s->pool);
	munmap(s->host, s->ram_pages * PAGE);
}

static double fault_all(struct setup *s)
{
	uint32_t ec;
	double t0 = now_ns();

	for (uint64_t i = 0; i < s->npages; i++)
		if (shadow_mmu_fault(s->mmu, s->cr3, VA_BASE + i * PAGE, SHADOW_ACCESS_USER, &ec) !=
		    SHADOW_FAULT_FIXED) {
			fprintf(stderr, "bench-shadow: fault failed\n");
			exit(1);
		}
	return (now_ns() - t0) / (double)s->npages;
}

/* Faults pages [first, first + n). */
static void fault_range(struct setup *s, uint64_t first, uint64_t n)
{
	uint32_t ec;

	for (uint64_t i = first; i < first + n; i++)
		if (shadow_mmu_fault(s->mmu, s->cr3, VA_BASE + i * PAGE, SHADOW_ACCESS_USER, &ec) !=
		    SHADOW_FAULT_FIXED) {
			fprintf(stderr, "bench-shadow: fault failed\n");
			exit(1);
		}
}

struct half {
	struct setup *s;
	pthread_barrier_t *start;
	unsigned int *arrived;	/* atomic: the spin rendezvous after the barrier */
	uint64_t first, n;
	int cpu;	/* the CPU to run on, -1: any */
	double t0, t1;	/* the thread's own clock readings around its faults */
};

/* The @k-th CPU of the process's affinity set, or -1 if it has fewer. */
static int nth_cpu(int k)
{
	cpu_set_t set;

	if (sched_getaffinity(0, sizeof(set), &set))
		return -1;
	for (int c = 0; c < CPU_SETSIZE; c++)
		if (CPU_ISSET(c, &set) && k-- == 0)
			return c;
	return -1;
}

static void *fault_half(void *arg)
{
	struct half *h = arg;

	if (h->cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(h->cpu, &set);
		pthread_setaffinity_np(pthread_self(), sizeof(set), &set);
	}
	CHECK(notifier_thread_init()); /* the fault's read side (RCU) */
	pthread_barrier_wait(h->start);
	__atomic_add_fetch(h->arrived, 1, __ATOMIC_ACQ_REL);
	for (unsigned int spins = 0; __atomic_load_n(h->arrived, __ATOMIC_ACQUIRE) < 2; spins++) {
		if (spins < 100000)
			__builtin_ia32_pause();
		else
			sched_yield(); /* the other is not running: one CPU */
	}
	h->t0 = now_ns();
	fault_range(h->s, h->first, h->n);
	h->t1 = now_ns();
	notifier_thread_exit();
	return NULL;
}

/* Two threads fault one half each (leaves zapped, tables kept): wall time
 * from the first thread's start to the last thread's end, per fault (each
 * thread reads the clock itself: the main thread may run only after both
 * finished, on a 2-core machine). */
static double fault_two_threads(struct setup *s)
{
	pthread_barrier_t start;
	unsigned int arrived = 0;
	const int cpu1 = nth_cpu(1), cpu0 = cpu1 >= 0 ? nth_cpu(0) : -1;
	struct half h[2] = { { s, &start, &arrived, 0, s->npages / 2, cpu0, 0, 0 },
			     { s, &start, &arrived, s->npages / 2, s->npages - s->npages / 2, cpu1, 0, 0 } };
	pthread_t t[2];

	pthread_barrier_init(&start, NULL, 3);
	for (int k = 0; k < 2; k++)
		if (pthread_create(&t[k], NULL, fault_half, &h[k])) {
			fprintf(stderr, "bench-shadow: pthread_create failed\n");
			exit(1);
		}
	pthread_barrier_wait(&start);
	for (int k = 0; k < 2; k++)
		pthread_join(t[k], NULL);
	pthread_barrier_destroy(&start);
	return ((h[0].t1 > h[1].t1 ? h[0].t1 : h[1].t1) - (h[0].t0 < h[1].t0 ? h[0].t0 : h[1].t0)) /
	       (double)s->npages;
}

static double access_all(struct setup *s)
{
	struct shadow_vcpu_result res;
	double t0 = now_ns();

	for (uint64_t i = 0; i < s->npages; i++)
		CHECK(shadow_vcpu_access(s->vcpu, VA_BASE + i * PAGE + 8, SHADOW_ACCESS_USER, &res));
	return (now_ns() - t0) / (double)s->npages;
}

static double zap_range(struct setup *s)
{
	double t0 = now_ns();
	long n = shadow_mmu_zap_range(s->mmu, s->slot, DATA / PAGE, DATA / PAGE + s->npages - 1);

	if (n != (long)s->npages) {
		fprintf(stderr, "bench-shadow: zapped %ld of %llu\n", n, (unsigned long long)s->npages);
		exit(1);
	}
	return (now_ns() - t0) / (double)s->npages;
}

static double zap_notifier(struct setup *s, enum notifier_mode mode)
{
	struct notifier_range r;
	double t0;

	CHECK(notifier_object_set_mode(s->ram, mode));
	notifier_range_init(&r, s->ram, NOTIFIER_EVENT_SWAPOUT, DATA / PAGE,
			    DATA / PAGE + s->npages - 1, NOTIFIER_RANGE_MAY_BLOCK);
	t0 = now_ns();
	CHECK(notifier_invalidate_range_start(&r));
	notifier_invalidate_range_end(&r);
	return (now_ns() - t0) / (double)s->npages;
}

/* Linux: touch each page of a fresh shared mapping of a page-cached memfd. */
static void linux_minor(uint64_t npages, bool write, double *ns_page, double *faults_page)
{
	int fd = memfd_create("bench-linux", MFD_CLOEXEC);
	volatile uint8_t *p;
	uint8_t *fill;
	long f0;
	double t0;

	if (fd < 0 || ftruncate(fd, (off_t)(npages * PAGE)) < 0) {
		perror("memfd");
		exit(1);
	}
	/* Put every page in the page cache (written once through a mapping). */
	fill = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (fill == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	for (uint64_t i = 0; i < npages; i++)
		fill[i * PAGE] = 1;
	munmap(fill, npages * PAGE);
	p = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (p == MAP_FAILED) {
		perror("mmap");
		exit(1);
	}
	f0 = minflt();
	t0 = now_ns();
	for (uint64_t i = 0; i < npages; i++) {
		if (write)
			p[i * PAGE] = 2;
		else
			(void)p[i * PAGE];
	}
	*ns_page = (now_ns() - t0) / (double)npages;
	*faults_page = (double)(minflt() - f0) / (double)npages;
	munmap((void *)p, npages * PAGE);
	close(fd);
}

int main(int argc, char **argv)
{
	uint64_t npages = argc > 1 ? strtoull(argv[1], NULL, 0) : 4096;
	int rounds = argc > 2 ? atoi(argv[2]) : 15;
	enum { F_WARM, F_COLD, ACCESS, ZAP, ZAP_RANGE, ZAP_PAGE, L_READ, L_READ_F, L_WRITE,
	       L_WRITE_F, F_ONE, F_TWO, F_SPEEDUP, NR };
	double *v[NR];
	struct setup s;

	if (npages == 0 || npages > 65536 || rounds < 1 || rounds > 1000) {
		fprintf(stderr, "usage: %s [PAGES (1..65536) [ROUNDS (1..1000)]]\n", argv[0]);
		return 2;
	}
	for (int k = 0; k < NR; k++)
		v[k] = calloc((size_t)rounds, sizeof(double));
	notifier_thread_init();
	bench_trace_start();
	setup(&s, npages);
	fault_all(&s); /* warm-up: tables exist */
	for (int r = 0; r < rounds; r++) {
		zap_range(&s);
		v[F_WARM][r] = fault_all(&s);
		v[ACCESS][r] = access_all(&s);
		v[ZAP][r] = zap_range(&s);
		fault_all(&s);
		v[ZAP_RANGE][r] = zap_notifier(&s, NOTIFIER_MODE_RANGE);
		fault_all(&s);
		v[ZAP_PAGE][r] = zap_notifier(&s, NOTIFIER_MODE_PAGE);
		shadow_mmu_zap_all(s.mmu);
		v[F_COLD][r] = fault_all(&s);
		zap_range(&s);
		v[F_ONE][r] = fault_all(&s);
		zap_range(&s);
		v[F_TWO][r] = fault_two_threads(&s);
		v[F_SPEEDUP][r] = v[F_ONE][r] / v[F_TWO][r];
		linux_minor(npages, false, &v[L_READ][r], &v[L_READ_F][r]);
		linux_minor(npages, true, &v[L_WRITE][r], &v[L_WRITE_F][r]);
	}
	teardown(&s);
	notifier_barrier();
	notifier_thread_exit();
	bench_trace_finish();

	double m[NR], lo[NR], hi[NR];
	for (int k = 0; k < NR; k++) {
		m[k] = median(v[k], rounds);
		lo[k] = hi[k] = v[k][0];
		for (int r = 1; r < rounds; r++) {
			lo[k] = v[k][r] < lo[k] ? v[k][r] : lo[k];
			hi[k] = v[k][r] > hi[k] ? v[k][r] : hi[k];
		}
	}
	double l_read_fault = m[L_READ] / (m[L_READ_F] > 0 ? m[L_READ_F] : 1);
	double l_write_fault = m[L_WRITE] / (m[L_WRITE_F] > 0 ? m[L_WRITE_F] : 1);

	printf("bench-shadow: %llu pages, %d rounds, median ns\n\n", (unsigned long long)npages,
	       rounds);
	printf("| operation | ns | ratio to a Linux minor fault (write, 1 fault/page) |\n");
	printf("| --- | ---: | ---: |\n");
	printf("| shadow fault, tables present (per fault) | %.0f | %.4f |\n", m[F_WARM],
	       m[F_WARM] / l_write_fault);
	printf("| shadow fault, cold: tables rebuilt (per fault) | %.0f | %.4f |\n", m[F_COLD],
	       m[F_COLD] / l_write_fault);
	printf("| software vCPU access after fault: pool walk + TLB fill (per page) | %.0f | %.4f |\n",
	       m[ACCESS], m[ACCESS] / l_write_fault);
	printf("| zap via rmap, shadow_mmu_zap_range (per page) | %.0f | %.4f |\n", m[ZAP],
	       m[ZAP] / l_write_fault);
	printf("| zap via notifier, range mode start+end (per page) | %.0f | %.4f |\n", m[ZAP_RANGE],
	       m[ZAP_RANGE] / l_write_fault);
	printf("| zap via notifier, per-page invalidate_page mode (per page) | %.0f | %.4f |\n",
	       m[ZAP_PAGE], m[ZAP_PAGE] / l_write_fault);
	printf("| Linux minor fault, write touch of page-cached memfd (per fault; %.2f faults/page) | %.0f | 1 |\n",
	       m[L_WRITE_F], l_write_fault);
	printf("| Linux read touch of page-cached memfd (per page; %.3f faults/page, fault-around) | %.0f | %.4f |\n",
	       m[L_READ_F], m[L_READ], m[L_READ] / l_write_fault);
	printf("| Linux minor fault, read (per fault) | %.0f | %.4f |\n", l_read_fault,
	       l_read_fault / l_write_fault);
	printf("\nshadow fault / Linux minor fault (write): %.4f (Linux is %.0fx slower); zap per page / Linux minor fault: %.4f\n",
	       m[F_WARM] / l_write_fault, l_write_fault / m[F_WARM], m[ZAP] / l_write_fault);
	printf("\n| faults on one VM, tables present | ns per fault (median) | min | max |\n");
	printf("| --- | ---: | ---: | ---: |\n");
	printf("| one thread, every page | %.0f | %.0f | %.0f |\n", m[F_ONE], lo[F_ONE], hi[F_ONE]);
	printf("| two threads, half the pages each (wall time per fault) | %.0f | %.0f | %.0f |\n", m[F_TWO],
	       lo[F_TWO], hi[F_TWO]);
	printf("\ntwo-thread fault throughput / one thread: %.2fx (median of the per-round ratios; min %.2f, max %.2f)\n",
	       m[F_SPEEDUP], lo[F_SPEEDUP], hi[F_SPEEDUP]);
	for (int k = 0; k < NR; k++)
		free(v[k]);
	return 0;
}
