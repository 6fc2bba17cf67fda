/*
 * pager/clock.c - the CLOCK victim policy (clock.h): one hand over the
 * resident pages of every object added, second chance for young pages.
 *
 * State: an array of objects, each with a resident bitmap; the hand is an
 * (object index, page) pair.  Locks: none; the user serialises (clock.h).
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"

struct clock_obj {
	struct notifier_object *obj;	/* referenced while here */
	uint64_t npages;
	uint64_t *resident;		/* bitmap of npages bits */
	void *priv;			/* pager_clock_set_priv() */
};

struct pager_clock {
	const struct pager_clock_young_ops *ops;
	void *ctx;
	struct clock_obj *objs;
	unsigned int nr_objs, cap_objs;
	unsigned int hand_obj;		/* < nr_objs, or 0 when empty */
	uint64_t hand_page;		/* next page of objs[hand_obj] to look at */
	uint64_t resident_pages;	/* set bits over every bitmap */
	uint64_t total_pages;		/* pages over every object */
	pager_clock_filter_fn filter;	/* NULL: the bitmaps alone say */
	void *filter_ctx;
	struct pager_clock_stats stats;
};

static int notifier_young_test(void *ctx, struct notifier_object *obj, uint64_t page)
{
	return notifier_test_young(obj, page);
}

static int notifier_young_clear(void *ctx, struct notifier_object *obj, uint64_t page)
{
	return notifier_clear_young(obj, page, page);
}

const struct pager_clock_young_ops pager_clock_notifier_young = {
	.test_young = notifier_young_test,
	.clear_young = notifier_young_clear,
};

#define BITS_PER_WORD 64u

static bool bit_test(const uint64_t *map, uint64_t i)
{
	return map[i / BITS_PER_WORD] >> (i % BITS_PER_WORD) & 1;
}

/* Sets or clears bit @i; returns its old value. */
static bool bit_assign(uint64_t *map, uint64_t i, bool on)
{
	const uint64_t mask = 1ull << (i % BITS_PER_WORD);
	const bool old = map[i / BITS_PER_WORD] & mask;

	if (on)
		map[i / BITS_PER_WORD] |= mask;
	else
		map[i / BITS_PER_WORD] &= ~mask;
	return old;
}

int pager_clock_create(const struct pager_clock_young_ops *ops, void *ctx,
		       struct pager_clock **out)
{
	struct pager_clock *clock;

	if (!ops || !ops->test_young || !ops->clear_young)
		return -EINVAL;
	clock = calloc(1, sizeof(*clock));
	if (!clock)
		return -ENOMEM;
	clock->ops = ops;
	clock->ctx = ctx;
	*out = clock;
	return 0;
}

void pager_clock_destroy(struct pager_clock *clock)
{
	if (!clock)
		return;
	for (unsigned int i = 0; i < clock->nr_objs; i++) {
		free(clock->objs[i].resident);
		notifier_object_put(clock->objs[i].obj);
	}
	free(clock->objs);
	free(clock);
}

static struct clock_obj *clock_find(const struct pager_clock *clock,
				    const struct notifier_object *obj, unsigned int *index)
{
	for (unsigned int i = 0; i < clock->nr_objs; i++) {
		if (clock->objs[i].obj == obj) {
			if (index)
				*index = i;
			return &clock->objs[i];
		}
	}
	return NULL;
}

int pager_clock_add_object(struct pager_clock *clock, struct notifier_object *obj, bool resident)
{
	const uint64_t npages = notifier_object_npages(obj);
	const uint64_t words = (npages + BITS_PER_WORD - 1) / BITS_PER_WORD;
	struct clock_obj *co;
	uint64_t *map;

	if (clock_find(clock, obj, NULL))
		return -EEXIST;
	if (clock->nr_objs == clock->cap_objs) {
		unsigned int cap = clock->cap_objs ? 2 * clock->cap_objs : 4;
		struct clock_obj *objs = realloc(clock->objs, cap * sizeof(*objs));

		if (!objs)
			return -ENOMEM;
		clock->objs = objs;
		clock->cap_objs = cap;
	}
	map = calloc(words, sizeof(*map));
	if (!map)
		return -ENOMEM;
	if (resident) {
		for (uint64_t p = 0; p < npages; p++)
			bit_assign(map, p, true);
		clock->resident_pages += npages;
	}
	notifier_object_get(obj);
	clock->total_pages += npages;
	co = &clock->objs[clock->nr_objs++];
	*co = (struct clock_obj){ .obj = obj, .npages = npages, .resident = map };
	return 0;
}

