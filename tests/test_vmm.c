/*
 * vmm/ host-side units that need no KVM: the command line, ELF validation,
 * config files and the boot state (boot.c), checked against docs/abi.md.
 * (Everything that runs a VM is in test_kvm.c, on real KVM.)
 */
#include <check.h>
#include <elf.h>
#include <errno.h>
#include <linux/kvm.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "tests.h"
#include "umbra/abi.h"
#include "vmm.h"

static const struct {
	const char *text;
	int ret;
	uint64_t value;
} sizes[] = {
	{ "4096", 0, 4096 },     { "64M", 0, 64ull << 20 }, { "1G", 0, 1ull << 30 },
	{ "512k", 0, 512 << 10 }, { "64MiB", 0, 64ull << 20 }, { "2MB", 0, 2ull << 20 },
	{ "", -EINVAL, 0 },       { "-1M", -EINVAL, 0 },     { "12Q", -EINVAL, 0 },
	{ "M", -EINVAL, 0 },      { "1M2", -EINVAL, 0 },     { "99999999999999999999", -EINVAL, 0 },
	{ "17179869184G", -ERANGE, 0 },
};

START_TEST(test_parse_size_accepts_units_and_rejects_junk)
{
	uint64_t v = 0;
	int ret = vmm_parse_size(sizes[_i].text, &v);

	ck_assert_msg(ret == sizes[_i].ret, "'%s': expected return %d, got %d", sizes[_i].text, sizes[_i].ret, ret);
	if (ret == 0)
		ck_assert_msg(v == sizes[_i].value, "'%s': expected %llu, got %llu", sizes[_i].text,
			      (unsigned long long)sizes[_i].value, (unsigned long long)v);
}
END_TEST

static int parse(struct vmm_options *o, struct vmm_error *err, const char *const *args)
{
	char *argv[16];
	int argc = 0;

	argv[argc++] = (char *)"umbra";
	while (*args)
		argv[argc++] = (char *)*args++;
	argv[argc] = NULL;
	return vmm_options_parse(argc, argv, o, err);
}

START_TEST(test_run_options_in_any_order)
{
	struct vmm_options o;
	struct vmm_error err = { "" };

	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "--mem=128M", "img.elf", "--vcpus", "3",
							   "--cmdline", "a b", "--stats", NULL }), 0);
	ck_assert_int_eq(o.command, VMM_CMD_RUN);
	ck_assert_str_eq(o.image, "img.elf");
	ck_assert_uint_eq(o.mem, 128ull << 20);
	ck_assert_uint_eq(o.vcpus, 3);
	ck_assert_str_eq(o.cmdline, "a b");
	ck_assert(o.stats);
	ck_assert_uint_eq(o.fault_around, 32);
	ck_assert_int_eq(o.notifier_mode, NOTIFIER_MODE_RANGE);
	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "--evict-pages=9", "--config", "c.json",
							   "--evict-ms", "20", "--fault-around", "8",
							   "--notifier-mode", "page", NULL }), 0);
	ck_assert_uint_eq(o.fault_around, 8);
	ck_assert_int_eq(o.notifier_mode, NOTIFIER_MODE_PAGE);
	ck_assert_str_eq(o.config, "c.json");
	ck_assert_uint_eq(o.evict_ms, 20);
	ck_assert_uint_eq(o.evict_pages, 9);
	ck_assert(!o.pager.nonblocking);
	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "a.elf", "--reclaim-nonblocking", NULL }), 0);
	ck_assert(o.pager.nonblocking);
}
END_TEST

START_TEST(test_pager_options_apply_over_the_config)
{
	struct vmm_options o;
	struct vmm_error err = { "" };
	struct plan plan;
	const char *text = "{ \"mem_limit\": \"64M\", \"swap_size\": 268435456, \"swap\": \"/s/swap\",\n"
			   "  \"reclaim_policy\": \"round-robin\", \"vms\": [ { \"name\": \"v\", \"image\": \"g.elf\" } ] }";

	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "--config", "c.json", "--mem-limit=32M",
							   "--swap", "/t/sw", "--swap-inject", "corrupt:7", NULL }), 0);
	ck_assert(!o.pager.nonblocking);
	ck_assert_uint_eq(o.pager.mem_limit, 32ull << 20);
	ck_assert_int_eq(o.pager.policy, -1);
	ck_assert_int_eq(o.pager.inject_kind, PAGER_INJECT_CORRUPT);
	ck_assert_uint_eq(o.pager.inject_n, 7);
	ck_assert_msg(plan_from_config_text(text, "", "c.json", &plan, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(plan.pager.mem_limit, 64ull << 20);
	ck_assert_uint_eq(plan.pager.swap_size, 256ull << 20);
	ck_assert_str_eq(plan.pager.swap, "/s/swap");
	ck_assert_int_eq(plan.pager.policy, PAGER_POLICY_ROUND_ROBIN);
	ck_assert(plan_uses_pager(&plan, 0));
	ck_assert_int_eq(plan_apply_pager_options(&plan, &o.pager, &err), 0);
	ck_assert_uint_eq(plan.pager.mem_limit, 32ull << 20);
	ck_assert_uint_eq(plan.pager.swap_size, 256ull << 20);
	ck_assert_str_eq(plan.pager.swap, "/t/sw");
	ck_assert_int_eq(plan.pager.policy, PAGER_POLICY_ROUND_ROBIN);
	plan_free(&plan);
	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "a.elf", NULL }), 0);
	ck_assert_int_eq(plan_from_options(&o, &plan, &err), 0);
	ck_assert(!plan_uses_pager(&plan, 0));
	ck_assert(plan_uses_pager(&plan, 5));
	plan_free(&plan);
}
END_TEST

START_TEST(test_run_defaults)
{
	struct vmm_options o;

	ck_assert_int_eq(parse(&o, NULL, (const char *[]){ "run", "img.elf", NULL }), 0);
	ck_assert_uint_eq(o.mem, VMM_MEM_DEFAULT);
	ck_assert_uint_eq(o.vcpus, 1);
	ck_assert_str_eq(o.cmdline, "");
	ck_assert(!o.stats);
	ck_assert_uint_eq(o.evict_ms, 0);
}
END_TEST

static const struct {
	const char *args[8];
	const char *msg;
} bad_args[] = {
	{ { NULL }, "no command given" },
	{ { "run", NULL }, "no IMAGE given" },
	{ { "run", "a", "b", NULL }, "unexpected argument 'b': image already given as 'a'" },
	{ { "run", "a", "--mem", "5M", NULL }, "--mem '5M': must be a multiple of 2M from 4M to 64G" },
	{ { "run", "a", "--mem", "128G", NULL }, "--mem '128G': must be a multiple of 2M from 4M to 64G" },
	{ { "run", "a", "--mem", "4M", "--vcpus", "64", NULL }, "too small for 64 vCPUs" },
	{ { "run", "a", "--vcpus", "65", NULL }, "--vcpus '65': must be a number from 1 to 64" },
	{ { "run", "a", "--vcpus", "2x", NULL }, "--vcpus '2x': must be a number from 1 to 64" },
	{ { "run", "a", "--mem", NULL }, "--mem needs a size" },
	{ { "run", "a", "-x", NULL }, "unknown option '-x'" },
	{ { "--version", "extra", NULL }, "unexpected argument 'extra' after --version" },
	{ { "run", "a", "--evict-ms", "0", NULL }, "--evict-ms '0': must be a number from 1 to 60000" },
	{ { "run", "a", "--evict-ms", "60001", NULL }, "--evict-ms '60001': must be a number from 1 to 60000" },
	{ { "run", "a", "--evict-ms", NULL }, "--evict-ms needs a number of milliseconds" },
	{ { "run", "a", "--evict-ms", "5", "--evict-pages", "0", NULL },
	  "--evict-pages '0': must be a number from 1 to 65536" },
	{ { "run", "a", "--evict-pages", "8", NULL }, "--evict-pages needs --evict-ms" },
	{ { "run", "a", "--group", "", NULL }, "--group: a group name has 1 to 31 characters" },
	{ { "run", "a", "--group", "a b", NULL }, "--group: a group name has only printable ASCII characters" },
	{ { "run", "a", "--group", "0123456789012345678901234567890123", NULL }, "1 to 31 characters" },
	{ { "run", "a", "--group", NULL }, "--group needs a name" },
	{ { "run", "a", "--table-quota", "63", NULL }, "--table-quota '63': must be a number of table pages from 64" },
	{ { "run", "a", "--table-quota", "8388609", NULL }, "--table-quota '8388609': must be" },
	{ { "run", "a", "--table-quota", "x", NULL }, "--table-quota 'x': must be" },
	{ { "run", "a", "--fault-around", "3", NULL }, "--fault-around '3': must be a power of two from 1 (off) to 64" },
	{ { "run", "a", "--fault-around", "0", NULL }, "--fault-around '0': must be a power of two from 1 (off) to 64" },
	{ { "run", "a", "--fault-around", "128", NULL }, "--fault-around '128': must be a power of two" },
	{ { "run", "a", "--fault-around", NULL }, "--fault-around needs a number of pages" },
	{ { "run", "a", "--notifier-mode", "pages", NULL }, "--notifier-mode 'pages': must be range or page" },
	{ { "run", "a", "--notifier-mode", NULL }, "--notifier-mode needs a mode, range or page" },
	{ { "run", "a", "--clone", "0", NULL }, "--clone '0': must be a number from 1 to 64" },
	{ { "run", "a", "--clone", "65", NULL }, "--clone '65': must be a number from 1 to 64" },
	{ { "run", "--config", "c.json", "--clone", "2", NULL }, "--table-quota and --clone do not apply with --config" },
	{ { "run", "--config", "c.json", "--group", "g", NULL }, "--group, --table-quota and --clone do not apply with --config" },
	{ { "run", "a", "--mem-limit", "3M", NULL }, "--mem-limit '3M': must be at least 4M" },
	{ { "run", "a", "--mem-limit", "lots", NULL }, "--mem-limit 'lots': not a size" },
	{ { "run", "a", "--mem-limit", NULL }, "--mem-limit needs a size" },
	{ { "run", "a", "--swap-size", "512K", NULL }, "--swap-size '512K': must be from 1M to 16T" },
	{ { "run", "a", "--swap", "", NULL }, "--swap needs a file name" },
	{ { "run", "a", "--reclaim-policy", "lru", NULL }, "--reclaim-policy 'lru': must be clock or round-robin" },
	{ { "run", "a", "--swap-inject", "read-error:0", NULL }, "--swap-inject 'read-error:0': must be" },
	{ { "run", "a", "--swap-inject", "explode:3", NULL }, "--swap-inject 'explode:3': must be" },
};

