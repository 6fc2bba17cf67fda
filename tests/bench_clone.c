/*
 * bench-clone: the native cost of cloning a VM's shadow MMU
 * (shadow_mmu_clone) against Linux fork() of a process with the same memory
 * touched, measured in the same run, for guests of 64 MiB .. 4 GiB.  Prints
 * one Markdown table (docs/bench-clone.md has results, method and command).
 *
 *   bench-clone [--quick]          (or UMBRA_BENCH_QUICK=1 in the environment)
 *
 * For each guest size S:
 *  - fork: a helper process (forked from this one before any VM exists)
 *    maps S bytes of anonymous memory with 4 KiB pages
 *    (MADV_NOHUGEPAGE), writes every page, then forks REPS times; each child
 *    calls _exit(0) at once and the helper waits for it.  Timed in the helper:
 *    fork() until it returns in the parent.  The times come back through a
 *    pipe.
 *  - clone: one VM whose RAM slot (slot 0, machine address 0, the P2M mapping
 *    every page of it) is a sparse memfd of 2 MiB + S bytes: its first 2 MiB
 *    hold the guest's page tables, which map all S bytes of data with 2 MiB
 *    guest pages; every 4 KiB page of the S bytes is faulted in (read, with
 *    shadow_mmu_fault), so the shadow holds every translation: 1 PML4,
 *    1 PDPT, S / 1 GiB PDs and S / 2 MiB direct leaf tables, one leaf per page
 *    (checked).  The VM has an own slot (a sparse memfd of the RAM's size);
 *    each clone is made as the VMM makes the first clone of a CLONE: the
 *    parent gets a new own slot (another sparse memfd, made untimed before
 *    the clone, at its own machine address) and the child one of its own
 *    (reused: the clone is destroyed between runs).  Timed:
 *    shadow_mmu_clone() (one untimed clone first), REPS times; the clone is
 *    destroyed, untimed, after each.  Every size's VM exists at once and the
 *    timed clones go round-robin over the sizes (the forks come first).
 *  - first write: REPS more clones, untimed, each followed by the clone's
 *    first write (shadow_mmu_cow_break of the page in the middle of the
 *    data, as the VMM makes it for its guest: the copy of the clone's P2M
 *    path and of the page), timed.
 *    Checked: the clone adds exactly one table page (its root), the pool and
 *    both MMUs pass their checks after the first clone, and the pool is back
 *    to the parent's tables after every destroy.
 *
 * A benchmark, not a test: exits 0 after printing, 1 on any setup error or
 * failed check.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "umbra/notifier.h"
#define BENCH_NAME "bench-clone"
#include "bench_util.h"
#include "umbra/shadow.h"
#include "shadow_internal.h"
#include "spte.h"

#define PAGE 4096ull
#define MIB (1ull << 20)
#define GIB (1ull << 30)
#define RUN (2ull * MIB)

#define B_VA 0x0000004000000000ull	/* 256 GiB: 1 GiB-aligned, canonical */
#define B_TABLES_GPA 0x1000ull		/* the guest's tables: PML4, PDPT, PDs */
#define B_DATA_GPA RUN			/* the S bytes of data */
#define B_OWN_MPA (64ull * GIB)		/* the parent's first own slot */
#define B_OWN_STRIDE (8ull * GIB)	/* the parent's next own slots, one per clone */
#define B_CHILD_OWN_MPA (1024ull * GIB)	/* each clone's own slot */
#define B_MAX_REPS 32

/* A sparse memfd of @bytes mapped shared, with its notifier object. */
struct sparse {
	uint64_t bytes;
	int fd;
	uint8_t *host;
	struct notifier_object *obj;
};

struct vm {
	uint64_t bytes;			/* S: guest data */
	uint64_t ram_pages;		/* tables + data */
	uint64_t tables;		/* shadow table pages once every page is faulted */
	struct sparse ram, own, child_own;
	struct sparse new_own[2 * B_MAX_REPS + 2];	/* the parent's own slot after each clone */
	int clones;
	struct shadow_pool *pool;
	struct shadow_mmu *mmu;
	struct shadow_vcpu *vcpu;
	uint64_t cr3;
};

struct row {
	uint64_t bytes;
	double clone[B_MAX_REPS], fork[B_MAX_REPS];	/* ns */
	double write[B_MAX_REPS];	/* ns: the clone's first write */
};

