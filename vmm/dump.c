/*
 * --dump-tables FILE: a Graphviz picture of who shares which shadow tables.
 *
 * Each VM, as it stops (vm_mmu_release, before its tables are freed), walks
 * its cached roots and the tables below them (shadow_mmu_for_each_link) and
 * adds what it found to the run's graph: a node per table, named by its
 * trust group's pool, its pool page and the page's allocation count (so a
 * page freed and taken again for another table is another node), an edge
 * per link, and an edge from the VM to each of its roots. At the end of the
 * run the graph is written in the DOT language: tables that several entries
 * point at (shared with clones, or within the VM by several roots) and the
 * canonical tables of segments are coloured, and the leaf tables (PTs) of
 * one kind below the same parents are drawn as one node with their count,
 * so that the 8-VM segment example stays readable.
 *
 * Locks: the graph is under dump->lock (UMBRA_LOCK_RANK_VMM_DUMP), taken
 * alone; the walk collects links into a buffer of its own under the VM's
 * mmu_lock, and they are added after.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "vm_internal.h"

/* A table: its key (group, page, gen) and what it is. */
struct dump_node {
	uint32_t group, page, gen;
	int level;
	bool canonical, direct;
	uint32_t users; /* the most seen */
	uint32_t cluster; /* dump_write: its drawn node */
};

/* A link: from table @from (or, with @from_vm, from VM @from to its root,
 * cached for @cr3) to table @to. */
struct dump_edge {
	uint32_t from, to;
	bool from_vm;
	uint64_t cr3;
};

struct vmm_dump {
	struct umbra_mutex lock;
	char *path;
	struct dump_node *nodes;
	size_t nr_nodes, cap_nodes;
	uint32_t *node_index; /* open addressing: node + 1, 0 empty */
	size_t index_size;    /* a power of two */
	struct dump_edge *edges;
	size_t nr_edges, cap_edges;
	uint64_t *edge_index; /* open addressing: edge + 1, 0 empty */
	size_t edge_index_size;
	char (*vms)[VM_NAME_MAX];
	size_t nr_vms, cap_vms;
	int err; /* the first -ENOMEM, reported by vmm_dump_write */
};

/* A link as the walk saw it. */
struct seen_link {
	uint64_t cr3;
	struct shadow_table_ref parent, child;
	bool root;
};

struct walk_buf {
	struct seen_link *v;
	size_t n, cap;
	bool failed;
};

static uint64_t mix(uint64_t k)
{
	k ^= k >> 31;
	k *= 0x9e3779b97f4a7c15ull;
	k ^= k >> 29;
	return k;
}

int vmm_dump_create(const char *path, struct vmm_dump **out)
{
	struct vmm_dump *d = calloc(1, sizeof(*d));

	if (!d)
		return -ENOMEM;
	d->path = strdup(path);
	d->index_size = 1024;
	d->node_index = calloc(d->index_size, sizeof(*d->node_index));
	d->edge_index_size = 1024;
	d->edge_index = calloc(d->edge_index_size, sizeof(*d->edge_index));
	if (!d->path || !d->node_index || !d->edge_index) {
		vmm_dump_destroy(d);
		return -ENOMEM;
	}
	umbra_mutex_init(&d->lock, "vmm.dump.lock", UMBRA_LOCK_RANK_VMM_DUMP);
	*out = d;
	return 0;
}

void vmm_dump_destroy(struct vmm_dump *d)
{
	if (!d)
		return;
	if (d->node_index && d->edge_index && d->path)
		umbra_mutex_exit(&d->lock);
	free(d->path);
	free(d->nodes);
	free(d->node_index);
	free(d->edges);
	free(d->edge_index);
	free(d->vms);
	free(d);
}

/* Grows *@v (of *@cap elements of @size) to hold @n: 0 or -ENOMEM. */
static int reserve(void **v, size_t *cap, size_t n, size_t size)
{
	if (n <= *cap)
		return 0;
	size_t c = *cap ? *cap * 2 : 64;
	while (c < n)
		c *= 2;
	void *p = realloc(*v, c * size);
	if (!p)
		return -ENOMEM;
	*v = p;
	*cap = c;
	return 0;
}

