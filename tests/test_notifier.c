/*
 * Unit tests for notifier/: memory objects, the six callbacks and their
 * contracts, both delivery modes, -EAGAIN pairing, subscription lifetime,
 * the sequence/retry protocol (with the dangerous fault/invalidation
 * interleaving forced deterministically), counters and the trace hook.
 *
 * The subscriber used throughout is a tiny model of a VM's shadow MMU: a
 * per-page map (0 = not mapped, else the version of the page it maps) under
 * its own mmu_lock, which its callbacks take, as shadow/ will.
 */
#include <errno.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "umbra/notifier.h"
#include "test_util.h"
#include "tests.h"

#define expect_eq(what, expected, got)                                                   \
	do {                                                                             \
		unsigned long long e_ = (unsigned long long)(expected);                  \
		unsigned long long g_ = (unsigned long long)(got);                       \
		ck_assert_msg(e_ == g_, "%s: expected %llu, got %llu", (what), e_, g_); \
	} while (0)

#define expect_int(what, expected, got)                                              \
	do {                                                                         \
		long long e_ = (long long)(expected);                                \
		long long g_ = (long long)(got);                                     \
		ck_assert_msg(e_ == g_, "%s: expected %lld, got %lld", (what), e_, g_); \
	} while (0)

#define NPAGES 16

/* ---- a call log shared by the subscribers of a test ----------------- */

enum log_kind { L_START, L_END, L_PAGE, L_CLEAR, L_TEST, L_RELEASE };

struct log_entry {
	enum log_kind kind;
	int sub;
	uint64_t first, last;
	unsigned int flags;
	enum notifier_event event;
	const struct notifier_range *range;
};

static struct {
	pthread_mutex_t lock;
	struct log_entry e[4096];
	unsigned int n;
} call_log = { .lock = PTHREAD_MUTEX_INITIALIZER };

static void log_add(enum log_kind kind, int sub, uint64_t first, uint64_t last,
		    const struct notifier_range *range)
{
	pthread_mutex_lock(&call_log.lock);
	if (call_log.n < sizeof(call_log.e) / sizeof(call_log.e[0])) {
		struct log_entry *e = &call_log.e[call_log.n++];

		e->kind = kind;
		e->sub = sub;
		e->first = first;
		e->last = last;
		e->range = range;
		e->flags = range ? range->flags : 0;
		e->event = range ? range->event : NOTIFIER_EVENT_NR;
	}
	pthread_mutex_unlock(&call_log.lock);
}

static unsigned int log_count(enum log_kind kind, int sub)
{
	unsigned int n = 0;

	pthread_mutex_lock(&call_log.lock);
	for (unsigned int i = 0; i < call_log.n; i++)
		n += call_log.e[i].kind == kind && (sub < 0 || call_log.e[i].sub == sub);
	pthread_mutex_unlock(&call_log.lock);
	return n;
}

/* Index of the first entry of @kind for @sub at or after @from, or -1. */
static int log_find(enum log_kind kind, int sub, unsigned int from)
{
	int found = -1;

	pthread_mutex_lock(&call_log.lock);
	for (unsigned int i = from; i < call_log.n; i++) {
		if (call_log.e[i].kind == kind && call_log.e[i].sub == sub) {
			found = (int)i;
			break;
		}
	}
	pthread_mutex_unlock(&call_log.lock);
	return found;
}

/* ---- the model subscriber ------------------------------------------- */

struct tsub {
	int id;
	struct umbra_mutex mmu_lock;
	uint64_t map[NPAGES];		/* 0: unmapped; else the version mapped */
	bool young[NPAGES];
	int start_answer;		/* what invalidate_range_start returns */
	uint64_t fail_page;		/* invalidate_page answers -EAGAIN here... */
	bool fail_page_armed;		/* ...if armed */
	unsigned int releases;
	bool released;
	unsigned int calls_after_release;
};

static void tsub_init(struct tsub *t, int id)
{
	memset(t, 0, sizeof(*t));
	t->id = id;
	umbra_mutex_init(&t->mmu_lock, "test.mmu_lock", UMBRA_LOCK_RANK_MMU);
}

static void tsub_exit(struct tsub *t)
{
	umbra_mutex_exit(&t->mmu_lock);
}

static struct tsub *tsub_of(struct notifier_subscription *sub)
{
	return notifier_subscription_priv(sub);
}

static void tsub_zap_locked(struct tsub *t, uint64_t first, uint64_t last)
{
	umbra_mutex_assert_held(&t->mmu_lock);
	for (uint64_t p = first; p <= last && p < NPAGES; p++)
		t->map[p] = 0;
}

static void tsub_map_all(struct tsub *t, uint64_t version)
{
	umbra_mutex_lock(&t->mmu_lock);
	for (uint64_t p = 0; p < NPAGES; p++)
		t->map[p] = version;
	umbra_mutex_unlock(&t->mmu_lock);
}

static void tsub_note_call(struct tsub *t)
{
	if (__atomic_load_n(&t->released, __ATOMIC_ACQUIRE))
		__atomic_fetch_add(&t->calls_after_release, 1, __ATOMIC_RELAXED);
}

static int t_start(struct notifier_subscription *sub, const struct notifier_range *r)
{
	struct tsub *t = tsub_of(sub);

	tsub_note_call(t);
	log_add(L_START, t->id, r->first, r->last, r);
	if (t->start_answer)
		return t->start_answer;
	umbra_mutex_lock(&t->mmu_lock);
	tsub_zap_locked(t, r->first, r->last);
	umbra_mutex_unlock(&t->mmu_lock);
	return 0;
}

static void t_end(struct notifier_subscription *sub, const struct notifier_range *r)
{
	struct tsub *t = tsub_of(sub);

	tsub_note_call(t);
	log_add(L_END, t->id, r->first, r->last, r);
}

static int t_page(struct notifier_subscription *sub, const struct notifier_range *r,
		  uint64_t page)
{
	struct tsub *t = tsub_of(sub);

	tsub_note_call(t);
	log_add(L_PAGE, t->id, page, page, r);
	if (t->fail_page_armed && page == t->fail_page)
		return -EAGAIN;
	umbra_mutex_lock(&t->mmu_lock);
	tsub_zap_locked(t, page, page);
	umbra_mutex_unlock(&t->mmu_lock);
	return 0;
}

