/*
 * The umbra command line.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "umbra/abi.h"
#include "umbra/trace.h"
#include "vmm.h"

const char vmm_usage[] =
	"usage: umbra run IMAGE [--vms N] [--mem SIZE] [--vcpus N] [--cmdline STRING]\n"
	"                 [--group NAME] [--table-quota PAGES] [--clone N]\n"
	"                 [--stats] [--stats-json FILE] [--dump-tables FILE] [--console escaped|raw]\n"
	"                 [--trace FILE [--trace-events LIST] [--trace-buffer EVENTS]]\n"
	"                 [--fault-around PAGES] [--huge-leaves on|off] [--notifier-mode range|page]\n"
	"                 [--mem-limit SIZE] [--swap FILE] [--swap-size SIZE]\n"
	"                 [--reclaim-policy clock|round-robin] [--reclaim-nonblocking]\n"
	"                 [--evict-ms MS [--evict-pages N]]\n"
	"       umbra run --config FILE [--stats] [--stats-json FILE] [--dump-tables FILE]\n"
	"                 [--console escaped|raw] [--trace FILE ...]\n"
	"                 [--fault-around PAGES] [--huge-leaves on|off] [--notifier-mode range|page]\n"
	"                 [pager options as above]\n"
	"       umbra trace-report TRACE... [--png FILE]\n"
	"       umbra --help | --version\n"
	"\n"
	"Runs freestanding x86-64 ELF64 guest images in KVM virtual machines, all in\n"
	"this one process, entered directly in 64-bit long mode (docs/abi.md: the\n"
	"boot state and the hypercalls).\n"
	"\n"
	"options of run:\n"
	"  --vms N           run N VMs of IMAGE (vm0 .. vmN-1), 1 to 256; default 1.\n"
	"                    With several VMs each console line starts with [vmK]\n"
	"  --mem SIZE        guest RAM per VM, a multiple of 2 MiB from 4M to 64G,\n"
	"                    with an optional K, M or G suffix (binary units);\n"
	"                    default 64M\n"
	"  --vcpus N         vCPUs per VM, 1 to 64; default 1\n"
	"  --cmdline STRING  passed to the guest in its boot information block\n"
	"                    (at most 255 bytes)\n"
	"  --group NAME      put the VMs in trust group NAME: they share one pool of\n"
	"                    shadow tables (docs/security.md). Without a group, where\n"
	"                    the pool is guest-writable (AMD) each VM has its own\n"
	"                    pool; elsewhere the VMs share a default group\n"
	"  --table-quota PAGES  shadow-table pages each VM may hold, 64 to 8388608;\n"
	"                    the default is derived from its RAM and vCPUs\n"
	"                    (docs/config.md)\n"
	"  --clone N         clone each VM N times (1 to 64) when every vCPU of it\n"
	"                    has made the READY hypercall: the clones share its\n"
	"                    memory copy-on-write and run on from there, named\n"
	"                    NAME.1 .. NAME.N (docs/abi.md, \"Clones\")\n"
	"  --config FILE     a JSON file describing VMs and shared segments\n"
	"                    (docs/config.md); replaces IMAGE and the options above\n"
	"  --fault-around PAGES  a shadow fault also maps the other pages of its\n"
	"                    aligned PAGES-page window that the guest already maps\n"
	"                    and that are resident (1, 2, 4 .. 64; 1: off; default\n"
	"                    32; docs/shadow.md, \"Fault-around\")\n"
	"  --huge-leaves on|off  a guest 2 MiB page over 2 MiB of contiguous resident\n"
	"                    RAM gets one 2 MiB shadow leaf, split when part of it\n"
	"                    is invalidated (default on; docs/shadow.md, \"2 MiB\n"
	"                    shadow leaves\")\n"
	"  --notifier-mode M how an invalidation of guest memory (a swap-out, an\n"
	"                    eviction) reaches the VMs that map it: range (the\n"
	"                    default: one invalidate_range_start/end pair per\n"
	"                    range, as Linux does now) or page (one invalidate_page\n"
	"                    per page, as Linux did in 2008); a segment's\n"
	"                    \"notifier_mode\" in the config overrides it for that\n"
	"                    segment (docs/notifiers.md)\n"
	"  --stats           print each VM's statistics when it stops (stderr)\n"
	"  --dump-tables FILE  write FILE, a Graphviz (DOT) picture of the shadow\n"
	"                    tables each VM reached as it stopped: its roots, the\n"
	"                    tables below, which are shared and which canonical\n"
	"                    (render: dot -Tpng FILE -o FILE.png; docs/sharing.md)\n"
	"  --trace FILE      record a trace and write it to FILE at exit, in the\n"
	"                    Chrome trace-event JSON format (open it in Perfetto or\n"
	"                    chrome://tracing; docs/tracing.md): a process per VM,\n"
	"                    a thread per vCPU; faults, invalidations, callbacks,\n"
	"                    remote flushes, shootdowns (request, NMI, ack, linked\n"
	"                    by flows), swap-outs and -ins, clones\n"
	"  --trace-events LIST  the kinds recorded, comma-separated: fault,\n"
	"                    invalidate, callback, flush, shootdown, swap, clone, or\n"
	"                    all (the default)\n"
	"  --trace-buffer EVENTS  at most EVENTS events per thread (1024 to\n"
	"                    16777216; default 262144, 136 bytes each): the rest are\n"
	"                    dropped and counted (the file's otherData, stderr)\n"
	"  --stats-json FILE write the statistics of every VM as JSON to FILE (one\n"
	"                    that cannot be written is a warning, not an exit status)\n"
	"  --mem-limit SIZE  keep the guest memory of all VMs (RAM and segments) in\n"
	"                    host memory within SIZE (at least 4M): the rest is\n"
	"                    swapped out and brought back on access (docs/pager.md)\n"
	"  --swap FILE       the swap file (created or truncated; default: a\n"
	"                    temporary file in $TMPDIR, removed at exit)\n"
	"  --swap-size SIZE  the swap file's capacity, 1M to 16T; default: all\n"
	"                    guest memory\n"
	"  --reclaim-policy P  how victims are chosen: clock (the default: pages not\n"
	"                    used recently) or round-robin (in address order)\n"
	"  --reclaim-nonblocking  the pager's invalidations (reclaim, --evict-ms)\n"
	"                    are not blockable, as Linux's OOM reaper issues them:\n"
	"                    a VM whose shadow-MMU lock is busy refuses (-EAGAIN)\n"
	"                    instead of waiting, and those pages stay in memory\n"
	"                    for a later pass (counted: busy_refusals, aborts)\n"
	"  --evict-ms MS     testing: every MS milliseconds (1 to 60000), swap out\n"
	"                    the next pages of every shared segment while the guests\n"
	"                    run: every VM that maps a page has it invalidated and\n"
	"                    its vCPUs shot down, and swaps it back in on access\n"
	"                    (needs segments, from --config)\n"
	"  --evict-pages N   pages of each segment evicted each time, 1 to 65536;\n"
	"                    default 64\n"
	"  --swap-inject KIND:N  testing: the N-th page written (KIND write-error:\n"
	"                    fails with EIO; corrupt: damaged in the file) or read\n"
	"                    (read-error: fails with EIO) from the swap file\n"
	"  --console MODE    how guest console output reaches stdout: escaped (the\n"
	"                    default) prints bytes other than printable ASCII, newline\n"
	"                    and tab as \\xHH and a backslash as \\\\, so that a guest\n"
	"                    cannot drive the terminal; raw prints every byte as is\n"
	"  -h, --help        this text\n"
	"  --version         umbra's version and guest ABI version\n"
	"\n"
	"exit status: the guest's exit code (0-119) when it exits through the exit\n"
	"hypercall; with several VMs, that of the first VM (in order) that did not\n"
	"exit with 0. 120 guest error (unexpected exception, triple fault, bad\n"
	"hypercall, failed VM entry, all vCPUs halted); 121 image missing or\n"
	"malformed; 122 KVM unavailable or failing; 123 bad command line or config;\n"
	"124 a segment file could not be read. A run that cannot fit the host's\n"
	"memory is refused up front with status 123. A --stats-json FILE that cannot be\n"
	"written is reported on stderr and leaves the exit status as it is.\n"
	"\n"
	"umbra needs /dev/kvm. Where it is missing, run umbra inside the KVM sandbox:\n"
	"  scripts/sandbox --add build/vmm/umbra --add build/guest -- \\\n"
	"      /umbra/umbra run /umbra/guest/hello.elf\n";

int vmm_error_set(struct vmm_error *err, int errnum, const char *fmt, ...)
{
	if (err) {
		va_list ap;

		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return -errnum;
}

int vmm_parse_size(const char *text, uint64_t *out)
{
	char *end;
	uint64_t shift = 0;

	if (!text || !*text || *text == '-' || *text == '+' || *text == ' ')
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(text, &end, 10);
	if (errno || end == text)
		return -EINVAL;
	switch (*end) {
	case '\0':
		break;
	case 'k': case 'K': shift = 10; end++; break;
	case 'm': case 'M': shift = 20; end++; break;
	case 'g': case 'G': shift = 30; end++; break;
	default:
		return -EINVAL;
	}
	if (*end == 'i' || *end == 'B') /* accept 64MiB and 64MB as binary too */
		end += (*end == 'i' && end[1] == 'B') ? 2 : 1;
	if (*end)
		return -EINVAL;
	if (shift && v > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = (uint64_t)v << shift;
	return 0;
}

