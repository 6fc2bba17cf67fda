/*
 * umbra/trace.h - the event recorder behind `umbra run --trace FILE`: spans,
 * instants and flow events of every layer, written as Chrome trace-event
 * JSON (Perfetto and chrome://tracing open it; docs/tracing.md).
 *
 * Off (the default), a trace site costs one load of a global mask and one
 * predictable branch:
 *
 *   uint64_t t0 = umbra_trace_begin_ns(UMBRA_TRACE_FAULT);   // 0 when off
 *   ... the work ...
 *   if (t0)
 *           umbra_trace_span(UMBRA_TRACE_FAULT, "fault", t0, &(struct umbra_trace_args){
 *                   .key = { "va" }, .val = { va }, .hex = 1 });
 *
 * Built with -DUMBRA_TRACE=0 (cmake -DUMBRA_TRACE=OFF) every site compiles
 * away.  On, each thread records into its own buffer (no lock, no sharing):
 * chunks of UMBRA_TRACE_CHUNK events allocated as it fills, up to the cap
 * given to umbra_trace_init (events per thread); an event that finds its
 * thread's buffer at the cap is dropped and counted.  Nothing is written
 * until umbra_trace_write().
 *
 * Tracks.  An event is drawn on the track of the thread that records it:
 * process @pid, thread @tid as the thread set them (umbra_trace_thread_set;
 * by default process 0, "umbra", and the kernel thread id).  The VMM gives
 * each VM a process (its trace id) and each vCPU thread a thread in it.
 *
 * Invalidations.  umbra_trace_invalidation_begin/end bracket one
 * invalidation on the thread that issues it (the notifier library does);
 * meanwhile umbra_trace_current_invalidation() names it, so that what runs
 * inside (subscriber callbacks, TLB shootdown requests) can name it in an
 * "inv" argument.
 *
 * Thread safety: every function may be called from any thread, under any
 * lock (no function here takes a lock or blocks), except umbra_trace_init,
 * umbra_trace_write and umbra_trace_exit, which the program calls while no
 * other thread records (before its threads start, after they stopped).
 */
#ifndef UMBRA_TRACE_H
#define UMBRA_TRACE_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#ifndef UMBRA_TRACE
#define UMBRA_TRACE 1
#endif

/* What an event is about; --trace-events selects kinds by these names. */
enum umbra_trace_kind {
	UMBRA_TRACE_FAULT,	/* "fault": shadow faults (span: address, access, outcome) */
	UMBRA_TRACE_INVALIDATE,	/* "invalidate": invalidations, start to end (B/E span) */
	UMBRA_TRACE_CALLBACK,	/* "callback": subscriber callbacks (span naming the VM) */
	UMBRA_TRACE_FLUSH,	/* "flush": pmd-rmap remote flushes of a VM's vCPUs */
	UMBRA_TRACE_SHOOTDOWN,	/* "shootdown": requests, NMI injections, acks (flows) */
	UMBRA_TRACE_SWAP,	/* "swap": swap-outs and swap-ins */
	UMBRA_TRACE_CLONE,	/* "clone": VM clones, table privatizations, COW breaks */
	UMBRA_TRACE_KIND_NR,
};

#define UMBRA_TRACE_ALL ((1u << UMBRA_TRACE_KIND_NR) - 1)
#define UMBRA_TRACE_CHUNK 4096u		/* events per allocation of a thread's buffer */
#define UMBRA_TRACE_DEFAULT_CAP 262144u	/* events per thread unless told */
#define UMBRA_TRACE_MAX_ARGS 4

/* Static name of @kind ("fault", ...), "?" if out of range. */
const char *umbra_trace_kind_name(enum umbra_trace_kind kind);

/*
 * The mask of kinds named by @list, a comma-separated list of kind names
 * or "all", in *@mask.  0, or -EINVAL naming nothing known (*@bad points at
 * the first unknown name, if @bad).
 */
int umbra_trace_parse_kinds(const char *list, unsigned int *mask, const char **bad);

/* The arguments of an event: up to UMBRA_TRACE_MAX_ARGS numbers named by
 * static strings (bit i of @hex: print val[i] as a "0x..." string), and up to
 * two static strings. */