static int t_clear_young(struct notifier_subscription *sub, struct notifier_object *obj,
			 uint64_t first, uint64_t last)
{
	struct tsub *t = tsub_of(sub);
	int young = 0;

	tsub_note_call(t);
	log_add(L_CLEAR, t->id, first, last, NULL);
	umbra_mutex_lock(&t->mmu_lock);
	for (uint64_t p = first; p <= last; p++) {
		young |= t->young[p];
		t->young[p] = false;
	}
	umbra_mutex_unlock(&t->mmu_lock);
	return young;
}

static int t_test_young(struct notifier_subscription *sub, struct notifier_object *obj,
			uint64_t page)
{
	struct tsub *t = tsub_of(sub);
	int young;

	tsub_note_call(t);
	log_add(L_TEST, t->id, page, page, NULL);
	umbra_mutex_lock(&t->mmu_lock);
	young = t->young[page];
	umbra_mutex_unlock(&t->mmu_lock);
	return young;
}

static void t_release(struct notifier_subscription *sub, struct notifier_object *obj)
{
	struct tsub *t = tsub_of(sub);

	tsub_note_call(t);
	log_add(L_RELEASE, t->id, 0, notifier_object_npages(obj) - 1, NULL);
	umbra_mutex_lock(&t->mmu_lock);
	tsub_zap_locked(t, 0, NPAGES - 1);
	umbra_mutex_unlock(&t->mmu_lock);
	t->releases++;
	__atomic_store_n(&t->released, true, __ATOMIC_RELEASE);
}

static const struct notifier_ops tsub_ops = {
	.invalidate_range_start = t_start,
	.invalidate_range_end = t_end,
	.invalidate_page = t_page,
	.clear_young = t_clear_young,
	.test_young = t_test_young,
	.release = t_release,
};

/* ---- fixture --------------------------------------------------------- */

static struct notifier_object *obj;

static void setup(void)
{
	notifier_thread_init();
	call_log.n = 0;
	ck_assert_int_eq(notifier_object_create("test-ram", NPAGES, &obj), 0);
}

static void teardown(void)
{
	if (obj)
		notifier_object_destroy(obj);
	obj = NULL;
	notifier_barrier();
	notifier_thread_exit();
}

static struct notifier_subscription *subscribe(struct tsub *t)
{
	struct notifier_subscription *sub = NULL;

	ck_assert_int_eq(notifier_subscribe(obj, &tsub_ops, t, &sub), 0);
	return sub;
}

static int invalidate(enum notifier_event ev, uint64_t first, uint64_t last, unsigned int flags)
{
	struct notifier_range r;
	int ret;

	notifier_range_init(&r, obj, ev, first, last, flags);
	ret = notifier_invalidate_range_start(&r);
	if (ret == 0)
		notifier_invalidate_range_end(&r);
	return ret;
}

/* ---- memory objects -------------------------------------------------- */

START_TEST(test_object_create_rejects_bad_arguments)
{
	static const struct {
		const char *name;
		uint64_t npages;
		bool null_out;
	} cases[] = {
		{ NULL, 4, false },
		{ "x", 0, false },
		{ "x", 4, true },
	};

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct notifier_object *o = NULL;
		int ret = notifier_object_create(cases[i].name, cases[i].npages,
						 cases[i].null_out ? NULL : &o);

		expect_int("create with a bad argument", -EINVAL, ret);
		ck_assert_msg(o == NULL, "case %zu: expected no object, got %p", i, (void *)o);
	}
}
END_TEST

START_TEST(test_object_keeps_name_size_and_starts_in_range_mode)
{
	char long_name[200];
	struct notifier_object *o;

	ck_assert_str_eq(notifier_object_name(obj), "test-ram");
	expect_eq("npages", NPAGES, notifier_object_npages(obj));
	expect_int("initial mode", NOTIFIER_MODE_RANGE, notifier_object_mode(obj));
	ck_assert_msg(!notifier_object_is_dead(obj), "expected a live object, got a dead one");

	memset(long_name, 'n', sizeof(long_name) - 1);
	long_name[sizeof(long_name) - 1] = '\0';
	ck_assert_int_eq(notifier_object_create(long_name, 1, &o), 0);
	expect_eq("stored name length", NOTIFIER_NAME_MAX - 1, strlen(notifier_object_name(o)));
	notifier_object_destroy(o);
}
END_TEST

START_TEST(test_set_mode_switches_and_rejects_unknown_modes)
{
	expect_int("set page mode", 0, notifier_object_set_mode(obj, NOTIFIER_MODE_PAGE));
	expect_int("mode", NOTIFIER_MODE_PAGE, notifier_object_mode(obj));
	expect_int("set bad mode", -EINVAL, notifier_object_set_mode(obj, NOTIFIER_MODE_NR));
	expect_int("mode unchanged", NOTIFIER_MODE_PAGE, notifier_object_mode(obj));
	ck_assert_str_eq(notifier_mode_name(NOTIFIER_MODE_RANGE), "range");
	ck_assert_str_eq(notifier_mode_name(NOTIFIER_MODE_PAGE), "page");
	ck_assert_str_eq(notifier_event_name(NOTIFIER_EVENT_COW), "cow");
	ck_assert_str_eq(notifier_event_name(NOTIFIER_EVENT_NR), "?");
}
END_TEST

START_TEST(test_subscribe_rejects_half_implemented_ops)
{
	static const struct notifier_ops only_start = { .invalidate_range_start = t_start };
	static const struct notifier_ops only_page = { .invalidate_page = t_page };
	static const struct notifier_ops observer = { .clear_young = t_clear_young };
	struct notifier_subscription *sub = NULL;
	struct tsub t;

	tsub_init(&t, 0);
	expect_int("only start", -EINVAL, notifier_subscribe(obj, &only_start, &t, &sub));
	expect_int("only page", -EINVAL, notifier_subscribe(obj, &only_page, &t, &sub));
	expect_int("NULL ops", -EINVAL, notifier_subscribe(obj, NULL, &t, &sub));
	expect_int("observer without invalidation callbacks", 0,
		   notifier_subscribe(obj, &observer, &t, &sub));
	expect_int("invalidating with an observer", 0, invalidate(NOTIFIER_EVENT_UNMAP, 0, 1,
								  NOTIFIER_RANGE_MAY_BLOCK));
	notifier_unsubscribe(sub);
	tsub_exit(&t);
}
END_TEST

START_TEST(test_subscribe_to_a_destroyed_object_is_refused)
{
	struct notifier_subscription *sub = NULL;
	struct tsub t;

	tsub_init(&t, 0);
	notifier_object_get(obj);
	notifier_object_destroy(obj);
	ck_assert_msg(notifier_object_is_dead(obj), "expected a dead object after destroy");
	expect_int("subscribe after destroy", -ENODEV, notifier_subscribe(obj, &tsub_ops, &t, &sub));
	notifier_object_put(obj);
	obj = NULL;
	tsub_exit(&t);
}
END_TEST