static void sparse_create(struct sparse *s, const char *name, uint64_t bytes)
{
	s->bytes = bytes;
	s->fd = memfd_create(name, MFD_CLOEXEC);
	CHECK(s->fd < 0 ? -errno : 0);
	CHECK(ftruncate(s->fd, (off_t)bytes) ? -errno : 0);
	s->host = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, s->fd, 0);
	CHECK(s->host == MAP_FAILED ? -errno : 0);
	CHECK(notifier_object_create(name, bytes / PAGE, &s->obj));
}

static void sparse_destroy(struct sparse *s)
{
	notifier_object_destroy(s->obj);
	munmap(s->host, s->bytes);
	close(s->fd);
}

/* ---- fork ------------------------------------------------------------------- */

/* In the helper: touch @bytes, time @reps forks and write the times (ns)
 * to @out_fd; never returns. */
static void fork_helper(uint64_t bytes, int reps, int out_fd)
{
	double ns[B_MAX_REPS];

	(void)bench_touched(bytes);
	for (int r = 0; r < reps; r++)
		ns[r] = bench_fork_ns();
	if (write(out_fd, ns, (size_t)reps * sizeof(ns[0])) != (ssize_t)((size_t)reps * sizeof(ns[0])))
		_exit(1);
	_exit(0);
}

/* fork() of a process with @bytes touched, @reps times, into @ns. */
static void bench_fork(uint64_t bytes, int reps, double *ns)
{
	size_t want = (size_t)reps * sizeof(ns[0]), got = 0;
	int fds[2], status;
	pid_t helper;

	CHECK(pipe(fds) ? -errno : 0);
	fflush(NULL);
	helper = fork();
	CHECK(helper < 0 ? -errno : 0);
	if (helper == 0) {
		close(fds[0]);
		fork_helper(bytes, reps, fds[1]);
	}
	close(fds[1]);
	while (got < want) {
		ssize_t n = read(fds[0], (char *)ns + got, want - got);

		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fds[0]);
	ENSURE(waitpid(helper, &status, 0) == helper && WIFEXITED(status) &&
		       WEXITSTATUS(status) == 0 && got == want,
	       "the fork helper for %llu MiB failed", (unsigned long long)(bytes / MIB));
}

/* ---- the VM ----------------------------------------------------------------- */

static uint64_t *guest(struct vm *vm, uint64_t gpa)
{
	return (uint64_t *)(vm->ram.host + gpa);
}

/* The guest's tables: PML4 at B_TABLES_GPA, one PDPT, S / 1 GiB PDs whose
 * entries are 2 MiB pages mapping B_VA.. to B_DATA_GPA.. */
static void guest_map(struct vm *vm)
{
	const uint64_t table = SPTE_PRESENT | SPTE_WRITABLE | SPTE_USER;
	uint64_t pdpt = B_TABLES_GPA + PAGE, pd = pdpt + PAGE;

	vm->cr3 = B_TABLES_GPA;
	*guest(vm, vm->cr3 + SPTE_INDEX(B_VA, 4) * 8) = pdpt | table;
	for (uint64_t off = 0; off < vm->bytes; off += RUN) {
		uint64_t va = B_VA + off, pd_gpa = pd + off / GIB * PAGE;

		ENSURE(pd_gpa + PAGE <= B_DATA_GPA, "guest table area full");
		*guest(vm, pdpt + SPTE_INDEX(va, 3) * 8) = pd_gpa | table;
		*guest(vm, pd_gpa + SPTE_INDEX(va, 2) * 8) = (B_DATA_GPA + off) | table | SPTE_LARGE;
	}
}

static void fault(struct vm *vm, uint64_t va)
{
	uint32_t ec = 0;
	int ret = shadow_mmu_fault(vm->mmu, vm->cr3, va, SHADOW_ACCESS_USER, &ec);

	ENSURE(ret == SHADOW_FAULT_FIXED, "fault at %#llx: %d (error code %#x)",
	       (unsigned long long)va, ret, ec);
}

static void add_slot(struct shadow_mmu *mmu, struct sparse *s, uint64_t mpa, int *id)
{
	struct shadow_slot slot = { .obj = s->obj, .mpa = mpa, .host = s->host };

	CHECK(shadow_mmu_add_slot(mmu, &slot, id));
}

