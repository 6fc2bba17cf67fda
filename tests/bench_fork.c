/*
 * bench-fork: Linux fork() of a process with MIB MiB of private memory
 * touched, RUNS times: the baseline of scripts/bench-clone, which runs it
 * where umbra runs (in the KVM sandbox where there is no /dev/kvm).
 *
 *   bench-fork MIB [RUNS]
 *
 * Prints "FORK MIB median_ns min_ns max_ns".
 */
#define BENCH_NAME "bench-fork"
#include "bench_util.h"

int main(int argc, char **argv)
{
	uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 0) : 64;
	int runs = argc > 2 ? atoi(argv[2]) : 5;
	double t[64];

	if (mib == 0 || runs < 1 || runs > 64) {
		fprintf(stderr, "usage: bench-fork MIB [RUNS (1..64)]\n");
		return 2;
	}
	void *mem = bench_touched(mib << 20);
	for (int i = 0; i < runs; i++)
		t[i] = bench_fork_ns();
	double lo = t[0], hi = t[0];
	for (int i = 1; i < runs; i++) {
		lo = t[i] < lo ? t[i] : lo;
		hi = t[i] > hi ? t[i] : hi;
	}
	printf("FORK %llu %.0f %.0f %.0f\n", (unsigned long long)mib, median(t, runs), lo, hi);
	munmap(mem, mib << 20);
	return 0;
}