/* ---- delivery -------------------------------------------------------- */

START_TEST(test_range_mode_delivers_one_start_then_one_end_per_subscriber)
{
	struct tsub t[3];
	struct notifier_subscription *sub[3];
	struct notifier_range r;

	for (int i = 0; i < 3; i++) {
		tsub_init(&t[i], i);
		sub[i] = subscribe(&t[i]);
	}
	notifier_range_init(&r, obj, NOTIFIER_EVENT_SWAPOUT, 3, 9, NOTIFIER_RANGE_MAY_BLOCK);
	expect_int("start", 0, notifier_invalidate_range_start(&r));
	for (int i = 0; i < 3; i++) {
		expect_eq("starts per subscriber before end", 1, log_count(L_START, i));
		expect_eq("ends per subscriber before end", 0, log_count(L_END, i));
	}
	notifier_invalidate_range_end(&r);
	expect_eq("log length", 6, call_log.n);
	for (int i = 0; i < 3; i++) {
		const struct log_entry *s = &call_log.e[i], *e = &call_log.e[3 + i];

		expect_int("start order (subscription order)", i, s->sub);
		expect_int("end order", i, e->sub);
		expect_eq("first", 3, s->first);
		expect_eq("last", 9, s->last);
		expect_int("event", NOTIFIER_EVENT_SWAPOUT, s->event);
		ck_assert_msg(s->range == &r && e->range == &r,
			      "expected the caller's range in both callbacks");
	}
	expect_eq("invalidate_page calls in range mode", 0, log_count(L_PAGE, -1));
	for (int i = 0; i < 3; i++) {
		notifier_unsubscribe(sub[i]);
		tsub_exit(&t[i]);
	}
}
END_TEST

START_TEST(test_page_mode_delivers_each_page_to_each_subscriber_page_major)
{
	struct tsub t[2];
	struct notifier_subscription *sub[2];

	notifier_object_set_mode(obj, NOTIFIER_MODE_PAGE);
	for (int i = 0; i < 2; i++) {
		tsub_init(&t[i], i);
		sub[i] = subscribe(&t[i]);
	}
	expect_int("invalidate", 0, invalidate(NOTIFIER_EVENT_PROTECT, 4, 7, NOTIFIER_RANGE_MAY_BLOCK));
	expect_eq("calls", 8, call_log.n);
	for (unsigned int i = 0; i < call_log.n; i++) {
		const struct log_entry *e = &call_log.e[i];

		expect_int("kind", L_PAGE, e->kind);
		expect_eq("page (page-major order)", 4 + i / 2, e->first);
		expect_int("subscriber within a page", i % 2, e->sub);
		expect_int("event", NOTIFIER_EVENT_PROTECT, e->event);
	}
	for (int i = 0; i < 2; i++) {
		notifier_unsubscribe(sub[i]);
		tsub_exit(&t[i]);
	}
}
END_TEST

/* The guarantee both modes give: after start returns, nothing maps the range. */
START_TEST(test_after_start_no_subscriber_maps_the_range)
{
	enum notifier_mode mode = (enum notifier_mode)_i;
	struct tsub t[2];
	struct notifier_subscription *sub[2];
	struct notifier_range r;

	notifier_object_set_mode(obj, mode);
	for (int i = 0; i < 2; i++) {
		tsub_init(&t[i], i);
		sub[i] = subscribe(&t[i]);
		tsub_map_all(&t[i], 7);
	}
	notifier_range_init(&r, obj, NOTIFIER_EVENT_UNMAP, 2, 5, NOTIFIER_RANGE_MAY_BLOCK);
	expect_int("start", 0, notifier_invalidate_range_start(&r));
	for (int i = 0; i < 2; i++) {
		for (uint64_t p = 0; p < NPAGES; p++) {
			uint64_t want = (p >= 2 && p <= 5) ? 0 : 7;

			ck_assert_msg(t[i].map[p] == want,
				      "%s mode, subscriber %d page %llu: expected %llu, got %llu",
				      notifier_mode_name(mode), i, (unsigned long long)p,
				      (unsigned long long)want, (unsigned long long)t[i].map[p]);
		}
	}
	notifier_invalidate_range_end(&r);
	for (int i = 0; i < 2; i++) {
		notifier_unsubscribe(sub[i]);
		tsub_exit(&t[i]);
	}
}
END_TEST

START_TEST(test_mode_switch_between_start_and_end_keeps_the_pairing)
{
	struct tsub t;
	struct notifier_subscription *sub;
	struct notifier_range r;

	tsub_init(&t, 0);
	sub = subscribe(&t);

	notifier_range_init(&r, obj, NOTIFIER_EVENT_UNMAP, 0, 3, NOTIFIER_RANGE_MAY_BLOCK);
	expect_int("start in range mode", 0, notifier_invalidate_range_start(&r));
	notifier_object_set_mode(obj, NOTIFIER_MODE_PAGE);
	notifier_invalidate_range_end(&r);
	expect_eq("end of a range-mode start after switching to page mode", 1, log_count(L_END, 0));

	notifier_range_init(&r, obj, NOTIFIER_EVENT_UNMAP, 0, 3, NOTIFIER_RANGE_MAY_BLOCK);
	expect_int("start in page mode", 0, notifier_invalidate_range_start(&r));
	notifier_object_set_mode(obj, NOTIFIER_MODE_RANGE);
	notifier_invalidate_range_end(&r);
	expect_eq("ends after a page-mode start", 1, log_count(L_END, 0));
	expect_eq("pages of the page-mode start", 4, log_count(L_PAGE, 0));

	notifier_unsubscribe(sub);
	tsub_exit(&t);
}
END_TEST

START_TEST(test_bad_ranges_are_rejected_without_callbacks)
{
	static const struct {
		const char *what;
		uint64_t first, last;
		enum notifier_event event;
		unsigned int flags;
	} cases[] = {
		{ "first > last", 5, 4, NOTIFIER_EVENT_UNMAP, 0 },
		{ "last past the object", 0, NPAGES, NOTIFIER_EVENT_UNMAP, 0 },
		{ "unknown event", 0, 1, NOTIFIER_EVENT_NR, 0 },
		{ "unknown flag", 0, 1, NOTIFIER_EVENT_UNMAP, 1u << 5 },
	};
	struct tsub t;
	struct notifier_subscription *sub;

	tsub_init(&t, 0);
	sub = subscribe(&t);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct notifier_range r;

		notifier_range_init(&r, obj, cases[i].event, cases[i].first, cases[i].last,
				    cases[i].flags);
		expect_int(cases[i].what, -EINVAL, notifier_invalidate_range_start(&r));
	}
	expect_eq("callbacks for rejected ranges", 0, call_log.n);
	expect_int("clear_young past the object", -EINVAL, notifier_clear_young(obj, 0, NPAGES));
	expect_int("test_young past the object", -EINVAL, notifier_test_young(obj, NPAGES));
	notifier_unsubscribe(sub);
	tsub_exit(&t);
}
END_TEST

