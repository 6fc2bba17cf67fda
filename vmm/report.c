/*
 * umbra trace-report TRACE... [--png FILE]: what --trace files say about how
 * invalidations travelled (docs/tracing.md, "The report").
 *
 * Per delivery mode: the invalidations, how many VMs (callbacks) and vCPUs
 * (shootdown requests) each reached, and the time from its start to the
 * last acknowledgement of the TLB shootdowns it caused: each request
 * (VM, vCPU, request number) is served by the NMI or early flush whose
 * request range holds it, and answered when that NMI is acknowledged.  An
 * invalidation whose requests were not all answered (the VM stopped first)
 * is counted apart; one that requested no shootdown counts from start to
 * end.  Then the totals, which --stats also counts.
 */
#include <errno.h>
#include <inttypes.h>
#include <json-c/json.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "umbra/abi.h"
#include "vmm.h"

#define MODES 2 /* range, page */

struct inv {
	uint64_t id, begin_ns, end_ns, last_ack_ns;
	int mode; /* 0 range, 1 page, -1 unknown */
	bool ended, aborted;
	unsigned int vms, vcpus, requests, answered, unanswered;
};

struct served {	/* an acknowledged NMI or an early flush of one vCPU */
	uint64_t vm, vcpu, first, last, ns;
};

struct request {
	uint64_t vm, vcpu, req, inv;
};

struct callback {
	uint64_t vm, inv;
};

/* A growable array of @type. */
#define VEC(type) struct { type *v; size_t n, cap; }
#define VEC_PUSH(vec, item)                                                            \
	((vec).n == (vec).cap &&                                                       \
			 !vec_grow((void **)&(vec).v, &(vec).cap, sizeof(*(vec).v))      \
		 ? -ENOMEM                                                             \
		 : ((vec).v[(vec).n++] = (item), 0))

static bool vec_grow(void **v, size_t *cap, size_t size)
{
	size_t n = *cap ? *cap * 2 : 256;
	void *p = realloc(*v, n * size);

	if (!p)
		return false;
	*v = p;
	*cap = n;
	return true;
}

struct report {
	VEC(struct inv) invs;
	VEC(struct served) served;
	VEC(struct request) requests;
	VEC(struct callback) callbacks;
	uint64_t nmis, acks, early, dropped, events;
	uint64_t idle;	/* requests of invalidations to vCPUs that never ran again */
	/* Several files: their invalidation ids and processes are told apart
	 * by adding base (the highest id so far + 1) to each. */
	uint64_t base, max_id;
};

static uint64_t arg_u64(struct json_object *args, const char *key)
{
	struct json_object *v;

	return args && json_object_object_get_ex(args, key, &v) ? (uint64_t)json_object_get_int64(v) : 0;
}

static const char *arg_str(struct json_object *args, const char *key)
{
	struct json_object *v;

	return args && json_object_object_get_ex(args, key, &v) ? json_object_get_string(v) : "";
}

/* Microseconds (the file's unit) to ns. */
static uint64_t field_ns(struct json_object *e, const char *key)
{
	struct json_object *v;

	return json_object_object_get_ex(e, key, &v) ? (uint64_t)(json_object_get_double(v) * 1000.0 + 0.5)
						     : 0;
}

/* An id (invalidation, VM) of the file being read, apart from the other
 * files' (0, none, stays 0). */
static uint64_t rebase(struct report *r, uint64_t id)
{
	if (!id)
		return 0;
	id += r->base;
	r->max_id = id > r->max_id ? id : r->max_id;
	return id;
}

static struct inv *inv_find(struct report *r, uint64_t id)
{
	for (size_t i = r->invs.n; i-- > 0;) /* ends come soon after their begins */
		if (r->invs.v[i].id == id)
			return &r->invs.v[i];
	return NULL;
}