int vmm_check_mem(const char *what, uint64_t mem, unsigned int vcpus, struct vmm_error *err)
{
	if (mem < VMM_MEM_MIN || mem > VMM_MEM_MAX || mem % VMM_MEM_ALIGN)
		return vmm_error_set(err, EINVAL, "%s: must be a multiple of 2M from 4M to 64G", what);
	if (vm_image_load_max(mem, vcpus) < VMM_RAM_BELOW_STACKS_MIN)
		return vmm_error_set(err, EINVAL, "%s is too small for %u vCPUs (each has a %u KiB stack)", what,
				     vcpus, UMBRA_VCPU_STACK_SIZE >> 10);
	return 0;
}

int vmm_check_vcpus(const char *what, unsigned long vcpus, struct vmm_error *err)
{
	if (vcpus == 0 || vcpus > UMBRA_MAX_VCPUS)
		return vmm_error_set(err, EINVAL, "%s: must be a number from 1 to %u", what, UMBRA_MAX_VCPUS);
	return 0;
}

int vmm_check_cmdline(const char *what, const char *cmdline, struct vmm_error *err)
{
	if (strlen(cmdline) >= UMBRA_CMDLINE_MAX)
		return vmm_error_set(err, EINVAL, "%s: %zu bytes, at most %u allowed", what, strlen(cmdline),
				     UMBRA_CMDLINE_MAX - 1);
	return 0;
}

