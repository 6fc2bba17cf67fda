/*
 * notifier/seq.h - the invalidation side of the sequence/retry protocol
 * (seq.c).  Private to notifier/.
 */
#ifndef UMBRA_NOTIFIER_SEQ_H
#define UMBRA_NOTIFIER_SEQ_H

#include "notifier_internal.h"

/* Set up / tear down @obj's sequence state and seq_lock (object create,
 * and the RCU callback that frees it).  Cannot fail; never blocks. */
void nt_seq_init(struct notifier_object *obj);
void nt_seq_exit(struct notifier_object *obj);

/*
 * Mark @range in progress (readers of overlapping pages wait or retry) and
 * return the subscriber generation every walk of this invalidation uses.
 * Called by notifier_invalidate_range_start inside an RCU read-side
 * critical section, before any callback.  Takes seq_lock (a leaf) briefly.
 */
uint64_t nt_seq_range_begin(struct notifier_object *obj, struct notifier_range *range);

/* Take @range out of progress, advance the sequence and wake the readers
 * waiting in notifier_read_begin (range end, or abort of a failed start).
 * Takes seq_lock briefly; never blocks otherwise. */
void nt_seq_range_finish(struct notifier_object *obj, struct notifier_range *range);

#endif /* UMBRA_NOTIFIER_SEQ_H */
