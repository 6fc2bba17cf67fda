/*
 * hello: every vCPU greets; vCPU 0 waits for all, checks the boot block and
 * exits with the code given as "exit=N" on the command line (default 0).
 * With "uart" on the command line it also prints a line byte by byte through
 * the UART port instead of the console-write hypercall.
 */
#include "guest.h"

static int parse_exit_code(const char *cmdline)
{
	int code = 0;

	for (const char *p = cmdline; *p; p++) {
		if ((p == cmdline || p[-1] == ' ') && p[0] == 'e' && p[1] == 'x' && p[2] == 'i' &&
		    p[3] == 't' && p[4] == '=') {
			code = 0;
			for (p += 5; *p >= '0' && *p <= '9'; p++)
				code = code * 10 + (*p - '0');
			break;
		}
	}
	return code;
}

int main(const struct umbra_boot_info *boot)
{
	printf("hello from vCPU %u of %u (abi %u, %lu MiB RAM)\n", boot->vcpu_id, boot->nr_vcpus,
	       boot->abi_version, (unsigned long)(boot->ram_size >> 20));
	vcpu_barrier(boot);
	if (boot->vcpu_id != 0)
		return 0;
	if (boot->free_start >= boot->free_end || boot->stack_top > boot->ram_size) {
		printf("hello: inconsistent boot info: free %#lx..%#lx stack top %#lx ram %#lx\n",
		       (unsigned long)boot->free_start, (unsigned long)boot->free_end,
		       (unsigned long)boot->stack_top, (unsigned long)boot->ram_size);
		return 1;
	}
	printf("hello: all %u vCPUs checked in\n", boot->nr_vcpus);
	for (const char *p = boot->cmdline; *p; p++) {
		if ((p == boot->cmdline || p[-1] == ' ') && memcmp(p, "uart", 4) == 0 && (p[4] == ' ' || !p[4])) {
			for (const char *m = "hello through the UART\n"; *m; m++)
				console_putc(*m);
		}
	}
	return parse_exit_code(boot->cmdline);
}