START_TEST(test_bad_arguments_are_named)
{
	struct vmm_options o;
	struct vmm_error err = { "" };
	int ret = parse(&o, &err, bad_args[_i].args);

	ck_assert_msg(ret == -EINVAL, "expected -EINVAL, got %d", ret);
	ck_assert_msg(strstr(err.msg, bad_args[_i].msg), "expected message containing \"%s\", got \"%s\"",
		      bad_args[_i].msg, err.msg);
}
END_TEST

START_TEST(test_cmdline_length_is_bounded)
{
	char long_cmdline[UMBRA_CMDLINE_MAX + 1];
	struct vmm_options o;
	struct vmm_error err = { "" };

	memset(long_cmdline, 'x', UMBRA_CMDLINE_MAX);
	long_cmdline[UMBRA_CMDLINE_MAX] = '\0';
	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "a", "--cmdline", long_cmdline, NULL }), -EINVAL);
	ck_assert_msg(strstr(err.msg, "at most 255"), "got \"%s\"", err.msg);
	long_cmdline[UMBRA_CMDLINE_MAX - 1] = '\0';
	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "a", "--cmdline", long_cmdline, NULL }), 0);
}
END_TEST

/* ---- ELF ---- */

#define LOAD_MIN 0x100000ull
#define LOAD_MAX 0x400000ull

/* A minimal valid image: header, two program headers, 256 bytes of code. */
struct test_elf {
	Elf64_Ehdr eh;
	Elf64_Phdr ph[2];
	uint8_t code[256];
};

static void make_elf(struct test_elf *e)
{
	memset(e, 0, sizeof(*e));
	memcpy(e->eh.e_ident, ELFMAG, SELFMAG);
	e->eh.e_ident[EI_CLASS] = ELFCLASS64;
	e->eh.e_ident[EI_DATA] = ELFDATA2LSB;
	e->eh.e_ident[EI_VERSION] = EV_CURRENT;
	e->eh.e_type = ET_EXEC;
	e->eh.e_machine = EM_X86_64;
	e->eh.e_version = EV_CURRENT;
	e->eh.e_entry = LOAD_MIN + 16;
	e->eh.e_phoff = offsetof(struct test_elf, ph);
	e->eh.e_ehsize = sizeof(Elf64_Ehdr);
	e->eh.e_phentsize = sizeof(Elf64_Phdr);
	e->eh.e_phnum = 2;
	e->ph[0] = (Elf64_Phdr){ .p_type = PT_LOAD, .p_flags = PF_R | PF_X, .p_offset = offsetof(struct test_elf, code),
				 .p_vaddr = LOAD_MIN, .p_paddr = LOAD_MIN, .p_filesz = 128, .p_memsz = 128 };
	e->ph[1] = (Elf64_Phdr){ .p_type = PT_LOAD, .p_flags = PF_R | PF_W,
				 .p_offset = offsetof(struct test_elf, code) + 128, .p_vaddr = LOAD_MIN + 0x1000,
				 .p_paddr = LOAD_MIN + 0x1000, .p_filesz = 128, .p_memsz = 0x2000 };
	for (int i = 0; i < 256; i++)
		e->code[i] = (uint8_t)i;
}