START_TEST(test_callbacks_see_whether_they_may_block)
{
	static const unsigned int flags[] = { 0, NOTIFIER_RANGE_MAY_BLOCK };
	struct tsub t;
	struct notifier_subscription *sub;

	tsub_init(&t, 0);
	sub = subscribe(&t);
	for (size_t i = 0; i < 2; i++) {
		call_log.n = 0;
		expect_int("invalidate", 0, invalidate(NOTIFIER_EVENT_UNMAP, 1, 1, flags[i]));
		expect_eq("flags seen by start", flags[i], call_log.e[0].flags);
		expect_eq("flags seen by end", flags[i], call_log.e[1].flags);
	}
	notifier_unsubscribe(sub);
	tsub_exit(&t);
}
END_TEST

/* ---- -EAGAIN and the pairing rule ------------------------------------ */

START_TEST(test_failed_start_ends_the_started_and_not_the_failed)
{
	struct tsub t[3];
	struct notifier_subscription *sub[3];
	struct notifier_stats st;
	uint64_t seq;

	for (int i = 0; i < 3; i++) {
		tsub_init(&t[i], i);
		sub[i] = subscribe(&t[i]);
	}
	t[1].start_answer = -EAGAIN;
	seq = notifier_read_begin(obj, 0, NPAGES - 1);
	expect_int("non-blocking start with a busy subscriber", -EAGAIN,
		   invalidate(NOTIFIER_EVENT_SWAPOUT, 0, 3, 0));
	expect_eq("starts of subscriber 0", 1, log_count(L_START, 0));
	expect_eq("ends of subscriber 0 (its start succeeded)", 1, log_count(L_END, 0));
	expect_eq("starts of subscriber 1", 1, log_count(L_START, 1));
	expect_eq("ends of subscriber 1 (its start failed)", 0, log_count(L_END, 1));
	expect_eq("starts of subscriber 2 (after the failure)", 0, log_count(L_START, 2));
	expect_eq("ends of subscriber 2", 0, log_count(L_END, 2));
	ck_assert_msg(notifier_read_retry(obj, 0, NPAGES - 1, seq),
		      "expected an aborted invalidation to force a retry");
	seq = notifier_read_begin(obj, 0, NPAGES - 1);	/* must not sleep */
	ck_assert_msg(!notifier_read_retry(obj, 0, NPAGES - 1, seq),
		      "expected the aborted range out of progress");
	notifier_object_stats(obj, &st);
	expect_eq("aborts", 1, st.aborts);
	expect_eq("starts", 0, st.starts);
	expect_eq("ends", 0, st.ends);
	expect_eq("callbacks answering -EAGAIN", 1, st.cb_eagain);

	t[1].start_answer = 0;
	expect_int("retry in blockable context", 0,
		   invalidate(NOTIFIER_EVENT_SWAPOUT, 0, 3, NOTIFIER_RANGE_MAY_BLOCK));
	for (int i = 0; i < 3; i++) {
		expect_eq("starts == ends + failed", log_count(L_START, i),
			  log_count(L_END, i) + (i == 1));
		notifier_unsubscribe(sub[i]);
		tsub_exit(&t[i]);
	}
}
END_TEST

START_TEST(test_failed_page_aborts_the_rest_of_the_range)
{
	struct tsub t[2];
	struct notifier_subscription *sub[2];
	uint64_t seq;

	notifier_object_set_mode(obj, NOTIFIER_MODE_PAGE);
	for (int i = 0; i < 2; i++) {
		tsub_init(&t[i], i);
		sub[i] = subscribe(&t[i]);
	}
	t[1].fail_page = 5;
	t[1].fail_page_armed = true;
	expect_int("non-blocking page-mode start", -EAGAIN, invalidate(NOTIFIER_EVENT_SWAPOUT, 3, 9, 0));
	expect_eq("pages delivered to subscriber 0 (3, 4, 5)", 3, log_count(L_PAGE, 0));
	expect_eq("pages delivered to subscriber 1 (3, 4, failed 5)", 3, log_count(L_PAGE, 1));
	expect_eq("ends in page mode", 0, log_count(L_END, -1));
	seq = notifier_read_begin(obj, 3, 9);	/* must not sleep */
	ck_assert_msg(!notifier_read_retry(obj, 3, 9, seq), "expected the aborted range out of progress");
	for (int i = 0; i < 2; i++) {
		notifier_unsubscribe(sub[i]);
		tsub_exit(&t[i]);
	}
}
END_TEST

/* ---- subscription lifetime ------------------------------------------- */

START_TEST(test_unsubscribe_releases_once_and_stops_callbacks)
{
	struct tsub t;
	struct notifier_subscription *sub;

	tsub_init(&t, 0);
	sub = subscribe(&t);
	tsub_map_all(&t, 1);
	notifier_unsubscribe(sub);
	expect_eq("releases", 1, t.releases);
	expect_eq("pages mapped after release", 0, t.map[0] + t.map[NPAGES - 1]);
	expect_int("invalidate after unsubscribe", 0,
		   invalidate(NOTIFIER_EVENT_UNMAP, 0, NPAGES - 1, NOTIFIER_RANGE_MAY_BLOCK));
	notifier_clear_young(obj, 0, 3);
	notifier_test_young(obj, 0);
	expect_eq("callbacks after release", 0, t.calls_after_release);
	expect_eq("log (one release only)", 1, call_log.n);
	tsub_exit(&t);
}
END_TEST