static uint64_t node_hash(uint32_t group, uint32_t page, uint32_t gen)
{
	return mix(((uint64_t)group << 48) ^ ((uint64_t)gen << 24) ^ page);
}

/* Doubles the node index and enters every node again. */
static int node_index_grow_locked(struct vmm_dump *d)
{
	size_t size = d->index_size * 2;
	uint32_t *index = calloc(size, sizeof(*index));

	if (!index)
		return -ENOMEM;
	for (size_t k = 0; k < d->nr_nodes; k++) {
		const struct dump_node *n = &d->nodes[k];
		size_t h = node_hash(n->group, n->page, n->gen) & (size - 1);

		while (index[h])
			h = (h + 1) & (size - 1);
		index[h] = (uint32_t)k + 1;
	}
	free(d->node_index);
	d->node_index = index;
	d->index_size = size;
	return 0;
}

/* The node of table @t of group @group, added if new: its index, or -1. */
static long node_get_locked(struct vmm_dump *d, uint32_t group, const struct shadow_table_ref *t)
{
	umbra_mutex_assert_held(&d->lock);
	if (2 * (d->nr_nodes + 1) > d->index_size && node_index_grow_locked(d))
		return -1;
	size_t h = node_hash(group, t->page, t->alloc_gen) & (d->index_size - 1);

	for (; d->node_index[h]; h = (h + 1) & (d->index_size - 1)) {
		struct dump_node *n = &d->nodes[d->node_index[h] - 1];

		if (n->group == group && n->page == t->page && n->gen == t->alloc_gen) {
			if (t->users > n->users)
				n->users = t->users;
			return (long)(d->node_index[h] - 1);
		}
	}
	if (reserve((void **)&d->nodes, &d->cap_nodes, d->nr_nodes + 1, sizeof(*d->nodes)))
		return -1;
	d->nodes[d->nr_nodes] = (struct dump_node){ .group = group, .page = t->page, .gen = t->alloc_gen,
						    .level = t->level, .canonical = t->canonical,
						    .direct = t->direct, .users = t->users };
	d->node_index[h] = (uint32_t)d->nr_nodes + 1;
	return (long)d->nr_nodes++;
}

static uint64_t edge_hash(const struct dump_edge *e)
{
	return mix(((uint64_t)e->from << 33) ^ ((uint64_t)e->to << 1) ^ e->from_vm ^ mix(e->cr3));
}

static bool edge_equal(const struct dump_edge *a, const struct dump_edge *b)
{
	return a->from == b->from && a->to == b->to && a->from_vm == b->from_vm && a->cr3 == b->cr3;
}

static int edge_index_grow_locked(struct vmm_dump *d)
{
	size_t size = d->edge_index_size * 2;
	uint64_t *index = calloc(size, sizeof(*index));

	if (!index)
		return -ENOMEM;
	for (size_t k = 0; k < d->nr_edges; k++) {
		size_t h = edge_hash(&d->edges[k]) & (size - 1);

		while (index[h])
			h = (h + 1) & (size - 1);
		index[h] = k + 1;
	}
	free(d->edge_index);
	d->edge_index = index;
	d->edge_index_size = size;
	return 0;
}

/* Adds edge @e unless the graph has it: 0 or -ENOMEM. */
static int edge_add_locked(struct vmm_dump *d, const struct dump_edge *e)
{
	umbra_mutex_assert_held(&d->lock);
	if (2 * (d->nr_edges + 1) > d->edge_index_size && edge_index_grow_locked(d))
		return -ENOMEM;
	size_t h = edge_hash(e) & (d->edge_index_size - 1);

	for (; d->edge_index[h]; h = (h + 1) & (d->edge_index_size - 1))
		if (edge_equal(&d->edges[d->edge_index[h] - 1], e))
			return 0;
	if (reserve((void **)&d->edges, &d->cap_edges, d->nr_edges + 1, sizeof(*d->edges)))
		return -ENOMEM;
	d->edges[d->nr_edges] = *e;
	d->edge_index[h] = d->nr_edges + 1;
	d->nr_edges++;
	return 0;
}