START_TEST(test_valid_elf_is_parsed_and_loaded)
{
	/* Fresh anonymous memory, as a fresh memfd: zero, and no page present. */
	uint8_t *ram = mmap(NULL, LOAD_MAX, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned char present[(LOAD_MAX - LOAD_MIN) / 4096];
	struct test_elf e;
	struct elf_image img;
	struct vmm_error err = { "" };

	make_elf(&e);
	ck_assert_msg(elf_image_parse(&e, sizeof(e), LOAD_MIN, LOAD_MAX, &img, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(img.nr_segments, 2);
	ck_assert_uint_eq(img.entry, LOAD_MIN + 16);
	ck_assert_uint_eq(img.end, LOAD_MIN + 0x3000);
	ck_assert(ram != MAP_FAILED);
	elf_image_load(&img, &e, ram);
	/* The page that is all bss, and what lies past the image, were not
	 * written: a large bss takes no memory until the guest touches it. */
	ck_assert_int_eq(mincore(ram + LOAD_MIN, LOAD_MAX - LOAD_MIN, present), 0);
	ck_assert_msg((present[0] & 1) && (present[1] & 1), "the pages with file bytes were not written");
	for (unsigned int p = 2; p < sizeof(present); p++)
		ck_assert_msg(!(present[p] & 1), "page %#llx (bss or past the image) was written",
			      (unsigned long long)(LOAD_MIN + p * 4096ull));
	ck_assert_int_eq(memcmp(ram + LOAD_MIN, e.code, 128), 0);
	ck_assert_int_eq(memcmp(ram + LOAD_MIN + 0x1000, e.code + 128, 128), 0);
	for (uint64_t a = LOAD_MIN + 0x1000 + 128; a < LOAD_MIN + 0x3000; a++)
		ck_assert_msg(ram[a] == 0, "bss byte at %#llx: expected 0, got %#x", (unsigned long long)a, ram[a]);
	munmap(ram, LOAD_MAX);
}
END_TEST

/* UMBRA_PF_RESIDENT segments are counted in whole pages, up to
 * UMBRA_RESIDENT_MAX in all. */
START_TEST(test_resident_segments_are_bounded)
{
	const uint64_t load_max = 64ull << 20;
	struct test_elf e;
	struct elf_image img;
	struct vmm_error err = { "" };

	make_elf(&e);
	e.ph[0].p_flags |= UMBRA_PF_RESIDENT; /* 128 bytes: one page */
	ck_assert_msg(elf_image_parse(&e, sizeof(e), LOAD_MIN, load_max, &img, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(img.resident_bytes, 4096);
	e.ph[1].p_memsz = UMBRA_RESIDENT_MAX - 4096; /* with segment 0: exactly the most */
	e.ph[1].p_flags |= UMBRA_PF_RESIDENT;
	ck_assert_msg(elf_image_parse(&e, sizeof(e), LOAD_MIN, load_max, &img, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(img.resident_bytes, UMBRA_RESIDENT_MAX);
	e.ph[1].p_memsz += 1; /* one byte into one more page */
	ck_assert_int_eq(elf_image_parse(&e, sizeof(e), LOAD_MIN, load_max, &img, &err), -ENOEXEC);
	ck_assert_msg(strstr(err.msg, "segment 1: the resident (UMBRA_PF_RESIDENT) segments cover more than 4194304 bytes"),
		      "got \"%s\"", err.msg);
}
END_TEST

enum elf_defect {
	DEF_MAGIC, DEF_CLASS, DEF_ENDIAN, DEF_MACHINE, DEF_TYPE, DEF_PHENTSIZE, DEF_PHOFF, DEF_NO_LOAD,
	DEF_FILESZ, DEF_OFFSET, DEF_BELOW_RAM, DEF_ABOVE_RAM, DEF_WRAP, DEF_OVERLAP, DEF_ENTRY, DEF_VADDR,
	DEF_SHORT,
};

static const struct {
	enum elf_defect defect;
	const char *msg;
} elf_defects[] = {
	{ DEF_MAGIC, "not an ELF file" },
	{ DEF_CLASS, "not ELF64" },
	{ DEF_ENDIAN, "not little-endian" },
	{ DEF_MACHINE, "wrong machine 40" },
	{ DEF_TYPE, "ELF type 3 is not an executable" },
	{ DEF_PHENTSIZE, "program header size 32" },
	{ DEF_PHOFF, "program headers (offset 0xfffffffffffffff0, 2 entries) lie outside the file" },
	{ DEF_NO_LOAD, "no loadable (PT_LOAD) segments" },
	{ DEF_FILESZ, "segment 0: file size 0x200 exceeds memory size 0x80" },
	{ DEF_OFFSET, "segment 1: file range" },
	{ DEF_BELOW_RAM, "segment 0: guest-physical range 0x1000..0x1080 lies outside the loadable RAM" },
	{ DEF_ABOVE_RAM, "segment 1: guest-physical range" },
	{ DEF_WRAP, "segment 1: guest-physical range" },
	{ DEF_OVERLAP, "segment 1 overlaps an earlier segment at 0x100000" },
	{ DEF_ENTRY, "entry point 0x101000 is not in an executable segment" },
	{ DEF_VADDR, "segment 0: virtual address 0xffffffff80100000 differs from physical" },
	{ DEF_SHORT, "truncated ELF header" },
};

START_TEST(test_defective_elf_is_rejected_with_reason)
{
	struct test_elf e;
	struct elf_image img;
	struct vmm_error err = { "" };
	size_t len = sizeof(e);

	make_elf(&e);
	switch (elf_defects[_i].defect) {
	case DEF_MAGIC: e.eh.e_ident[0] = 0; break;
	case DEF_CLASS: e.eh.e_ident[EI_CLASS] = ELFCLASS32; break;
	case DEF_ENDIAN: e.eh.e_ident[EI_DATA] = ELFDATA2MSB; break;
	case DEF_MACHINE: e.eh.e_machine = EM_ARM; break;
	case DEF_TYPE: e.eh.e_type = ET_DYN; break;
	case DEF_PHENTSIZE: e.eh.e_phentsize = 32; break;
	case DEF_PHOFF: e.eh.e_phoff = ~0ull - 15; break;
	case DEF_NO_LOAD: e.ph[0].p_type = e.ph[1].p_type = PT_NOTE; break;
	case DEF_FILESZ: e.ph[0].p_filesz = 0x200; break;
	case DEF_OFFSET: e.ph[1].p_offset = sizeof(e) - 64; break;
	case DEF_BELOW_RAM: e.ph[0].p_paddr = e.ph[0].p_vaddr = 0x1000; break;
	case DEF_ABOVE_RAM: e.ph[1].p_memsz = LOAD_MAX; break;
	case DEF_WRAP: e.ph[1].p_paddr = e.ph[1].p_vaddr = ~0ull - 0xfff; break;
	case DEF_OVERLAP: e.ph[1].p_paddr = e.ph[1].p_vaddr = LOAD_MIN + 64; break;
	case DEF_ENTRY: e.eh.e_entry = LOAD_MIN + 0x1000; break;
	case DEF_VADDR: e.ph[0].p_vaddr = 0xffffffff80100000ull; break;
	case DEF_SHORT: len = 40; break;
	}
	int ret = elf_image_parse(&e, len, LOAD_MIN, LOAD_MAX, &img, &err);
	ck_assert_msg(ret == -ENOEXEC, "defect %d: expected -ENOEXEC, got %d", _i, ret);
	ck_assert_msg(strstr(err.msg, elf_defects[_i].msg), "expected message containing \"%s\", got \"%s\"",
		      elf_defects[_i].msg, err.msg);
}
END_TEST

/* ---- config files ---- */

START_TEST(test_config_expands_counts_and_resolves_paths)
{
	struct plan plan;
	struct vmm_error err = { "" };
	const char *text =
		"{ \"segments\": [ { \"name\": \"s\", \"size\": \"4M\", \"gpa\": \"0x2000000000\", \"file\": \"d.bin\" },\n"
		"                { \"name\": \"t\", \"size\": 2097152, \"gpa\": 137443147776, \"writable\": false,\n"
		"                  \"notifier_mode\": \"page\" } ],\n"
		"  \"vms\": [ { \"name\": \"r\", \"count\": 3, \"image\": \"g.elf\", \"vcpus\": 2, \"segments\": [\"t\", \"s\"] },\n"
		"           { \"name\": \"w\", \"image\": \"/abs/w.elf\", \"mem\": \"32M\", \"cmdline\": \"x=1\" } ] }";

	ck_assert_msg(plan_from_config_text(text, "/cfg", "t.json", &plan, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(plan.nr_segments, 2);
	ck_assert_str_eq(plan.segments[0].file, "/cfg/d.bin");
	ck_assert(plan.segments[0].writable && !plan.segments[1].writable);
	ck_assert_int_eq(plan.segments[0].notifier_mode, -1); /* the run's */
	ck_assert_int_eq(plan.segments[1].notifier_mode, NOTIFIER_MODE_PAGE);
	ck_assert_uint_eq(plan.segments[1].gpa, 0x2000400000ull);
	ck_assert_uint_eq(plan.nr_vms, 4);
	const char *names[] = { "r0", "r1", "r2", "w" };
	for (int i = 0; i < 4; i++)
		ck_assert_str_eq(plan.vms[i].name, names[i]);
	ck_assert_str_eq(plan.vms[2].image, "/cfg/g.elf");
	ck_assert_str_eq(plan.vms[3].image, "/abs/w.elf");
	ck_assert_uint_eq(plan.vms[1].vcpus, 2);
	ck_assert_uint_eq(plan.vms[1].mem, VMM_MEM_DEFAULT);
	ck_assert_uint_eq(plan.vms[1].nr_segments, 2);
	ck_assert_uint_eq(plan.vms[1].segments[0], 1);
	ck_assert_uint_eq(plan.vms[1].segments[1], 0);
	ck_assert_uint_eq(plan.vms[3].mem, 32ull << 20);
	ck_assert_str_eq(plan.vms[3].cmdline, "x=1");
	plan_free(&plan);
}
END_TEST

#define VM_OK "{ \"name\": \"a\", \"image\": \"a.elf\" }"
#define SEG(gpa, size) "{ \"name\": \"s\", \"size\": " size ", \"gpa\": " gpa " }"

static const struct {
	const char *text;
	const char *msg;
} bad_configs[] = {
	{ "", "line 1: not valid JSON (unexpected end of file)" },
	{ "{ \"vms\": [\n" VM_OK ",\n ]", "line 3: not valid JSON" },
	{ "[]", "top level: expected an object" },
	{ "{ \"vms\": [] }", "vms: expected a non-empty array of VMs" },
	{ "{ \"mem_limit\": \"2M\", \"vms\": [" VM_OK "] }", "mem_limit: 2097152 bytes: must be at least 4M" },
	{ "{ \"swap_size\": 4096, \"vms\": [" VM_OK "] }", "swap_size: 4096 bytes: must be from 1M to 16T" },
	{ "{ \"swap\": \"\", \"vms\": [" VM_OK "] }", "swap: an empty file name" },
	{ "{ \"swap\": 3, \"vms\": [" VM_OK "] }", "swap: expected a string" },
	{ "{ \"reclaim_policy\": \"lru\", \"vms\": [" VM_OK "] }", "reclaim_policy: 'lru': must be" },
	{ "{ \"vms\": [" VM_OK "], \"extra\": 1 }", "extra: unknown key" },
	{ "{ \"vms\": [ { \"name\": \"a\" } ] }", "vms[0].image: missing" },
	{ "{ \"vms\": [ { \"name\": \"a b\", \"image\": \"x\" } ] }", "vms[0].name: 'a b' must be" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": 5 } ] }", "vms[0].image: expected a string, got int" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"vcpus\": 65 } ] }", "vms[0].vcpus: 65 is outside 1..64" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"count\": 300 } ] }", "vms[0].count: 300 is outside 1..256" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"mem\": \"lots\" } ] }", "vms[0].mem: 'lots' is not a size" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"colour\": 1 } ] }", "vms[0].colour: unknown key" },
	{ "{ \"vms\": [ " VM_OK ", " VM_OK " ] }", "VM name 'a' is used twice" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"segments\": [\"nope\"] } ] }",
	  "vms[0].segments[0]: no segment is called 'nope'" },
	{ "{ \"segments\": [" SEG("\"0x2000000000\"", "\"3M\"") "], \"vms\": [" VM_OK "] }",
	  "segments[0].size: must be a multiple of 2M" },
	{ "{ \"segments\": [" SEG("\"0x1000\"", "\"2M\"") "], \"vms\": [" VM_OK "] }",
	  "segments[0].gpa: 0x1000+0x200000 must be 2M-aligned and lie within" },
	{ "{ \"segments\": [" SEG("\"zero\"", "\"2M\"") "], \"vms\": [" VM_OK "] }",
	  "segments[0].gpa: 'zero' is not an address" },
	{ "{ \"segments\": [" SEG("\"0x2000000000\"", "\"4M\"") ", "
	  "{ \"name\": \"u\", \"size\": \"2M\", \"gpa\": \"0x2000200000\" } ], \"vms\": [" VM_OK "] }",
	  "segments[1].gpa: overlaps segment 's'" },
	{ "{ \"segments\": [" SEG("\"0x2000000000\"", "\"2M\"") ", " SEG("\"0x2000400000\"", "\"2M\"")
	  "], \"vms\": [" VM_OK "] }", "segments[1].name: 's' is already the name of segments[0]" },
	{ "{ \"segments\": [ { \"name\": \"s\", \"size\": \"2M\", \"gpa\": \"0x2000000000\", \"writable\": 1 } ], "
	  "\"vms\": [" VM_OK "] }", "segments[0].writable: expected true or false, got int" },
	{ "{ \"segments\": [ { \"name\": \"s\", \"size\": \"2M\", \"gpa\": \"0x2000000000\", \"notifier_mode\": \"both\" } ], "
	  "\"vms\": [" VM_OK "] }", "segments[0].notifier_mode: 'both' must be range or page" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"group\": \"\" } ] }",
	  "vms[0].group: must be 1 to 31 printable ASCII characters" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"group\": \"a\\tb\" } ] }",
	  "vms[0].group: must be 1 to 31 printable ASCII characters" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"group\": 7 } ] }",
	  "vms[0].group: expected a string, got int" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"table_quota\": 10 } ] }",
	  "vms[0].table_quota: 10 pages: must be 64 to 8388608" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"table_quota\": \"1000\" } ] }",
	  "vms[0].table_quota: expected a number, got string" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"clones\": 0 } ] }",
	  "vms[0].clones: 0 is outside 1..64" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"clones\": 65 } ] }",
	  "vms[0].clones: " },
};

START_TEST(test_bad_config_names_key_and_problem)
{
	struct plan plan;
	struct vmm_error err = { "" };
	int ret = plan_from_config_text(bad_configs[_i].text, "", "c.json", &plan, &err);

	ck_assert_msg(ret == -EINVAL, "config %d: expected -EINVAL, got %d", _i, ret);
	ck_assert_msg(strncmp(err.msg, "config 'c.json': ", 17) == 0, "message must name the file, got \"%s\"", err.msg);
	ck_assert_msg(strstr(err.msg, bad_configs[_i].msg), "config %d: expected message containing \"%s\", got \"%s\"",
		      _i, bad_configs[_i].msg, err.msg);
}
END_TEST

/* ---- the boot state (docs/abi.md, "Boot state") ---- */

#define MIB (1ull << 20)
#define GIB (1ull << 30)

/* Guest RAM for a boot test: anonymous, so that only what is written is
 * backed. */
static void *boot_ram(uint64_t size)
{
	void *ram = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);

	ck_assert_msg(ram != MAP_FAILED, "mmap of %llu bytes of test RAM failed", (unsigned long long)size);
	return ram;
}

static int boot_ram_read(void *ctx, uint64_t pa, uint64_t *val)
{
	const struct boot_layout *l = ctx;

	if (pa + 8 > l->ram_size)
		return -EFAULT;
	memcpy(val, (const char *)l->ram + pa, 8);
	return 0;
}

static const struct shadow_mem_ops boot_ram_ops = { .read = boot_ram_read };

static struct segment boot_segments[] = {
	{ .name = "one", .gpa = 128 * GIB, .size = 4 * MIB, .writable = true, .fd = -1 },
	{ .name = "two", .gpa = 130 * GIB - 2 * MIB, .size = 6 * MIB, .writable = false, .fd = -1 },
};

static struct segment *const boot_segment_ptrs[] = { &boot_segments[0], &boot_segments[1] };

/* Layouts whose boot page tables are checked. */
static const struct {
	uint64_t ram_size;
	unsigned int nr_segments;
} boot_layouts[] = {
	{ 4 * MIB, 0 },            /* the smallest RAM */
	{ 64 * MIB, 2 },           /* the default, with a segment across a GiB boundary */
	{ GIB + 2 * MIB, 1 },      /* RAM over 1 GiB: a second page directory */
};

/* Walks va in the boot tables: returns 0 and the translation, or the
 * walker's error. Checks that what is mapped is writable and executable. */
static int boot_translate(const struct boot_layout *l, uint64_t cr3, uint64_t va, uint64_t *pa, int *level)
{
	struct shadow_walk w;
	int ret = shadow_walk(&shadow_default_mode, &boot_ram_ops, (void *)l, cr3, va, SHADOW_ACCESS_WRITE, 0, &w);

	if (ret)
		return ret;
	*pa = w.pa;
	*level = w.leaf_level;
	ret = shadow_walk(&shadow_default_mode, &boot_ram_ops, (void *)l, cr3, va, SHADOW_ACCESS_FETCH, 0, &w);
	ck_assert_msg(ret == 0, "va %#llx: mapped writable, expected executable too, got %d on a fetch",
		      (unsigned long long)va, ret);
	return 0;
}

static void assert_identity(const struct boot_layout *l, uint64_t cr3, uint64_t va, int expected_level)
{
	uint64_t pa = 0;
	int level = 0, ret = boot_translate(l, cr3, va, &pa, &level);

	ck_assert_msg(ret == 0, "va %#llx: expected mapped, got walk error %d", (unsigned long long)va, ret);
	ck_assert_msg(pa == va, "va %#llx: expected the identity, got pa %#llx", (unsigned long long)va,
		      (unsigned long long)pa);
	ck_assert_msg(level == expected_level, "va %#llx: expected a level-%d leaf, got level %d",
		      (unsigned long long)va, expected_level, level);
}

static void assert_unmapped(const struct boot_layout *l, uint64_t cr3, uint64_t va)
{
	uint64_t pa = 0;
	int level = 0, ret = boot_translate(l, cr3, va, &pa, &level);

	ck_assert_msg(ret == -EFAULT, "va %#llx: expected not mapped (-EFAULT), got %d (pa %#llx)",
		      (unsigned long long)va, ret, (unsigned long long)pa);
}

START_TEST(test_boot_page_tables_identity_map_ram_and_segments)
{
	struct boot_layout l = { boot_ram(boot_layouts[_i].ram_size), boot_layouts[_i].ram_size, 1,
				 boot_layouts[_i].nr_segments, boot_segment_ptrs, "", 0 };
	uint64_t end = 0, cr3 = boot_write_page_tables(&l, &end);

	ck_assert_msg(cr3 == UMBRA_PT_GPA, "layout %d: expected CR3 %#x, got %#llx", _i, UMBRA_PT_GPA,
		      (unsigned long long)cr3);
	ck_assert_msg(end > UMBRA_PT_GPA && end <= UMBRA_IMAGE_MIN_GPA,
		      "layout %d: expected the tables to end in (%#x, %#x], got %#llx", _i, UMBRA_PT_GPA,
		      UMBRA_IMAGE_MIN_GPA, (unsigned long long)end);
	/* RAM: page 0 unmapped, 4 KiB pages up to 2 MiB, 2 MiB pages above. */
	assert_unmapped(&l, cr3, 0);
	assert_unmapped(&l, cr3, 0xfff);
	assert_identity(&l, cr3, 0x1000, 1);
	assert_identity(&l, cr3, UMBRA_IMAGE_MIN_GPA, 1);
	assert_identity(&l, cr3, 2 * MIB - 8, 1);
	assert_identity(&l, cr3, 2 * MIB, 2);
	assert_identity(&l, cr3, l.ram_size - 8, 2);
	assert_unmapped(&l, cr3, l.ram_size);
	/* Segments: 2 MiB pages over their whole range, nothing past it. */
	for (unsigned int i = 0; i < l.nr_segments; i++) {
		const struct segment *seg = l.segments[i];
		assert_identity(&l, cr3, seg->gpa, 2);
		assert_identity(&l, cr3, seg->gpa + seg->size - 8, 2);
		assert_unmapped(&l, cr3, seg->gpa + seg->size);
		assert_unmapped(&l, cr3, seg->gpa - 8);
	}
	/* Nothing else: not the table pool, not the top of the PML4 slot. */
	assert_unmapped(&l, cr3, SHADOW_POOL_GPA);
	assert_unmapped(&l, cr3, 256 * GIB);
	munmap(l.ram, l.ram_size);
}
END_TEST

START_TEST(test_boot_page_tables_that_do_not_fit_are_refused)
{
	/* 16 segments of 16 GiB need more page directories than fit below
	 * the image (1 MiB): the builder must say so before writing. */
	static struct segment big[UMBRA_MAX_SEGMENTS];
	struct segment *ptrs[UMBRA_MAX_SEGMENTS];
	struct boot_layout l = { boot_ram(4 * MIB), 4 * MIB, 1, UMBRA_MAX_SEGMENTS, ptrs, "", 0 };
	uint64_t end = 0;

	for (unsigned int i = 0; i < UMBRA_MAX_SEGMENTS; i++) {
		big[i] = (struct segment){ .gpa = 128 * GIB + i * 16 * GIB, .size = 16 * GIB, .fd = -1 };
		ptrs[i] = &big[i];
	}
	uint64_t cr3 = boot_write_page_tables(&l, &end);
	ck_assert_msg(cr3 == 0, "expected 0 (tables do not fit), got CR3 %#llx", (unsigned long long)cr3);
	munmap(l.ram, l.ram_size);
}
END_TEST

/* A segment descriptor's fields (Intel SDM vol. 3A 3.4.5). */
struct descriptor {
	uint64_t base, limit;
	unsigned int type, s, dpl, p, l, db, g;
};

static struct descriptor decode_descriptor(uint64_t d)
{
	return (struct descriptor){
		.base = ((d >> 16) & 0xffffff) | ((d >> 56) & 0xff) << 24,
		.limit = (d & 0xffff) | ((d >> 48) & 0xf) << 16,
		.type = (d >> 40) & 0xf, .s = (d >> 44) & 1, .dpl = (d >> 45) & 3, .p = (d >> 47) & 1,
		.l = (d >> 53) & 1, .db = (d >> 54) & 1, .g = (d >> 55) & 1,
	};
}

/* The descriptor must match what boot_set_sregs() loads for the selector. */
static void assert_descriptor_matches(const char *what, struct descriptor d, const struct kvm_segment *seg)
{
	ck_assert_msg(d.type == seg->type && d.s == seg->s && d.dpl == seg->dpl && d.p == seg->present &&
			      d.l == seg->l && d.db == seg->db && d.g == seg->g,
		      "%s: GDT type %u s %u dpl %u p %u l %u db %u g %u, but the register has type %u s %u dpl %u "
		      "p %u l %u db %u g %u", what, d.type, d.s, d.dpl, d.p, d.l, d.db, d.g, seg->type, seg->s,
		      seg->dpl, seg->present, seg->l, seg->db, seg->g);
}

START_TEST(test_boot_gdt_is_flat_long_mode)
{
	uint64_t ram[UMBRA_PT_GPA / 8] = { 0 };
	const uint64_t *gdt = ram + UMBRA_GDT_GPA / 8;
	struct kvm_sregs sregs;

	memset(&sregs, 0, sizeof(sregs));
	boot_write_gdt(ram);
	boot_set_sregs(&sregs, UMBRA_PT_GPA, true);
	ck_assert_msg(gdt[0] == 0, "GDT entry 0: expected null, got %#llx", (unsigned long long)gdt[0]);

	struct descriptor code = decode_descriptor(gdt[UMBRA_SEL_CODE64 / 8]);
	ck_assert_msg(code.p && code.s && (code.type & 0x8) && code.l && !code.db && code.dpl == 0,
		      "code64 (%#x): expected present, code, L=1, D=0, DPL 0; got p %u s %u type %#x l %u db %u dpl %u",
		      UMBRA_SEL_CODE64, code.p, code.s, code.type, code.l, code.db, code.dpl);
	ck_assert_msg(code.base == 0 && code.limit == 0xfffff && code.g, "code64: expected flat, got base %#llx "
		      "limit %#llx g %u", (unsigned long long)code.base, (unsigned long long)code.limit, code.g);
	assert_descriptor_matches("CS", code, &sregs.cs);

	struct descriptor data = decode_descriptor(gdt[UMBRA_SEL_DATA / 8]);
	ck_assert_msg(data.p && data.s && !(data.type & 0x8) && (data.type & 0x2) && data.dpl == 0,
		      "data (%#x): expected present, writable data, DPL 0; got p %u s %u type %#x dpl %u",
		      UMBRA_SEL_DATA, data.p, data.s, data.type, data.dpl);
	ck_assert_msg(data.base == 0 && data.limit == 0xfffff && data.g, "data: expected flat");
	assert_descriptor_matches("DS", data, &sregs.ds);
	assert_descriptor_matches("SS", data, &sregs.ss);

	struct descriptor tss = decode_descriptor(gdt[UMBRA_SEL_TSS / 8]);
	uint64_t tss_base = tss.base | gdt[UMBRA_SEL_TSS / 8 + 1] << 32;
	ck_assert_msg(tss.p && !tss.s && tss.type == 0xb && tss_base == UMBRA_TSS_GPA && tss.limit == 103,
		      "TSS (%#x): expected a present 64-bit TSS at %#x, limit 103; got p %u s %u type %#x base %#llx "
		      "limit %llu", UMBRA_SEL_TSS, UMBRA_TSS_GPA, tss.p, tss.s, tss.type, (unsigned long long)tss_base,
		      (unsigned long long)tss.limit);
	ck_assert_msg(sregs.tr.selector == UMBRA_SEL_TSS && sregs.tr.base == tss_base && sregs.tr.limit == tss.limit &&
			      sregs.tr.type == tss.type,
		      "TR: expected selector %#x base %#llx limit %llu type %#x as in the GDT", UMBRA_SEL_TSS,
		      (unsigned long long)tss_base, (unsigned long long)tss.limit, tss.type);
	uint16_t iomap = *(const uint16_t *)((const char *)ram + UMBRA_TSS_GPA + 102);
	ck_assert_msg(iomap == 104, "TSS I/O map base: expected 104 (no I/O map), got %u", iomap);
	ck_assert_msg(sregs.gdt.base == UMBRA_GDT_GPA && sregs.gdt.limit == 5 * 8 - 1,
		      "GDTR: expected %#x/39, got %#llx/%u", UMBRA_GDT_GPA, (unsigned long long)sregs.gdt.base,
		      sregs.gdt.limit);
}
END_TEST

/* The control registers of docs/abi.md, with and without NX. */
static const struct {
	bool nxe;
	uint64_t efer;
} boot_efers[] = {
	{ false, 0x500 }, /* LME, LMA */
	{ true, 0xd00 },  /* LME, LMA, NXE */
};

START_TEST(test_boot_registers_enter_long_mode_at_the_entry)
{
	struct kvm_sregs sregs;
	struct kvm_regs regs;
	const uint64_t cr3 = SHADOW_POOL_GPA + 0x5000, entry = 0x101234, info = 0x3ffc0;

	memset(&sregs, 0xff, sizeof(sregs));
	boot_set_sregs(&sregs, cr3, boot_efers[_i].nxe);
	ck_assert_msg(sregs.cr0 == 0x80010033, "CR0: expected PE MP ET NE WP PG (0x80010033), got %#llx", sregs.cr0);
	ck_assert_msg(sregs.cr4 == 0x620, "CR4: expected PAE OSFXSR OSXMMEXCPT (0x620), got %#llx", sregs.cr4);
	ck_assert_msg(sregs.efer == boot_efers[_i].efer, "EFER (nxe %d): expected %#llx, got %#llx",
		      boot_efers[_i].nxe, (unsigned long long)boot_efers[_i].efer, sregs.efer);
	ck_assert_msg(sregs.cr3 == cr3, "CR3: expected %#llx, got %#llx", (unsigned long long)cr3, sregs.cr3);
	ck_assert_msg(sregs.idt.base == 0 && sregs.idt.limit == 0, "IDTR: expected 0/0, got %#llx/%u",
		      sregs.idt.base, sregs.idt.limit);
	ck_assert_msg(sregs.cs.selector == UMBRA_SEL_CODE64 && sregs.cs.l == 1 && sregs.cs.db == 0,
		      "CS: expected %#x, 64-bit; got %#x l %u db %u", UMBRA_SEL_CODE64, sregs.cs.selector, sregs.cs.l,
		      sregs.cs.db);
	const struct kvm_segment *data[] = { &sregs.ds, &sregs.es, &sregs.fs, &sregs.gs, &sregs.ss };
	for (unsigned int k = 0; k < 5; k++)
		ck_assert_msg(data[k]->selector == UMBRA_SEL_DATA && data[k]->base == 0 && data[k]->present,
			      "data segment %u: expected selector %#x, base 0, present; got %#x, %#llx, %u", k,
			      UMBRA_SEL_DATA, data[k]->selector, data[k]->base, data[k]->present);
	ck_assert_msg(sregs.ldt.unusable, "LDTR: expected unusable");

	memset(&regs, 0xff, sizeof(regs));
	boot_set_regs(&regs, entry, info, info & ~0xfffull);
	ck_assert_msg(regs.rip == entry, "RIP: expected %#llx, got %#llx", (unsigned long long)entry, regs.rip);
	ck_assert_msg(regs.rsp == (info & ~0xfffull) && regs.rdi == info, "RSP, RDI: expected %#llx, %#llx, got %#llx, %#llx",
		      (unsigned long long)(info & ~0xfffull), (unsigned long long)info, regs.rsp, regs.rdi);
	ck_assert_msg(regs.rflags == 0x2, "RFLAGS: expected 0x2, got %#llx", regs.rflags);
	ck_assert_msg(regs.rax == 0 && regs.rbx == 0 && regs.rsi == 0 && regs.r15 == 0,
		      "other registers: expected 0, got rax %#llx rbx %#llx rsi %#llx r15 %#llx", regs.rax, regs.rbx,
		      regs.rsi, regs.r15);
}
END_TEST

START_TEST(test_boot_info_blocks_describe_the_vm)
{
	const uint64_t ram_size = 8 * MIB, stack = UMBRA_VCPU_STACK_SIZE, pool_size = 64 * MIB;
	const unsigned int nr_vcpus = 3;
	struct boot_layout l = { boot_ram(ram_size), ram_size, nr_vcpus, 2, boot_segment_ptrs, "a b", pool_size };

	ck_assert_msg(vm_image_load_max(ram_size, nr_vcpus) == ram_size - nr_vcpus * stack,
		      "load max: expected %#llx, got %#llx", (unsigned long long)(ram_size - nr_vcpus * stack),
		      (unsigned long long)vm_image_load_max(ram_size, nr_vcpus));
	for (unsigned int id = 0; id < nr_vcpus; id++) {
		uint64_t gpa = boot_info_gpa(ram_size, id), bottom = ram_size - (id + 1) * stack;
		boot_write_info(&l, id, 0x123000, UMBRA_PT_GPA);
		const struct umbra_boot_info *bi = (const void *)((const char *)l.ram + gpa);

		ck_assert_msg(gpa % 64 == 0 && gpa >= bottom && gpa + sizeof(*bi) <= bottom + stack,
			      "vCPU %u: expected a 64-byte aligned block at the top of [%#llx, %#llx), got %#llx", id,
			      (unsigned long long)bottom, (unsigned long long)(bottom + stack), (unsigned long long)gpa);
		ck_assert_msg(bi->magic == UMBRA_BOOT_MAGIC && bi->abi_version == UMBRA_ABI_VERSION &&
				      bi->size == sizeof(*bi),
			      "vCPU %u: expected magic %#x, ABI %u, size %zu; got %#x, %u, %u", id, UMBRA_BOOT_MAGIC,
			      UMBRA_ABI_VERSION, sizeof(*bi), bi->magic, bi->abi_version, bi->size);
		ck_assert_msg(bi->vcpu_id == id && bi->nr_vcpus == nr_vcpus, "vCPU %u: expected id %u of %u, got %u of %u",
			      id, id, nr_vcpus, bi->vcpu_id, bi->nr_vcpus);
		ck_assert_msg(bi->ram_size == ram_size && bi->free_start == 0x123000 &&
				      bi->free_end == ram_size - nr_vcpus * stack,
			      "vCPU %u: expected RAM %#llx, free [0x123000, %#llx); got %#llx, [%#llx, %#llx)", id,
			      (unsigned long long)ram_size, (unsigned long long)(ram_size - nr_vcpus * stack),
			      (unsigned long long)bi->ram_size, (unsigned long long)bi->free_start,
			      (unsigned long long)bi->free_end);
		/* The stack ends at the block's page, which is not resident. */
		ck_assert_msg(bi->stack_bottom == bottom && bi->stack_top == (gpa & ~0xfffull) &&
				      bi->stack_top == boot_stack_top(ram_size, id) && bi->stack_top + 4096 == bottom + stack,
			      "vCPU %u: expected stack [%#llx, %#llx), got [%#llx, %#llx)", id, (unsigned long long)bottom,
			      (unsigned long long)(gpa & ~0xfffull), (unsigned long long)bi->stack_bottom,
			      (unsigned long long)bi->stack_top);
		ck_assert_msg(strcmp(bi->cmdline, "a b") == 0, "vCPU %u: expected cmdline \"a b\", got \"%s\"", id,
			      bi->cmdline);
		ck_assert_msg(bi->boot_cr3 == UMBRA_PT_GPA && bi->pool_gpa == SHADOW_POOL_GPA &&
				      bi->pool_size == pool_size,
			      "vCPU %u: expected boot_cr3 %#x, pool %#llx+%#llx; got %#llx, %#llx+%#llx", id, UMBRA_PT_GPA,
			      (unsigned long long)SHADOW_POOL_GPA, (unsigned long long)pool_size,
			      (unsigned long long)bi->boot_cr3, (unsigned long long)bi->pool_gpa,
			      (unsigned long long)bi->pool_size);
		ck_assert_msg(bi->nr_segments == 2, "vCPU %u: expected 2 segments, got %u", id, bi->nr_segments);
		for (unsigned int k = 0; k < 2; k++) {
			const struct umbra_segment_info *si = &bi->segments[k];
			uint32_t flags = boot_segments[k].writable ? UMBRA_SEGMENT_WRITABLE : 0;
			ck_assert_msg(strcmp(si->name, boot_segments[k].name) == 0 && si->gpa == boot_segments[k].gpa &&
					      si->size == boot_segments[k].size && si->flags == flags,
				      "vCPU %u segment %u: expected '%s' %#llx+%#llx flags %u, got '%s' %#llx+%#llx flags %u",
				      id, k, boot_segments[k].name, (unsigned long long)boot_segments[k].gpa,
				      (unsigned long long)boot_segments[k].size, flags, si->name,
				      (unsigned long long)si->gpa, (unsigned long long)si->size, (unsigned int)si->flags);
		}
	}
	munmap(l.ram, l.ram_size);
}
END_TEST

/* ---- statistics: one list for --stats and --stats-json ---- */

START_TEST(test_stats_report_every_shadow_counter_once_per_group)
{
	struct vm_stats st;
	uint64_t values[VM_STAT_NR], *counters = (uint64_t *)&st.shadow;
	const size_t nr_counters = sizeof(st.shadow) / sizeof(uint64_t);

	/* Every counter of struct shadow_mmu_stats gets a distinct value; each
	 * must come out of VM_STATS (so both outputs report it). */
	memset(&st, 0, sizeof(st));
	for (size_t i = 0; i < nr_counters; i++)
		counters[i] = 1000 + i;
	vm_stats_values(&st, values);
	for (size_t i = 0; i < nr_counters; i++) {
		bool found = false;
		for (int k = 0; k < VM_STAT_NR; k++)
			found |= values[k] == 1000 + i;
		ck_assert_msg(found, "shadow_mmu_stats counter %zu (value %zu): expected in VM_STATS, got no entry", i,
			      1000 + i);
	}
	for (int k = 0; k < VM_STAT_NR; k++) {
		const struct vm_stat_desc *d = &vm_stat_descs[k];
		ck_assert_msg(d->key && (!d->before) == (!d->after), "entry %d: expected a key and both texts or none", k);
		for (int j = 0; j < k; j++)
			ck_assert_msg(vm_stat_descs[j].group != d->group || strcmp(vm_stat_descs[j].key, d->key) != 0,
				      "entry %d: expected a key unique in its group, got '%s' twice", k, d->key);
	}
}
END_TEST

/* ---- console output: escaped unless --console raw ---- */

static const struct {
	const char *in;
	size_t len; /* bytes of in (it may hold a NUL) */
	const char *out;
} console_escapes[] = {
	{ "hello, world\n", 13, "hello, world\n" },
	{ " ~", 2, " ~" },                                        /* the printable edges */
	{ "a\tb", 3, "a\tb" },                                    /* tab is kept */
	{ "\x1b[2J", 4, "\\x1b[2J" },                             /* ESC, erase display */
	{ "\x1b[31mred\x1b[0m\n", 13, "\\x1b[31mred\\x1b[0m\n" }, /* colours */
	{ "a\\b", 3, "a\\\\b" },                                  /* a backslash doubles */
	{ "\\x1b", 4, "\\\\x1b" },                                /* so no escape is forged */
	{ "a\0b", 3, "a\\x00b" },                                 /* NUL */
	{ "\x7f", 1, "\\x7f" },                                   /* DEL */
	{ "\r\b\a\v\f", 5, "\\x0d\\x08\\x07\\x0b\\x0c" },          /* other C0 controls */
	{ "\x1f", 1, "\\x1f" },
	{ "caf\xc3\xa9", 5, "caf\\xc3\\xa9" },                     /* UTF-8: each byte */
	{ "\x9b" "2J", 3, "\\x9b2J" },                            /* C1 CSI */
	{ "\x80\xff", 2, "\\x80\\xff" },
	{ "", 0, "" },
};

START_TEST(test_console_escape_makes_guest_bytes_visible)
{
	char out[VMM_CONSOLE_ESCAPED_MAX(16)];
	size_t n;

	memset(out, '#', sizeof(out));
	n = vmm_console_escape(console_escapes[_i].in, console_escapes[_i].len, out);
	ck_assert_msg(n == strlen(console_escapes[_i].out) && memcmp(out, console_escapes[_i].out, n) == 0,
		      "case %d: expected \"%s\" (%zu bytes), got \"%.*s\" (%zu bytes)", _i, console_escapes[_i].out,
		      strlen(console_escapes[_i].out), (int)n, out, n);
	ck_assert_msg(n == sizeof(out) || out[n] == '#', "case %d: wrote past its result", _i);
}
END_TEST

START_TEST(test_console_escape_bound_holds_for_every_byte)
{
	char in[256], out[VMM_CONSOLE_ESCAPED_MAX(256)];
	size_t n;

	for (int i = 0; i < 256; i++)
		in[i] = (char)i;
	n = vmm_console_escape(in, sizeof(in), out);
	ck_assert_uint_le(n, sizeof(out));
	/* Every byte of the result is printable ASCII, newline or tab. */
	for (size_t i = 0; i < n; i++)
		ck_assert_msg((out[i] >= 0x20 && out[i] < 0x7f) || out[i] == '\n' || out[i] == '\t',
			      "byte %zu of the result: expected printable, got %#x", i, (unsigned char)out[i]);
	/* 95 printable bytes (the backslash as 2), newline and tab as 1, the
	 * other 159 bytes as 4. */
	ck_assert_uint_eq(n, 94 + 2 + 2 + 159 * 4);
}
END_TEST

START_TEST(test_console_option_parses_modes)
{
	struct vmm_options o;
	struct vmm_error err = { "" };

	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "img.elf", NULL }), 0);
	ck_assert_int_eq(o.console, VMM_CONSOLE_ESCAPED);
	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "img.elf", "--console", "raw", NULL }), 0);
	ck_assert_int_eq(o.console, VMM_CONSOLE_RAW);
	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "--console=raw", "--console=escaped", "img.elf",
							   NULL }), 0);
	ck_assert_int_eq(o.console, VMM_CONSOLE_ESCAPED);
	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "--config", "c.json", "--console", "raw", NULL }),
			 0);
	ck_assert_int_eq(o.console, VMM_CONSOLE_RAW);
	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "img.elf", "--console", "ansi", NULL }), -EINVAL);
	ck_assert_str_eq(err.msg, "--console 'ansi': must be escaped or raw");
	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "img.elf", "--console", NULL }), -EINVAL);
	ck_assert_str_eq(err.msg, "--console needs a mode, escaped or raw");
	ck_assert_msg(strstr(vmm_usage, "--console MODE"), "expected --help to document --console MODE");
}
END_TEST

