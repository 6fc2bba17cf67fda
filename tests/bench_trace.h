/*
 * The cost of tracing, for benchmarks that link the umbra libraries.
 */
#ifndef UMBRA_BENCH_TRACE_H
#define UMBRA_BENCH_TRACE_H

#include <stdio.h>
#include <stdlib.h>

#include "umbra/trace.h"

/*
 * UMBRA_BENCH_TRACE=LIST in the environment (kinds, as umbra's
 * --trace-events): the benchmark runs with those kinds recorded (at most
 * BENCH_TRACE_CAP events per thread), as `umbra run --trace` would, and
 * bench_trace_finish writes the trace to /dev/null and says on stderr how
 * many events it held.  scripts/bench-trace uses it for the cost of tracing.
 */
#define BENCH_TRACE_CAP (4u << 20)

static inline void bench_trace_start(void)
{
	const char *list = getenv("UMBRA_BENCH_TRACE");
	unsigned int mask;

	if (!list || !*list)
		return;
	if (umbra_trace_parse_kinds(list, &mask, NULL) || umbra_trace_init(mask, BENCH_TRACE_CAP)) {
		fprintf(stderr, "UMBRA_BENCH_TRACE='%s': not a list of trace kinds\n", list);
		exit(2);
	}
}

static inline void bench_trace_finish(void)
{
	struct umbra_trace_totals t;
	FILE *f;

	if (!umbra_trace_active())
		return;
	umbra_trace_totals(&t);
	f = fopen("/dev/null", "w");
	if (!f || umbra_trace_write(f)) {
		perror("writing the trace to /dev/null");
		exit(1);
	}
	fclose(f);
	fprintf(stderr, "trace: %llu events of %llu threads, %llu dropped\n", (unsigned long long)t.events,
		(unsigned long long)t.threads, (unsigned long long)t.dropped);
	umbra_trace_exit();
}

#endif /* UMBRA_BENCH_TRACE_H */