static int parse_uint(const char *text, unsigned long max, unsigned long *out)
{
	char *end;

	if (!text || *text < '0' || *text > '9')
		return -EINVAL;
	errno = 0;
	unsigned long v = strtoul(text, &end, 10);
	if (errno || *end || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

/* Returns the value of option argv[*i], named name (either "--opt=value"
 * or "--opt value"), advancing *i past a separate value; NULL if the value
 * is missing. */
static const char *option_value(int argc, char *const argv[], int *i, const char *name)
{
	const char *arg = argv[*i];
	size_t name_len = strlen(name);

	if (arg[name_len] == '=')
		return arg + name_len + 1;
	if (*i + 1 >= argc)
		return NULL;
	return argv[++*i];
}

static bool option_is(const char *arg, const char *name)
{
	size_t n = strlen(name);

	return strncmp(arg, name, n) == 0 && (arg[n] == '\0' || arg[n] == '=');
}

/* What the options of run leave for the final checks. */
struct run_args {
	uint64_t mem;
	const char *mem_text;
	bool vm_option;         /* an option that --config replaces was given */
	bool evict_pages_given;
};

/* The options that describe the VMs (--mem, --vcpus, --vms, --cmdline,
 * --group, --table-quota, --clone), which --config replaces. Returns 1 if argv[*i] is one (handled), 0 if it
 * is not, -EINVAL with err. */
static int parse_vm_option(int argc, char *const argv[], int *i, struct vmm_options *opts, struct run_args *ra,
			   struct vmm_error *err)
{
	const char *arg = argv[*i], *value;
	char what[64];
	unsigned long n;

	if (option_is(arg, "--mem")) {
		if (!(value = option_value(argc, argv, i, "--mem")))
			return vmm_error_set(err, EINVAL, "--mem needs a size, e.g. --mem 64M");
		if (vmm_parse_size(value, &ra->mem))
			return vmm_error_set(err, EINVAL, "--mem '%s': not a size (use e.g. 64M or 1G)", value);
		ra->mem_text = value;
	} else if (option_is(arg, "--vcpus")) {
		if (!(value = option_value(argc, argv, i, "--vcpus")))
			return vmm_error_set(err, EINVAL, "--vcpus needs a number");
		snprintf(what, sizeof(what), "--vcpus '%s'", value);
		n = 0; /* stays 0, and is rejected, if value is not a number */
		(void)parse_uint(value, UMBRA_MAX_VCPUS, &n);
		if (vmm_check_vcpus(what, n, err))
			return -EINVAL;
		opts->vcpus = (unsigned int)n;
	} else if (option_is(arg, "--vms")) {
		if (!(value = option_value(argc, argv, i, "--vms")))
			return vmm_error_set(err, EINVAL, "--vms needs a number");
		if (parse_uint(value, VMM_MAX_VMS, &n) || n == 0)
			return vmm_error_set(err, EINVAL, "--vms '%s': must be a number from 1 to %u", value,
					     VMM_MAX_VMS);
		opts->vms = (unsigned int)n;
	} else if (option_is(arg, "--cmdline")) {
		if (!(value = option_value(argc, argv, i, "--cmdline")))
			return vmm_error_set(err, EINVAL, "--cmdline needs a string");
		if (vmm_check_cmdline("--cmdline", value, err))
			return -EINVAL;
		opts->cmdline = value;
	} else if (option_is(arg, "--group")) {
		if (!(value = option_value(argc, argv, i, "--group")))
			return vmm_error_set(err, EINVAL, "--group needs a name");
		if (vmm_check_group("--group", value, err))
			return -EINVAL;
		opts->group = value;
	} else if (option_is(arg, "--clone")) {
		if (!(value = option_value(argc, argv, i, "--clone")))
			return vmm_error_set(err, EINVAL, "--clone needs a number of clones");
		if (parse_uint(value, UMBRA_CLONE_MAX, &n) || n == 0)
			return vmm_error_set(err, EINVAL, "--clone '%s': must be a number from 1 to %u", value,
					     UMBRA_CLONE_MAX);
		opts->clones = (unsigned int)n;
	} else if (option_is(arg, "--table-quota")) {
		if (!(value = option_value(argc, argv, i, "--table-quota")))
			return vmm_error_set(err, EINVAL, "--table-quota needs a number of pages");
		snprintf(what, sizeof(what), "--table-quota '%.24s'", value);
		n = 0; /* stays 0, and is rejected, if value is not a number */
		(void)parse_uint(value, VMM_TABLE_QUOTA_MAX, &n);
		if (vmm_check_table_quota(what, n, err))
			return -EINVAL;
		opts->table_quota = n;
	} else {
		return 0;
	}
	ra->vm_option = true;
	return 1;
}

/* The other options of run: --config, --stats, --stats-json, --console,
 * --fault-around, --notifier-mode, --evict-ms, --evict-pages. Returns 1 if argv[*i] is one (handled), 0 if
 * it is not, -EINVAL with err. */
static int parse_run_option(int argc, char *const argv[], int *i, struct vmm_options *opts, struct run_args *ra,
			    struct vmm_error *err)
{
	const char *arg = argv[*i], *value;
	unsigned long n;

	if (option_is(arg, "--config")) {
		if (!(value = option_value(argc, argv, i, "--config")))
			return vmm_error_set(err, EINVAL, "--config needs a file name");
		opts->config = value;
	} else if (option_is(arg, "--dump-tables")) {
		if (!(value = option_value(argc, argv, i, "--dump-tables")))
			return vmm_error_set(err, EINVAL, "--dump-tables needs a file name");
		opts->dump_tables = value;
	} else if (option_is(arg, "--trace")) {
		if (!(value = option_value(argc, argv, i, "--trace")))
			return vmm_error_set(err, EINVAL, "--trace needs a file name");
		opts->trace = value;
	} else if (option_is(arg, "--trace-events")) {
		const char *bad = NULL;

		if (!(value = option_value(argc, argv, i, "--trace-events")))
			return vmm_error_set(err, EINVAL, "--trace-events needs a list of kinds");
		if (umbra_trace_parse_kinds(value, &opts->trace_events, &bad))
			return vmm_error_set(err, EINVAL,
					     "--trace-events '%s': unknown kind at '%.24s' (known: fault, "
					     "invalidate, callback, flush, shootdown, swap, clone, all)",
					     value, bad ? bad : value);
	} else if (option_is(arg, "--trace-buffer")) {
		if (!(value = option_value(argc, argv, i, "--trace-buffer")))
			return vmm_error_set(err, EINVAL, "--trace-buffer needs a number of events");
		if (parse_uint(value, VMM_TRACE_BUFFER_MAX, &n) || n < VMM_TRACE_BUFFER_MIN)
			return vmm_error_set(err, EINVAL,
					     "--trace-buffer '%s': must be a number from %u to %u", value,
					     VMM_TRACE_BUFFER_MIN, VMM_TRACE_BUFFER_MAX);
		opts->trace_buffer = n;
	} else if (option_is(arg, "--stats-json")) {
		if (!(value = option_value(argc, argv, i, "--stats-json")))
			return vmm_error_set(err, EINVAL, "--stats-json needs a file name");
		opts->stats_json = value;
	} else if (option_is(arg, "--console")) {
		if (!(value = option_value(argc, argv, i, "--console")))
			return vmm_error_set(err, EINVAL, "--console needs a mode, escaped or raw");
		if (strcmp(value, "escaped") == 0)
			opts->console = VMM_CONSOLE_ESCAPED;
		else if (strcmp(value, "raw") == 0)
			opts->console = VMM_CONSOLE_RAW;
		else
			return vmm_error_set(err, EINVAL, "--console '%s': must be escaped or raw", value);
	} else if (option_is(arg, "--evict-ms")) {
		if (!(value = option_value(argc, argv, i, "--evict-ms")))
			return vmm_error_set(err, EINVAL, "--evict-ms needs a number of milliseconds");
		if (parse_uint(value, VMM_EVICT_MS_MAX, &n) || n == 0)
			return vmm_error_set(err, EINVAL, "--evict-ms '%s': must be a number from 1 to %u",
					     value, VMM_EVICT_MS_MAX);
		opts->evict_ms = (unsigned int)n;
	} else if (option_is(arg, "--evict-pages")) {
		if (!(value = option_value(argc, argv, i, "--evict-pages")))
			return vmm_error_set(err, EINVAL, "--evict-pages needs a number");
		if (parse_uint(value, VMM_EVICT_PAGES_MAX, &n) || n == 0)
			return vmm_error_set(err, EINVAL, "--evict-pages '%s': must be a number from 1 to %u",
					     value, VMM_EVICT_PAGES_MAX);
		opts->evict_pages = (unsigned int)n;
		ra->evict_pages_given = true;
	} else if (option_is(arg, "--fault-around")) {
		if (!(value = option_value(argc, argv, i, "--fault-around")))
			return vmm_error_set(err, EINVAL, "--fault-around needs a number of pages");
		if (parse_uint(value, SHADOW_FAULT_AROUND_MAX, &n) || n == 0 || (n & (n - 1)))
			return vmm_error_set(err, EINVAL,
					     "--fault-around '%s': must be a power of two from 1 (off) to %u",
					     value, SHADOW_FAULT_AROUND_MAX);
		opts->fault_around = (unsigned int)n;
	} else if (option_is(arg, "--huge-leaves")) {
		if (!(value = option_value(argc, argv, i, "--huge-leaves")))
			return vmm_error_set(err, EINVAL, "--huge-leaves needs on or off");
		if (strcmp(value, "on") && strcmp(value, "off"))
			return vmm_error_set(err, EINVAL, "--huge-leaves '%s': must be on or off", value);
		opts->huge_leaves = strcmp(value, "on") == 0;
	} else if (option_is(arg, "--notifier-mode")) {
		if (!(value = option_value(argc, argv, i, "--notifier-mode")))
			return vmm_error_set(err, EINVAL, "--notifier-mode needs a mode, range or page");
		if (vmm_parse_notifier_mode(value, &opts->notifier_mode))
			return vmm_error_set(err, EINVAL, "--notifier-mode '%s': must be range or page", value);
	} else if (strcmp(arg, "--stats") == 0) {
		opts->stats = true;
	} else {
		return 0;
	}
	return 1;
}

int vmm_parse_notifier_mode(const char *text, enum notifier_mode *mode)
{
	for (int m = 0; m < NOTIFIER_MODE_NR; m++)
		if (strcmp(text, notifier_mode_name((enum notifier_mode)m)) == 0) {
			*mode = (enum notifier_mode)m;
			return 0;
		}
	return -EINVAL;
}

int vmm_parse_policy(const char *text, int *policy)
{
	if (strcmp(text, "clock") == 0)
		*policy = PAGER_POLICY_CLOCK;
	else if (strcmp(text, "round-robin") == 0)
		*policy = PAGER_POLICY_ROUND_ROBIN;
	else
		return -EINVAL;
	return 0;
}

int vmm_check_mem_limit(const char *what, uint64_t bytes, struct vmm_error *err)
{
	if (bytes < VMM_MEM_LIMIT_MIN)
		return vmm_error_set(err, EINVAL, "%s: must be at least 4M", what);
	return 0;
}

int vmm_check_swap_size(const char *what, uint64_t bytes, struct vmm_error *err)
{
	if (bytes < VMM_SWAP_SIZE_MIN || bytes > VMM_SWAP_SIZE_MAX)
		return vmm_error_set(err, EINVAL, "%s: must be from 1M to 16T", what);
	return 0;
}

/* --swap-inject KIND:N. */
static int parse_inject(const char *value, struct vmm_pager_options *po, struct vmm_error *err)
{
	static const struct {
		const char *name;
		enum pager_inject_kind kind;
	} kinds[] = {
		{ "write-error:", PAGER_INJECT_WRITE_ERROR },
		{ "read-error:", PAGER_INJECT_READ_ERROR },
		{ "corrupt:", PAGER_INJECT_CORRUPT },
	};
	unsigned long n;

	for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++) {
		size_t len = strlen(kinds[k].name);

		if (strncmp(value, kinds[k].name, len) == 0 && !parse_uint(value + len, ULONG_MAX, &n) && n > 0) {
			po->inject_kind = (int)kinds[k].kind;
			po->inject_n = n;
			return 0;
		}
	}
	return vmm_error_set(err, EINVAL,
			     "--swap-inject '%s': must be write-error:N, read-error:N or corrupt:N (N from 1)", value);
}

/* The pager options (--mem-limit, --swap, --swap-size, --reclaim-policy,
 * --reclaim-nonblocking, --swap-inject). Returns 1 if argv[*i] is one (handled), 0 if it is not,
 * -EINVAL with err. */
static int parse_pager_option(int argc, char *const argv[], int *i, struct vmm_pager_options *po,
			      struct vmm_error *err)
{
	const char *arg = argv[*i], *value;
	char what[64];

	if (option_is(arg, "--mem-limit") || option_is(arg, "--swap-size")) {
		bool limit = option_is(arg, "--mem-limit");
		const char *name = limit ? "--mem-limit" : "--swap-size";
		uint64_t bytes;

		if (!(value = option_value(argc, argv, i, name)))
			return vmm_error_set(err, EINVAL, "%s needs a size, e.g. %s 256M", name, name);
		if (vmm_parse_size(value, &bytes))
			return vmm_error_set(err, EINVAL, "%s '%s': not a size (use e.g. 256M or 1G)", name, value);
		snprintf(what, sizeof(what), "%s '%.24s'", name, value);
		if (limit ? vmm_check_mem_limit(what, bytes, err) : vmm_check_swap_size(what, bytes, err))
			return -EINVAL;
		*(limit ? &po->mem_limit : &po->swap_size) = bytes;
	} else if (option_is(arg, "--swap")) {
		if (!(value = option_value(argc, argv, i, "--swap")) || !*value)
			return vmm_error_set(err, EINVAL, "--swap needs a file name");
		po->swap = value;
	} else if (option_is(arg, "--reclaim-policy")) {
		if (!(value = option_value(argc, argv, i, "--reclaim-policy")))
			return vmm_error_set(err, EINVAL, "--reclaim-policy needs clock or round-robin");
		if (vmm_parse_policy(value, &po->policy))
			return vmm_error_set(err, EINVAL, "--reclaim-policy '%s': must be clock or round-robin", value);
	} else if (strcmp(arg, "--reclaim-nonblocking") == 0) {
		po->nonblocking = true;
	} else if (option_is(arg, "--swap-inject")) {
		if (!(value = option_value(argc, argv, i, "--swap-inject")))
			return vmm_error_set(err, EINVAL, "--swap-inject needs KIND:N");
		return parse_inject(value, po, err) ? -EINVAL : 1;
	} else {
		return 0;
	}
	return 1;
}

/* The checks of run once every argument is read. */
static int check_run_options(struct vmm_options *opts, const struct run_args *ra, struct vmm_error *err)
{
	char what[64];

	if (ra->evict_pages_given && !opts->evict_ms)
		return vmm_error_set(err, EINVAL, "--evict-pages needs --evict-ms (how often to evict)");
	if (opts->config) {
		if (opts->image)
			return vmm_error_set(err, EINVAL, "run: give either IMAGE ('%s') or --config, not both",
					     opts->image);
		if (ra->vm_option)
			return vmm_error_set(err, EINVAL,
					     "run: --vms, --mem, --vcpus, --cmdline, --group, --table-quota and --clone do not "
					     "apply with --config "
					     "(set them in the config file)");
		return 0;
	}
	if (!opts->image)
		return vmm_error_set(err, EINVAL, "run: no IMAGE given (usage: umbra run IMAGE [options])");
	snprintf(what, sizeof(what), "--mem '%s'", ra->mem_text);
	if (vmm_check_mem(what, ra->mem, opts->vcpus, err))
		return -EINVAL;
	opts->mem = ra->mem;
	return 0;
}

/* The arguments of run (argv[2..]). */
static int parse_run(int argc, char *const argv[], struct vmm_options *opts, struct vmm_error *err)
{
	struct run_args ra = { .mem = VMM_MEM_DEFAULT, .mem_text = "64M" };

	opts->command = VMM_CMD_RUN;
	for (int i = 2; i < argc; i++) {
		const char *arg = argv[i];
		int ret;

		if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
			opts->command = VMM_CMD_HELP;
			return 0;
		}
		ret = parse_vm_option(argc, argv, &i, opts, &ra, err);
		if (ret == 0)
			ret = parse_run_option(argc, argv, &i, opts, &ra, err);
		if (ret == 0)
			ret = parse_pager_option(argc, argv, &i, &opts->pager, err);
		if (ret < 0)
			return ret;
		if (ret > 0)
			continue;
		if (arg[0] == '-' && arg[1] != '\0')
			return vmm_error_set(err, EINVAL, "unknown option '%s' (try 'umbra --help')", arg);
		if (opts->image)
			return vmm_error_set(err, EINVAL, "unexpected argument '%s': image already given as '%s'",
					     arg, opts->image);
		opts->image = arg;
	}
	return check_run_options(opts, &ra, err);
}