START_TEST(test_destroy_releases_each_subscriber_once)
{
	struct tsub t[3];
	struct notifier_subscription *sub[3];
	struct notifier_stats st;

	for (int i = 0; i < 3; i++) {
		tsub_init(&t[i], i);
		sub[i] = subscribe(&t[i]);
	}
	notifier_unsubscribe(sub[0]);
	notifier_object_get(obj);
	notifier_object_destroy(obj);
	for (int i = 0; i < 3; i++)
		expect_eq("releases after destroy", 1, t[i].releases);
	notifier_unsubscribe(sub[1]);
	notifier_unsubscribe(sub[2]);
	for (int i = 0; i < 3; i++) {
		expect_eq("releases after the late unsubscribe", 1, t[i].releases);
		tsub_exit(&t[i]);
	}
	notifier_object_stats(obj, &st);
	expect_eq("subscribes", 3, st.subscribes);
	expect_eq("unsubscribes", 3, st.unsubscribes);
	expect_eq("releases", 3, st.releases);
	notifier_object_put(obj);
	obj = NULL;
}
END_TEST

START_TEST(test_subscriber_added_mid_invalidation_gets_neither_start_nor_end)
{
	struct tsub a, b;
	struct notifier_subscription *sa, *sb;
	struct notifier_range r;
	uint64_t seq;

	tsub_init(&a, 0);
	tsub_init(&b, 1);
	sa = subscribe(&a);
	notifier_range_init(&r, obj, NOTIFIER_EVENT_UNMAP, 0, 3, NOTIFIER_RANGE_MAY_BLOCK);
	expect_int("start", 0, notifier_invalidate_range_start(&r));
	sb = subscribe(&b);
	/* b cannot map the range while it is in progress. */
	seq = notifier_read_begin(obj, 8, 8);
	ck_assert_msg(notifier_read_retry(obj, 2, 2, seq),
		      "expected a retry for a page of the range in progress");
	notifier_invalidate_range_end(&r);
	expect_eq("a's starts", 1, log_count(L_START, 0));
	expect_eq("a's ends", 1, log_count(L_END, 0));
	expect_eq("b's starts", 0, log_count(L_START, 1));
	expect_eq("b's ends (no end without a start)", 0, log_count(L_END, 1));
	expect_int("next invalidation", 0, invalidate(NOTIFIER_EVENT_UNMAP, 0, 3, NOTIFIER_RANGE_MAY_BLOCK));
	expect_eq("b's starts for the next invalidation", 1, log_count(L_START, 1));
	notifier_unsubscribe(sa);
	notifier_unsubscribe(sb);
	tsub_exit(&a);
	tsub_exit(&b);
}
END_TEST

struct unsub_arg {
	struct notifier_subscription *sub;
	bool done;
};

static void *unsubscribe_thread(void *p)
{
	struct unsub_arg *a = p;

	notifier_unsubscribe(a->sub);
	__atomic_store_n(&a->done, true, __ATOMIC_RELEASE);
	return NULL;
}

static bool unsubscribe_returned(void *p)
{
	return __atomic_load_n(&((struct unsub_arg *)p)->done, __ATOMIC_ACQUIRE);
}

/* A clear_young of page 15 (outside the range) that @sub is asked about while
 * it is attached; false once an unsubscribe of it has detached it. */
struct detach_probe {
	int sub;
	unsigned int probes;
};

static bool unsubscribe_detached(void *p)
{
	struct detach_probe *d = p;
	unsigned int before = log_count(L_CLEAR, d->sub);

	d->probes++;
	notifier_clear_young(obj, NPAGES - 1, NPAGES - 1);
	return log_count(L_CLEAR, d->sub) == before;
}

START_TEST(test_unsubscribe_waits_for_the_end_of_a_started_range)
{
	struct tsub t;
	struct unsub_arg a = { 0 };
	struct detach_probe probe = { .sub = 0 };
	struct notifier_range r;
	pthread_t th;
	int i_start, i_end, i_rel;

	tsub_init(&t, 0);
	a.sub = subscribe(&t);
	notifier_range_init(&r, obj, NOTIFIER_EVENT_UNMAP, 0, 3, NOTIFIER_RANGE_MAY_BLOCK);
	expect_int("start", 0, notifier_invalidate_range_start(&r));
	ck_assert_int_eq(pthread_create(&th, NULL, unsubscribe_thread, &a), 0);
	/* Once clear_young stops asking t, the unsubscribe has detached it and
	 * can only be waiting for the range (or returning wrongly). */
	ck_assert_msg(test_wait_until(unsubscribe_detached, &probe, TEST_WAIT_LIMIT_S),
		      "expected the unsubscribe to detach within %.0f s, still asked after %u probes",
		      TEST_WAIT_LIMIT_S, probe.probes);
	ck_assert_msg(!unsubscribe_returned(&a), "expected unsubscribe to wait for the end, it returned");
	expect_eq("releases before the end", 0, t.releases);
	ck_assert_msg(test_stays_false(unsubscribe_returned, &a, 0.02),
		      "expected unsubscribe to wait for the end, it returned");
	notifier_invalidate_range_end(&r);
	pthread_join(th, NULL);
	i_start = log_find(L_START, 0, 0);
	i_end = log_find(L_END, 0, 0);
	i_rel = log_find(L_RELEASE, 0, 0);
	ck_assert_msg(i_start >= 0 && i_end > i_start && i_rel > i_end,
		      "expected start < end < release in the log, got %d %d %d", i_start, i_end, i_rel);
	tsub_exit(&t);
}
END_TEST

/* ---- young ----------------------------------------------------------- */

START_TEST(test_clear_young_asks_every_subscriber_and_ors_the_answers)
{
	static const struct {
		bool young0, young1;
		int expected;
	} cases[] = { { false, false, 0 }, { true, false, 1 }, { false, true, 1 }, { true, true, 1 } };

	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		struct tsub t[2];
		struct notifier_subscription *sub[2];

		call_log.n = 0;
		for (int i = 0; i < 2; i++) {
			tsub_init(&t[i], i);
			sub[i] = subscribe(&t[i]);
		}
		t[0].young[2] = cases[c].young0;
		t[1].young[3] = cases[c].young1;
		expect_int("clear_young", cases[c].expected, notifier_clear_young(obj, 2, 3));
		expect_eq("subscribers asked", 2, log_count(L_CLEAR, -1));
		expect_int("clear_young again (cleared)", 0, notifier_clear_young(obj, 2, 3));
		for (int i = 0; i < 2; i++) {
			notifier_unsubscribe(sub[i]);
			tsub_exit(&t[i]);
		}
	}
}
END_TEST

