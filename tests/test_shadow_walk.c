/*
 * shadow/walk.c: the x86-64 4-level walker, table-tested against the rules of
 * the Intel SDM vol. 3A (4.5 paging structures and reserved bits, 4.6 access
 * rights, 4.7 page-fault error code, 4.8 accessed and dirty flags) and the
 * AMD APM vol. 2 (5.3, 5.6, 8.4.2).
 */
#include <check.h>
#include <errno.h>
#include <string.h>

#include "umbra/shadow.h"
#include "spte.h"
#include "tests.h"

/* A flat physical memory of 16 pages with the tables at fixed places. */
#define MEM_PAGES 16
#define PML4 0x1000ull
#define PDPT 0x2000ull
#define PD 0x3000ull
#define PT 0x4000ull
#define FRAME_4K 0x5000ull
#define FRAME_2M 0x200000ull
#define FRAME_1G 0x40000000ull
/* Indices 1, 1, 1, 3 at levels 4..1, offset 0x123. */
#define VA ((1ull << 39) | (1ull << 30) | (1ull << 21) | (3ull << 12) | 0x123)

static uint64_t mem[MEM_PAGES * 512];
static bool mem_readonly;

static int mem_read(void *ctx, uint64_t pa, uint64_t *val)
{
	if (pa >= sizeof(mem) || pa % 8)
		return -EFAULT;
	*val = __atomic_load_n(&mem[pa / 8], __ATOMIC_RELAXED);
	return 0;
}

static int mem_cmpxchg(void *ctx, uint64_t pa, uint64_t old, uint64_t new_val)
{
	if (pa >= sizeof(mem))
		return -EFAULT;
	if (mem_readonly)
		return -EROFS;
	return __atomic_compare_exchange_n(&mem[pa / 8], &old, new_val, false, __ATOMIC_RELAXED,
					   __ATOMIC_RELAXED)
		       ? 0
		       : -EAGAIN;
}

static const struct shadow_mem_ops mem_ops = { .read = mem_read, .cmpxchg = mem_cmpxchg };

#define P SPTE_PRESENT
#define W SPTE_WRITABLE
#define U SPTE_USER
#define PS SPTE_LARGE
#define NX SPTE_NX
#define ALL (P | W | U)

#define RD 0
#define WR SHADOW_ACCESS_WRITE
#define US SHADOW_ACCESS_USER
#define IF SHADOW_ACCESS_FETCH

#define EC_P SHADOW_PFERR_PRESENT
#define EC_W SHADOW_PFERR_WRITE
#define EC_U SHADOW_PFERR_USER
#define EC_R SHADOW_PFERR_RSVD
#define EC_I SHADOW_PFERR_FETCH

#define RW_ SHADOW_RIGHT_WRITE
#define RU_ SHADOW_RIGHT_USER
#define RX_ SHADOW_RIGHT_EXEC

/* Paging modes: WP, NXE, SMEP, 1 GiB pages, MAXPHYADDR. */
#define M_DEF { .wp = true, .nxe = true, .smep = false, .gbpages = true, .maxphyaddr = 46 }
#define M_NOWP { .wp = false, .nxe = true, .smep = false, .gbpages = true, .maxphyaddr = 46 }
#define M_NONX { .wp = true, .nxe = false, .smep = false, .gbpages = true, .maxphyaddr = 46 }
#define M_SMEP { .wp = true, .nxe = true, .smep = true, .gbpages = true, .maxphyaddr = 46 }
#define M_SMEP_NONX { .wp = true, .nxe = false, .smep = true, .gbpages = true, .maxphyaddr = 46 }
#define M_NO1G { .wp = true, .nxe = true, .smep = false, .gbpages = false, .maxphyaddr = 46 }
#define M_PA36 { .wp = true, .nxe = true, .smep = false, .gbpages = true, .maxphyaddr = 36 }

