/*
 * hotcold: a small hot set touched constantly and a large cold set touched
 * once per round, the working set that aging must tell apart (the KVM suite
 * kvm_pager compares the pager's reclaim policies with it).
 *
 *   hot=SEG     the hot set: all of writable segment SEG
 *   cold=N      the cold set: N MiB of free RAM (default: all of it)
 *   rounds=R    passes over the cold set (default 8)
 *   every=K     the whole hot set is touched after every K cold pages
 *               (default 16)
 *
 * The hot set lives in a segment of its own so that the pager's statistics
 * of that memory object are the hot set's alone. Every touch reads the word
 * that the previous touch of the page wrote and writes the next one, so a
 * page that came back with the wrong content (lost, or zero-filled) is
 * seen: the guest prints where and exits 1.
 */
#include "guest.h"

#define PAGE 4096ull

static uint64_t cold_value(uint64_t addr, uint64_t round)
{
	return (addr * 0x9e3779b97f4a7c15ull) ^ (round << 48) ^ 0xc01dc01dc01dc01dull;
}

/* Touches every page of the hot set once: each holds how many sweeps it
 * has seen (the first word, offset by the page's address). */
static int hot_sweep(uint64_t base, uint64_t size, uint64_t sweeps)
{
	for (uint64_t a = base; a < base + size; a += PAGE) {
		volatile uint64_t *w = (volatile uint64_t *)a;
		uint64_t want = sweeps ? a + sweeps : 0;

		if (*w != want) {
			printf("hotcold: hot page %#lx after %lu sweeps: expected %#lx, got %#lx\n", (unsigned long)a,
			       (unsigned long)sweeps, (unsigned long)want, (unsigned long)*w);
			return -1;
		}
		*w = a + sweeps + 1;
	}
	return 0;
}

/* Round @round over the cold set: each page's word checked against the
 * previous round's value and rewritten; the hot set swept every @every
 * pages. Returns 0 or -1 (printed). */
static int cold_round(uint64_t lo, uint64_t hi, uint64_t round, const struct umbra_segment_info *hot,
		      uint64_t every, uint64_t *sweeps)
{
	uint64_t n = 0;

	for (uint64_t a = lo; a < hi; a += PAGE) {
		volatile uint64_t *w = (volatile uint64_t *)a;
		uint64_t want = round ? cold_value(a, round - 1) : 0;

		if (*w != want) {
			printf("hotcold: cold page %#lx in round %lu: expected %#lx, got %#lx\n", (unsigned long)a,
			       (unsigned long)round, (unsigned long)want, (unsigned long)*w);
			return -1;
		}
		*w = cold_value(a, round);
		if (++n % every == 0) {
			if (hot_sweep(hot->gpa, hot->size, *sweeps))
				return -1;
			++*sweeps;
		}
	}
	return 0;
}

int main(const struct umbra_boot_info *boot)
{
	const struct umbra_segment_info *hot;
	uint64_t lo = (boot->free_start + PAGE - 1) & ~(PAGE - 1);
	uint64_t avail = boot->free_end - lo, sweeps = 0;

	if (boot->vcpu_id != 0)
		return 0;
	if (!(hot = cmdline_segment(boot, "hotcold", "hot")))
		return 2;
	if (!(hot->flags & UMBRA_SEGMENT_WRITABLE)) {
		printf("hotcold: segment '%s' is not writable\n", hot->name);
		return 2;
	}
	uint64_t bytes = cmdline_u64(boot->cmdline, "cold", avail >> 20) << 20;
	uint64_t rounds = cmdline_u64(boot->cmdline, "rounds", 8);
	uint64_t every = cmdline_u64(boot->cmdline, "every", 16);
	if (bytes == 0 || bytes > avail || every == 0) {
		printf("hotcold: cold=%lu MiB every=%lu: only %lu MiB free\n", (unsigned long)(bytes >> 20),
		       (unsigned long)every, (unsigned long)(avail >> 20));
		return 2;
	}
	for (uint64_t r = 0; r < rounds; r++)
		if (cold_round(lo, lo + bytes, r, hot, every, &sweeps))
			return 1;
	printf("hotcold: hot %lu KiB x %lu sweeps, cold %lu MiB x %lu rounds: ok\n", (unsigned long)(hot->size >> 10),
	       (unsigned long)sweeps, (unsigned long)(bytes >> 20), (unsigned long)rounds);
	return 0;
}
