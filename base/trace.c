/*
 * The event recorder (umbra/trace.h): per-thread buffers of fixed-size
 * events, found at the end through a lock-free list, written as Chrome
 * trace-event JSON.
 *
 * A thread's buffer is written by its thread only; its count is published
 * with a release store after each event, so the writer (which runs once
 * the threads stopped recording) reads only whole events.  Buffers are
 * pushed onto a global list with compare-and-exchange and never leave it
 * before umbra_trace_exit, which bumps a generation so that a thread that
 * still holds a freed buffer takes a new one.  No function takes a lock.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "umbra/trace.h"

unsigned int umbra_trace_mask;

struct trace_event {
	uint64_t ts;			/* ns since umbra_trace_init */
	uint64_t dur;			/* 'X' */
	uint64_t id;			/* flows; invalidation id of 'B'/'E' */
	const char *name;
	struct umbra_trace_args args;
	uint8_t kind;
	char ph;			/* 'X', 'i', 'B', 'E', 's', 't', 'f' */
	bool has_args;
};

#define NAME_MAX_LEN 64

struct trace_buf {
	struct trace_buf *next;		/* the global list; set before the push */
	uint64_t count;			/* events written (atomic: release by its thread) */
	uint64_t reserved;		/* slots kept for the ends of open begins (its thread) */
	uint64_t dropped;		/* atomic (its thread writes) */
	uint32_t pid, tid;
	char thread_name[NAME_MAX_LEN];
	struct trace_event **chunks;	/* [cap / UMBRA_TRACE_CHUNK rounded up] */
};

struct trace_process {
	struct trace_process *next;
	uint32_t pid;
	char name[NAME_MAX_LEN];
};

static struct {
	uint64_t cap;			/* events per thread */
	uint64_t t0;			/* umbra_trace_init's time */
	uint64_t gen;			/* atomic: bumped by umbra_trace_exit */
	uint64_t next_invalidation;	/* atomic */
	struct trace_buf *bufs;		/* atomic head of the list */
	struct trace_process *procs;	/* atomic head of the list */
} trace = { .gen = 1 };

static __thread struct trace_buf *tls_buf;
static __thread uint64_t tls_gen;
static __thread uint32_t tls_pid, tls_tid;
static __thread bool tls_track_set;
static __thread char tls_thread_name[NAME_MAX_LEN];
static __thread uint64_t tls_invalidation[8];	/* innermost last */
static __thread unsigned int tls_depth;

static const char *const kind_names[UMBRA_TRACE_KIND_NR] = {
	[UMBRA_TRACE_FAULT] = "fault",	       [UMBRA_TRACE_INVALIDATE] = "invalidate",
	[UMBRA_TRACE_CALLBACK] = "callback",   [UMBRA_TRACE_FLUSH] = "flush",
	[UMBRA_TRACE_SHOOTDOWN] = "shootdown", [UMBRA_TRACE_SWAP] = "swap",
	[UMBRA_TRACE_CLONE] = "clone",
};

const char *umbra_trace_kind_name(enum umbra_trace_kind kind)
{
	return (unsigned int)kind < UMBRA_TRACE_KIND_NR ? kind_names[kind] : "?";
}

int umbra_trace_parse_kinds(const char *list, unsigned int *mask, const char **bad)
{
	unsigned int m = 0;
	const char *p = list;

	while (*p) {
		size_t len = strcspn(p, ",");
		unsigned int k;

		if (len == 3 && !strncmp(p, "all", 3)) {
			m |= UMBRA_TRACE_ALL;
		} else {
			for (k = 0; k < UMBRA_TRACE_KIND_NR; k++)
				if (strlen(kind_names[k]) == len && !strncmp(p, kind_names[k], len))
					break;
			if (k == UMBRA_TRACE_KIND_NR) {
				if (bad)
					*bad = p;
				return -EINVAL;
			}
			m |= 1u << k;
		}
		p += len;
		if (*p == ',')
			p++;
	}
	if (!m) {
		if (bad)
			*bad = list;
		return -EINVAL;
	}
	*mask = m;
	return 0;
}

uint64_t umbra_trace_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + 1;
}

int umbra_trace_init(unsigned int mask, uint64_t cap)
{
	if (!(mask & UMBRA_TRACE_ALL))
		return -EINVAL;
	trace.cap = cap ? cap : UMBRA_TRACE_DEFAULT_CAP;
	trace.t0 = umbra_trace_now_ns();
	__atomic_store_n(&umbra_trace_mask, mask & UMBRA_TRACE_ALL, __ATOMIC_RELEASE);
	return 0;
}