static void vm_setup(struct vm *vm, uint64_t bytes)
{
	struct shadow_vcpu_config vcfg = { .tlb_entries = 64 };
	struct shadow_mmu_config cfg = { 0 };
	int ram, own;

	memset(vm, 0, sizeof(*vm));
	vm->bytes = bytes;
	vm->ram_pages = (B_DATA_GPA + bytes) / PAGE;
	vm->tables = 2 + (bytes + GIB - 1) / GIB + bytes / RUN;
	sparse_create(&vm->ram, "bench-clone-ram", vm->ram_pages * PAGE);
	sparse_create(&vm->own, "bench-clone-own", vm->ram_pages * PAGE);
	sparse_create(&vm->child_own, "bench-clone-child-own", vm->ram_pages * PAGE);
	/* The parent's tables, a root per clone, slack. */
	CHECK(shadow_pool_create(vm->tables + 16, &vm->pool));
	cfg.pool = vm->pool;
	cfg.max_gpa = vm->ram_pages * PAGE;
	cfg.mode = shadow_default_mode;
	CHECK(shadow_mmu_create(&cfg, &vm->mmu));
	add_slot(vm->mmu, &vm->ram, 0, &ram);
	CHECK(shadow_mmu_map_gpa(vm->mmu, 0, vm->ram_pages, ram, 0));
	add_slot(vm->mmu, &vm->own, B_OWN_MPA, &own);
	CHECK(shadow_mmu_set_own_slot(vm->mmu, own));
	guest_map(vm);
	CHECK(shadow_vcpu_create(vm->mmu, &vcfg, &vm->vcpu));
	CHECK(shadow_vcpu_load_cr3(vm->vcpu, vm->cr3));
	for (uint64_t off = 0; off < bytes; off += PAGE)
		fault(vm, B_VA + off);
	ENSURE(shadow_pool_pages_in_use(vm->pool, 0) == vm->tables,
	       "expected %llu shadow tables, got %zu", (unsigned long long)vm->tables,
	       shadow_pool_pages_in_use(vm->pool, 0));
}

static void vm_teardown(struct vm *vm)
{
	shadow_vcpu_destroy(vm->vcpu);
	shadow_mmu_destroy(vm->mmu);
	ENSURE(shadow_pool_pages_in_use(vm->pool, 0) == 0, "%zu tables left",
	       shadow_pool_pages_in_use(vm->pool, 0));
	shadow_pool_destroy(vm->pool);
	sparse_destroy(&vm->ram);
	sparse_destroy(&vm->own);
	sparse_destroy(&vm->child_own);
	for (int i = 0; i < vm->clones; i++)
		sparse_destroy(&vm->new_own[i]);
}

/* The parent's next own slot (made untimed, before the clone). */
static struct shadow_slot vm_next_own(struct vm *vm)
{
	struct sparse *s = &vm->new_own[vm->clones];

	ENSURE(vm->clones < 2 * B_MAX_REPS + 2, "too many clones");
	sparse_create(s, "bench-clone-parent-own", vm->ram_pages * PAGE);
	return (struct shadow_slot){ .obj = s->obj, .host = s->host,
				     .mpa = B_OWN_MPA + (uint64_t)++vm->clones * B_OWN_STRIDE };
}

/* The clone as the VMM makes the first clone of a CLONE: the parent gets a
 * new own slot (its old one becomes a layer), the child its own slot. */
static int vm_clone(struct vm *vm, const struct shadow_slot *parent_own, struct shadow_mmu **child)
{
	struct shadow_slot own = { .obj = vm->child_own.obj, .mpa = B_CHILD_OWN_MPA,
				   .host = vm->child_own.host };

	return shadow_mmu_clone(vm->mmu, parent_own, &own, child);
}

/* One timed clone of @vm (ns); checks the pool, and with @check both MMUs,
 * before destroying the clone. */
static double clone_once(struct vm *vm, bool check, double *write_ns)
{
	struct shadow_slot parent_own = vm_next_own(vm);
	struct shadow_mmu *child;
	double t0 = now_ns(), t1, t2;

	CHECK(vm_clone(vm, &parent_own, &child));
	t1 = now_ns();
	ENSURE(shadow_pool_pages_in_use(vm->pool, 0) == vm->tables + 1,
	       "expected the clone to add one table (its root): %zu in use, parent %llu",
	       shadow_pool_pages_in_use(vm->pool, 0), (unsigned long long)vm->tables);
	if (check) {
		CHECK(shadow_pool_check(vm->pool));
		CHECK(shadow_mmu_check(vm->mmu));
		CHECK(shadow_mmu_check(child));
	}
	/* With @write_ns, the clone's first write (as the VMM makes it for its
	 * guest): the copy of the P2M path and of the page. */
	if (write_ns) {
		t2 = now_ns();
		CHECK(shadow_mmu_cow_break(child, B_DATA_GPA + vm->bytes / 2));
		*write_ns = now_ns() - t2;
	}
	shadow_mmu_destroy(child);
	/* Its root becomes allocatable after a grace period: wait for it, so
	 * that every clone finds the pool as the first did. */
	pool_wait_deferred(vm->pool);
	ENSURE(shadow_pool_pages_in_use(vm->pool, 0) == vm->tables,
	       "the clone's destroy left %zu tables, parent %llu",
	       shadow_pool_pages_in_use(vm->pool, 0), (unsigned long long)vm->tables);
	return t1 - t0;
}

