/*
 * The P2M radix tree (p2m.h): lock-free lookups, stores that copy the
 * shared nodes on their path first, the O(1) share of a clone, and the
 * release of nodes and of the page references their entries hold
 * (docs/shadow.md, "The P2M"; docs/sharing.md, "Fork-style sharing").
 *
 * Locks and lifetimes:
 *  - stores, path copies and the share of a clone run under the storing
 *    VM's mmu_lock (asserted); a VM writes only nodes of its own tree whose
 *    use count is 1, which no other VM reaches (a node becomes shared only
 *    by a clone, which takes that VM's mmu_lock);
 *  - use counts are atomic: another VM may drop its reference to a node we
 *    also hold at any time; whoever drops the last one releases the node
 *    after its mmu_lock is dropped (struct p2m_batch): children lose a
 *    reference, a leaf's present entries lose their page references, and
 *    the node is freed after an RCU grace period;
 *  - lookups take no lock: they run inside an RCU read-side section (the
 *    thread is registered with liburcu on its first lookup and unregistered
 *    when it exits), so a node that another VM released after we replaced
 *    it, while we were still reading it, is not freed under the lookup.
 *    Under mmu_lock a VM reads its own tree with no RCU section needed:
 *    the nodes it reaches are held by its own references;
 *  - a reader (struct p2m_reader) makes several lookups in one read-side
 *    section and keeps the chunk (leaf node or linear entry) its last walk
 *    reached, which the section keeps from being freed: a lookup in the
 *    same chunk reads it without a walk from the root.  A store that
 *    replaces the chunk meanwhile (a path copy, a linear run expanded)
 *    leaves the reader on the old one, as if its lookups in that chunk had
 *    been made before the store; the fault path, its one user, re-checks
 *    what it read against sync_seq, which every P2M store advances.
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "mmu_internal.h"

/* ---- lock-free readers ------------------------------------------------------ */

static pthread_key_t reader_key;
static pthread_once_t reader_once = PTHREAD_ONCE_INIT;

static void reader_thread_exit(void *arg)
{
	(void)arg;
	umbra_rcu_unregister_thread();
}

static void reader_key_create(void)
{
	if (pthread_key_create(&reader_key, reader_thread_exit))
		abort(); /* no key left in the process: nothing can be made safe */
}

/* Enters a read-side section, registering the thread first if it is not. */
static void p2m_read_lock(void)
{
	if (!umbra_rcu_thread_is_registered()) {
		pthread_once(&reader_once, reader_key_create);
		umbra_rcu_register_thread();
		pthread_setspecific(reader_key, (void *)1);
	}
	umbra_rcu_read_lock();
}

/* The chunk of @gfn as its path from the root reaches it: the level-1
 * node (as its pointer), a linear level-2 entry, or 0 (nothing mapped);
 * *@priv cleared if a node above the chunk has another user.  Under an RCU
 * read-side section or mmu_lock. */
static uint64_t p2m_walk_to_chunk(struct shadow_mmu *mmu, uint64_t gfn, bool *priv)
{
	uint64_t x = __atomic_load_n(&mmu->p2m_root, __ATOMIC_ACQUIRE);

	for (int l = mmu->p2m_levels; l > 1 && x && !p2m_is_linear(x); l--) {
		const struct p2m_node *n = p2m_node_of(x);

		*priv &= __atomic_load_n(&n->use, __ATOMIC_ACQUIRE) == 1;
		x = __atomic_load_n(&n->e[p2m_index(gfn, l)], __ATOMIC_ACQUIRE);
	}
	return x;
}

/* The entry of @gfn in its chunk @x (p2m_walk_to_chunk's); *@priv cleared
 * if the chunk's leaf node has another user.  Under an RCU read-side
 * section or mmu_lock. */
static uint64_t p2m_chunk_entry(uint64_t x, uint64_t gfn, bool *priv)
{
	const struct p2m_node *n;

	if (!x)
		return P2M_NONE;
	if (p2m_is_linear(x))
		return p2m_linear_entry(x, gfn & (P2M_CHUNK_PAGES - 1));
	n = p2m_node_of(x);
	*priv &= __atomic_load_n(&n->use, __ATOMIC_ACQUIRE) == 1;
	return __atomic_load_n(&n->e[p2m_index(gfn, 1)], __ATOMIC_ACQUIRE);
}

/* The walk of a lookup: under an RCU read-side section or mmu_lock. */
static uint64_t p2m_walk_to_entry(struct shadow_mmu *mmu, uint64_t gfn, bool *private)
{
	bool priv = true;
	const uint64_t e = p2m_chunk_entry(p2m_walk_to_chunk(mmu, gfn, &priv), gfn, &priv);

	if (private)
		*private = priv;
	return e;
}

