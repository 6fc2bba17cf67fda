/*
 * hello: every vCPU greets; vCPU 0 waits for all, checks the boot block and
 * exits with the code given as "exit=N" on the command line (default 0).
 * With "uart" on the command line it also prints a line byte by byte through
 * the UART port instead of the console-write hypercall. With "esc" it prints
 * a line of terminal controls and other bytes that are not printable ASCII
 * (an ANSI colour sequence, a backslash, tab, NUL, DEL, UTF-8, CR), which
 * umbra's console must escape unless --console raw.
 */
#include "guest.h"

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
	char flag[2];
	if (cmdline_get(boot->cmdline, "uart", flag, sizeof(flag)))
		for (const char *m = "hello through the UART\n"; *m; m++)
			console_putc(*m);
	if (cmdline_get(boot->cmdline, "esc", flag, sizeof(flag))) {
		static const char esc[] = "esc: \x1b[31mred\x1b[0m a\\b\tc \x00 \x7f \xc3\xa9 \r\n";
		console_write(esc, sizeof(esc) - 1);
	}
	return (int)cmdline_u64(boot->cmdline, "exit", 0);
}