/* Copies NUL-terminated @src into @dst (NAME_MAX_LEN bytes), cut short. */
static void copy_name(char *dst, const char *src)
{
	snprintf(dst, NAME_MAX_LEN, "%s", src);
}

void umbra_trace_thread_set(uint32_t pid, uint32_t tid, const char *thread_name)
{
	tls_pid = pid;
	tls_tid = tid;
	tls_track_set = true;
	copy_name(tls_thread_name, thread_name);
	if (tls_buf && tls_gen == __atomic_load_n(&trace.gen, __ATOMIC_ACQUIRE)) {
		tls_buf->pid = pid;
		tls_buf->tid = tid;
		copy_name(tls_buf->thread_name, thread_name);
	}
}

void umbra_trace_thread_name(const char *thread_name)
{
	umbra_trace_thread_set(0, (uint32_t)syscall(SYS_gettid), thread_name);
}

int umbra_trace_process_name(uint32_t pid, const char *name)
{
	struct trace_process *p = calloc(1, sizeof(*p));

	if (!p)
		return -ENOMEM;
	p->pid = pid;
	copy_name(p->name, name);
	p->next = __atomic_load_n(&trace.procs, __ATOMIC_ACQUIRE);
	while (!__atomic_compare_exchange_n(&trace.procs, &p->next, p, true, __ATOMIC_RELEASE,
					    __ATOMIC_ACQUIRE))
		;
	return 0;
}

/* The calling thread's buffer, made on its first event (NULL: no memory). */
static struct trace_buf *this_buf(void)
{
	const uint64_t gen = __atomic_load_n(&trace.gen, __ATOMIC_ACQUIRE);
	struct trace_buf *b;

	if (tls_buf && tls_gen == gen)
		return tls_buf;
	b = calloc(1, sizeof(*b));
	if (!b)
		return NULL;
	b->chunks = calloc(trace.cap / UMBRA_TRACE_CHUNK + 1, sizeof(*b->chunks));
	if (!b->chunks) {
		free(b);
		return NULL;
	}
	if (!tls_track_set) {
		tls_pid = 0;
		tls_tid = (uint32_t)syscall(SYS_gettid);
		copy_name(tls_thread_name, "thread");
		tls_track_set = true;
	}
	b->pid = tls_pid;
	b->tid = tls_tid;
	copy_name(b->thread_name, tls_thread_name);
	b->next = __atomic_load_n(&trace.bufs, __ATOMIC_ACQUIRE);
	while (!__atomic_compare_exchange_n(&trace.bufs, &b->next, b, true, __ATOMIC_RELEASE,
					    __ATOMIC_ACQUIRE))
		;
	tls_buf = b;
	tls_gen = gen;
	return b;
}

#define CHUNK_BYTES (UMBRA_TRACE_CHUNK * sizeof(struct trace_event))

/* Is there a chunk for event @i of @b (allocated here if not)?  A chunk is
 * mapped populated: its pages are faulted in by one system call, not one
 * page fault per 30 events on the recording path. */
static bool chunk_ready(struct trace_buf *b, uint64_t i)
{
	struct trace_event **c = &b->chunks[i / UMBRA_TRACE_CHUNK];

	if (!*c) {
		void *p = mmap(NULL, CHUNK_BYTES, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);

		*c = p == MAP_FAILED ? NULL : p;
	}
	return *c != NULL;
}

/* A slot for one event in the calling thread's buffer, @extra more slots
 * left free beyond it (kept for ends), or NULL (counted as dropped). */
static struct trace_event *slot_get(struct trace_buf **bp, uint64_t extra)
{
	struct trace_buf *b = this_buf();
	uint64_t i;

	*bp = b;
	if (!b)
		return NULL;
	i = b->count;
	if (i + b->reserved + extra + 1 > trace.cap || !chunk_ready(b, i) ||
	    !chunk_ready(b, i + b->reserved + extra)) {
		__atomic_store_n(&b->dropped, b->dropped + 1, __ATOMIC_RELAXED);
		return NULL;
	}
	return &b->chunks[i / UMBRA_TRACE_CHUNK][i % UMBRA_TRACE_CHUNK];
}

static void slot_publish(struct trace_buf *b)
{
	__atomic_store_n(&b->count, b->count + 1, __ATOMIC_RELEASE);
}

static void event_fill(struct trace_event *e, enum umbra_trace_kind kind, char ph, const char *name,
		       uint64_t t0, uint64_t t1, uint64_t id, const struct umbra_trace_args *args)
{
	e->ts = t0 > trace.t0 ? t0 - trace.t0 : 0;
	e->dur = t1 > t0 ? t1 - t0 : 0;
	e->id = id;
	e->name = name;
	e->kind = (uint8_t)kind;
	e->ph = ph;
	e->has_args = args != NULL;
	if (args)
		e->args = *args;
}