START_TEST(test_test_young_stops_at_the_first_young_subscriber)
{
	struct tsub t[3];
	struct notifier_subscription *sub[3];

	for (int i = 0; i < 3; i++) {
		tsub_init(&t[i], i);
		sub[i] = subscribe(&t[i]);
	}
	expect_int("nobody young", 0, notifier_test_young(obj, 6));
	expect_eq("asked", 3, log_count(L_TEST, -1));
	t[1].young[6] = true;
	call_log.n = 0;
	expect_int("subscriber 1 young", 1, notifier_test_young(obj, 6));
	expect_eq("asked (stops at 1)", 2, log_count(L_TEST, -1));
	expect_int("test_young does not clear", 1, notifier_test_young(obj, 6));
	for (int i = 0; i < 3; i++) {
		notifier_unsubscribe(sub[i]);
		tsub_exit(&t[i]);
	}
}
END_TEST

/* ---- sequence / retry ------------------------------------------------ */

enum retry_step { S_NONE, S_START_OVERLAP, S_START_END_OVERLAP, S_START_DISJOINT,
		  S_START_END_DISJOINT, S_ABORTED_OVERLAP };

/* Reader reads page 4 between read_begin and read_retry; what happens in between. */
START_TEST(test_read_retry_answers_for_each_interleaving)
{
	static const struct {
		const char *what;
		enum retry_step step;
		bool retry;
	} cases[] = {
		{ "nothing happened", S_NONE, false },
		{ "overlapping invalidation in progress", S_START_OVERLAP, true },
		{ "overlapping invalidation started and ended", S_START_END_OVERLAP, true },
		{ "disjoint invalidation in progress", S_START_DISJOINT, false },
		{ "disjoint invalidation ended (per-object sequence)", S_START_END_DISJOINT, true },
		{ "overlapping invalidation aborted", S_ABORTED_OVERLAP, true },
	};
	struct tsub t;
	struct notifier_subscription *sub;

	tsub_init(&t, 0);
	sub = subscribe(&t);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct notifier_range r;
		uint64_t seq = notifier_read_begin(obj, 4, 4);
		bool started = false;

		switch (cases[i].step) {
		case S_NONE:
			break;
		case S_START_OVERLAP:
		case S_START_END_OVERLAP:
			notifier_range_init(&r, obj, NOTIFIER_EVENT_UNMAP, 2, 6, NOTIFIER_RANGE_MAY_BLOCK);
			started = notifier_invalidate_range_start(&r) == 0;
			break;
		case S_START_DISJOINT:
		case S_START_END_DISJOINT:
			notifier_range_init(&r, obj, NOTIFIER_EVENT_UNMAP, 8, 9, NOTIFIER_RANGE_MAY_BLOCK);
			started = notifier_invalidate_range_start(&r) == 0;
			break;
		case S_ABORTED_OVERLAP:
			t.start_answer = -EAGAIN;
			notifier_range_init(&r, obj, NOTIFIER_EVENT_UNMAP, 4, 4, 0);
			expect_int("aborted start", -EAGAIN, notifier_invalidate_range_start(&r));
			t.start_answer = 0;
			break;
		}
		if (started && (cases[i].step == S_START_END_OVERLAP ||
				cases[i].step == S_START_END_DISJOINT)) {
			notifier_invalidate_range_end(&r);
			started = false;
		}
		umbra_mutex_lock(&t.mmu_lock);
		ck_assert_msg(notifier_read_retry(obj, 4, 4, seq) == cases[i].retry,
			      "%s: expected retry=%d, got %d", cases[i].what, cases[i].retry,
			      !cases[i].retry);
		umbra_mutex_unlock(&t.mmu_lock);
		if (started)
			notifier_invalidate_range_end(&r);
	}
	notifier_unsubscribe(sub);
	tsub_exit(&t);
}
END_TEST

START_TEST(test_overlapping_invalidations_stay_in_progress_until_the_last_ends)
{
	struct notifier_range a, b;
	uint64_t seq;

	notifier_range_init(&a, obj, NOTIFIER_EVENT_SWAPOUT, 0, 9, NOTIFIER_RANGE_MAY_BLOCK);
	notifier_range_init(&b, obj, NOTIFIER_EVENT_PROTECT, 5, 14, NOTIFIER_RANGE_MAY_BLOCK);
	expect_int("start a", 0, notifier_invalidate_range_start(&a));
	expect_int("start b", 0, notifier_invalidate_range_start(&b));
	notifier_invalidate_range_end(&a);
	seq = notifier_read_begin(obj, 2, 2);	/* only a covered page 2: no sleep */
	ck_assert_msg(!notifier_read_retry(obj, 2, 2, seq), "page 2: expected no retry after a ended");
	ck_assert_msg(notifier_read_retry(obj, 7, 7, seq), "page 7: expected a retry while b is in progress");
	notifier_invalidate_range_end(&b);
	seq = notifier_read_begin(obj, 7, 7);
	ck_assert_msg(!notifier_read_retry(obj, 7, 7, seq), "page 7: expected no retry after both ended");
}
END_TEST

struct reader_arg {
	uint64_t first, last;
	uint64_t seq;
	bool returned;
};

static void *reader_thread(void *p)
{
	struct reader_arg *a = p;

	a->seq = notifier_read_begin(obj, a->first, a->last);
	__atomic_store_n(&a->returned, true, __ATOMIC_RELEASE);
	return NULL;
}

static bool reader_returned(void *p)
{
	return __atomic_load_n(&((struct reader_arg *)p)->returned, __ATOMIC_ACQUIRE);
}

static uint64_t read_waits(void)
{
	struct notifier_stats st;

	notifier_object_stats(obj, &st);
	return st.read_waits;
}

/* Has the reader @a slept in read_begin, or returned? */
static bool reader_asleep_or_returned(void *a)
{
	return reader_returned(a) || read_waits() > 0;
}

START_TEST(test_read_begin_sleeps_only_for_an_overlapping_invalidation)
{
	struct reader_arg overlap = { .first = 3, .last = 3 }, disjoint = { .first = 12, .last = 13 };
	struct notifier_range r;
	struct notifier_stats st;
	pthread_t t1, t2;

	notifier_range_init(&r, obj, NOTIFIER_EVENT_UNMAP, 0, 7, NOTIFIER_RANGE_MAY_BLOCK);
	expect_int("start", 0, notifier_invalidate_range_start(&r));
	ck_assert_int_eq(pthread_create(&t1, NULL, reader_thread, &overlap), 0);
	ck_assert_int_eq(pthread_create(&t2, NULL, reader_thread, &disjoint), 0);
	pthread_join(t2, NULL);
	ck_assert_msg(disjoint.returned, "expected the disjoint reader not to wait");
	/* read_waits counts a reader as it starts to sleep. */
	ck_assert_msg(test_wait_until(reader_asleep_or_returned, &overlap, TEST_WAIT_LIMIT_S),
		      "expected the overlapping reader asleep in read_begin within %.0f s, read_waits %llu",
		      TEST_WAIT_LIMIT_S, (unsigned long long)read_waits());
	ck_assert_msg(!reader_returned(&overlap),
		      "expected the overlapping reader to sleep until the end, it returned");
	notifier_object_stats(obj, &st);
	expect_eq("readers asleep in read_begin", 1, st.read_waits);
	ck_assert_msg(test_stays_false(reader_returned, &overlap, 0.02),
		      "expected the overlapping reader to sleep until the end, it returned");
	notifier_invalidate_range_end(&r);
	pthread_join(t1, NULL);
	ck_assert_msg(!notifier_read_retry(obj, 3, 3, overlap.seq),
		      "expected the woken reader's sequence to be current");
	notifier_object_stats(obj, &st);
	expect_eq("read_begins", 2, st.read_begins);
	expect_eq("read_waits", 1, st.read_waits);
}
END_TEST

