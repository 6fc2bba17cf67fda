/*
 * base/: the lock-rank checker and its rules (include/umbra/lock.h), and
 * the event recorder behind --trace (include/umbra/trace.h).
 *
 * Each seeded violation runs in a child process whose stderr is a pipe; the
 * test expects the child to die of SIGABRT and its message to name the rule
 * and the lock held (so the cases hold with CK_FORK=no too).  Debug builds
 * only: release builds compile the checks away.
 */
#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "tests.h"
#include "umbra/lock.h"
#include "umbra/notifier.h"
#include "umbra/trace.h"

#include <json-c/json.h>

#if UMBRA_LOCK_DEBUG

/* A subscriber's main lock, as a VM's mmu_lock is. */
static struct umbra_mutex subscriber_lock;
static struct notifier_object *obj;

static void setup_object(void)
{
	notifier_thread_init();
	umbra_mutex_init(&subscriber_lock, "test.mmu_lock", UMBRA_LOCK_RANK_MMU);
	if (notifier_object_create("violations", 16, &obj))
		abort();
}

/* Holding the subscriber's lock across notifier_read_begin. */
static void read_begin_under_subscriber_lock(void)
{
	setup_object();
	umbra_mutex_lock(&subscriber_lock);
	(void)notifier_read_begin(obj, 0, 15);
}

static int ignore_page(struct notifier_subscription *sub, const struct notifier_range *range,
		       uint64_t page)
{
	return 0;
}

static int reenter_subscribe(struct notifier_subscription *sub, const struct notifier_range *range)
{
	static const struct notifier_ops other_ops = {
		.invalidate_range_start = reenter_subscribe, .invalidate_page = ignore_page,
	};
	struct notifier_subscription *other;

	return notifier_subscribe(notifier_subscription_object(sub), &other_ops, NULL, &other);
}

/* A callback that calls back into the library (subscribes from inside). */
static void callback_reenters_library(void)
{
	static const struct notifier_ops ops = {
		.invalidate_range_start = reenter_subscribe, .invalidate_page = ignore_page,
	};
	struct notifier_subscription *sub;
	struct notifier_range range;

	setup_object();
	if (notifier_subscribe(obj, &ops, NULL, &sub))
		abort();
	notifier_range_init(&range, obj, NOTIFIER_EVENT_UNMAP, 0, 15, NOTIFIER_RANGE_MAY_BLOCK);
	(void)notifier_invalidate_range_start(&range);
}

/* Taking the subscriber's lock inside a shadow-table-ranked lock. */
static void rank_inversion(void)
{
	struct umbra_mutex table;

	umbra_mutex_init(&table, "test.table_lock", UMBRA_LOCK_RANK_TABLE);
	umbra_mutex_init(&subscriber_lock, "test.mmu_lock", UMBRA_LOCK_RANK_MMU);
	umbra_mutex_lock(&table);
	umbra_mutex_lock(&subscriber_lock);
}

/* Asserting a lock that nobody holds, as a *_locked function does. */
static void assert_held_without_the_lock(void)
{
	umbra_mutex_init(&subscriber_lock, "test.mmu_lock", UMBRA_LOCK_RANK_MMU);
	umbra_mutex_assert_held(&subscriber_lock);
}

/* A _locked function that changes what an rwlock protects, called by a
 * thread that holds it in read mode only. */
static void write_assert_under_read_mode(void)
{
	static struct umbra_rwlock l;

	umbra_rwlock_init(&l, "test.rw_mmu_lock", UMBRA_LOCK_RANK_MMU);
	umbra_rwlock_read_lock(&l);
	umbra_rwlock_assert_held(&l);	/* held (read mode): passes */
	umbra_rwlock_assert_held_write(&l);
}

/* An rwlock taken in read mode by a thread that already reads it. */
static void rwlock_read_twice(void)
{
	static struct umbra_rwlock l;

	umbra_rwlock_init(&l, "test.rw_mmu_lock", UMBRA_LOCK_RANK_MMU);
	umbra_rwlock_read_lock(&l);
	umbra_rwlock_read_lock(&l);
}