static void record(enum umbra_trace_kind kind, char ph, const char *name, uint64_t t0,
		   uint64_t t1, uint64_t id, const struct umbra_trace_args *args)
{
	struct trace_buf *b;
	struct trace_event *e = slot_get(&b, 0);

	if (!e)
		return;
	event_fill(e, kind, ph, name, t0, t1, id, args);
	slot_publish(b);
}

void umbra_trace_span(enum umbra_trace_kind kind, const char *name, uint64_t t0,
		      const struct umbra_trace_args *args)
{
	if (umbra_trace_on(kind))
		record(kind, 'X', name, t0, umbra_trace_now_ns(), 0, args);
}

void umbra_trace_instant(enum umbra_trace_kind kind, const char *name,
			 const struct umbra_trace_args *args)
{
	if (umbra_trace_on(kind)) {
		uint64_t now = umbra_trace_now_ns();

		record(kind, 'i', name, now, now, 0, args);
	}
}

void umbra_trace_flow(enum umbra_trace_kind kind, const char *name, char phase, uint64_t id,
		      uint64_t t)
{
	if (umbra_trace_on(kind)) {
		if (!t)
			t = umbra_trace_now_ns();
		record(kind, phase, name, t, t, id, NULL);
	}
}

uint64_t umbra_trace_invalidation_begin(const struct umbra_trace_args *args)
{
	struct trace_buf *b;
	struct trace_event *e;
	uint64_t id, now;

	if (!umbra_trace_on(UMBRA_TRACE_INVALIDATE) ||
	    tls_depth == sizeof(tls_invalidation) / sizeof(tls_invalidation[0]))
		return 0;
	e = slot_get(&b, 1);
	if (!e)
		return 0;
	id = __atomic_add_fetch(&trace.next_invalidation, 1, __ATOMIC_RELAXED);
	now = umbra_trace_now_ns();
	event_fill(e, UMBRA_TRACE_INVALIDATE, 'B', "invalidate", now, now, id, args);
	b->reserved++;
	slot_publish(b);
	tls_invalidation[tls_depth++] = id;
	return id;
}

void umbra_trace_invalidation_end(uint64_t id, const struct umbra_trace_args *args)
{
	struct trace_buf *b;
	struct trace_event *e;
	uint64_t now;

	if (!id)
		return;
	if (tls_depth && tls_invalidation[tls_depth - 1] == id)
		tls_depth--;
	b = tls_buf;
	if (!b || tls_gen != __atomic_load_n(&trace.gen, __ATOMIC_ACQUIRE) || !b->reserved)
		return; /* the trace ended in between */
	b->reserved--;
	e = slot_get(&b, 0); /* the kept slot: cannot fail */
	if (!e)
		return;
	now = umbra_trace_now_ns();
	event_fill(e, UMBRA_TRACE_INVALIDATE, 'E', "invalidate", now, now, id, args);
	slot_publish(b);
}

uint64_t umbra_trace_current_invalidation(void)
{
	return tls_depth ? tls_invalidation[tls_depth - 1] : 0;
}

void umbra_trace_totals(struct umbra_trace_totals *t)
{
	*t = (struct umbra_trace_totals){ 0 };
	for (struct trace_buf *b = __atomic_load_n(&trace.bufs, __ATOMIC_ACQUIRE); b; b = b->next) {
		t->events += __atomic_load_n(&b->count, __ATOMIC_ACQUIRE);
		t->dropped += __atomic_load_n(&b->dropped, __ATOMIC_RELAXED);
		t->threads++;
	}
}

/* ---- the JSON -------------------------------------------------------------- */

static void put_string(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20 || c >= 0x7f)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

static void put_us(FILE *f, const char *key, uint64_t ns)
{
	fprintf(f, ",\"%s\":%" PRIu64 ".%03" PRIu64, key, ns / 1000, ns % 1000);
}

static void put_args(FILE *f, const struct trace_event *e)
{
	const struct umbra_trace_args *a = &e->args;
	bool first = true;

	fputs(",\"args\":{", f);
	if (e->ph == 'B' || e->ph == 'E') {
		fprintf(f, "\"inv\":%" PRIu64, e->id);
		first = false;
	}
	for (unsigned int i = 0; e->has_args && i < UMBRA_TRACE_MAX_ARGS; i++) {
		if (!a->key[i])
			continue;
		fprintf(f, "%s\"%s\":", first ? "" : ",", a->key[i]);
		if (a->hex >> i & 1)
			fprintf(f, "\"0x%" PRIx64 "\"", a->val[i]);
		else
			fprintf(f, "%" PRIu64, a->val[i]);
		first = false;
	}
	for (unsigned int i = 0; e->has_args && i < 2; i++) {
		if (!a->skey[i] || !a->sval[i])
			continue;
		fprintf(f, "%s\"%s\":", first ? "" : ",", a->skey[i]);
		put_string(f, a->sval[i]);
		first = false;
	}
	fputc('}', f);
}