/*
 * The dangerous interleaving, forced step by step:
 *
 *   fault thread                       invalidation thread
 *   seq = read_begin(p)
 *   v = backing[p]          (old)
 *                                      start(p): zap under mmu_lock
 *                                      backing[p] = new
 *   lock mmu_lock
 *   read_retry(seq) -> true: retry     (without the check: install old v)
 *   unlock
 *                                      end(p)
 *   seq = read_begin(p); v = new; lock; read_retry -> false; install new
 */
static struct {
	sem_t resolved, changed, attempted;
	uint64_t backing;
	struct tsub t;
	unsigned int attempts;
	uint64_t first_v, installed;
	bool first_v_was_stale;
} race;

static void *fault_thread(void *p)
{
	const uint64_t page = 5;

	notifier_thread_init();
	for (;;) {
		uint64_t seq = notifier_read_begin(obj, page, page);
		uint64_t v = __atomic_load_n(&race.backing, __ATOMIC_ACQUIRE);
		bool retry;

		race.attempts++;
		if (race.attempts == 1) {
			race.first_v = v;
			sem_post(&race.resolved);
			sem_wait(&race.changed);
		}
		umbra_mutex_lock(&race.t.mmu_lock);
		retry = notifier_read_retry(obj, page, page, seq);
		if (race.attempts == 1)
			race.first_v_was_stale = v != __atomic_load_n(&race.backing, __ATOMIC_ACQUIRE);
		if (!retry) {
			race.t.map[page] = v;
			race.installed = v;
		}
		umbra_mutex_unlock(&race.t.mmu_lock);
		if (race.attempts == 1)
			sem_post(&race.attempted);
		if (!retry)
			break;
	}
	notifier_thread_exit();
	return NULL;
}

START_TEST(test_fault_racing_an_invalidation_retries_instead_of_installing_stale)
{
	enum notifier_mode mode = (enum notifier_mode)_i;
	struct notifier_subscription *sub;
	struct notifier_range r;
	pthread_t th;

	memset(&race, 0, sizeof(race));
	sem_init(&race.resolved, 0, 0);
	sem_init(&race.changed, 0, 0);
	sem_init(&race.attempted, 0, 0);
	race.backing = 100;
	notifier_object_set_mode(obj, mode);
	tsub_init(&race.t, 0);
	sub = subscribe(&race.t);

	ck_assert_int_eq(pthread_create(&th, NULL, fault_thread, NULL), 0);
	sem_wait(&race.resolved);
	notifier_range_init(&r, obj, NOTIFIER_EVENT_SWAPOUT, 4, 6, NOTIFIER_RANGE_MAY_BLOCK);
	expect_int("start", 0, notifier_invalidate_range_start(&r));
	__atomic_store_n(&race.backing, 200, __ATOMIC_RELEASE);
	sem_post(&race.changed);
	sem_wait(&race.attempted);
	expect_eq("installs before the end", 0, race.installed);
	notifier_invalidate_range_end(&r);
	pthread_join(th, NULL);

	ck_assert_msg(race.first_v_was_stale,
		      "setup: expected the first resolution to be stale at install time");
	expect_eq("first resolution", 100, race.first_v);
	expect_eq("attempts (one retry)", 2, race.attempts);
	expect_eq("installed version", 200, race.installed);
	expect_eq("mapped version", 200, race.t.map[5]);
	notifier_unsubscribe(sub);
	tsub_exit(&race.t);
	sem_destroy(&race.resolved);
	sem_destroy(&race.changed);
	sem_destroy(&race.attempted);
}
END_TEST

/* ---- counters and trace ---------------------------------------------- */

START_TEST(test_counters_count_invalidations_pages_events_and_callbacks)
{
	struct tsub t[2];
	struct notifier_subscription *sub[2];
	struct notifier_stats st;

	for (int i = 0; i < 2; i++) {
		tsub_init(&t[i], i);
		sub[i] = subscribe(&t[i]);
	}
	invalidate(NOTIFIER_EVENT_SWAPOUT, 0, 3, NOTIFIER_RANGE_MAY_BLOCK);	/* range, 4 pages */
	invalidate(NOTIFIER_EVENT_COW, 8, 8, NOTIFIER_RANGE_MAY_BLOCK);	/* range, 1 page */
	notifier_object_set_mode(obj, NOTIFIER_MODE_PAGE);
	invalidate(NOTIFIER_EVENT_SWAPOUT, 10, 12, NOTIFIER_RANGE_MAY_BLOCK);	/* page, 3 pages */
	notifier_clear_young(obj, 0, 1);
	notifier_test_young(obj, 0);
	notifier_object_stats(obj, &st);
	expect_eq("starts", 3, st.starts);
	expect_eq("ends", 3, st.ends);
	expect_eq("pages", 8, st.pages);
	expect_eq("swapout events", 2, st.events[NOTIFIER_EVENT_SWAPOUT]);
	expect_eq("cow events", 1, st.events[NOTIFIER_EVENT_COW]);
	expect_eq("unmap events", 0, st.events[NOTIFIER_EVENT_UNMAP]);
	expect_eq("range-mode starts", 2, st.starts_by_mode[NOTIFIER_MODE_RANGE]);
	expect_eq("page-mode starts", 1, st.starts_by_mode[NOTIFIER_MODE_PAGE]);
	expect_eq("range_start callbacks", 4, st.cb_range_start);
	expect_eq("range_end callbacks", 4, st.cb_range_end);
	expect_eq("page callbacks", 6, st.cb_page);
	expect_eq("clear_young", 1, st.clear_young);
	expect_eq("test_young", 1, st.test_young);
	expect_eq("subscribes", 2, st.subscribes);
	for (int i = 0; i < 2; i++) {
		notifier_unsubscribe(sub[i]);
		tsub_exit(&t[i]);
	}
}
END_TEST