static const struct walk_case {
	const char *rule;
	/* Flags of the PML4E, PDPTE, PDE, PTE (addresses are filled in; a PS
	 * entry is the leaf and the levels below it are unused). */
	uint64_t e4, e3, e2, e1;
	struct shadow_paging_mode mode;
	unsigned int access;
	int ret;		/* 0 or -EFAULT */
	uint32_t ec;		/* error code when -EFAULT */
	int level;		/* fault level, or the leaf level on success */
	unsigned int rights;	/* effective rights on success */
} cases[] = {
	/* Translations that succeed, and the rights they get. */
	{ "all levels U/S=1 R/W=1: user write allowed", ALL, ALL, ALL, ALL, M_DEF, WR | US, 0, 0, 1,
	  RW_ | RU_ | RX_ },
	{ "supervisor read of a supervisor page", P, P, P, P, M_DEF, RD, 0, 0, 1, RX_ },
	{ "R/W ANDs across levels: one level read-only makes the page read-only", ALL, P | U, ALL,
	  ALL, M_DEF, RD | US, 0, 0, 1, RU_ | RX_ },
	{ "U/S ANDs across levels: supervisor PML4E makes a supervisor page", P | W, ALL, ALL, ALL,
	  M_DEF, RD, 0, 0, 1, RW_ | RX_ },
	{ "XD ORs across levels with NXE", ALL, ALL | NX, ALL, ALL, M_DEF, RD, 0, 0, 1, RW_ | RU_ },
	{ "CR0.WP=0: supervisor write to a read-only page allowed", P, P, P, P, M_NOWP, WR, 0, 0, 1,
	  RX_ },
	{ "CR0.WP=1: supervisor write to a user writable page allowed (no SMAP)", ALL, ALL, ALL, ALL,
	  M_DEF, WR, 0, 0, 1, RW_ | RU_ | RX_ },
	{ "PTE bit 7 is PAT, not reserved", ALL, ALL, ALL, ALL | (1ull << 7), M_DEF, RD, 0, 0, 1,
	  RW_ | RU_ | RX_ },
	{ "2 MiB page: PDE.PS", ALL, ALL, ALL | PS, 0, M_DEF, WR | US, 0, 0, 2, RW_ | RU_ | RX_ },
	{ "2 MiB page: PAT bit 12 is not reserved", ALL, ALL, ALL | PS | (1ull << 12), 0, M_DEF, RD, 0,
	  0, 2, RW_ | RU_ | RX_ },
	{ "1 GiB page: PDPTE.PS with 1 GiB pages", ALL, ALL | PS, 0, 0, M_DEF, RD | US, 0, 0, 3,
	  RW_ | RU_ | RX_ },
	{ "without NXE every page is executable", ALL, ALL, ALL, ALL, M_NONX, IF | US, 0, 0, 1,
	  RW_ | RU_ | RX_ },
	{ "SMEP: supervisor fetch from a supervisor page allowed", P, P, P, P, M_SMEP, IF, 0, 0, 1,
	  RX_ },
	{ "SMEP: supervisor page because one level has U/S=0", ALL, ALL, P | W, ALL, M_SMEP, IF, 0, 0,
	  1, RW_ | RX_ },

	/* Not present: P=0, the access's W/U, I/D only with NXE or SMEP. */
	{ "PML4E not present: supervisor read", 0, ALL, ALL, ALL, M_DEF, RD, -EFAULT, 0, 4, 0 },
	{ "PDPTE not present: user write", ALL, 0, ALL, ALL, M_DEF, WR | US, -EFAULT, EC_W | EC_U, 3,
	  0 },
	{ "PTE not present: fetch with NXE sets I/D", ALL, ALL, ALL, 0, M_DEF, IF, -EFAULT, EC_I, 1,
	  0 },
	{ "PTE not present: fetch without NXE or SMEP has no I/D", ALL, ALL, ALL, 0, M_NONX, IF | US,
	  -EFAULT, EC_U, 1, 0 },
	{ "PTE not present: fetch without NXE but with SMEP sets I/D", ALL, ALL, ALL, 0, M_SMEP_NONX,
	  IF, -EFAULT, EC_I, 1, 0 },
	{ "not present wins over reserved bits in the same entry", ALL, ALL, ALL,
	  (1ull << 50) | W, M_DEF, RD, -EFAULT, 0, 1, 0 },

	/* Protection: P=1. */
	{ "user read of a supervisor page (U/S=0 in the PDE)", ALL, ALL, P | W, ALL, M_DEF, RD | US,
	  -EFAULT, EC_P | EC_U, 1, 0 },
	{ "user write through a read-only PDPTE", ALL, P | U, ALL, ALL, M_DEF, WR | US, -EFAULT,
	  EC_P | EC_W | EC_U, 1, 0 },
	{ "CR0.WP=1: supervisor write to a read-only page", ALL, ALL, ALL, P | U, M_DEF, WR, -EFAULT,
	  EC_P | EC_W, 1, 0 },
	{ "CR0.WP=1: supervisor write read-only only at the PML4E", P | U, ALL, ALL, ALL, M_DEF, WR,
	  -EFAULT, EC_P | EC_W, 1, 0 },
	{ "CR0.WP=0 does not let user writes to read-only pages", ALL, ALL, ALL, P | U, M_NOWP,
	  WR | US, -EFAULT, EC_P | EC_W | EC_U, 1, 0 },
	{ "NX in the PML4E: supervisor fetch", ALL | NX, ALL, ALL, ALL, M_DEF, IF, -EFAULT, EC_P | EC_I,
	  1, 0 },
	{ "NX in the PTE: user fetch", ALL, ALL, ALL, ALL | NX, M_DEF, IF | US, -EFAULT,
	  EC_P | EC_U | EC_I, 1, 0 },
	{ "NX on a 2 MiB page: fetch", ALL, ALL, ALL | PS | NX, 0, M_DEF, IF, -EFAULT, EC_P | EC_I, 2,
	  0 },
	{ "SMEP: supervisor fetch from a user page", ALL, ALL, ALL, ALL, M_SMEP, IF, -EFAULT,
	  EC_P | EC_I, 1, 0 },
	{ "SMEP without NXE still reports I/D", ALL, ALL, ALL, ALL, M_SMEP_NONX, IF, -EFAULT,
	  EC_P | EC_I, 1, 0 },
	{ "user read of a supervisor 1 GiB page", ALL, P | W | PS, 0, 0, M_DEF, RD | US, -EFAULT,
	  EC_P | EC_U, 3, 0 },

	/* Reserved bits: P=1, RSVD=1, and the access's bits. */
	{ "PS in a PML4E is reserved", ALL | PS, ALL, ALL, ALL, M_DEF, RD, -EFAULT, EC_P | EC_R, 4, 0 },
	{ "XD without NXE is reserved (read)", ALL, ALL, ALL | NX, ALL, M_NONX, RD, -EFAULT,
	  EC_P | EC_R, 2, 0 },
	{ "XD without NXE is reserved (fetch: no I/D without NXE/SMEP)", ALL, ALL, ALL, ALL | NX,
	  M_NONX, IF, -EFAULT, EC_P | EC_R, 1, 0 },
	{ "bit 46 with MAXPHYADDR 46 is reserved (write)", ALL, ALL, ALL, ALL | (1ull << 46), M_DEF, WR,
	  -EFAULT, EC_P | EC_W | EC_R, 1, 0 },
	{ "bit 40 with MAXPHYADDR 36 is reserved in a PDPTE", ALL, ALL | (1ull << 40), ALL, ALL,
	  M_PA36, RD | US, -EFAULT, EC_P | EC_U | EC_R, 3, 0 },
	{ "bit 51 is reserved in a PML4E", ALL | (1ull << 51), ALL, ALL, ALL, M_DEF, RD, -EFAULT,
	  EC_P | EC_R, 4, 0 },
	{ "2 MiB page: bit 13 is reserved", ALL, ALL, ALL | PS | (1ull << 13), 0, M_DEF, RD, -EFAULT,
	  EC_P | EC_R, 2, 0 },
	{ "2 MiB page: bit 20 is reserved", ALL, ALL, ALL | PS | (1ull << 20), 0, M_DEF, RD, -EFAULT,
	  EC_P | EC_R, 2, 0 },
	{ "1 GiB page: bit 29 is reserved", ALL, ALL | PS | (1ull << 29), 0, 0, M_DEF, RD, -EFAULT,
	  EC_P | EC_R, 3, 0 },
	{ "1 GiB page without 1 GiB page support: PDPTE.PS reserved", ALL, ALL | PS, 0, 0, M_NO1G,
	  IF, -EFAULT, EC_P | EC_R | EC_I, 3, 0 },
	{ "reserved bits are found before protection (user read, U/S=0 above)", P | W, ALL,
	  ALL | PS | (1ull << 14), 0, M_DEF, RD | US, -EFAULT, EC_P | EC_U | EC_R, 2, 0 },
};