/* shadow_link_fn: records the link (under the VM's mmu_lock: no lock here). */
static void collect_link(void *arg, uint64_t cr3, const struct shadow_table_ref *parent, unsigned int index,
			 const struct shadow_table_ref *child)
{
	struct walk_buf *w = arg;

	(void)index;
	if (w->failed)
		return;
	if (reserve((void **)&w->v, &w->cap, w->n + 1, sizeof(*w->v))) {
		w->failed = true;
		return;
	}
	w->v[w->n++] = (struct seen_link){ .cr3 = cr3, .parent = parent ? *parent : *child, .child = *child,
					   .root = !parent };
}

void vmm_dump_add_vm(struct vmm_dump *d, struct vm *vm)
{
	struct walk_buf w = { 0 };
	const uint32_t group = (uint32_t)(vm->group - vm->host->groups);
	int ret = shadow_mmu_for_each_link(vm->mmu, collect_link, &w);

	umbra_mutex_lock(&d->lock);
	if (ret || w.failed || reserve((void **)&d->vms, &d->cap_vms, d->nr_vms + 1, sizeof(*d->vms))) {
		d->err = -ENOMEM;
		goto unlock;
	}
	const uint32_t vm_id = (uint32_t)d->nr_vms++;
	snprintf(d->vms[vm_id], sizeof(d->vms[vm_id]), "%s", vm_name(vm));
	for (size_t k = 0; k < w.n; k++) {
		const struct seen_link *l = &w.v[k];
		long to = node_get_locked(d, group, &l->child), from;
		struct dump_edge e;

		if (to < 0) {
			d->err = -ENOMEM;
			break;
		}
		if (l->root) {
			e = (struct dump_edge){ .from = vm_id, .to = (uint32_t)to, .from_vm = true, .cr3 = l->cr3 };
		} else {
			from = node_get_locked(d, group, &l->parent);
			if (from < 0) {
				d->err = -ENOMEM;
				break;
			}
			e = (struct dump_edge){ .from = (uint32_t)from, .to = (uint32_t)to };
		}
		if (edge_add_locked(d, &e)) {
			d->err = -ENOMEM;
			break;
		}
	}
unlock:
	umbra_mutex_unlock(&d->lock);
	free(w.v);
}

/* ---- writing the DOT file ---- */

static const char *const level_names[] = { "?", "PT", "PD", "PDPT", "PML4" };

static const char *node_kind(const struct dump_node *n)
{
	return n->canonical ? "canonical" : n->users > 1 ? "shared" : "private";
}

static const char *kind_colour(const char *kind)
{
	return strcmp(kind, "canonical") == 0 ? "#9ecae1" : strcmp(kind, "shared") == 0 ? "#fdae6b" : "white";
}

/* Level-1 nodes are drawn in clusters: one per (kind, parents). */
struct pt_key {
	uint32_t node;
	const char *kind;
	uint32_t *parents; /* sorted */
	size_t nr_parents;
};

static int cmp_u32(const void *a, const void *b)
{
	uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;

	return x < y ? -1 : x > y;
}

static int cmp_pt_key(const void *a, const void *b)
{
	const struct pt_key *x = a, *y = b;
	int c = strcmp(x->kind, y->kind);

	if (c)
		return c;
	if (x->nr_parents != y->nr_parents)
		return x->nr_parents < y->nr_parents ? -1 : 1;
	for (size_t k = 0; k < x->nr_parents; k++)
		if (x->parents[k] != y->parents[k])
			return x->parents[k] < y->parents[k] ? -1 : 1;
	return 0;
}