/* One event of the file into @r. */
static int take_event(struct report *r, struct json_object *e)
{
	struct json_object *v, *args = NULL;
	const char *ph, *name;
	uint64_t ts, pid;

	if (!json_object_object_get_ex(e, "ph", &v) || !(ph = json_object_get_string(v)) ||
	    !json_object_object_get_ex(e, "name", &v) || !(name = json_object_get_string(v)))
		return 0;
	json_object_object_get_ex(e, "args", &args);
	ts = field_ns(e, "ts");
	pid = json_object_object_get_ex(e, "pid", &v) ? (uint64_t)json_object_get_int64(v) : 0;
	if (!strcmp(ph, "B") && !strcmp(name, "invalidate")) {
		const char *mode = arg_str(args, "mode");
		struct inv inv = { .id = rebase(r, arg_u64(args, "inv")), .begin_ns = ts,
				   .mode = !strcmp(mode, "range") ? 0 : !strcmp(mode, "page") ? 1 : -1 };

		return VEC_PUSH(r->invs, inv);
	}
	if (!strcmp(ph, "E") && !strcmp(name, "invalidate")) {
		struct inv *inv = inv_find(r, rebase(r, arg_u64(args, "inv")));

		if (inv) {
			inv->ended = true;
			inv->end_ns = ts;
			inv->aborted = !strcmp(arg_str(args, "result"), "aborted");
		}
		return 0;
	}
	if (strcmp(ph, "X"))
		return 0;
	if (!strcmp(name, "callback"))
		return VEC_PUSH(r->callbacks, ((struct callback){ .vm = rebase(r, arg_u64(args, "vm")),
								   .inv = rebase(r, arg_u64(args, "inv")) }));
	if (!strcmp(name, "shootdown request"))
		return VEC_PUSH(r->requests,
				((struct request){ .vm = rebase(r, arg_u64(args, "vm")),
						   .vcpu = arg_u64(args, "vcpu"), .req = arg_u64(args, "req"),
						   .inv = rebase(r, arg_u64(args, "inv")) }));
	if (!strcmp(name, "nmi")) {
		r->nmis++;
		return 0;
	}
	if (!strcmp(name, "ack") || !strcmp(name, "early flush")) {
		struct served s = { .vm = rebase(r, pid), .vcpu = arg_u64(args, "vcpu"),
				    .first = arg_u64(args, "first_req"), .last = arg_u64(args, "last_req"),
				    .ns = ts + field_ns(e, "dur") };

		if (!strcmp(name, "ack"))
			r->acks++;
		else
			r->early++;
		return VEC_PUSH(r->served, s);
	}
	return 0;
}

/* -1, 0 or 1 as @x is below, at or above @y. */
static int cmp_u64(uint64_t x, uint64_t y)
{
	return x < y ? -1 : x > y;
}

static int served_cmp(const void *a, const void *b)
{
	const struct served *x = a, *y = b;

	return x->vm != y->vm ? cmp_u64(x->vm, y->vm)
	       : x->vcpu != y->vcpu ? cmp_u64(x->vcpu, y->vcpu)
				    : cmp_u64(x->first, y->first);
}