struct umbra_trace_args {
	const char *key[UMBRA_TRACE_MAX_ARGS];
	uint64_t val[UMBRA_TRACE_MAX_ARGS];
	unsigned int hex;
	const char *skey[2];
	const char *sval[2];
};

/* The recorded kinds (atomic); read by umbra_trace_on. */
extern unsigned int umbra_trace_mask;

/* Is @kind recorded?  One load and one predictable branch. */
static inline bool umbra_trace_on(enum umbra_trace_kind kind)
{
#if UMBRA_TRACE
	return __builtin_expect((__atomic_load_n(&umbra_trace_mask, __ATOMIC_RELAXED) >> kind) & 1,
				0);
#else
	(void)kind;
	return false;
#endif
}

/* Is any kind recorded? */
static inline bool umbra_trace_active(void)
{
	return UMBRA_TRACE && __atomic_load_n(&umbra_trace_mask, __ATOMIC_RELAXED) != 0;
}

/* CLOCK_MONOTONIC in ns (never 0). */
uint64_t umbra_trace_now_ns(void);

/* The start time of a span of @kind: umbra_trace_now_ns() if @kind is
 * recorded, else 0 (then record nothing at its end). */
static inline uint64_t umbra_trace_begin_ns(enum umbra_trace_kind kind)
{
	return umbra_trace_on(kind) ? umbra_trace_now_ns() : 0;
}

/*
 * Starts recording the kinds of @mask, with at most @cap events per thread
 * (0: UMBRA_TRACE_DEFAULT_CAP).  Timestamps in the file count from here.
 * Not while threads record.  0, or -EINVAL (@mask empty).
 */
int umbra_trace_init(unsigned int mask, uint64_t cap);

/* Sets the calling thread's track: process @pid, thread @tid, named
 * @thread_name (copied).  Before its first event, or its events move. */
void umbra_trace_thread_set(uint32_t pid, uint32_t tid, const char *thread_name);

/* Names the calling thread @thread_name (copied) on the host's track
 * (process 0, its kernel thread id). */
void umbra_trace_thread_name(const char *thread_name);

/* Names process @pid (copied); the last name given wins.  -ENOMEM. */
int umbra_trace_process_name(uint32_t pid, const char *name);

/* A complete span of @kind from @t0 (umbra_trace_begin_ns) to now, named
 * @name (static), with @args (may be NULL). */
void umbra_trace_span(enum umbra_trace_kind kind, const char *name, uint64_t t0,
		      const struct umbra_trace_args *args);

/* An instant event of @kind now. */
void umbra_trace_instant(enum umbra_trace_kind kind, const char *name,
			 const struct umbra_trace_args *args);

/* A flow event (id @id; the events of one flow share @name) at time @t
 * (0: now): 's' starts a flow inside the span of this thread that encloses
 * @t, 't' steps through one, 'f' finishes it in one. */
void umbra_trace_flow(enum umbra_trace_kind kind, const char *name, char phase, uint64_t id,
		      uint64_t t);

/*
 * The invalidation bracket (kind UMBRA_TRACE_INVALIDATE), on the thread
 * that issues it: begin returns its id (0 if not recorded: the kind is off,
 * or the thread's buffer has no room for the begin and its end), which the
 * matching end takes; every recorded begin has room kept for its end.
 * Between them umbra_trace_current_invalidation() returns the id (nested
 * brackets: the innermost).  @args: the begin's.
 */
uint64_t umbra_trace_invalidation_begin(const struct umbra_trace_args *args);
void umbra_trace_invalidation_end(uint64_t id, const struct umbra_trace_args *args);
uint64_t umbra_trace_current_invalidation(void);

/* Totals so far: events recorded, events dropped (buffers at their cap),
 * threads that recorded. */
struct umbra_trace_totals {
	uint64_t events, dropped, threads;
};
void umbra_trace_totals(struct umbra_trace_totals *t);

/*
 * Writes every recorded event as Chrome trace-event JSON to @f
 * ({"traceEvents": [...], "otherData": {...}} with the totals, the cap and
 * the kinds), process and thread names as metadata events.  Not while
 * threads record.  0 or -errno (a write error).
 */
int umbra_trace_write(FILE *f);

/* Stops recording and frees every buffer.  Not while threads record. */
void umbra_trace_exit(void);

#endif /* UMBRA_TRACE_H */