/* Groups the level-1 nodes by kind and parents: each node's cluster (the
 * first node of its group) in its cluster field, the others' their own. */
static int cluster_leaf_tables_locked(struct vmm_dump *d)
{
	struct pt_key *keys = calloc(d->nr_nodes ? d->nr_nodes : 1, sizeof(*keys));
	uint32_t *parents = calloc(d->nr_edges ? d->nr_edges : 1, sizeof(*parents));
	size_t *first = calloc(d->nr_nodes + 1, sizeof(*first)); /* node k's parents: [first[k], first[k + 1]) */
	size_t *fill = calloc(d->nr_nodes + 1, sizeof(*fill));
	size_t nr = 0;
	int ret = 0;

	if (!keys || !parents || !first || !fill) {
		ret = -ENOMEM;
		goto free_all;
	}
	for (size_t k = 0; k < d->nr_nodes; k++)
		d->nodes[k].cluster = (uint32_t)k;
	for (size_t e = 0; e < d->nr_edges; e++)
		if (!d->edges[e].from_vm)
			first[d->edges[e].to + 1]++;
	for (size_t k = 0; k < d->nr_nodes; k++)
		fill[k + 1] = first[k + 1] += first[k];
	for (size_t k = 0; k <= d->nr_nodes; k++)
		fill[k] = first[k];
	for (size_t e = 0; e < d->nr_edges; e++)
		if (!d->edges[e].from_vm)
			parents[fill[d->edges[e].to]++] = d->edges[e].from;
	for (size_t k = 0; k < d->nr_nodes; k++) {
		if (d->nodes[k].level != 1)
			continue;
		struct pt_key *key = &keys[nr++];

		key->node = (uint32_t)k;
		key->kind = node_kind(&d->nodes[k]);
		key->parents = parents + first[k];
		key->nr_parents = first[k + 1] - first[k];
		qsort(key->parents, key->nr_parents, sizeof(*key->parents), cmp_u32);
	}
	qsort(keys, nr, sizeof(*keys), cmp_pt_key);
	for (size_t k = 1; k < nr; k++)
		if (cmp_pt_key(&keys[k - 1], &keys[k]) == 0)
			d->nodes[keys[k].node].cluster = d->nodes[keys[k - 1].node].cluster;
free_all:
	free(keys);
	free(parents);
	free(first);
	free(fill);
	return ret;
}

/* A link as drawn: from a table to a drawn node (a cluster's first). */
struct drawn_link {
	uint32_t from, to;
};

static int cmp_drawn_link(const void *a, const void *b)
{
	const struct drawn_link *x = a, *y = b;

	if (x->from != y->from)
		return x->from < y->from ? -1 : 1;
	return x->to < y->to ? -1 : x->to > y->to;
}

static void write_node_name(FILE *f, const struct dump_node *n)
{
	fprintf(f, "\"t%" PRIu32 "_%" PRIu32 "_%" PRIu32 "\"", n->group, n->page, n->gen);
}

