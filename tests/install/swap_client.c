/*
 * A program built outside the tree against the installed pager library
 * (pkg-config --cflags --libs umbra-pager): it writes two pages to a
 * temporary swap file in one batch, reads them back, and checks their
 * content and the swap's counters.  Exit status 0 when all holds.
 */
#include <stdio.h>
#include <string.h>

#include <umbra/pager.h>

int main(void)
{
	struct pager_swap_config cfg = { .nr_slots = 16 };
	static unsigned char out[2][PAGER_SLOT_SIZE], in[2][PAGER_SLOT_SIZE];
	struct pager_io ios[2];
	struct pager_swap_stats st;
	struct pager_swap *swap;
	int ret;

	if ((ret = pager_swap_create(&cfg, &swap)) != 0) {
		fprintf(stderr, "pager_swap_create: %d\n", ret);
		return 1;
	}
	memset(out[0], 0x11, sizeof(out[0]));
	memset(out[1], 0x22, sizeof(out[1]));
	for (int i = 0; i < 2; i++) {
		if (pager_swap_alloc(swap, &ios[i].slot) != 0)
			return 1;
		ios[i].buf = out[i];
	}
	ret = pager_swap_write(swap, ios, 2);
	for (int i = 0; i < 2 && ret == 0; i++)
		ios[i].buf = in[i];
	if (ret == 0)
		ret = pager_swap_read(swap, ios, 2);
	pager_swap_stats(swap, &st);
	pager_swap_destroy(swap);
	if (ret != 0 || memcmp(in, out, sizeof(in)) != 0 || st.writes != 2 || st.reads != 2) {
		fprintf(stderr, "swap round trip failed: %d, %llu writes, %llu reads\n", ret,
			(unsigned long long)st.writes, (unsigned long long)st.reads);
		return 1;
	}
	printf("swap: 2 pages written and read back in one batch each\n");
	return 0;
}