static void put_event(FILE *f, const struct trace_buf *b, const struct trace_event *e)
{
	fprintf(f, ",\n{\"ph\":\"%c\",\"name\":", e->ph);
	put_string(f, e->name);
	fprintf(f, ",\"cat\":\"%s\",\"pid\":%" PRIu32 ",\"tid\":%" PRIu32,
		umbra_trace_kind_name((enum umbra_trace_kind)e->kind), b->pid, b->tid);
	put_us(f, "ts", e->ts);
	switch (e->ph) {
	case 'X':
		put_us(f, "dur", e->dur);
		break;
	case 'i':
		fputs(",\"s\":\"t\"", f);
		break;
	case 's':
		fprintf(f, ",\"id\":%" PRIu64, e->id);
		break;
	case 't':
	case 'f':
		fprintf(f, ",\"id\":%" PRIu64 ",\"bp\":\"e\"", e->id);
		break;
	default:
		break;
	}
	if (e->has_args || e->ph == 'B' || e->ph == 'E')
		put_args(f, e);
	fputc('}', f);
}

int umbra_trace_write(FILE *f)
{
	struct umbra_trace_totals t;
	bool named0 = false;

	umbra_trace_totals(&t);
	fputs("{\"traceEvents\":[\n{\"ph\":\"M\",\"name\":\"trace_start\",\"pid\":0,\"tid\":0,"
	      "\"args\":{}}",
	      f);
	for (struct trace_process *p = trace.procs; p; p = p->next) {
		bool later = false;

		for (struct trace_process *q = trace.procs; q != p; q = q->next)
			later |= q->pid == p->pid; /* the first in the list is the last given */
		if (later)
			continue;
		named0 |= p->pid == 0;
		fprintf(f, ",\n{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":%" PRIu32
			   ",\"args\":{\"name\":",
			p->pid);
		put_string(f, p->name);
		fputs("}}", f);
	}
	if (!named0)
		fputs(",\n{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":0,"
		      "\"args\":{\"name\":\"umbra\"}}",
		      f);
	for (struct trace_buf *b = trace.bufs; b; b = b->next) {
		const uint64_t n = __atomic_load_n(&b->count, __ATOMIC_ACQUIRE);

		fprintf(f, ",\n{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":%" PRIu32
			   ",\"tid\":%" PRIu32 ",\"args\":{\"name\":",
			b->pid, b->tid);
		put_string(f, b->thread_name);
		fputs("}}", f);
		for (uint64_t i = 0; i < n; i++)
			put_event(f, b, &b->chunks[i / UMBRA_TRACE_CHUNK][i % UMBRA_TRACE_CHUNK]);
	}
	fputs("\n],\n\"displayTimeUnit\":\"ns\",\n\"otherData\":{", f);
	fprintf(f, "\"events\":%" PRIu64 ",\"dropped_events\":%" PRIu64 ",\"threads\":%" PRIu64
		   ",\"cap_per_thread\":%" PRIu64 ",\"kinds\":\"",
		t.events, t.dropped, t.threads, trace.cap);
	for (unsigned int k = 0, n = 0; k < UMBRA_TRACE_KIND_NR; k++)
		if (__atomic_load_n(&umbra_trace_mask, __ATOMIC_RELAXED) >> k & 1)
			fprintf(f, "%s%s", n++ ? "," : "", kind_names[k]);
	fputs("\"}}\n", f);
	if (fflush(f) || ferror(f))
		return -EIO;
	return 0;
}

void umbra_trace_exit(void)
{
	struct trace_buf *b = __atomic_exchange_n(&trace.bufs, NULL, __ATOMIC_ACQ_REL);
	struct trace_process *p = __atomic_exchange_n(&trace.procs, NULL, __ATOMIC_ACQ_REL);

	__atomic_store_n(&umbra_trace_mask, 0, __ATOMIC_RELEASE);
	__atomic_add_fetch(&trace.gen, 1, __ATOMIC_RELEASE);
	while (b) {
		struct trace_buf *next = b->next;

		for (uint64_t c = 0; c <= trace.cap / UMBRA_TRACE_CHUNK; c++)
			if (b->chunks[c])
				munmap(b->chunks[c], CHUNK_BYTES);
		free(b->chunks);
		free(b);
		b = next;
	}
	while (p) {
		struct trace_process *next = p->next;

		free(p);
		p = next;
	}
	tls_depth = 0;
}