struct trace_buf {
	pthread_mutex_t lock;
	struct notifier_trace_record rec[64];
	unsigned int n;
};

static void trace_into(void *arg, const struct notifier_trace_record *rec)
{
	struct trace_buf *b = arg;

	pthread_mutex_lock(&b->lock);
	if (b->n < 64)
		b->rec[b->n++] = *rec;
	pthread_mutex_unlock(&b->lock);
}

START_TEST(test_trace_hook_records_each_delivery_until_removed)
{
	struct trace_buf buf = { .lock = PTHREAD_MUTEX_INITIALIZER };
	struct tsub t[2];
	struct notifier_subscription *sub[2];
	uint64_t before = 0;
	struct timespec ts;
	static const enum notifier_trace_kind want[] = {
		NOTIFIER_TRACE_RANGE_START, NOTIFIER_TRACE_RANGE_START,
		NOTIFIER_TRACE_RANGE_END, NOTIFIER_TRACE_RANGE_END,
		NOTIFIER_TRACE_PAGE, NOTIFIER_TRACE_PAGE,
		NOTIFIER_TRACE_TEST_YOUNG, NOTIFIER_TRACE_TEST_YOUNG,
	};

	for (int i = 0; i < 2; i++) {
		tsub_init(&t[i], i);
		sub[i] = subscribe(&t[i]);
	}
	clock_gettime(CLOCK_MONOTONIC, &ts);
	before = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
	ck_assert_int_eq(notifier_object_set_trace(obj, trace_into, &buf), 0);
	invalidate(NOTIFIER_EVENT_PROTECT, 2, 3, NOTIFIER_RANGE_MAY_BLOCK);
	notifier_object_set_mode(obj, NOTIFIER_MODE_PAGE);
	invalidate(NOTIFIER_EVENT_COW, 9, 9, NOTIFIER_RANGE_MAY_BLOCK);
	notifier_test_young(obj, 1);
	expect_eq("records", 8, buf.n);
	for (unsigned int i = 0; i < buf.n; i++) {
		const struct notifier_trace_record *rec = &buf.rec[i];

		ck_assert_msg(rec->kind == want[i], "record %u: expected %s, got %s", i,
			      notifier_trace_kind_name(want[i]), notifier_trace_kind_name(rec->kind));
		ck_assert_msg(rec->sub == sub[i % 2], "record %u: expected subscriber %u", i, i % 2);
		ck_assert_msg(rec->obj == obj, "record %u: expected the object", i);
		ck_assert_msg(rec->time_ns >= before, "record %u: timestamp before the test", i);
		if (i)
			ck_assert_msg(rec->time_ns >= buf.rec[i - 1].time_ns,
				      "record %u: timestamps go backwards", i);
	}
	expect_eq("range start first", 2, buf.rec[0].first);
	expect_eq("range start last", 3, buf.rec[0].last);
	expect_int("range event", NOTIFIER_EVENT_PROTECT, buf.rec[0].event);
	expect_eq("page record page", 9, buf.rec[4].first);
	expect_int("page record event", NOTIFIER_EVENT_COW, buf.rec[4].event);

	ck_assert_int_eq(notifier_object_set_trace(obj, NULL, NULL), 0);
	invalidate(NOTIFIER_EVENT_COW, 9, 9, NOTIFIER_RANGE_MAY_BLOCK);
	expect_eq("records after removal", 8, buf.n);
	for (int i = 0; i < 2; i++) {
		notifier_unsubscribe(sub[i]);
		tsub_exit(&t[i]);
	}
}
END_TEST

Suite *notifier_suite(void)
{
	Suite *s = suite_create("notifier");
	TCase *tc;

	tc = tcase_create("object");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_object_create_rejects_bad_arguments);
	tcase_add_test(tc, test_object_keeps_name_size_and_starts_in_range_mode);
	tcase_add_test(tc, test_set_mode_switches_and_rejects_unknown_modes);
	tcase_add_test(tc, test_subscribe_rejects_half_implemented_ops);
	tcase_add_test(tc, test_subscribe_to_a_destroyed_object_is_refused);
	suite_add_tcase(s, tc);

	tc = tcase_create("delivery");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_range_mode_delivers_one_start_then_one_end_per_subscriber);
	tcase_add_test(tc, test_page_mode_delivers_each_page_to_each_subscriber_page_major);
	tcase_add_loop_test(tc, test_after_start_no_subscriber_maps_the_range, NOTIFIER_MODE_RANGE,
			    NOTIFIER_MODE_NR);
	tcase_add_test(tc, test_mode_switch_between_start_and_end_keeps_the_pairing);
	tcase_add_test(tc, test_bad_ranges_are_rejected_without_callbacks);
	tcase_add_test(tc, test_callbacks_see_whether_they_may_block);
	suite_add_tcase(s, tc);

	tc = tcase_create("eagain");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_failed_start_ends_the_started_and_not_the_failed);
	tcase_add_test(tc, test_failed_page_aborts_the_rest_of_the_range);
	suite_add_tcase(s, tc);

	tc = tcase_create("lifetime");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_unsubscribe_releases_once_and_stops_callbacks);
	tcase_add_test(tc, test_destroy_releases_each_subscriber_once);
	tcase_add_test(tc, test_subscriber_added_mid_invalidation_gets_neither_start_nor_end);
	tcase_add_test(tc, test_unsubscribe_waits_for_the_end_of_a_started_range);
	suite_add_tcase(s, tc);

	tc = tcase_create("young");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_clear_young_asks_every_subscriber_and_ors_the_answers);
	tcase_add_test(tc, test_test_young_stops_at_the_first_young_subscriber);
	suite_add_tcase(s, tc);

	tc = tcase_create("seq");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_read_retry_answers_for_each_interleaving);
	tcase_add_test(tc, test_overlapping_invalidations_stay_in_progress_until_the_last_ends);
	tcase_add_test(tc, test_read_begin_sleeps_only_for_an_overlapping_invalidation);
	tcase_add_loop_test(tc, test_fault_racing_an_invalidation_retries_instead_of_installing_stale,
			    NOTIFIER_MODE_RANGE, NOTIFIER_MODE_NR);
	suite_add_tcase(s, tc);

	tc = tcase_create("observability");
	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_counters_count_invalidations_pages_events_and_callbacks);
	tcase_add_test(tc, test_trace_hook_records_each_delivery_until_removed);
	suite_add_tcase(s, tc);

	return s;
}