/* ---- config files: keys given twice, NUL bytes ---- */

#define SEG_OK(name, gpa) "{ \"name\": \"" name "\", \"size\": \"2M\", \"gpa\": \"" gpa "\" }"

static const struct {
	const char *text;
	const char *msg;
} hidden_configs[] = {
	{ "{ \"vms\": [" VM_OK "], \"vms\": [" VM_OK "] }", "top level: duplicate key 'vms'" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"name\": \"b\", \"image\": \"x\" } ] }", "vms[0]: duplicate key 'name'" },
	/* the same key, spelt with an escape: one key to json-c */
	{ "{ \"vms\": [ { \"name\": \"a\", \"\\u006eame\": \"b\", \"image\": \"x\" } ] }",
	  "vms[0]: duplicate key 'name'" },
	{ "{ \"vms\": [ { 'image': \"x\", \"name\": \"a\", \"image\": \"y\" } ] }", "vms[0]: duplicate key 'image'" },
	{ "{ \"segments\": [" SEG_OK("s", "0x2000000000") ", { \"name\": \"t\", \"size\": \"2M\", "
	  "\"gpa\": \"0x2000200000\", /* \"gpa\": 1 */ \"gpa\": \"0x2000400000\" } ], \"vms\": [" VM_OK "] }",
	  "segments[1]: duplicate key 'gpa'" },
	{ "{ \"vms\": [" VM_OK ", { \"name\": \"b\", \"image\": \"x\", \"segments\": [], \"segments\": [] } ] }",
	  "vms[1]: duplicate key 'segments'" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"cmdline\": \"a\\u0000b\" } ] }",
	  "vms[0].cmdline: contains a NUL byte (\\u0000)" },
	{ "{ \"vms\": [ { \"name\": \"a\\u0000b\", \"image\": \"x\" } ] }", "vms[0].name: contains a NUL byte" },
	{ "{ \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"mem\": \"64M\\u0000junk\" } ] }",
	  "vms[0].mem: contains a NUL byte" },
	{ "{ \"segments\": [" SEG_OK("s", "0x2000000000") ", " SEG_OK("t", "0x2000200000\\u0000") "], "
	  "\"vms\": [" VM_OK "] }", "segments[1].gpa: contains a NUL byte" },
	{ "{ \"segments\": [" SEG_OK("s", "0x2000000000") "], \"vms\": [ { \"name\": \"a\", \"image\": \"x\", "
	  "\"segments\": [ \"s\", \"s\\u0000t\" ] } ] }", "vms[0].segments[1]: contains a NUL byte" },
	{ "{ \"vms\": [" VM_OK "], \"vms\\u0000x\": 1 }", "top level: key 'vms' contains a NUL byte (\\u0000)" },
};