/* The arguments of trace-report (argv[2..]): TRACE... [--png FILE]. */
static int parse_trace_report(int argc, char *const argv[], struct vmm_options *opts,
			      struct vmm_error *err)
{
	opts->command = VMM_CMD_TRACE_REPORT;
	for (int i = 2; i < argc; i++) {
		const char *arg = argv[i], *value;

		if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
			opts->command = VMM_CMD_HELP;
			return 0;
		}
		if (option_is(arg, "--png")) {
			if (!(value = option_value(argc, argv, &i, "--png")))
				return vmm_error_set(err, EINVAL, "--png needs a file name");
			opts->report_png = value;
		} else if (arg[0] == '-' && arg[1] != '\0') {
			return vmm_error_set(err, EINVAL, "unknown option '%s' (try 'umbra --help')", arg);
		} else if (opts->nr_report_traces == VMM_REPORT_TRACES_MAX) {
			return vmm_error_set(err, EINVAL, "trace-report: at most %u traces", VMM_REPORT_TRACES_MAX);
		} else {
			opts->report_traces[opts->nr_report_traces++] = arg;
		}
	}
	if (!opts->nr_report_traces)
		return vmm_error_set(err, EINVAL,
				     "trace-report: no TRACE given (usage: umbra trace-report TRACE... [--png FILE])");
	return 0;
}

