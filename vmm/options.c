/*
 * The umbra command line.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "umbra_abi.h"
#include "vmm.h"

const char vmm_usage[] =
	"usage: umbra run IMAGE [--mem SIZE] [--vcpus N] [--cmdline STRING] [--stats]\n"
	"       umbra --help | --version\n"
	"\n"
	"Runs the freestanding x86-64 ELF64 guest IMAGE in a KVM virtual machine,\n"
	"entered directly in 64-bit long mode (see docs/abi.md for the boot state\n"
	"and the hypercall interface).\n"
	"\n"
	"options of run:\n"
	"  --mem SIZE        guest RAM, a multiple of 2 MiB from 4M to 64G, with an\n"
	"                    optional K, M or G suffix (binary units); default 64M\n"
	"  --vcpus N         number of vCPUs, 1 to 64; default 1\n"
	"  --cmdline STRING  passed to the guest in its boot information block\n"
	"                    (at most 255 bytes)\n"
	"  --stats           print the VM's KVM exits by reason when it stops\n"
	"  -h, --help        this text\n"
	"  --version         umbra's version and guest ABI version\n"
	"\n"
	"exit status: the guest's exit code (0-119) when it exits through the exit\n"
	"hypercall; 120 guest error (unexpected exception, triple fault, bad\n"
	"hypercall, failed VM entry, all vCPUs halted); 121 image missing or\n"
	"malformed; 122 KVM unavailable or failing; 123 bad command line.\n"
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

/* Returns the value of option argv[*i] (either "--opt=value" or "--opt value"),
 * advancing *i past a separate value; NULL if the value is missing. */
static const char *option_value(int argc, char *const argv[], int *i, size_t name_len)
{
	const char *arg = argv[*i];

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

int vmm_options_parse(int argc, char *const argv[], struct vmm_options *opts,
		      struct vmm_error *err)
{
	*opts = (struct vmm_options){
		.command = VMM_CMD_HELP,
		.mem = VMM_MEM_DEFAULT,
		.vcpus = 1,
		.cmdline = "",
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
	if (strcmp(cmd, "run") != 0)
		return vmm_error_set(err, EINVAL, "unknown command '%s' (try 'umbra --help')", cmd);
	opts->command = VMM_CMD_RUN;

	for (int i = 2; i < argc; i++) {
		const char *arg = argv[i];
		const char *value;
		unsigned long n;

		if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
			opts->command = VMM_CMD_HELP;
			return 0;
		} else if (option_is(arg, "--mem")) {
			if (!(value = option_value(argc, argv, &i, 5)))
				return vmm_error_set(err, EINVAL, "--mem needs a size, e.g. --mem 64M");
			uint64_t mem;
			if (vmm_parse_size(value, &mem))
				return vmm_error_set(err, EINVAL, "--mem '%s': not a size (use e.g. 64M or 1G)", value);
			if (mem < VMM_MEM_MIN || mem > VMM_MEM_MAX || mem % VMM_MEM_ALIGN)
				return vmm_error_set(err, EINVAL,
						     "--mem '%s': must be a multiple of 2M from 4M to 64G", value);
			opts->mem = mem;
		} else if (option_is(arg, "--vcpus")) {
			if (!(value = option_value(argc, argv, &i, 7)))
				return vmm_error_set(err, EINVAL, "--vcpus needs a number");
			if (parse_uint(value, UMBRA_MAX_VCPUS, &n) || n == 0)
				return vmm_error_set(err, EINVAL, "--vcpus '%s': must be a number from 1 to %u",
						     value, UMBRA_MAX_VCPUS);
			opts->vcpus = (unsigned int)n;
		} else if (option_is(arg, "--cmdline")) {
			if (!(value = option_value(argc, argv, &i, 9)))
				return vmm_error_set(err, EINVAL, "--cmdline needs a string");
			if (strlen(value) >= UMBRA_CMDLINE_MAX)
				return vmm_error_set(err, EINVAL, "--cmdline: %zu bytes, at most %u allowed",
						     strlen(value), UMBRA_CMDLINE_MAX - 1);
			opts->cmdline = value;
		} else if (strcmp(arg, "--stats") == 0) {
			opts->stats = true;
		} else if (arg[0] == '-' && arg[1] != '\0') {
			return vmm_error_set(err, EINVAL, "unknown option '%s' (try 'umbra --help')", arg);
		} else if (opts->image) {
			return vmm_error_set(err, EINVAL, "unexpected argument '%s': image already given as '%s'",
					     arg, opts->image);
		} else {
			opts->image = arg;
		}
	}
	if (!opts->image)
		return vmm_error_set(err, EINVAL, "run: no IMAGE given (usage: umbra run IMAGE [options])");
	if (opts->mem - (uint64_t)opts->vcpus * UMBRA_VCPU_STACK_SIZE < 2 * UMBRA_IMAGE_MIN_GPA)
		return vmm_error_set(err, EINVAL, "--mem %" PRIu64 "M is too small for %u vCPUs (each has a %u KiB stack)",
				     opts->mem >> 20, opts->vcpus, UMBRA_VCPU_STACK_SIZE >> 10);
	return 0;
}