uint64_t p2m_entry_lookup(struct shadow_mmu *mmu, uint64_t gfn, bool *private)
{
	uint64_t e;

	p2m_read_lock();
	e = p2m_walk_to_entry(mmu, gfn, private);
	umbra_rcu_read_unlock();
	return e;
}

uint64_t p2m_entry_lookup_locked(struct shadow_mmu *mmu, uint64_t gfn, bool *private)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	return p2m_walk_to_entry(mmu, gfn, private);
}

void p2m_reader_begin(struct p2m_reader *r, struct shadow_mmu *mmu)
{
	p2m_read_lock();
	r->mmu = mmu;
	r->chunk = UINT64_MAX;
}

void p2m_reader_end(struct p2m_reader *r)
{
	(void)r;
	umbra_rcu_read_unlock();
}

uint64_t p2m_reader_lookup(struct p2m_reader *r, uint64_t gfn, bool *private)
{
	const uint64_t chunk = gfn / P2M_CHUNK_PAGES;
	bool priv;

	if (chunk != r->chunk) {
		r->private_above = true;
		r->x = p2m_walk_to_chunk(r->mmu, gfn, &r->private_above);
		r->chunk = chunk;
	}
	priv = r->private_above;
	const uint64_t e = p2m_chunk_entry(r->x, gfn, &priv);

	if (private)
		*private = priv;
	return e;
}

uint64_t p2m_chunk_linear_locked(struct shadow_mmu *mmu, uint64_t gfn)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	uint64_t x = __atomic_load_n(&mmu->p2m_root, __ATOMIC_ACQUIRE);

	for (int l = mmu->p2m_levels; l > 1 && x; l--) {
		if (p2m_is_linear(x))
			return x;
		x = __atomic_load_n(&p2m_node_of(x)->e[p2m_index(gfn, l)], __ATOMIC_ACQUIRE);
	}
	return p2m_is_linear(x) ? x : 0;
}

/* ---- nodes ------------------------------------------------------------------ */

static struct p2m_node *node_alloc(int level)
{
	struct p2m_node *n = calloc(1, sizeof(*n));

	if (n) {
		n->use = 1;
		n->level = (uint8_t)level;
	}
	return n;
}

static void node_free_rcu(struct umbra_rcu_work *work)
{
	free(umbra_container_of(work, struct p2m_node, rcu));
}

/* Does entry @e hold a page reference (a page of a counted slot:
 * slot_is_counted)? */
static bool entry_is_counted(struct shadow_mmu *mmu, uint64_t e)
{
	return p2m_entry_is_present(e) && slot_is_counted(mmu, &mmu->slots[p2m_entry_slot_id(e)]);
}

/* Gives page @page of @slot back to its owner: no P2M maps it.  No shadow
 * lock held. */
static void put_page_now(struct shadow_mmu *mmu, struct shadow_mmu_slot *slot, uint64_t page)
{
	shadow_assert_no_lock_held();
	if (slot->s.ops && slot->s.ops->put_page)
		slot->s.ops->put_page(slot->s.priv, page);
	mmu_stat_inc(mmu, pages_freed);
}

/* Releases node @n, whose last reference was dropped: its children and
 * page references go (a page of slot @skip_id excepted), then the node,
 * after a grace period.  No shadow lock held (put_page may block). */
static void node_release(struct shadow_mmu *mmu, struct p2m_node *n, int skip_id)
{
	for (unsigned int k = 0; k < P2M_NODE_ENTRIES; k++) {
		uint64_t x = __atomic_load_n(&n->e[k], __ATOMIC_ACQUIRE);
		uint64_t e = p2m_is_linear(x) ? p2m_linear_entry(x, 0) : x;
		uint64_t pages = p2m_is_linear(x) ? P2M_CHUNK_PAGES : 1;

		if (n->level > 1 && x && !p2m_is_linear(x)) {
			if (__atomic_sub_fetch(&p2m_node_of(x)->use, 1, __ATOMIC_ACQ_REL) == 0)
				node_release(mmu, p2m_node_of(x), skip_id);
			continue;
		}
		if (!entry_is_counted(mmu, e) || p2m_entry_slot_id(e) == skip_id)
			continue;
		struct shadow_mmu_slot *slot = &mmu->slots[p2m_entry_slot_id(e)];

		if (pages == 1) {
			if (page_ref_put(slot->pobj, p2m_entry_page(e)))
				put_page_now(mmu, slot, p2m_entry_page(e));
			continue;
		}
		uint64_t freed[SPTE_ENTRIES / 64];

		if (!page_ref_put_run(slot->pobj, p2m_entry_page(e), freed))
			continue;
		for (unsigned int j = 0; j < SPTE_ENTRIES; j++)
			if (freed[j / 64] & (1ull << (j % 64)))
				put_page_now(mmu, slot, p2m_entry_page(e) + j);
	}
	umbra_call_rcu(&n->rcu, node_free_rcu);
}