int vmm_options_parse(int argc, char *const argv[], struct vmm_options *opts,
		      struct vmm_error *err)
{
	*opts = (struct vmm_options){
		.command = VMM_CMD_HELP,
		.mem = VMM_MEM_DEFAULT,
		.vcpus = 1,
		.vms = 1,
		.cmdline = "",
		.evict_pages = VMM_EVICT_PAGES_DEFAULT,
		.console = VMM_CONSOLE_ESCAPED,
		.fault_around = VMM_FAULT_AROUND_DEFAULT,
		.huge_leaves = true,
		.notifier_mode = NOTIFIER_MODE_RANGE,
		.pager = { .policy = -1, .inject_kind = -1 },
	};
	if (argc < 2)
		return vmm_error_set(err, EINVAL, "no command given (try 'umbra --help')");
	const char *cmd = argv[1];
	if (strcmp(cmd, "-h") == 0 || strcmp(cmd, "--help") == 0 || strcmp(cmd, "help") == 0) {
		opts->command = VMM_CMD_HELP;
		return argc == 2 ? 0 : vmm_error_set(err, EINVAL, "unexpected argument '%s' after %s", argv[2], cmd);
	}
	if (strcmp(cmd, "--version") == 0) {
		opts->command = VMM_CMD_VERSION;
		return argc == 2 ? 0 : vmm_error_set(err, EINVAL, "unexpected argument '%s' after %s", argv[2], cmd);
	}
	if (strcmp(cmd, "trace-report") == 0)
		return parse_trace_report(argc, argv, opts, err);
	if (strcmp(cmd, "run") != 0)
		return vmm_error_set(err, EINVAL, "unknown command '%s' (try 'umbra --help')", cmd);
	return parse_run(argc, argv, opts, err);
}