/* The answer to request @q: the served range that holds it, or NULL. */
static const struct served *answer_of(const struct report *r, const struct request *q)
{
	size_t lo = 0, hi = r->served.n;

	while (lo < hi) { /* the last range of (vm, vcpu) starting at or before req */
		size_t mid = (lo + hi) / 2;
		const struct served *s = &r->served.v[mid];
		bool before = s->vm < q->vm || (s->vm == q->vm && (s->vcpu < q->vcpu ||
								   (s->vcpu == q->vcpu && s->first <= q->req)));

		if (before)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	const struct served *s = &r->served.v[lo - 1];

	return s->vm == q->vm && s->vcpu == q->vcpu && s->first <= q->req && q->req <= s->last ? s
												: NULL;
}

/* The index after the last served range of (@vm, @vcpu) (ranges sorted). */
static size_t served_end(const struct report *r, uint64_t vm, uint64_t vcpu)
{
	size_t lo = 0, hi = r->served.n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		const struct served *s = &r->served.v[mid];

		if (s->vm < vm || (s->vm == vm && s->vcpu <= vcpu))
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/* Did @q's vCPU serve any request at or after @q's (its NMI handler ran
 * again)?  Without, it never entered the guest again: nothing to answer.
 * The ranges of one vCPU follow each other, so its last is its highest. */
static bool served_later(const struct report *r, const struct request *q)
{
	size_t end = served_end(r, q->vm, q->vcpu);
	const struct served *s = end ? &r->served.v[end - 1] : NULL;

	return s && s->vm == q->vm && s->vcpu == q->vcpu && s->last >= q->req;
}

static int inv_cmp(const void *a, const void *b)
{
	return cmp_u64(((const struct inv *)a)->id, ((const struct inv *)b)->id);
}

static int callback_cmp(const void *a, const void *b)
{
	const struct callback *x = a, *y = b;

	return x->inv != y->inv ? cmp_u64(x->inv, y->inv) : cmp_u64(x->vm, y->vm);
}

static int request_cmp(const void *a, const void *b)
{
	const struct request *x = a, *y = b;

	return x->inv != y->inv ? cmp_u64(x->inv, y->inv)
	       : x->vm != y->vm ? cmp_u64(x->vm, y->vm)
				: cmp_u64(x->vcpu, y->vcpu);
}

/* The invalidation @id (invs sorted), or NULL. */
static struct inv *inv_lookup(struct report *r, uint64_t id)
{
	struct inv key = { .id = id };

	return id ? bsearch(&key, r->invs.v, r->invs.n, sizeof(key), inv_cmp) : NULL;
}

/* The fan-out and the last answer of each invalidation: callbacks and
 * requests sorted by invalidation, then VM (and vCPU), so that each
 * distinct one is counted where it first appears. */
static void join(struct report *r)
{
	qsort(r->served.v, r->served.n, sizeof(*r->served.v), served_cmp);
	qsort(r->invs.v, r->invs.n, sizeof(*r->invs.v), inv_cmp);
	qsort(r->callbacks.v, r->callbacks.n, sizeof(*r->callbacks.v), callback_cmp);
	qsort(r->requests.v, r->requests.n, sizeof(*r->requests.v), request_cmp);
	for (size_t k = 0; k < r->callbacks.n; k++) {
		const struct callback *c = &r->callbacks.v[k];
		struct inv *inv = inv_lookup(r, c->inv);

		if (inv && (k == 0 || callback_cmp(c, c - 1)))
			inv->vms++;
	}
	for (size_t k = 0; k < r->requests.n; k++) {
		const struct request *q = &r->requests.v[k];
		struct inv *inv = inv_lookup(r, q->inv);
		const struct served *s;

		if (!inv)
			continue;
		inv->requests++;
		if (k == 0 || request_cmp(q, q - 1))
			inv->vcpus++;
		s = answer_of(r, q);
		if (!s && !served_later(r, q))
			r->idle++; /* its vCPU never ran again */
		else if (!s)
			inv->unanswered++;
		else if (inv->answered++ == 0 || s->ns > inv->last_ack_ns)
			inv->last_ack_ns = s->ns;
	}
}

static int u64_cmp(const void *a, const void *b)
{
	return cmp_u64(*(const uint64_t *)a, *(const uint64_t *)b);
}

/* Nearest-rank percentile @p of sorted @v[n] (n > 0). */
static uint64_t pct(const uint64_t *v, size_t n, unsigned int p)
{
	size_t k = (n * p + 99) / 100;

	return v[k ? k - 1 : 0];
}

static const char *const mode_names[MODES] = { "range", "page" };

/* The latency (ns) of each answered invalidation of @mode into @out (the
 * caller frees it); their count. */
static size_t latencies(const struct report *r, int mode, uint64_t **out)
{
	uint64_t *v = calloc(r->invs.n + 1, sizeof(*v));
	size_t n = 0;

	for (size_t i = 0; v && i < r->invs.n; i++) {
		const struct inv *inv = &r->invs.v[i];

		if (inv->mode != mode || !inv->ended || inv->aborted || inv->unanswered)
			continue;
		/* No request answered (none made, or none to a vCPU that ran
		 * again): from start to end.  (An answer follows its request,
		 * so the start; the test keeps a bad file from wrapping.) */
		const uint64_t last = inv->answered ? inv->last_ack_ns : inv->end_ns;

		v[n++] = last > inv->begin_ns ? last - inv->begin_ns : 0;
	}
	qsort(v, n, sizeof(*v), u64_cmp);
	*out = v;
	return v ? n : 0;
}

static void print_mode(const struct report *r, int mode)
{
	uint64_t *lat, vm_max = 0, vcpu_max = 0, vm_sum = 0, vcpu_sum = 0;
	size_t n_inv = 0, n_ab = 0, n_unans = 0, n_open = 0, n;

	for (size_t i = 0; i < r->invs.n; i++) {
		const struct inv *inv = &r->invs.v[i];

		if (inv->mode != mode)
			continue;
		n_inv++;
		n_ab += inv->aborted;
		n_open += !inv->ended;
		n_unans += inv->ended && !inv->aborted && inv->unanswered;
		vm_sum += inv->vms;
		vcpu_sum += inv->vcpus;
		vm_max = inv->vms > vm_max ? inv->vms : vm_max;
		vcpu_max = inv->vcpus > vcpu_max ? inv->vcpus : vcpu_max;
	}
	if (!n_inv)
		return;
	n = latencies(r, mode, &lat);
	printf("| %s | %zu | %zu | %zu | %.2f | %" PRIu64 " | %.2f | %" PRIu64 " |", mode_names[mode], n_inv,
	       n_ab, n_open, (double)vm_sum / (double)n_inv, vm_max, (double)vcpu_sum / (double)n_inv,
	       vcpu_max);
	if (n)
		printf(" %zu | %.1f | %.1f | %.1f | %zu |\n", n, (double)pct(lat, n, 50) / 1000.0,
		       (double)pct(lat, n, 99) / 1000.0, (double)lat[n - 1] / 1000.0, n_unans);
	else
		printf(" 0 | - | - | - | %zu |\n", n_unans);
	free(lat);
}

#define BINS_PER_DECADE 5

/* The latencies of both modes in bins of BINS_PER_DECADE per decade (one
 * block per mode: "low high count", us), then the histogram: one bar per
 * bin and mode, drawn from low to high on a log scale. */
static int plot(const struct report *r, const char *png)
{
	char data[] = "/tmp/umbra-trace-report-XXXXXX";
	int fd = mkstemp(data), ret = 0;
	FILE *f, *gp;

	if (fd < 0 || !(f = fdopen(fd, "w"))) {
		fprintf(stderr, "umbra: trace-report: a temporary file: %s\n", strerror(errno));
		return UMBRA_STATUS_USAGE;
	}
	for (int m = 0; m < MODES; m++) {
		uint64_t *lat;
		size_t n = latencies(r, m, &lat), i = 0;

		fprintf(f, "# %s: low_us high_us invalidations\n", mode_names[m]);
		while (i < n) {
			/* The bin of lat[i]: [10^(k/B), 10^((k+1)/B)) us, from 1 us. */
			double us = (double)lat[i] / 1000.0;
			int k = us < 1.0 ? 0 : (int)(log10(us) * BINS_PER_DECADE);
			double lo = pow(10.0, (double)k / BINS_PER_DECADE);
			double hi = pow(10.0, (double)(k + 1) / BINS_PER_DECADE);
			size_t c = 0;

			while (i < n && (double)lat[i] / 1000.0 < hi)
				c++, i++;
			fprintf(f, "%.3f %.3f %zu\n", lo, hi, c);
		}
		if (!n)
			fputs("NaN NaN 0\n", f);
		fputs("\n\n", f);
		free(lat);
	}
	fclose(f);
	gp = popen("gnuplot", "w");
	if (!gp) {
		fprintf(stderr, "umbra: trace-report: cannot run gnuplot: %s\n", strerror(errno));
		unlink(data);
		return UMBRA_STATUS_USAGE;
	}
	fprintf(gp,
		"set terminal pngcairo size 900,500\n"
		"set output '%s'\n"
		"set title 'invalidation start to last shootdown acknowledgement'\n"
		"set xlabel 'latency (us, log scale, %d bins per decade)'\nset ylabel 'invalidations'\n"
		"set logscale x\nset yrange [0:*]\nset style fill transparent solid 0.5\n"
		"plot '%s' index 0 using (($1+$2)/2):3:($2-$1) with boxes title 'range', "
		"'' index 1 using (($1+$2)/2):3:($2-$1) with boxes title 'page'\n",
		png, BINS_PER_DECADE, data);
	if (pclose(gp) != 0) {
		fprintf(stderr, "umbra: trace-report: gnuplot failed (is gnuplot-nox installed?)\n");
		ret = UMBRA_STATUS_USAGE;
	}
	unlink(data);
	return ret;
}

static void report_free(struct report *r)
{
	free(r->invs.v);
	free(r->served.v);
	free(r->requests.v);
	free(r->callbacks.v);
}

/* The events of the trace @path into @r; 0, or the exit status. */
static int read_trace(struct report *r, const char *path, uint64_t *base)
{
	struct json_object *root = json_object_from_file(path), *events, *other;
	size_t n;
	int ret = 0;

	if (!root || !json_object_object_get_ex(root, "traceEvents", &events) ||
	    !json_object_is_type(events, json_type_array)) {
		fprintf(stderr, "umbra: trace-report: '%s' is not a trace written by --trace\n", path);
		json_object_put(root);
		return UMBRA_STATUS_USAGE;
	}
	if (json_object_object_get_ex(root, "otherData", &other)) {
		r->dropped += arg_u64(other, "dropped_events");
		r->events += arg_u64(other, "events");
	}
	r->base = *base;
	n = json_object_array_length(events);
	for (size_t i = 0; i < n && !ret; i++)
		ret = take_event(r, json_object_array_get_idx(events, i));
	json_object_put(root);
	*base = r->max_id + 1;
	if (ret) {
		fprintf(stderr, "umbra: trace-report: out of memory\n");
		return UMBRA_STATUS_NO_KVM;
	}
	return 0;
}

int vmm_trace_report(const char *const *paths, unsigned int n, const char *png)
{
	struct report r = { 0 };
	uint64_t base = 0;
	int ret = 0;

	for (unsigned int i = 0; i < n && !ret; i++)
		ret = read_trace(&r, paths[i], &base);
	if (ret) {
		report_free(&r);
		return ret;
	}
	join(&r);
	printf("trace%s", n > 1 ? "s" : "");
	for (unsigned int i = 0; i < n; i++)
		printf(" %s", paths[i]);
	printf(": %" PRIu64 " events, %" PRIu64 " dropped%s\n\n", r.events, r.dropped,
	       r.dropped ? " (the figures below miss what was dropped)" : "");
	printf("| mode | invalidations | aborted | not ended | VMs reached (mean) | (max) | vCPUs reached (mean) "
	       "| (max) | answered | start to last ack p50 (us) | p99 (us) | max (us) | unanswered |\n"
	       "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
	for (int m = 0; m < MODES; m++)
		print_mode(&r, m);
	printf("\nshootdown requests of invalidations to vCPUs that never entered the guest again "
	       "(nothing to acknowledge, not in the latencies): %" PRIu64 "\n", r.idle);
	printf("\ntotals: invalidations %zu, callbacks %zu, shootdown requests %zu, NMIs %" PRIu64
	       ", acks %" PRIu64 ", early flushes %" PRIu64 "\n",
	       r.invs.n, r.callbacks.n, r.requests.n, r.nmis, r.acks, r.early);
	if (png) {
		ret = plot(&r, png);
		if (!ret)
			printf("histogram: %s\n", png);
	}
	report_free(&r);
	return ret;
}
