/*
 * vmm/ host-side units that need no KVM: the command line and ELF validation.
 * (Everything that runs a VM is in test_kvm.c, on real KVM.)
 */
#include <check.h>
#include <elf.h>
#include <errno.h>
#include <string.h>

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
	ck_assert_int_eq(parse(&o, &err, (const char *[]){ "run", "--evict-pages=9", "--config", "c.json",
							   "--evict-ms", "20", NULL }), 0);
	ck_assert_str_eq(o.config, "c.json");
	ck_assert_uint_eq(o.evict_ms, 20);
	ck_assert_uint_eq(o.evict_pages, 9);
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
	static uint8_t ram[LOAD_MAX];
	struct test_elf e;
	struct elf_image img;
	struct vmm_error err = { "" };

	make_elf(&e);
	ck_assert_msg(elf_image_parse(&e, sizeof(e), LOAD_MIN, LOAD_MAX, &img, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(img.nr_segments, 2);
	ck_assert_uint_eq(img.entry, LOAD_MIN + 16);
	ck_assert_uint_eq(img.end, LOAD_MIN + 0x3000);
	memset(ram, 0xaa, sizeof(ram));
	elf_image_load(&img, &e, ram);
	ck_assert_int_eq(memcmp(ram + LOAD_MIN, e.code, 128), 0);
	ck_assert_int_eq(memcmp(ram + LOAD_MIN + 0x1000, e.code + 128, 128), 0);
	for (uint64_t a = LOAD_MIN + 0x1000 + 128; a < LOAD_MIN + 0x3000; a++)
		ck_assert_msg(ram[a] == 0, "bss byte at %#llx: expected 0, got %#x", (unsigned long long)a, ram[a]);
	ck_assert_uint_eq(ram[LOAD_MIN + 0x3000], 0xaa); /* nothing past the image */
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
		"                { \"name\": \"t\", \"size\": 2097152, \"gpa\": 137443147776, \"writable\": false } ],\n"
		"  \"vms\": [ { \"name\": \"r\", \"count\": 3, \"image\": \"g.elf\", \"vcpus\": 2, \"segments\": [\"t\", \"s\"] },\n"
		"           { \"name\": \"w\", \"image\": \"/abs/w.elf\", \"mem\": \"32M\", \"cmdline\": \"x=1\" } ] }";

	ck_assert_msg(plan_from_config_text(text, "/cfg", "t.json", &plan, &err) == 0, "%s", err.msg);
	ck_assert_uint_eq(plan.nr_segments, 2);
	ck_assert_str_eq(plan.segments[0].file, "/cfg/d.bin");
	ck_assert(plan.segments[0].writable && !plan.segments[1].writable);
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

Suite *vmm_suite(void)
{
	Suite *s = suite_create("vmm");
	TCase *opts = tcase_create("options");
	TCase *elf = tcase_create("elf");

	tcase_add_loop_test(opts, test_parse_size_accepts_units_and_rejects_junk, 0, sizeof(sizes) / sizeof(sizes[0]));
	tcase_add_test(opts, test_run_options_in_any_order);
	tcase_add_test(opts, test_run_defaults);
	tcase_add_loop_test(opts, test_bad_arguments_are_named, 0, sizeof(bad_args) / sizeof(bad_args[0]));
	tcase_add_test(opts, test_cmdline_length_is_bounded);
	suite_add_tcase(s, opts);
	tcase_add_test(elf, test_valid_elf_is_parsed_and_loaded);
	tcase_add_loop_test(elf, test_defective_elf_is_rejected_with_reason, 0,
			    sizeof(elf_defects) / sizeof(elf_defects[0]));
	suite_add_tcase(s, elf);
	TCase *config = tcase_create("config");
	tcase_add_test(config, test_config_expands_counts_and_resolves_paths);
	tcase_add_loop_test(config, test_bad_config_names_key_and_problem, 0, sizeof(bad_configs) / sizeof(bad_configs[0]));
	suite_add_tcase(s, config);
	return s;
}