static void build(const struct walk_case *c)
{
	memset(mem, 0, sizeof(mem));
	mem[(PML4 + SPTE_INDEX(VA, 4) * 8) / 8] = c->e4 | PDPT;
	mem[(PDPT + SPTE_INDEX(VA, 3) * 8) / 8] = c->e3 | ((c->e3 & PS) ? FRAME_1G : PD);
	mem[(PD + SPTE_INDEX(VA, 2) * 8) / 8] = c->e2 | ((c->e2 & PS) ? FRAME_2M : PT);
	mem[(PT + SPTE_INDEX(VA, 1) * 8) / 8] = c->e1 | FRAME_4K;
	/* A not-present entry keeps whatever else the case put in it. */
	if (!(c->e1 & P))
		mem[(PT + SPTE_INDEX(VA, 1) * 8) / 8] = c->e1;
}

START_TEST(test_walk_follows_sdm_rules)
{
	const struct walk_case *c = &cases[_i];
	struct shadow_walk w;
	int ret;

	build(c);
	mem_readonly = false;
	ret = shadow_walk(&c->mode, &mem_ops, NULL, PML4, VA, c->access, 0, &w);
	ck_assert_msg(ret == c->ret, "%s: expected return %d, got %d (ec %#x)", c->rule, c->ret, ret,
		      w.error_code);
	if (ret == -EFAULT) {
		ck_assert_msg(w.error_code == c->ec, "%s: expected error code %#x, got %#x", c->rule,
			      c->ec, w.error_code);
		ck_assert_msg(w.fault_level == c->level, "%s: expected fault at level %d, got %d",
			      c->rule, c->level, w.fault_level);
		return;
	}
	ck_assert_msg(w.leaf_level == c->level, "%s: expected leaf level %d, got %d", c->rule,
		      c->level, w.leaf_level);
	ck_assert_msg(w.rights == c->rights, "%s: expected rights %#x, got %#x", c->rule, c->rights,
		      w.rights);
	uint64_t want = c->level == 1 ? FRAME_4K + (VA & 0xfff)
		      : c->level == 2 ? FRAME_2M + (VA & 0x1fffff)
				      : FRAME_1G + (VA & 0x3fffffff);
	ck_assert_msg(w.pa == want, "%s: expected pa %#llx, got %#llx", c->rule,
		      (unsigned long long)want, (unsigned long long)w.pa);
	/* The permission check alone agrees with the walk. */
	ck_assert_uint_eq(shadow_permission_fault(&c->mode, w.rights, c->access), 0);
}
END_TEST