/* Drops one reference to @n; the last one queues it on @b for release. */
static void node_put_locked(struct shadow_mmu *mmu, struct p2m_node *n, struct p2m_batch *b)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	if (__atomic_sub_fetch(&n->use, 1, __ATOMIC_ACQ_REL) == 0) {
		n->next = b->nodes;
		b->nodes = n;
	}
}

/* The page references entry @x of a node holds: *@e the first entry,
 * the count of pages from it (a linear run's 512, a leaf entry's 1; 0 for
 * none: a child pointer, nothing, a shared slot's). */
static uint64_t entry_refs(struct shadow_mmu *mmu, const struct p2m_node *n, uint64_t x,
			   uint64_t *e)
{
	if (p2m_is_linear(x)) {
		*e = p2m_linear_entry(x, 0);
		return entry_is_counted(mmu, *e) ? P2M_CHUNK_PAGES : 0;
	}
	*e = x;
	return n->level == 1 && entry_is_counted(mmu, x) ? 1 : 0;
}

/*
 * A private copy of the shared node @n: a copied interior node adds a
 * reference to each child, and every copied entry that maps pages of a
 * counted slot (a leaf's entry, a linear run) a reference to each.  0
 * or -ENOMEM (nothing changed).  mmu_lock.
 */
static int node_copy_locked(struct shadow_mmu *mmu, struct p2m_node *n, struct p2m_node **out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	struct p2m_node *c;
	uint64_t e, pages;

	for (unsigned int k = 0; k < P2M_NODE_ENTRIES; k++) {
		pages = entry_refs(mmu, n, __atomic_load_n(&n->e[k], __ATOMIC_RELAXED), &e);
		if (pages == 1 && page_ref_prepare(mmu->slots[p2m_entry_slot_id(e)].pobj, p2m_entry_page(e)))
			return -ENOMEM;
		if (pages > 1 && page_ref_prepare_run(mmu->slots[p2m_entry_slot_id(e)].pobj, p2m_entry_page(e)))
			return -ENOMEM;
	}
	c = node_alloc(n->level);
	if (!c)
		return -ENOMEM;
	for (unsigned int k = 0; k < P2M_NODE_ENTRIES; k++) {
		uint64_t x = __atomic_load_n(&n->e[k], __ATOMIC_RELAXED);

		c->e[k] = x;
		if (n->level > 1 && x && !p2m_is_linear(x))
			__atomic_add_fetch(&p2m_node_of(x)->use, 1, __ATOMIC_RELAXED);
		pages = entry_refs(mmu, n, x, &e);
		if (pages == 1)
			page_ref_get(mmu->slots[p2m_entry_slot_id(e)].pobj, p2m_entry_page(e));
		else if (pages > 1)
			page_ref_get_run(mmu->slots[p2m_entry_slot_id(e)].pobj, p2m_entry_page(e));
	}
	mmu_stat_inc(mmu, p2m_nodes_copied);
	*out = c;
	return 0;
}

/*
 * The node of level @level for @ref's entry (@ref in a node of level
 * @level + 1, or the root), made private: a shared node is copied (the
 * copy replaces it in @ref, our reference to it goes to @b), a missing one
 * created if @create, a linear run expanded into a leaf.  0, 1 (missing,
 * not created) or -ENOMEM.  mmu_lock.
 */
