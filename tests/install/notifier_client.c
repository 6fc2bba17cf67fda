/*
 * A program built outside the tree against the installed notifier library
 * (pkg-config --cflags --libs umbra-notifier): it subscribes to a memory
 * object, invalidates pages 3..9, and checks that its callbacks saw exactly
 * that range once, in each delivery mode.  Exit status 0 when they did.
 */
#include <stdio.h>

#include <umbra/notifier.h>

struct seen {
	unsigned int starts, ends, pages;
	uint64_t first, last;
};

static int on_start(struct notifier_subscription *sub, const struct notifier_range *range)
{
	struct seen *s = notifier_subscription_priv(sub);

	s->starts++;
	s->first = range->first;
	s->last = range->last;
	return 0;
}

static void on_end(struct notifier_subscription *sub, const struct notifier_range *range)
{
	struct seen *s = notifier_subscription_priv(sub);

	s->ends++;
}

static int on_page(struct notifier_subscription *sub, const struct notifier_range *range, uint64_t page)
{
	struct seen *s = notifier_subscription_priv(sub);

	if (s->pages == 0 || page < s->first)
		s->first = page;
	if (s->pages == 0 || page > s->last)
		s->last = page;
	s->pages++;
	return 0;
}

static const struct notifier_ops ops = {
	.invalidate_range_start = on_start,
	.invalidate_range_end = on_end,
	.invalidate_page = on_page,
};

static int check(const char *mode, const struct seen *got, const struct seen *want)
{
	if (got->starts != want->starts || got->ends != want->ends || got->pages != want->pages ||
	    got->first != want->first || got->last != want->last) {
		printf("%s mode: expected starts %u ends %u pages %u range [%llu, %llu], "
		       "got starts %u ends %u pages %u range [%llu, %llu]\n", mode,
		       want->starts, want->ends, want->pages, (unsigned long long)want->first,
		       (unsigned long long)want->last, got->starts, got->ends, got->pages,
		       (unsigned long long)got->first, (unsigned long long)got->last);
		return 1;
	}
	printf("%s mode: the subscriber saw pages [%llu, %llu]\n", mode,
	       (unsigned long long)got->first, (unsigned long long)got->last);
	return 0;
}

static int invalidate(struct notifier_object *obj, enum notifier_mode mode, struct seen *s)
{
	struct notifier_range range;
	int ret;

	*s = (struct seen){ 0 };
	if ((ret = notifier_object_set_mode(obj, mode)))
		return ret;
	notifier_range_init(&range, obj, NOTIFIER_EVENT_SWAPOUT, 3, 9, NOTIFIER_RANGE_MAY_BLOCK);
	if ((ret = notifier_invalidate_range_start(&range)))
		return ret;
	notifier_invalidate_range_end(&range);
	return 0;
}

int main(void)
{
	static const struct seen want_range = { .starts = 1, .ends = 1, .first = 3, .last = 9 };
	static const struct seen want_page = { .pages = 7, .first = 3, .last = 9 };
	struct notifier_subscription *sub;
	struct notifier_object *obj;
	struct seen seen;
	int failed = 0;

	notifier_thread_init();
	if (notifier_object_create("install-test", 16, &obj) ||
	    notifier_subscribe(obj, &ops, &seen, &sub)) {
		printf("could not create an object and subscribe\n");
		return 1;
	}
	failed |= invalidate(obj, NOTIFIER_MODE_RANGE, &seen) || check("range", &seen, &want_range);
	failed |= invalidate(obj, NOTIFIER_MODE_PAGE, &seen) || check("page", &seen, &want_page);
	notifier_unsubscribe(sub);
	notifier_object_destroy(obj);
	notifier_barrier();
	notifier_thread_exit();
	return failed;
}