START_TEST(test_config_key_twice_or_nul_byte_is_rejected)
{
	struct plan plan;
	struct vmm_error err = { 0 };
	int ret = plan_from_config_text(hidden_configs[_i].text, "", "c.json", &plan, &err);

	ck_assert_msg(ret == -EINVAL, "config %d: expected -EINVAL, got %d", _i, ret);
	ck_assert_msg(strstr(err.msg, hidden_configs[_i].msg), "config %d: expected message containing \"%s\", got \"%s\"",
		      _i, hidden_configs[_i].msg, err.msg);
}
END_TEST

/* What the second pass reads past without a false alarm: escapes, quotes,
 * braces and key-like text inside strings and comments, equal keys in
 * different objects. */
START_TEST(test_config_equal_keys_in_different_objects_are_accepted)
{
	static const char text[] =
		"// \"vms\": twice, { \"name\": 1\n"
		"{ \"segments\": [ { \"name\": \"s\", \"size\": \"2M\", \"gpa\": \"0x2000000000\" } ],\n"
		"  /* \"vms\": [], \"name\" */\n"
		"  \"vms\": [ { \"name\": \"a\", \"image\": \"x\", \"cmdline\": \"q=\\\"name\\\" } { \\\\ 'vms'\",\n"
		"             \"segments\": [\"s\"] },\n"
		"           { \"name\": \"b\", 'image': 'y', \"mem\": \"8M\", \"segments\": [\"s\"] } ] }\n";
	struct plan plan;
	struct vmm_error err = { 0 };

	ck_assert_msg(plan_from_config_text(text, "", "c.json", &plan, &err) == 0, "expected success, got \"%s\"", err.msg);
	ck_assert_uint_eq(plan.nr_vms, 2);
	ck_assert_str_eq(plan.vms[0].cmdline, "q=\"name\" } { \\ 'vms'");
	ck_assert_str_eq(plan.vms[1].image, "y");
	plan_free(&plan);
}
END_TEST