/* An rwlock in read mode taken inside a table lock. */
static void rwlock_rank_inversion(void)
{
	static struct umbra_rwlock l;
	struct umbra_mutex table;

	umbra_rwlock_init(&l, "test.rw_mmu_lock", UMBRA_LOCK_RANK_MMU);
	umbra_mutex_init(&table, "test.table_lock", UMBRA_LOCK_RANK_TABLE);
	umbra_mutex_lock(&table);
	umbra_rwlock_read_lock(&l);
}

static const struct violation {
	const char *what;
	void (*run)(void);
	const char *rule;	/* the message must contain these */
	const char *held;
} violations[] = {
	{ "read_begin under the subscriber's lock", read_begin_under_subscriber_lock,
	  "notifier_read_begin is not called from a notifier callback or with a subscriber's lock held",
	  "holds 'test.mmu_lock'" },
	{ "a callback re-entering the library", callback_reenters_library,
	  "notifier_subscribe, notifier_unsubscribe and notifier_object_destroy are not called from a notifier callback",
	  "holds 'a notifier callback'" },
	{ "mmu_lock taken inside a table lock", rank_inversion,
	  "rank order: a lock of equal or higher rank is held: lock 'test.mmu_lock'",
	  "holds 'test.table_lock'" },
	{ "a _locked function called without its lock", assert_held_without_the_lock,
	  "the caller must hold this lock", "lock 'test.mmu_lock' (rank 8)" },
	{ "a write-mode _locked function under the rwlock in read mode",
	  write_assert_under_read_mode, "the caller must hold this lock in write mode",
	  "holds 'test.rw_mmu_lock'" },
	{ "an rwlock read twice by one thread", rwlock_read_twice,
	  "recursive locking: lock 'test.rw_mmu_lock'", "holds 'test.rw_mmu_lock'" },
	{ "an rwlock read inside a table lock", rwlock_rank_inversion,
	  "rank order: a lock of equal or higher rank is held: lock 'test.rw_mmu_lock'",
	  "holds 'test.table_lock'" },
};