static int write_dot_locked(struct vmm_dump *d, FILE *f)
{
	size_t *members = calloc(d->nr_nodes ? d->nr_nodes : 1, sizeof(*members));
	uint32_t *users_max = calloc(d->nr_nodes ? d->nr_nodes : 1, sizeof(*users_max));

	if (!members || !users_max || cluster_leaf_tables_locked(d)) {
		free(members);
		free(users_max);
		return -ENOMEM;
	}
	for (size_t k = 0; k < d->nr_nodes; k++) {
		uint32_t c = d->nodes[k].cluster;

		members[c]++;
		if (d->nodes[k].users > users_max[c])
			users_max[c] = d->nodes[k].users;
	}
	fprintf(f, "// umbra --dump-tables: the shadow tables the VMs reached as each stopped\n"
		   "// (docs/sharing.md, \"A picture of sharing\"); dot -Tpng FILE -o FILE.png\n"
		   "digraph shadow_tables {\n"
		   "  rankdir=LR; ranksep=1.0; nodesep=0.15;\n"
		   "  node [shape=box, style=filled, fillcolor=white, fontname=\"Helvetica\", fontsize=10];\n"
		   "  edge [fontname=\"Helvetica\", fontsize=8, color=\"#555555\"];\n"
		   "  legend [shape=note, fillcolor=\"#f7f7f7\", label=\"white: one user\\norange: several users "
		   "(clones, or several roots of a VM)\\nblue: a segment's canonical table\\nPT boxes: leaf tables "
		   "of one kind below the same parents\"];\n");
	for (size_t v = 0; v < d->nr_vms; v++)
		fprintf(f, "  \"vm %s\" [shape=ellipse, fillcolor=\"#e0e0e0\", comment=\"vm\"];\n", d->vms[v]);
	for (size_t k = 0; k < d->nr_nodes; k++) {
		const struct dump_node *n = &d->nodes[k];
		const char *kind = node_kind(n);

		if (n->cluster != k)
			continue;
		fprintf(f, "  ");
		write_node_name(f, n);
		if (members[k] > 1)
			fprintf(f, " [label=\"%zu %ss\\n%s, up to %" PRIu32 " user%s each\"", members[k],
				level_names[n->level], kind, users_max[k], users_max[k] == 1 ? "" : "s");
		else
			fprintf(f, " [label=\"%s%s\\n%s, %" PRIu32 " user%s\"", level_names[n->level],
				n->direct ? " (direct)" : "", kind, n->users, n->users == 1 ? "" : "s");
		fprintf(f, ", fillcolor=\"%s\", comment=\"level=%d kind=%s tables=%zu users=%" PRIu32 "\"];\n",
			kind_colour(kind), n->level, kind, members[k], users_max[k]);
	}
	/* The VMs' roots; then each (parent, drawn node) once, with the number
	 * of links it stands for. */
	size_t nr_links = 0;
	struct drawn_link *links = calloc(d->nr_edges ? d->nr_edges : 1, sizeof(*links));

	if (!links) {
		free(members);
		free(users_max);
		return -ENOMEM;
	}
	for (size_t e = 0; e < d->nr_edges; e++) {
		const struct dump_edge *ed = &d->edges[e];

		if (ed->from_vm) {
			fprintf(f, "  \"vm %s\" -> ", d->vms[ed->from]);
			write_node_name(f, &d->nodes[d->nodes[ed->to].cluster]);
			fprintf(f, " [label=\"cr3 %#" PRIx64 "\"];\n", ed->cr3);
		} else {
			links[nr_links++] = (struct drawn_link){ ed->from, d->nodes[ed->to].cluster };
		}
	}
	qsort(links, nr_links, sizeof(*links), cmp_drawn_link);
	for (size_t k = 0, j; k < nr_links; k = j) {
		for (j = k + 1; j < nr_links && !cmp_drawn_link(&links[k], &links[j]); j++)
			;
		fprintf(f, "  ");
		write_node_name(f, &d->nodes[links[k].from]);
		fprintf(f, " -> ");
		write_node_name(f, &d->nodes[links[k].to]);
		if (j - k > 1)
			fprintf(f, " [label=\"%zu\"]", j - k);
		fprintf(f, ";\n");
	}
	free(links);
	fprintf(f, "}\n");
	free(members);
	free(users_max);
	return 0;
}

int vmm_dump_write(struct vmm_dump *d, struct vmm_error *err)
{
	FILE *f;
	int ret;

	umbra_mutex_lock(&d->lock);
	ret = d->err;
	if (ret)
		goto unlock;
	f = fopen(d->path, "w");
	if (!f) {
		ret = -errno;
		goto unlock;
	}
	ret = write_dot_locked(d, f);
	if (fclose(f) == EOF && !ret)
		ret = -errno;
unlock:
	umbra_mutex_unlock(&d->lock);
	if (ret)
		return vmm_error_set(err, -ret, "cannot write the table picture to '%s': %s", d->path, strerror(-ret));
	return 0;
}