static int node_private_locked(struct shadow_mmu *mmu, uint64_t *ref, int level, bool create,
			       struct p2m_batch *b, struct p2m_node **out)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	uint64_t x = __atomic_load_n(ref, __ATOMIC_RELAXED);
	struct p2m_node *n;
	int ret;

	if (x && !p2m_is_linear(x)) {
		n = p2m_node_of(x);
		if (__atomic_load_n(&n->use, __ATOMIC_ACQUIRE) == 1) {
			*out = n;
			return 0;
		}
		ret = node_copy_locked(mmu, n, out);
		if (ret)
			return ret;
		__atomic_store_n(ref, (uint64_t)(uintptr_t)*out, __ATOMIC_RELEASE);
		node_put_locked(mmu, n, b);
		return 0;
	}
	if (!x && !create)
		return 1;
	n = node_alloc(level);
	if (!n)
		return -ENOMEM;
	if (x && entry_is_counted(mmu, p2m_linear_entry(x, 0))) {
		uint64_t e = p2m_linear_entry(x, 0);

		/* The run's reference passes to the leaf's 512 entries. */
		if (page_ref_expand_run(mmu->slots[p2m_entry_slot_id(e)].pobj, p2m_entry_page(e))) {
			free(n);
			return -ENOMEM;
		}
	}
	for (unsigned int k = 0; x && k < P2M_NODE_ENTRIES; k++)
		n->e[k] = p2m_linear_entry(x, k);
	__atomic_store_n(ref, (uint64_t)(uintptr_t)n, __ATOMIC_RELEASE);
	*out = n;
	return 0;
}

/*
 * The entry of gfn @gfn in its node of level @stop, every node on the path
 * made private (node_private_locked).  0, 1 (no node there, @create false)
 * or -ENOMEM (the path is private down to where the allocation failed).
 * mmu_lock.
 */
static int path_private_locked(struct shadow_mmu *mmu, uint64_t gfn, int stop, bool create,
			       struct p2m_batch *b, uint64_t **entry)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	uint64_t *ref = &mmu->p2m_root;

	for (int l = mmu->p2m_levels; l >= stop; l--) {
		struct p2m_node *n;
		int ret = node_private_locked(mmu, ref, l, create, b, &n);

		if (ret)
			return ret;
		ref = &n->e[p2m_index(gfn, l)];
	}
	*entry = ref;
	return 0;
}

int p2m_path_privatize_locked(struct shadow_mmu *mmu, uint64_t gfn, struct p2m_batch *b)
{
	uint64_t *entry;
	int ret = path_private_locked(mmu, gfn, 1, false, b, &entry);

	return ret < 0 ? ret : 0;
}

int p2m_entry_set_locked(struct shadow_mmu *mmu, uint64_t gfn, uint64_t e, struct p2m_batch *b)
{
	uint64_t *entry, old;
	int ret = path_private_locked(mmu, gfn, 1, p2m_entry_is_present(e), b, &entry);

	if (ret)
		return ret < 0 ? ret : 0; /* nothing mapped there, nothing to unmap */
	old = __atomic_load_n(entry, __ATOMIC_RELAXED);
	if (old == e)
		return 0;
	if (entry_is_counted(mmu, e))
		page_ref_set_one(mmu->slots[p2m_entry_slot_id(e)].pobj, p2m_entry_page(e));
	__atomic_store_n(entry, e, __ATOMIC_RELEASE);
	if (entry_is_counted(mmu, old)) {
		struct shadow_mmu_slot *slot = &mmu->slots[p2m_entry_slot_id(old)];

		if (page_ref_put(slot->pobj, p2m_entry_page(old)))
			p2m_batch_add_page(b, slot, p2m_entry_page(old));
	}
	return 0;
}

/* A store maps the pages of linear run @x (0: none): each count is 1. */
static void linear_refs_set_one(struct shadow_mmu *mmu, uint64_t x)
{
	const uint64_t e = p2m_linear_entry(x, 0);

	if (!x || !entry_is_counted(mmu, e))
		return;
	page_ref_set_one_run(mmu->slots[p2m_entry_slot_id(e)].pobj, p2m_entry_page(e));
}

/* A store unmaps linear run @x (0: none): its pages lose our reference,
 * the last ones go to @b.  mmu_lock. */
static void linear_refs_put_locked(struct shadow_mmu *mmu, uint64_t x, struct p2m_batch *b)
{
	const uint64_t e = p2m_linear_entry(x, 0);
	struct shadow_mmu_slot *slot;

	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	if (!x || !entry_is_counted(mmu, e))
		return;
	uint64_t freed[SPTE_ENTRIES / 64];

	slot = &mmu->slots[p2m_entry_slot_id(e)];
	if (!page_ref_put_run(slot->pobj, p2m_entry_page(e), freed))
		return;
	for (unsigned int j = 0; j < P2M_CHUNK_PAGES; j++)
		if (freed[j / 64] & (1ull << (j % 64)))
			p2m_batch_add_page(b, slot, p2m_entry_page(e) + j);
}