START_TEST(test_seeded_violation_aborts_naming_the_rule)
{
	const struct violation *v = &violations[_i];
	char msg[4096] = "";
	size_t len = 0;
	int fds[2], status;
	ssize_t n;
	pid_t pid;

	ck_assert_int_eq(pipe(fds), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		close(fds[0]);
		dup2(fds[1], STDERR_FILENO);
		v->run();
		_exit(0);	/* no abort: the parent reports it */
	}
	close(fds[1]);
	while (len < sizeof(msg) - 1 && (n = read(fds[0], msg + len, sizeof(msg) - 1 - len)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		ck_assert_int_gt(n, 0);
		len += (size_t)n;
	}
	msg[len] = '\0';
	close(fds[0]);
	ck_assert_int_eq(waitpid(pid, &status, 0), pid);
	ck_assert_msg(WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT,
		      "%s: expected SIGABRT, got %s %d (stderr: '%s')", v->what,
		      WIFSIGNALED(status) ? "signal" : "exit status",
		      WIFSIGNALED(status) ? WTERMSIG(status) : WEXITSTATUS(status), msg);
	ck_assert_msg(strstr(msg, "umbra: lock rule violated: ") && strstr(msg, v->rule),
		      "%s: expected the message to name the rule '%s', got '%s'", v->what, v->rule, msg);
	ck_assert_msg(strstr(msg, v->held), "%s: expected the message to say '%s', got '%s'",
		      v->what, v->held, msg);
}
END_TEST

#endif /* UMBRA_LOCK_DEBUG */

static struct umbra_mutex held_elsewhere;

static void *check_not_owner(void *p)
{
	*(bool *)p = umbra_mutex_is_held(&held_elsewhere);
	return NULL;
}

START_TEST(test_mutex_knows_its_owner)
{
	pthread_t th;
	bool other_sees_held = true;

	umbra_mutex_init(&held_elsewhere, "test", UMBRA_LOCK_RANK_MMU);
	umbra_mutex_lock(&held_elsewhere);
	ck_assert_msg(umbra_mutex_is_held(&held_elsewhere), "expected the owner to hold it");
	pthread_create(&th, NULL, check_not_owner, &other_sees_held);
	pthread_join(th, NULL);
#if UMBRA_LOCK_DEBUG
	ck_assert_msg(!other_sees_held, "expected another thread not to hold it");
#endif
	umbra_mutex_unlock(&held_elsewhere);
	umbra_mutex_exit(&held_elsewhere);
}
END_TEST

static struct umbra_rwlock rw;

/* Another thread: takes @rw in read mode and tries write mode; bit 0: it
 * read while the main thread read, bit 1: its write try-lock succeeded,
 * bit 2: it saw itself holding rw while it read. */
static void *rw_other(void *p)
{
	unsigned int *r = p;

	umbra_rwlock_read_lock(&rw);
	*r |= 1u;
	*r |= umbra_rwlock_is_held(&rw) ? 4u : 0u;
	umbra_rwlock_read_unlock(&rw);
	if (umbra_rwlock_write_trylock(&rw)) {
		*r |= 2u;
		umbra_rwlock_write_unlock(&rw);
	}
	return NULL;
}

START_TEST(test_rwlock_admits_readers_together_and_a_writer_alone)
{
	unsigned int r = 0;
	pthread_t th;

	umbra_rwlock_init(&rw, "test.rw", UMBRA_LOCK_RANK_MMU);
	umbra_rwlock_read_lock(&rw);
	ck_assert(umbra_rwlock_is_held(&rw));
#if UMBRA_LOCK_DEBUG
	ck_assert_msg(!umbra_rwlock_is_held_write(&rw), "read mode is not write mode");
#endif
	pthread_create(&th, NULL, rw_other, &r);
	pthread_join(th, NULL);
	ck_assert_msg(r == 5u, "expected a second reader admitted and no writer, got %#x", r);
	umbra_rwlock_read_unlock(&rw);
	ck_assert(umbra_rwlock_write_trylock(&rw));
	ck_assert(umbra_rwlock_is_held_write(&rw));
	umbra_rwlock_write_unlock(&rw);
	r = 0;
	pthread_create(&th, NULL, rw_other, &r);
	pthread_join(th, NULL);
	ck_assert_msg(r == 7u, "expected the free lock read and written, got %#x", r);
	umbra_rwlock_exit(&rw);
}
END_TEST

/* ---- per-thread slots (umbra_thread_slot, umbra_slot_add) ---------------- */

#define SLOT_THREADS (2 * UMBRA_THREAD_SLOTS)
#define SLOT_ADDS 20000u

static struct {
	uint64_t v;
	char pad[120];
} slot_ctr[UMBRA_THREAD_SLOTS];
static pthread_barrier_t slot_barrier;
static struct umbra_rwlock slot_rw;

/* Counts SLOT_ADDS in its slot and reads slot_rw as often, all threads
 * alive at once; its slot in *@arg. */
static void *slot_counter(void *arg)
{
	unsigned int s;

	pthread_barrier_wait(&slot_barrier);
	s = umbra_thread_slot();
	*(unsigned int *)arg = s;
	for (unsigned int i = 0; i < SLOT_ADDS; i++) {
		umbra_slot_add(&slot_ctr[s].v, s, 1);
		umbra_rwlock_read_lock(&slot_rw);
		umbra_rwlock_read_unlock(&slot_rw);
	}
	pthread_barrier_wait(&slot_barrier); /* nobody exits (gives back) before all counted */
	return NULL;
}

START_TEST(test_thread_slots_count_exactly_from_more_threads_than_slots)
{
	pthread_t th[SLOT_THREADS];
	unsigned int slot[SLOT_THREADS], owners[UMBRA_THREAD_SLOTS] = { 0 }, shared = 0;
	uint64_t sum = 0;

	memset(slot_ctr, 0, sizeof(slot_ctr));
	umbra_rwlock_init(&slot_rw, "test.slot_rw", UMBRA_LOCK_RANK_MMU);
	pthread_barrier_init(&slot_barrier, NULL, SLOT_THREADS);
	for (unsigned int k = 0; k < SLOT_THREADS; k++)
		ck_assert_int_eq(pthread_create(&th[k], NULL, slot_counter, &slot[k]), 0);
	for (unsigned int k = 0; k < SLOT_THREADS; k++)
		pthread_join(th[k], NULL);
	pthread_barrier_destroy(&slot_barrier);
	for (unsigned int k = 0; k < SLOT_THREADS; k++) {
		ck_assert_uint_lt(slot[k], UMBRA_THREAD_SLOTS);
		if (umbra_thread_slot_is_owned(slot[k]))
			owners[slot[k]]++;
		else
			shared++;
	}
	for (unsigned int s = 0; s < UMBRA_THREAD_SLOTS; s++) {
		ck_assert_msg(owners[s] <= 1, "slot %u owned by %u live threads at once", s, owners[s]);
		sum += __atomic_load_n(&slot_ctr[s].v, __ATOMIC_RELAXED);
	}
	ck_assert_msg(shared >= SLOT_THREADS - (UMBRA_THREAD_SLOTS - 1),
		      "%u threads on the shared slot, expected every one past the owned slots",
		      shared);
	ck_assert_uint_eq(sum, (uint64_t)SLOT_THREADS * SLOT_ADDS);
	ck_assert_msg(!umbra_rwlock_has_readers(&slot_rw), "a reader count was lost or doubled");
	ck_assert(umbra_rwlock_write_trylock(&slot_rw));
	umbra_rwlock_write_unlock(&slot_rw);
	umbra_rwlock_exit(&slot_rw);
}
END_TEST

static void *slot_of_thread(void *arg)
{
	*(unsigned int *)arg = umbra_thread_slot();
	return NULL;
}

START_TEST(test_thread_slot_is_reused_after_its_thread_exits)
{
	unsigned int first, second;
	pthread_t th;

	ck_assert_int_eq(pthread_create(&th, NULL, slot_of_thread, &first), 0);
	pthread_join(th, NULL);
	ck_assert_msg(umbra_thread_slot_is_owned(first), "a lone new thread gets an owned slot");
	ck_assert_int_eq(pthread_create(&th, NULL, slot_of_thread, &second), 0);
	pthread_join(th, NULL);
	ck_assert_msg(second == first, "slot %u given back at exit, next thread got %u", first,
		      second);
}
END_TEST

START_TEST(test_pseudo_lock_is_held_only_between_acquire_and_release)
{
	static const struct umbra_pseudo_lock p = { .name = "test.pseudo", .rank = UMBRA_LOCK_RANK_NOTIFIER_CALLBACK };
	struct umbra_mutex m;

	umbra_mutex_init(&m, "test.mmu_lock", UMBRA_LOCK_RANK_MMU);
	umbra_pseudo_lock_acquire(&p);
#if UMBRA_LOCK_DEBUG
	ck_assert_msg(umbra_lock_ranks_held & (1u << UMBRA_LOCK_RANK_NOTIFIER_CALLBACK),
		      "expected the pseudo-lock's rank held after acquire");
#endif
	umbra_mutex_lock(&m);	/* rank 8 inside rank 6: allowed */
	umbra_mutex_unlock(&m);
	umbra_pseudo_lock_release(&p);
#if UMBRA_LOCK_DEBUG
	ck_assert_msg(umbra_lock_ranks_held == 0, "expected no rank held after release, got %#x",
		      umbra_lock_ranks_held);
#endif
	umbra_mutex_exit(&m);
}
END_TEST

/* ---- the trace recorder ---- */

/* Writes the trace to a temporary file and parses it back. */
static struct json_object *trace_parse(void)
{
	FILE *f = tmpfile();
	struct json_object *root;
	char *text;
	long n;

	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(umbra_trace_write(f), 0);
	n = ftell(f);
	rewind(f);
	text = malloc((size_t)n + 1);
	ck_assert_ptr_nonnull(text);
	ck_assert_uint_eq(fread(text, 1, (size_t)n, f), (size_t)n);
	text[n] = '\0';
	fclose(f);
	root = json_tokener_parse(text);
	ck_assert_msg(root, "the trace is not JSON:\n%.600s", text);
	free(text);
	return root;
}

/* Events of the trace whose "ph" is @ph (and, unless NULL, name @name). */
static unsigned int trace_count(struct json_object *root, const char *ph, const char *name)
{
	struct json_object *events, *v;
	unsigned int n = 0;

	ck_assert(json_object_object_get_ex(root, "traceEvents", &events));
	for (size_t i = 0; i < json_object_array_length(events); i++) {
		struct json_object *e = json_object_array_get_idx(events, i);

		if (json_object_object_get_ex(e, "ph", &v) && !strcmp(json_object_get_string(v), ph) &&
		    (!name || (json_object_object_get_ex(e, "name", &v) && !strcmp(json_object_get_string(v), name))))
			n++;
	}
	return n;
}

static const struct {
	const char *list;
	int ret;
	unsigned int mask;
} trace_kind_lists[] = {
	{ "fault", 0, 1u << UMBRA_TRACE_FAULT },
	{ "invalidate,callback,shootdown", 0,
	  1u << UMBRA_TRACE_INVALIDATE | 1u << UMBRA_TRACE_CALLBACK | 1u << UMBRA_TRACE_SHOOTDOWN },
	{ "all", 0, UMBRA_TRACE_ALL },
	{ "swap,clone,flush", 0, 1u << UMBRA_TRACE_SWAP | 1u << UMBRA_TRACE_CLONE | 1u << UMBRA_TRACE_FLUSH },
	{ "faults", -EINVAL, 0 },
	{ "fault,", 0, 1u << UMBRA_TRACE_FAULT },
	{ "", -EINVAL, 0 },
	{ "fault,nope", -EINVAL, 0 },
};

START_TEST(test_trace_kinds_are_parsed_by_name)
{
	unsigned int mask = 0;
	int ret = umbra_trace_parse_kinds(trace_kind_lists[_i].list, &mask, NULL);

	ck_assert_msg(ret == trace_kind_lists[_i].ret, "'%s': expected %d, got %d", trace_kind_lists[_i].list,
		      trace_kind_lists[_i].ret, ret);
	if (!ret)
		ck_assert_msg(mask == trace_kind_lists[_i].mask, "'%s': expected mask %#x, got %#x",
			      trace_kind_lists[_i].list, trace_kind_lists[_i].mask, mask);
}
END_TEST

START_TEST(test_trace_off_records_nothing)
{
	struct umbra_trace_totals t;

	ck_assert(!umbra_trace_on(UMBRA_TRACE_FAULT));
	ck_assert_uint_eq(umbra_trace_begin_ns(UMBRA_TRACE_FAULT), 0);
	ck_assert_uint_eq(umbra_trace_invalidation_begin(NULL), 0);
	umbra_trace_instant(UMBRA_TRACE_FAULT, "x", NULL);
	umbra_trace_totals(&t);
	ck_assert_msg(t.events == 0 && t.threads == 0, "expected nothing recorded, got %llu events of %llu threads",
		      (unsigned long long)t.events, (unsigned long long)t.threads);
	/* Only the kinds asked for. */
	ck_assert_int_eq(umbra_trace_init(1u << UMBRA_TRACE_SWAP, 0), 0);
	ck_assert(umbra_trace_on(UMBRA_TRACE_SWAP) && !umbra_trace_on(UMBRA_TRACE_FAULT));
	umbra_trace_instant(UMBRA_TRACE_FAULT, "fault", NULL);
	umbra_trace_instant(UMBRA_TRACE_SWAP, "swap", NULL);
	umbra_trace_totals(&t);
	ck_assert_uint_eq(t.events, 1);
	umbra_trace_exit();
}
END_TEST

/* A thread's buffer at its cap drops what comes next and counts it; a
 * begun invalidation always has room for its end. */
START_TEST(test_trace_buffer_at_its_cap_drops_and_counts_but_every_begin_ends)
{
	const uint64_t cap = 1024;
	struct umbra_trace_totals t;
	unsigned int begun = 0;
	uint64_t ids[3000];
	struct json_object *root;

	ck_assert_int_eq(umbra_trace_init(UMBRA_TRACE_ALL, cap), 0);
	/* A begin, an instant and the end, until the buffer is full. */
	for (unsigned int i = 0; i < 3000; i++) {
		ids[i] = umbra_trace_invalidation_begin(NULL);
		if (ids[i])
			begun++;
		umbra_trace_instant(UMBRA_TRACE_FAULT, "filler", NULL);
		umbra_trace_invalidation_end(ids[i], NULL);
	}
	umbra_trace_totals(&t);
	ck_assert_msg(t.events <= cap, "expected at most %llu events, got %llu", (unsigned long long)cap,
		      (unsigned long long)t.events);
	ck_assert_msg(t.events + t.dropped == 3 * begun + 2 * (3000 - begun), /* a failed begin is a drop */
		      "expected every event recorded or counted dropped: %llu + %llu, %u begins",
		      (unsigned long long)t.events, (unsigned long long)t.dropped, begun);
	ck_assert_msg(t.dropped > 0 && begun > 0, "expected drops and begins, got %llu and %u",
		      (unsigned long long)t.dropped, begun);
	root = trace_parse();
	ck_assert_uint_eq(trace_count(root, "B", "invalidate"), begun);
	ck_assert_uint_eq(trace_count(root, "E", "invalidate"), begun);
	json_object_put(root);
	umbra_trace_exit();
}
END_TEST

static void *trace_worker(void *arg)
{
	umbra_trace_thread_set(7, (uint32_t)(uintptr_t)arg, "vCPU \"quoted\"\\");
	for (int i = 0; i < 100; i++) {
		uint64_t t0 = umbra_trace_begin_ns(UMBRA_TRACE_FAULT);
		umbra_trace_span(UMBRA_TRACE_FAULT, "fault", t0, &(struct umbra_trace_args){
			.key = { "va" }, .val = { 0x1000u * (unsigned int)i }, .hex = 1 });
	}
	return NULL;
}

/* Threads record at once; the file names their tracks (escaped), holds
 * every span, and the totals say so. */
START_TEST(test_trace_of_several_threads_is_one_json_file)
{
	pthread_t th[4];
	struct umbra_trace_totals t;
	struct json_object *root, *other, *v;

	ck_assert_int_eq(umbra_trace_init(UMBRA_TRACE_ALL, 0), 0);
	ck_assert_int_eq(umbra_trace_process_name(7, "vm \"seven\""), 0);
	for (uintptr_t i = 0; i < 4; i++)
		ck_assert_int_eq(pthread_create(&th[i], NULL, trace_worker, (void *)(i + 1)), 0);
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	umbra_trace_totals(&t);
	ck_assert_uint_eq(t.events, 400);
	ck_assert_uint_eq(t.threads, 4);
	root = trace_parse();
	ck_assert_uint_eq(trace_count(root, "X", "fault"), 400);
	ck_assert_uint_eq(trace_count(root, "M", "thread_name"), 4);
	ck_assert_uint_eq(trace_count(root, "M", "process_name"), 2); /* the VM and umbra itself */
	ck_assert(json_object_object_get_ex(root, "otherData", &other));
	ck_assert(json_object_object_get_ex(other, "dropped_events", &v));
	ck_assert_int_eq(json_object_get_int64(v), 0);
	json_object_put(root);
	umbra_trace_exit();
}
END_TEST

Suite *base_suite(void)
{
	Suite *s = suite_create("base");
	TCase *tc = tcase_create("lock rules");

#if UMBRA_LOCK_DEBUG
	tcase_add_loop_test(tc, test_seeded_violation_aborts_naming_the_rule, 0,
			    (int)(sizeof(violations) / sizeof(violations[0])));
#endif
	tcase_add_test(tc, test_mutex_knows_its_owner);
	tcase_add_test(tc, test_pseudo_lock_is_held_only_between_acquire_and_release);
	tcase_add_test(tc, test_rwlock_admits_readers_together_and_a_writer_alone);
	suite_add_tcase(s, tc);

	TCase *ts = tcase_create("thread slots");
	tcase_add_test(ts, test_thread_slots_count_exactly_from_more_threads_than_slots);
	tcase_add_test(ts, test_thread_slot_is_reused_after_its_thread_exits);
	suite_add_tcase(s, ts);

	TCase *tr = tcase_create("trace");
	tcase_add_loop_test(tr, test_trace_kinds_are_parsed_by_name, 0,
			    (int)(sizeof(trace_kind_lists) / sizeof(trace_kind_lists[0])));
	tcase_add_test(tr, test_trace_off_records_nothing);
	tcase_add_test(tr, test_trace_buffer_at_its_cap_drops_and_counts_but_every_begin_ends);
	tcase_add_test(tr, test_trace_of_several_threads_is_one_json_file);
	suite_add_tcase(s, tr);
	return s;
}