void pager_clock_remove_object(struct pager_clock *clock, struct notifier_object *obj)
{
	struct clock_obj *co;
	unsigned int i;

	co = clock_find(clock, obj, &i);
	if (!co)
		return;
	for (uint64_t p = 0; p < co->npages; p++)
		clock->resident_pages -= bit_test(co->resident, p);
	clock->total_pages -= co->npages;
	free(co->resident);
	notifier_object_put(co->obj);
	memmove(&clock->objs[i], &clock->objs[i + 1], (clock->nr_objs - i - 1) * sizeof(*co));
	clock->nr_objs--;
	if (clock->hand_obj > i) {
		clock->hand_obj--;
	} else if (clock->hand_obj == i) {
		/* The hand was on it: the next object, from its first page. */
		clock->hand_page = 0;
		if (clock->hand_obj >= clock->nr_objs)
			clock->hand_obj = 0;
	}
}

int pager_clock_set_priv(struct pager_clock *clock, struct notifier_object *obj, void *priv)
{
	struct clock_obj *co = clock_find(clock, obj, NULL);

	if (!co)
		return -ENOENT;
	co->priv = priv;
	return 0;
}

void pager_clock_set_filter(struct pager_clock *clock, pager_clock_filter_fn fn, void *ctx)
{
	clock->filter = fn;
	clock->filter_ctx = ctx;
}

int pager_clock_set_resident(struct pager_clock *clock, struct notifier_object *obj,
			     uint64_t page, bool resident)
{
	struct clock_obj *co = clock_find(clock, obj, NULL);
	bool old;

	if (!co)
		return -ENOENT;
	if (page >= co->npages)
		return -EINVAL;
	old = bit_assign(co->resident, page, resident);
	if (old != resident)
		clock->resident_pages += resident ? 1 : (uint64_t)-1;
	return 0;
}

bool pager_clock_is_resident(const struct pager_clock *clock, const struct notifier_object *obj,
			     uint64_t page)
{
	const struct clock_obj *co = clock_find(clock, obj, NULL);

	return co && page < co->npages && bit_test(co->resident, page);
}

/* Moves the hand one page on; true if the page it passed is a candidate
 * (resident, and accepted by the filter if there is one), in *@co, *@page.
 * The clock holds at least one page. */
static bool hand_step(struct pager_clock *clock, struct clock_obj **co, uint64_t *page)
{
	struct clock_obj *o = &clock->objs[clock->hand_obj];

	while (clock->hand_page >= o->npages) {
		clock->hand_obj = (clock->hand_obj + 1) % clock->nr_objs;
		clock->hand_page = 0;
		o = &clock->objs[clock->hand_obj];
	}
	*page = clock->hand_page++;
	*co = o;
	if (!bit_test(o->resident, *page))
		return false;
	return !clock->filter || clock->filter(clock->filter_ctx, o->priv, *page);
}

unsigned int pager_clock_pick(struct pager_clock *clock, struct pager_clock_victim *victims,
			      unsigned int n)
{
	/* Twice round: the first pass may clear every page. */
	uint64_t budget = clock->resident_pages ? 2 * clock->total_pages : 0;
	unsigned int found = 0;
	struct clock_obj *co;
	uint64_t page;

	clock->stats.picks++;
	for (uint64_t step = 0; found < n && step < budget; step++) {
		if (!hand_step(clock, &co, &page))
			continue;
		clock->stats.scanned++;
		if (clock->ops->test_young(clock->ctx, co->obj, page) > 0) {
			/* Second chance: old at the next pass unless touched. */
			clock->ops->clear_young(clock->ctx, co->obj, page);
			clock->stats.second_chances++;
			continue;
		}
		/* Out of the sweep, unless a filter says: never returned twice. */
		if (!clock->filter) {
			bit_assign(co->resident, page, false);
			clock->resident_pages--;
		}
		/* With a filter a victim stays in the sweep: stop before the
		 * hand comes back to the first one. */
		if (clock->filter && !found && step + clock->total_pages < budget)
			budget = step + clock->total_pages;
		victims[found++] = (struct pager_clock_victim){
			.obj = co->obj, .page = page, .priv = co->priv,
		};
	}
	clock->stats.victims += found;
	return found;
}

void pager_clock_stats(const struct pager_clock *clock, struct pager_clock_stats *stats)
{
	*stats = clock->stats;
}