int p2m_chunk_set_linear_locked(struct shadow_mmu *mmu, uint64_t gfn, uint64_t x,
				struct p2m_batch *b, uint64_t *old)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	uint64_t *entry, cur;
	int ret;

	if (mmu->p2m_levels < 2)
		return 1;
	ret = path_private_locked(mmu, gfn, 2, x != 0, b, &entry);
	if (ret) {
		*old = 0;
		return ret < 0 ? ret : 0;
	}
	cur = __atomic_load_n(entry, __ATOMIC_RELAXED);
	if (cur && !p2m_is_linear(cur))
		return 1; /* a leaf is there: entry by entry */
	*old = cur;
	if (cur == x)
		return 0;
	linear_refs_set_one(mmu, x);
	__atomic_store_n(entry, x, __ATOMIC_RELEASE);
	linear_refs_put_locked(mmu, cur, b);
	return 0;
}

/* ---- whole trees: create, share, drop, walk --------------------------------- */

int p2m_init(struct shadow_mmu *mmu)
{
	mmu->p2m_levels = p2m_levels_for(mmu->p2m_pages);
	mmu->p2m_root = 0; /* every gfn unmapped: no node until a store */
	return 0;
}

void p2m_exit(struct shadow_mmu *mmu, int skip_id)
{
	uint64_t x = __atomic_exchange_n(&mmu->p2m_root, 0, __ATOMIC_ACQ_REL);

	if (x && __atomic_sub_fetch(&p2m_node_of(x)->use, 1, __ATOMIC_ACQ_REL) == 0)
		node_release(mmu, p2m_node_of(x), skip_id);
}

void p2m_share_locked(struct shadow_mmu *parent, struct shadow_mmu *child)
{
	umbra_rwlock_assert_held_write(&parent->mmu_lock);
	uint64_t x = __atomic_load_n(&parent->p2m_root, __ATOMIC_RELAXED);

	if (x)
		__atomic_add_fetch(&p2m_node_of(x)->use, 1, __ATOMIC_ACQ_REL);
	__atomic_store_n(&child->p2m_root, x, __ATOMIC_RELEASE);
}

static void walk_node_locked(struct shadow_mmu *mmu, struct p2m_node *n, uint64_t first,
			     bool priv, const struct p2m_walker *w)
{
	priv &= __atomic_load_n(&n->use, __ATOMIC_ACQUIRE) == 1;
	w->node(w->ctx, n, first, priv);
	for (unsigned int k = 0; n->level > 1 && k < P2M_NODE_ENTRIES; k++) {
		uint64_t x = __atomic_load_n(&n->e[k], __ATOMIC_RELAXED);
		uint64_t g = first + ((uint64_t)k << ((n->level - 1) * P2M_NODE_SHIFT));

		if (x && !p2m_is_linear(x))
			walk_node_locked(mmu, p2m_node_of(x), g, priv, w);
	}
}

void p2m_walk_quiescent(struct shadow_mmu *mmu, const struct p2m_walker *w)
{
	uint64_t x = __atomic_load_n(&mmu->p2m_root, __ATOMIC_RELAXED);

	if (x)
		walk_node_locked(mmu, p2m_node_of(x), 0, true, w);
}

void p2m_walk_locked(struct shadow_mmu *mmu, const struct p2m_walker *w)
{
	umbra_rwlock_assert_held_write(&mmu->mmu_lock);
	p2m_walk_quiescent(mmu, w);
}

/* ---- batches: what a store releases once mmu_lock is dropped ----------------- */

void p2m_batch_init(struct p2m_batch *b)
{
	memset(b, 0, sizeof(*b));
}

void p2m_batch_add_page(struct p2m_batch *b, struct shadow_mmu_slot *slot, uint64_t page)
{
	if (b->nr_pages == b->cap) {
		size_t cap = b->cap ? 2 * b->cap : 16;
		struct p2m_page_put *p = realloc(b->pages, cap * sizeof(*p));

		if (!p)
			return; /* the page is not given back: its memory stays, nothing breaks */
		b->pages = p;
		b->cap = cap;
	}
	b->pages[b->nr_pages++] = (struct p2m_page_put){ .slot = slot, .page = page };
}

void p2m_batch_finish(struct shadow_mmu *mmu, struct p2m_batch *b)
{
	shadow_assert_no_lock_held();
	while (b->nodes) {
		struct p2m_node *n = b->nodes;

		b->nodes = n->next;
		node_release(mmu, n, -1);
	}
	for (size_t i = 0; i < b->nr_pages; i++)
		put_page_now(mmu, b->pages[i].slot, b->pages[i].page);
	free(b->pages);
	p2m_batch_init(b);
}