START_TEST(test_walk_sets_accessed_everywhere_and_dirty_on_write_only)
{
	const struct shadow_paging_mode mode = M_DEF;
	struct shadow_walk w;

	for (int write = 0; write <= 1; write++) {
		build(&cases[0]);
		ck_assert_int_eq(shadow_walk(&mode, &mem_ops, NULL, PML4, VA, write ? WR : RD,
					     SHADOW_WALK_SET_AD, &w),
				 0);
		uint64_t e[5] = { 0, mem[(PT + 3 * 8) / 8], mem[(PD + 8) / 8], mem[(PDPT + 8) / 8],
				  mem[(PML4 + 8) / 8] };
		for (int l = 1; l <= 4; l++)
			ck_assert_msg(e[l] & SPTE_ACCESSED, "expected A set at level %d", l);
		for (int l = 2; l <= 4; l++)
			ck_assert_msg(!(e[l] & SPTE_DIRTY), "expected no D at non-leaf level %d", l);
		ck_assert_msg(!!(e[1] & SPTE_DIRTY) == write, "leaf D: expected %d, got %d", write,
			      !!(e[1] & SPTE_DIRTY));
		ck_assert_int_eq(w.dirty, write);
	}
}
END_TEST

START_TEST(test_walk_sets_no_accessed_bit_on_a_fault)
{
	const struct shadow_paging_mode mode = M_DEF;
	struct shadow_walk w;

	build(&cases[0]);
	mem[(PT + 3 * 8) / 8] &= ~W;
	ck_assert_int_eq(shadow_walk(&mode, &mem_ops, NULL, PML4, VA, WR | US, SHADOW_WALK_SET_AD, &w),
			 -EFAULT);
	ck_assert_msg(!(mem[(PML4 + 8) / 8] & SPTE_ACCESSED), "a faulting walk must not set A");
}
END_TEST