/* ---- trust groups, table quotas, fitting the host ---- */

START_TEST(test_group_and_quota_options_reach_every_vm)
{
	struct vmm_options o;
	struct vmm_error err = { "" };
	struct plan plan;

	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "a.elf", "--vms", "3", "--group", "web-1",
							   "--table-quota=1000", NULL }), 0);
	ck_assert_str_eq(o.group, "web-1");
	ck_assert_uint_eq(o.table_quota, 1000);
	ck_assert_int_eq(plan_from_options(&o, &plan, &err), 0);
	for (unsigned int i = 0; i < 3; i++) {
		ck_assert_str_eq(plan.vms[i].group, "web-1");
		ck_assert_uint_eq(plan.vms[i].table_quota, 1000);
	}
	plan_free(&plan);
	/* Without the options: no group, the default quota. */
	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "a.elf", "--mem", "64G", NULL }), 0);
	ck_assert_ptr_null(o.group);
	ck_assert_int_eq(plan_from_options(&o, &plan, &err), 0);
	ck_assert_str_eq(plan.vms[0].group, "");
	ck_assert_uint_eq(plan.vms[0].table_quota, vmm_table_quota_default(64ull << 30, 1, 0));
	plan_free(&plan);
}
END_TEST

START_TEST(test_clone_option_and_key_reach_the_plan)
{
	struct vmm_options o;
	struct vmm_error err = { "" };
	struct plan plan;
	const char *text = "{ \"vms\": [ { \"name\": \"a\", \"image\": \"g.elf\", \"clones\": 7 },\n"
			   "           { \"name\": \"b\", \"image\": \"g.elf\" } ] }";

	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "a.elf", "--vms", "2", "--clone", "3", NULL }), 0);
	ck_assert_uint_eq(o.clones, 3);
	ck_assert_int_eq(plan_from_options(&o, &plan, &err), 0);
	ck_assert_uint_eq(plan.vms[0].clones, 3);
	ck_assert_uint_eq(plan.vms[1].clones, 3);
	plan_free(&plan);
	ck_assert_msg(plan_from_config_text(text, "", "t.json", &plan, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(plan.vms[0].clones, 7);
	ck_assert_uint_eq(plan.vms[1].clones, 0);
	plan_free(&plan);
}
END_TEST

START_TEST(test_config_group_and_quota_per_vm)
{
	struct plan plan;
	struct vmm_error err = { "" };
	const char *text =
		"{ \"segments\": [ { \"name\": \"s\", \"size\": \"4M\", \"gpa\": \"0x2000000000\" } ],\n"
		"  \"vms\": [ { \"name\": \"r\", \"count\": 2, \"image\": \"g.elf\", \"group\": \"readers\",\n"
		"             \"table_quota\": 4096, \"segments\": [\"s\"] },\n"
		"           { \"name\": \"w\", \"image\": \"w.elf\", \"mem\": \"32M\", \"vcpus\": 3, \"segments\": [\"s\"] } ] }";

	ck_assert_msg(plan_from_config_text(text, "", "t.json", &plan, &err) == 0, "%s", err.msg);
	ck_assert_str_eq(plan.vms[0].group, "readers");
	ck_assert_str_eq(plan.vms[1].group, "readers");
	ck_assert_uint_eq(plan.vms[1].table_quota, 4096);
	ck_assert_str_eq(plan.vms[2].group, "");
	ck_assert_uint_eq(plan.vms[2].table_quota, vmm_table_quota_default(32ull << 20, 3, 4ull << 20));
	plan_free(&plan);
}
END_TEST

START_TEST(test_default_quota_and_roots_follow_the_vm)
{
	/* 64 GiB with 4 KiB pages: 32768 PTs, 64 PDs, a PDPT and a PML4,
	 * four times over, and 16 tables for each of 9 roots. */
	ck_assert_uint_eq(vmm_table_quota_default(64ull << 30, 1, 0), 4 * (32768 + 64 + 1 + 1) + 16 * 9);
	ck_assert_uint_eq(vmm_table_quota_default(4ull << 20, 1, 0), VMM_TABLE_QUOTA_DEFAULT_MIN);
	ck_assert_uint_gt(vmm_table_quota_default(1ull << 30, 1, 1ull << 30),
			  vmm_table_quota_default(1ull << 30, 1, 0));
	ck_assert_uint_gt(vmm_table_quota_default(64ull << 30, 64, 0), vmm_table_quota_default(64ull << 30, 1, 0));
	/* Every vCPU on its own address space, with roots left to switch. */
	for (unsigned int v = 1; v <= UMBRA_MAX_VCPUS; v++)
		ck_assert_uint_ge(vmm_quota_roots(v), v + VMM_QUOTA_SPACES);
}
END_TEST

/* A plan of four VMs: a and c in group "x", b and d in none; a and b
 * attach a 4 MiB segment. */
static void four_vm_plan(struct plan *plan)
{
	static const char *const groups[] = { "x", "", "x", "" };

	memset(plan, 0, sizeof(*plan));
	plan->nr_segments = 1;
	plan->segments[0] = (struct plan_segment){ .name = "s", .gpa = 128ull << 30, .size = 4ull << 20 };
	plan->vms = calloc(4, sizeof(*plan->vms));
	ck_assert_ptr_nonnull(plan->vms);
	plan->nr_vms = 4;
	for (unsigned int i = 0; i < 4; i++) {
		struct plan_vm *v = &plan->vms[i];
		snprintf(v->name, sizeof(v->name), "v%u", i);
		snprintf(v->group, sizeof(v->group), "%s", groups[i]);
		v->mem = 64ull << 20;
		v->vcpus = 1;
		v->table_quota = 1000 + i;
		v->nr_segments = i < 2;
	}
}

START_TEST(test_vms_without_a_group_are_alone_where_the_pool_is_writable)
{
	struct plan plan;
	struct vmm_error err = { "" };

	four_vm_plan(&plan);
	ck_assert_uint_eq(plan_nr_ungrouped(&plan), 2);
	ck_assert_int_eq(plan_assign_groups(&plan, false, &err), 0);
	ck_assert_uint_eq(plan.nr_groups, 3);
	ck_assert_uint_eq(plan.vms[0].group_index, plan.vms[2].group_index);
	ck_assert_uint_ne(plan.vms[1].group_index, plan.vms[3].group_index);
	ck_assert_uint_ne(plan.vms[0].group_index, plan.vms[1].group_index);
	ck_assert_uint_ne(plan.vms[0].group_index, plan.vms[3].group_index);
	const struct plan_group *x = &plan.groups[plan.vms[0].group_index];
	ck_assert_str_eq(x->name, "x");
	ck_assert_uint_eq(x->nr_vms, 2);
	/* The quotas of a and c, and two canonical tables per 2 MiB run (2)
	 * and per GiB (1) of the 4 MiB segment a attaches. */
	ck_assert_uint_eq(x->pool_pages, 1000 + 1002 + 2 * (2 + 1));
	ck_assert_uint_eq(plan.groups[plan.vms[1].group_index].pool_pages, 1001 + 2 * (2 + 1));
	ck_assert_uint_eq(plan.groups[plan.vms[3].group_index].pool_pages, 1003);
	plan_free(&plan);
}
END_TEST

START_TEST(test_vms_without_a_group_share_the_default_where_the_pool_is_read_only)
{
	struct plan plan;
	struct vmm_error err = { "" };

	four_vm_plan(&plan);
	ck_assert_int_eq(plan_assign_groups(&plan, true, &err), 0);
	ck_assert_uint_eq(plan.nr_groups, 2);
	ck_assert_uint_eq(plan.vms[1].group_index, plan.vms[3].group_index);
	ck_assert_uint_ne(plan.vms[0].group_index, plan.vms[1].group_index);
	ck_assert_uint_eq(plan.groups[plan.vms[1].group_index].nr_vms, 2);
	ck_assert_uint_eq(plan.groups[plan.vms[1].group_index].pool_pages, 1001 + 1003 + 2 * (2 + 1));
	/* A pool never exceeds what the shadow library allows. */
	plan.vms[1].table_quota = plan.vms[3].table_quota = VMM_TABLE_QUOTA_MAX;
	ck_assert_int_eq(plan_assign_groups(&plan, true, &err), 0);
	ck_assert_uint_eq(plan.groups[plan.vms[1].group_index].pool_pages, SHADOW_POOL_MAX_PAGES);
	plan_free(&plan);
}
END_TEST

START_TEST(test_plan_that_cannot_fit_the_host_is_refused_with_figures)
{
	struct vmm_options o;
	struct vmm_error err = { "" };
	struct vmm_host_memory host = { .ram = 16ull << 30, .swap = 2ull << 30, .as_limit = UINT64_MAX };
	struct vmm_fit fit;
	struct plan plan;

	/* 256 VMs of 64 GiB: 16 TiB of guest RAM. */
	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "a.elf", "--vms", "256", "--mem", "64G", NULL }), 0);
	ck_assert_int_eq(plan_from_options(&o, &plan, &err), 0);
	ck_assert_int_eq(plan_assign_groups(&plan, false, &err), 0);
	plan_fit_estimate(&plan, &fit);
	ck_assert_uint_eq(fit.guest_ram, 256ull * (64ull << 30));
	ck_assert_uint_gt(fit.bookkeeping, 256ull * (64ull << 30) / 4096 * 8); /* a P2M entry per page at least */
	ck_assert_uint_eq(fit.total, fit.guest_ram + fit.segments + fit.bookkeeping + fit.pools);
	ck_assert_int_eq(vmm_fit_check(&fit, &host, &err), -ENOMEM);
	ck_assert_msg(strstr(err.msg, "the VMs do not fit this host: they may use ") &&
			      strstr(err.msg, "guest RAM 16777216 MiB") &&
			      strstr(err.msg, "the host has 18432 MiB of memory and swap (MemTotal + SwapTotal)") &&
			      strstr(err.msg, "run fewer VMs (--vms"),
		      "got \"%s\"", err.msg);
	plan_free(&plan);

	/* One VM of 64 MiB fits, but not under an RLIMIT_AS of 32 MiB. */
	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "a.elf", NULL }), 0);
	ck_assert_int_eq(plan_from_options(&o, &plan, &err), 0);
	ck_assert_int_eq(plan_assign_groups(&plan, false, &err), 0);
	plan_fit_estimate(&plan, &fit);
	ck_assert_int_eq(vmm_fit_check(&fit, &host, &err), 0);
	host.as_limit = 32ull << 20;
	ck_assert_int_eq(vmm_fit_check(&fit, &host, &err), -ENOMEM);
	ck_assert_msg(strstr(err.msg, "umbra may map only 32 MiB (RLIMIT_AS)"), "got \"%s\"", err.msg);
	plan_free(&plan);
}
END_TEST