/* Every size's fork() first (each helper is forked while no VM exists),
 * then a VM per size, then the clones round-robin over the sizes (run r of
 * every size before run r + 1 of any), so that what the machine does
 * meanwhile falls on every size alike. */
static void bench_sizes(struct row *rows, const uint64_t *sizes, int nsizes, int reps)
{
	static struct vm vms[4];

	for (int i = 0; i < nsizes; i++) {
		rows[i].bytes = sizes[i];
		bench_fork(sizes[i], reps, rows[i].fork);
	}
	for (int i = 0; i < nsizes; i++) {
		vm_setup(&vms[i], sizes[i]);
		(void)clone_once(&vms[i], true, &rows[i].write[0]); /* warm-up, checked */
		(void)clone_once(&vms[i], false, &rows[i].write[0]);
	}
	for (int r = 0; r < reps; r++)
		for (int i = 0; i < nsizes; i++)
			rows[i].clone[r] = clone_once(&vms[i], false, NULL);
	/* Then the first writes, after clones not timed. */
	for (int r = 0; r < reps; r++)
		for (int i = 0; i < nsizes; i++)
			(void)clone_once(&vms[i], false, &rows[i].write[r]);
	for (int i = 0; i < nsizes; i++)
		vm_teardown(&vms[i]);
}

/* ---- the table -------------------------------------------------------------- */

static double min_of(const double *v, int n)
{
	double m = v[0];

	for (int i = 1; i < n; i++)
		m = v[i] < m ? v[i] : m;
	return m;
}

static double max_of(const double *v, int n)
{
	double m = v[0];

	for (int i = 1; i < n; i++)
		m = v[i] > m ? v[i] : m;
	return m;
}

static void print_size(uint64_t bytes)
{
	if (bytes >= GIB)
		printf("| %llu GiB ", (unsigned long long)(bytes / GIB));
	else
		printf("| %llu MiB ", (unsigned long long)(bytes / MIB));
}

static void print_table(const struct row *rows, int nrows, int reps)
{
	double base = median(rows[0].clone, reps);

	printf("| guest RAM | clone median | clone spread (min..max) | fork median | "
	       "fork spread (min..max) | clone / fork | clone / clone(64 MiB) | first write median | "
	       "first write spread (min..max) |\n");
	printf("|---|---|---|---|---|---|---|---|---|\n");
	for (int i = 0; i < nrows; i++) {
		const struct row *r = &rows[i];
		double c = median(r->clone, reps), f = median(r->fork, reps);

		print_size(r->bytes);
		printf("| %.1f µs | %.1f .. %.1f µs | %.0f µs | %.0f .. %.0f µs | 1/%.0f | %.2f | %.1f µs | "
		       "%.1f .. %.1f µs |\n",
		       c / 1e3, min_of(r->clone, reps) / 1e3, max_of(r->clone, reps) / 1e3, f / 1e3,
		       min_of(r->fork, reps) / 1e3, max_of(r->fork, reps) / 1e3, f / c, c / base,
		       median(r->write, reps) / 1e3, min_of(r->write, reps) / 1e3, max_of(r->write, reps) / 1e3);
	}
}

int main(int argc, char **argv)
{
	bool quick = bench_quick(argc, argv);
	static const uint64_t sizes[] = { 64 * MIB, 256 * MIB, GIB, 4 * GIB };
	struct row rows[4];
	struct utsname un;
	int nsizes, reps;
	double t0 = now_ns();

	nsizes = quick ? 2 : 4;
	reps = quick ? 5 : 21;
	CHECK(notifier_thread_init());
	bench_sizes(rows, sizes, nsizes, reps);
	if (uname(&un))
		memset(&un, 0, sizeof(un));
	printf("bench-clone%s: %s %s, %ld CPUs online; %d runs per size; %.0f s\n\n",
	       quick ? " --quick" : "", un.sysname, un.release, sysconf(_SC_NPROCESSORS_ONLN), reps,
	       (now_ns() - t0) / 1e9);
	print_table(rows, nsizes, reps);
	return 0;
}