START_TEST(test_walk_reports_refused_ad_write_and_bad_tables)
{
	const struct shadow_paging_mode mode = M_DEF;
	struct shadow_walk w;

	build(&cases[0]);
	mem_readonly = true;
	ck_assert_int_eq(shadow_walk(&mode, &mem_ops, NULL, PML4, VA, RD, SHADOW_WALK_SET_AD, &w),
			 -EROFS);
	/* Already A (and D): nothing to write, so read-only tables are fine. */
	for (uint64_t *p = mem; p < mem + MEM_PAGES * 512; p++)
		if (*p & P)
			*p |= SPTE_ACCESSED | SPTE_DIRTY;
	ck_assert_int_eq(shadow_walk(&mode, &mem_ops, NULL, PML4, VA, WR, SHADOW_WALK_SET_AD, &w), 0);
	mem_readonly = false;
	/* A table outside memory. */
	mem[(PD + 8) / 8] = ALL | 0x100000000ull;
	ck_assert_int_eq(shadow_walk(&mode, &mem_ops, NULL, PML4, VA, RD, 0, &w), -EIO);
}
END_TEST

START_TEST(test_walk_rejects_non_canonical_and_bad_access)
{
	const struct shadow_paging_mode mode = M_DEF;
	struct shadow_walk w;

	build(&cases[0]);
	ck_assert_int_eq(shadow_walk(&mode, &mem_ops, NULL, PML4, 0x0000800000000000ull, RD, 0, &w),
			 -EINVAL);
	ck_assert_int_eq(shadow_walk(&mode, &mem_ops, NULL, PML4, 0xffff7fffffffffffull, RD, 0, &w),
			 -EINVAL);
	/* The upper canonical half walks (and faults: nothing mapped there). */
	ck_assert_int_eq(shadow_walk(&mode, &mem_ops, NULL, PML4, 0xffff800000000000ull, RD, 0, &w),
			 -EFAULT);
	ck_assert_int_eq(shadow_walk(&mode, &mem_ops, NULL, PML4, VA, WR | IF, 0, &w), -EINVAL);
	ck_assert_int_eq(shadow_walk(&mode, &mem_ops, NULL, PML4, VA, 1u << 7, 0, &w), -EINVAL);
}
END_TEST

START_TEST(test_permission_check_matches_sdm_table)
{
	/* Exhaustive over rights x access x (WP, NXE, SMEP): the rule of SDM
	 * 4.6 written out independently. */
	for (unsigned int m = 0; m < 8; m++) {
		struct shadow_paging_mode mode = { .wp = m & 1, .nxe = m & 2, .smep = m & 4,
						   .gbpages = true, .maxphyaddr = 46 };
		for (unsigned int r = 0; r < 8; r++) {
			for (unsigned int a = 0; a < 32; a++) {
				if ((a & ~SHADOW_ACCESS_MASK) || ((a & WR) && (a & IF)))
					continue;
				bool user = a & US, wr = a & WR, fe = a & IF;
				bool ok;
				if (user)
					ok = (r & RU_) && (!wr || (r & RW_)) && (!fe || (r & RX_));
				else
					ok = (!wr || !mode.wp || (r & RW_)) && (!fe || (r & RX_)) &&
					     (!fe || !mode.smep || !(r & RU_));
				uint32_t want = ok ? 0
						   : EC_P | (wr ? EC_W : 0) | (user ? EC_U : 0) |
							     (fe && (mode.nxe || mode.smep) ? EC_I : 0);
				uint32_t got = shadow_permission_fault(&mode, r, a);
				ck_assert_msg(got == want,
					      "mode %u rights %#x access %#x: expected %#x, got %#x", m,
					      r, a, want, got);
			}
		}
	}
}
END_TEST

Suite *shadow_walk_suite(void)
{
	Suite *s = suite_create("shadow_walk");
	TCase *tc = tcase_create("walk");

	tcase_add_loop_test(tc, test_walk_follows_sdm_rules, 0, sizeof(cases) / sizeof(cases[0]));
	tcase_add_test(tc, test_walk_sets_accessed_everywhere_and_dirty_on_write_only);
	tcase_add_test(tc, test_walk_sets_no_accessed_bit_on_a_fault);
	tcase_add_test(tc, test_walk_reports_refused_ad_write_and_bad_tables);
	tcase_add_test(tc, test_walk_rejects_non_canonical_and_bad_access);
	tcase_add_test(tc, test_permission_check_matches_sdm_table);
	suite_add_tcase(s, tc);
	return s;
}
