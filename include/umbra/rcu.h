/*
 * umbra/rcu.h - the one liburcu (urcu-memb flavour) read side and deferred
 * work of umbra, with the ThreadSanitizer annotations liburcu lacks.
 *
 * notifier/ protects its subscriber lists with it; shadow/ defers the reuse
 * of table pages past the lock-free walks that may still read them.  Every
 * thread that enters a read-side critical section must be registered
 * (umbra_rcu_register_thread, or notifier_thread_init which calls it).
 *
 * liburcu is an implementation detail: no umbra header includes it.
 *
 * TSan: liburcu is not instrumented.  A grace period guarantees that every
 * critical section that began before it has ended; the annotations model
 * that with a release at each read unlock and an acquire after each grace
 * period (umbra_synchronize_rcu, and before every umbra_call_rcu callback).
 */
#ifndef UMBRA_RCU_H
#define UMBRA_RCU_H

#include <stdbool.h>
#include <stddef.h>

/*
 * Register / unregister the calling thread with liburcu-memb.  Idempotent
 * per thread; unregistering a thread that is not registered is a no-op.
 * Not inside a read-side critical section.  Cannot fail.
 */
void umbra_rcu_register_thread(void);
void umbra_rcu_unregister_thread(void);
/* Whether this thread is registered (for assertions).  Lock-free. */
bool umbra_rcu_thread_is_registered(void);

/* A read-side critical section (nests).  Never blocks; the thread must be
 * registered and must not wait for a grace period inside. */
void umbra_rcu_read_lock(void);
void umbra_rcu_read_unlock(void);

/* Whether the calling thread is inside a read-side critical section (for
 * the assertions of lock-free iterators).  Lock-free. */
bool umbra_rcu_is_reader(void);

/* Wait for a grace period.  May block: not inside a read-side critical
 * section, not from an umbra_call_rcu callback. */
void umbra_synchronize_rcu(void);

/*
 * Deferred work: umbra_call_rcu() runs @func(@work) on liburcu's worker
 * thread after a grace period.  @work (usually embedded in the object to
 * free) must live until then.  Never blocks; may be called from @func
 * itself (requeue).  @func runs with no lock of its caller held, in no
 * read-side section; it must not block for a grace period.
 */
struct umbra_rcu_work {
	void *head[2];					/* private: liburcu's rcu_head */
	void (*func)(struct umbra_rcu_work *work);	/* private */
};

void umbra_call_rcu(struct umbra_rcu_work *work, void (*func)(struct umbra_rcu_work *work));

/*
 * Starts liburcu's worker thread, which runs umbra_call_rcu work, now if it
 * is not running yet (else the first umbra_call_rcu starts it).
 * shadow_pool_create calls it, so that what a process's locks cost does not
 * change halfway through its life: glibc (2.35 and later) takes a private
 * mutex without an atomic instruction while the process has one thread,
 * and the first deferred free would otherwise end that.  May block (it
 * creates a thread); not inside a read-side critical section.  A process
 * that forks keeps the worker in the parent only (liburcu's rule).
 */
void umbra_rcu_worker_start(void);

/* The object of type @type whose member @member is at @ptr (e.g. the
 * object an umbra_rcu_work callback frees). */
#define umbra_container_of(ptr, type, member) \
	((type *)(void *)((char *)(ptr) - offsetof(type, member)))

/*
 * Wait until every umbra_call_rcu() callback queued so far has run.  May
 * block: not from a callback or a read-side section.  Programs and tests
 * call it before exit.
 */
void umbra_rcu_barrier(void);

#endif /* UMBRA_RCU_H */