START_TEST(test_host_memory_is_read)
{
	struct vmm_host_memory hm;
	struct vmm_error err = { "" };

	ck_assert_msg(vmm_host_memory_read(&hm, &err) == 0, "%s", err.msg);
	ck_assert_uint_gt(hm.ram, 0);
	ck_assert_uint_gt(hm.as_limit, 0);
}
END_TEST

Suite *vmm_suite(void)
{
	Suite *s = suite_create("vmm");
	TCase *opts = tcase_create("options");
	TCase *elf = tcase_create("elf");

	tcase_add_loop_test(opts, test_parse_size_accepts_units_and_rejects_junk, 0, sizeof(sizes) / sizeof(sizes[0]));
	tcase_add_test(opts, test_run_options_in_any_order);
	tcase_add_test(opts, test_run_defaults);
	tcase_add_test(opts, test_pager_options_apply_over_the_config);
	tcase_add_loop_test(opts, test_bad_arguments_are_named, 0, sizeof(bad_args) / sizeof(bad_args[0]));
	tcase_add_test(opts, test_cmdline_length_is_bounded);
	suite_add_tcase(s, opts);
	tcase_add_test(elf, test_valid_elf_is_parsed_and_loaded);
	tcase_add_test(elf, test_resident_segments_are_bounded);
	tcase_add_loop_test(elf, test_defective_elf_is_rejected_with_reason, 0,
			    sizeof(elf_defects) / sizeof(elf_defects[0]));
	suite_add_tcase(s, elf);
	TCase *config = tcase_create("config");
	tcase_add_test(config, test_config_expands_counts_and_resolves_paths);
	tcase_add_loop_test(config, test_bad_config_names_key_and_problem, 0, sizeof(bad_configs) / sizeof(bad_configs[0]));
	suite_add_tcase(s, config);
	TCase *boot = tcase_create("boot");
	tcase_add_loop_test(boot, test_boot_page_tables_identity_map_ram_and_segments, 0,
			    sizeof(boot_layouts) / sizeof(boot_layouts[0]));
	tcase_add_test(boot, test_boot_page_tables_that_do_not_fit_are_refused);
	tcase_add_test(boot, test_boot_gdt_is_flat_long_mode);
	tcase_add_loop_test(boot, test_boot_registers_enter_long_mode_at_the_entry, 0,
			    sizeof(boot_efers) / sizeof(boot_efers[0]));
	tcase_add_test(boot, test_boot_info_blocks_describe_the_vm);
	suite_add_tcase(s, boot);
	TCase *stats = tcase_create("stats");
	tcase_add_test(stats, test_stats_report_every_shadow_counter_once_per_group);
	suite_add_tcase(s, stats);
	TCase *console = tcase_create("console");
	tcase_add_loop_test(console, test_console_escape_makes_guest_bytes_visible, 0,
			    sizeof(console_escapes) / sizeof(console_escapes[0]));
	tcase_add_test(console, test_console_escape_bound_holds_for_every_byte);
	tcase_add_test(console, test_console_option_parses_modes);
	suite_add_tcase(s, console);
	TCase *hidden = tcase_create("config_hidden");
	tcase_add_loop_test(hidden, test_config_key_twice_or_nul_byte_is_rejected, 0,
			    sizeof(hidden_configs) / sizeof(hidden_configs[0]));
	tcase_add_test(hidden, test_config_equal_keys_in_different_objects_are_accepted);
	suite_add_tcase(s, hidden);
	TCase *groups = tcase_create("groups");
	tcase_add_test(groups, test_group_and_quota_options_reach_every_vm);
	tcase_add_test(groups, test_config_group_and_quota_per_vm);
	tcase_add_test(groups, test_clone_option_and_key_reach_the_plan);
	tcase_add_test(groups, test_default_quota_and_roots_follow_the_vm);
	tcase_add_test(groups, test_vms_without_a_group_are_alone_where_the_pool_is_writable);
	tcase_add_test(groups, test_vms_without_a_group_share_the_default_where_the_pool_is_read_only);
	tcase_add_test(groups, test_plan_that_cannot_fit_the_host_is_refused_with_figures);
	tcase_add_test(groups, test_host_memory_is_read);
	suite_add_tcase(s, groups);
	return s;
}
