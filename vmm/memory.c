/*
 * Guest memory under the pager (docs/pager.md, "In umbra"): the process's
 * one pager and swap file, every VM's RAM and every segment as one of its
 * memory objects, the memory limit kept by its reclaimer, the resident set
 * pinned, and what a swap I/O error does to the VMs.
 *
 * Threads: the main thread creates the memory, adds the plan's objects,
 * starts the budget and registers each VM as it starts (vmm_memory_add_vm);
 * a vCPU thread that clones its VM adds the clones' RAM areas and registers
 * the clones. An entry of objects[] is written once, before anything can
 * use its id; nr_objects only grows (compare-and-swap). An entry of vms[]
 * is claimed by a compare-and-swap of nr_vms, then published with a release
 * store (readers skip an entry still NULL). The pager's callbacks
 * (page_lost, write_error) run on the pager's handler thread, the
 * reclaimer, or a vCPU thread, with no vmm lock held.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <json-c/json.h>

#include "vm_internal.h"
#include "vmm.h"

struct memory_object {
	char name[UMBRA_SEGMENT_NAME_MAX + 16]; /* "vm0.ram", "segment data" */
	struct vm *owner;                        /* the VM whose RAM it is; NULL for a segment */
	uint64_t gpa;                            /* guest-physical address of its page 0 */
};

struct vmm_memory {
	struct pager_swap *swap;
	struct pager *pager;
	uint64_t limit_pages;     /* 0: no limit */
	enum pager_policy policy;
	bool budget_started;
	unsigned int nr_objects;  /* objects[id] for each pager id (published with release) */
	struct memory_object objects[PAGER_MAX_OBJECTS];
	/* The started VMs, whose vCPU threads may fault: appended as each
	 * starts (vm_start), read by the callbacks (see above). */
	unsigned int nr_vms;
	struct vm *vms[VMM_MAX_VMS];
	uint64_t write_errors_seen; /* write_error callbacks (atomic) */
};

/* The VM one of whose vCPU threads is @tid, or NULL. */
static struct vm *vm_of_thread(struct vmm_memory *m, pid_t tid)
{
	unsigned int nr = __atomic_load_n(&m->nr_vms, __ATOMIC_ACQUIRE);

	if (tid <= 0)
		return NULL;
	for (unsigned int i = 0; i < nr; i++) {
		struct vm *vm = __atomic_load_n(&m->vms[i], __ATOMIC_ACQUIRE);

		if (!vm)
			continue;
		for (unsigned int k = 0; k < vm->nr_vcpus; k++)
			if (__atomic_load_n(&vm->vcpus[k].tid, __ATOMIC_ACQUIRE) == tid)
				return vm;
	}
	return NULL;
}

/*
 * pager_ops.page_lost: page @page of object @id could not be read back for
 * thread @tid. The VM that needed it (the VM of that vCPU thread, else the
 * owner of the RAM) stops with a message before the thread is released: the
 * kick leaves a signal pending, so a vCPU released into KVM_RUN returns to
 * umbra before it runs another guest instruction. Other VMs go on.
 */
static void memory_page_lost(void *priv, int id, uint64_t page, int err, pid_t tid)
{
	struct vmm_memory *m = priv;
	const struct memory_object *o;
	struct vm *vm;
	uint64_t gpa;
	const char *why = err == -EBADMSG ? "checksum mismatch" : strerror(-err);

	if (id < 0 || (unsigned int)id >= __atomic_load_n(&m->nr_objects, __ATOMIC_ACQUIRE))
		return;
	o = &m->objects[id];
	gpa = o->gpa + page * PAGER_PAGE_SIZE;
	vm = vm_of_thread(m, tid);
	if (!vm)
		vm = o->owner;
	if (!vm) {
		fprintf(stderr, "umbra: warning: %s: page %#" PRIx64 " could not be read back from swap: %s\n",
			o->name, page * PAGER_PAGE_SIZE, why);
		return;
	}
	if (!vm_is_stopped(vm))
		vm_print_error(vm, "guest-physical page %#" PRIx64 " could not be read back from swap: %s", gpa, why);
	vm_stop(vm, UMBRA_STATUS_GUEST_ERROR);
}

/* pager_ops.write_error: once per cause. The page stays in memory. */
static void memory_write_error(void *priv, int err)
{
	struct vmm_memory *m = priv;

	__atomic_add_fetch(&m->write_errors_seen, 1, __ATOMIC_RELAXED);
	fprintf(stderr,
		"umbra: warning: swap: cannot write pages out: %s (they stay in memory; the memory limit may be "
		"exceeded)\n",
		strerror(-err));
}

static const struct pager_ops memory_pager_ops = {
	.page_lost = memory_page_lost,
	.write_error = memory_write_error,
};

/* All the guest memory of the plan, in bytes: every VM's RAM, every segment. */
static uint64_t plan_guest_bytes(const struct plan *plan)
{
	uint64_t bytes = 0;

	for (unsigned int i = 0; i < plan->nr_vms; i++)
		bytes += plan->vms[i].mem;
	for (unsigned int s = 0; s < plan->nr_segments; s++)
		bytes += plan->segments[s].size;
	return bytes;
}

int vmm_memory_create(const struct plan *plan, const struct vmm_pager_options *po, struct vmm_memory **out,
		      struct vmm_error *err)
{
	uint64_t bytes = plan->pager.swap_size ? plan->pager.swap_size : plan_guest_bytes(plan);
	struct pager_swap_config sc = { .path = plan->pager.swap, .nr_slots = bytes / PAGER_SLOT_SIZE };
	struct vmm_memory *m = calloc(1, sizeof(*m));
	int ret;

	if (!m)
		return vmm_error_set(err, ENOMEM, "out of memory");
	m->limit_pages = plan->pager.mem_limit / PAGER_PAGE_SIZE;
	m->policy = (enum pager_policy)plan->pager.policy;
	ret = pager_swap_create(&sc, &m->swap);
	if (ret) {
		vmm_error_set(err, -ret, "swap file '%s' of %" PRIu64 " MiB: %s",
			      plan->pager.swap ? plan->pager.swap : "(temporary)", bytes >> 20, strerror(-ret));
		goto free_memory;
	}
	if (po->inject_kind >= 0 &&
	    (ret = pager_swap_inject(m->swap, (enum pager_inject_kind)po->inject_kind, po->inject_n, -EIO))) {
		vmm_error_set(err, -ret, "--swap-inject: %s", strerror(-ret));
		goto destroy_swap;
	}
	ret = pager_create(m->swap, &m->pager);
	if (ret) {
		vmm_error_set(err, -ret, "the pager (userfaultfd): %s%s", strerror(-ret),
			      ret == -EPERM ? " (set vm.unprivileged_userfaultfd=1 or run with CAP_SYS_PTRACE)" : "");
		goto destroy_swap;
	}
	pager_set_ops(m->pager, &memory_pager_ops, m);
	pager_set_nonblocking(m->pager, po->nonblocking);
	if (m->limit_pages)
		pager_set_refault_window(m->pager, m->limit_pages);
	*out = m;
	return 0;

destroy_swap:
	pager_swap_destroy(m->swap);
free_memory:
	free(m);
	return ret;
}

int vmm_memory_add(struct vmm_memory *m, const char *name, struct vm *owner, uint64_t gpa,
		   struct notifier_object *obj, int memfd, void *host, uint64_t size, int *id,
		   struct vmm_error *err)
{
	int ret = pager_add_object(m->pager, obj, memfd, host, size, id);

	if (ret)
		return vmm_error_set(err, -ret, "%s: putting it under the pager: %s", name, strerror(-ret));
	struct memory_object *o = &m->objects[*id]; /* ids count up from 0, below PAGER_MAX_OBJECTS */

	snprintf(o->name, sizeof(o->name), "%s", name);
	o->owner = owner;
	o->gpa = gpa;
	/* Clones add objects from vCPU threads, concurrently: nr_objects only
	 * grows, to past the highest id whose entry is written. */
	unsigned int n = __atomic_load_n(&m->nr_objects, __ATOMIC_RELAXED);
	while (n < (unsigned int)*id + 1 &&
	       !__atomic_compare_exchange_n(&m->nr_objects, &n, (unsigned int)*id + 1, false, __ATOMIC_RELEASE,
					    __ATOMIC_RELAXED))
		;
	return 0;
}

void vmm_memory_add_vm(struct vmm_memory *m, struct vm *vm)
{
	/* Clones join from vCPU threads: claim an entry, then publish it
	 * (readers skip an entry not yet written). */
	unsigned int n = __atomic_load_n(&m->nr_vms, __ATOMIC_RELAXED);

	do {
		if (n == VMM_MAX_VMS)
			return;
	} while (!__atomic_compare_exchange_n(&m->nr_vms, &n, n + 1, false, __ATOMIC_ACQ_REL, __ATOMIC_RELAXED));
	__atomic_store_n(&m->vms[n], vm, __ATOMIC_RELEASE);
}

int vmm_memory_discard(struct vmm_memory *m, int id, uint64_t first, uint64_t npages)
{
	return pager_discard(m->pager, id, first, npages);
}

void vmm_memory_slot(struct vmm_memory *m, int id, struct shadow_slot *slot)
{
	pager_object_slot(m->pager, id, slot);
}

int vmm_memory_pin(struct vmm_memory *m, int id, uint64_t gpa_offset, uint64_t len)
{
	uint64_t first = gpa_offset / PAGER_PAGE_SIZE;
	uint64_t end = (gpa_offset + len + PAGER_PAGE_SIZE - 1) / PAGER_PAGE_SIZE;

	return end > first ? pager_pin(m->pager, id, first, end - first) : 0;
}

int vmm_memory_evict(struct vmm_memory *m, int id, uint64_t first, uint64_t npages)
{
	return pager_evict(m->pager, id, first, npages);
}

int vmm_memory_start(struct vmm_memory *m, struct vmm_error *err)
{
	struct pager_budget budget = { .limit_pages = m->limit_pages, .policy = m->policy };
	struct pager_stats st;
	int ret;

	if (!m->limit_pages)
		return 0;
	/* What must stay resident, and a megabyte to run in. */
	if (pager_stats(m->pager, -1, &st) == 0 && st.pinned + (1u << 20) / PAGER_PAGE_SIZE > m->limit_pages)
		return vmm_error_set(err, EINVAL,
				     "--mem-limit %" PRIu64 " MiB is below what must stay resident: %" PRIu64
				     " KiB of pinned pages (docs/abi.md, \"What stays resident\") and 1 MiB to run in",
				     (m->limit_pages * PAGER_PAGE_SIZE) >> 20, st.pinned * (PAGER_PAGE_SIZE >> 10));
	ret = pager_budget_start(m->pager, &budget);
	if (ret)
		return vmm_error_set(err, -ret, "the pager's reclaimer: %s", strerror(-ret));
	m->budget_started = true;
	return 0;
}

void vmm_memory_destroy(struct vmm_memory *m)
{
	if (!m)
		return;
	/* The VMs have stopped: what is in swap is not needed any more. */
	pager_set_discard_at_destroy(m->pager, true);
	pager_destroy(m->pager); /* stops the reclaimer */
	pager_swap_destroy(m->swap);
	free(m);
}

int vmm_memory_object_stats(struct vmm_memory *m, int id, struct pager_stats *st)
{
	return pager_stats(m->pager, id, st);
}

/* ---- statistics ---- */

/* The counters of one object (or the total) as X(key, value expression of s,
 * a const struct pager_stats *), in output order. */
#define MEMORY_OBJECT_STATS(X)                                   \
	X("present_bytes", s->present * PAGER_PAGE_SIZE)          \
	X("host_bytes", s->host_bytes)                            \
	X("swapped_pages", s->swapped)                            \
	X("pinned_pages", s->pinned)                              \
	X("lost_pages", s->lost)                                  \
	X("swapouts_io", s->swapouts_io)                          \
	X("swapouts_cached", s->swapouts_cached)                  \
	X("swapins", s->swapins)                                  \
	X("refaults", s->refaults)                                \
	X("zero_fills", s->zero_fills)                            \
	X("discarded_pages", s->discarded_pages)                  \
	X("write_errors", s->write_errors)                        \
	X("busy_refusals", s->busy_refusals)                      \
	X("read_errors", s->read_errors)

static void json_add_u64(struct json_object *o, const char *key, uint64_t v)
{
	json_object_object_add(o, key, json_object_new_uint64(v));
}

static struct json_object *json_latency(const struct pager_stats *s)
{
	struct json_object *o = json_object_new_object();

	json_add_u64(o, "p50", s->swapin_ns_p50);
	json_add_u64(o, "p99", s->swapin_ns_p99);
	json_add_u64(o, "max", s->swapin_ns_max);
	return o;
}

static void json_add_object_stats(struct json_object *o, const struct pager_stats *s)
{
#define MEMORY_STAT_JSON(key, value) json_add_u64(o, key, value);
	MEMORY_OBJECT_STATS(MEMORY_STAT_JSON)
#undef MEMORY_STAT_JSON
	json_object_object_add(o, "swapin_latency_ns", json_latency(s));
}

static struct json_object *json_swap(const struct pager_swap_stats *sw)
{
	struct json_object *o = json_object_new_object();

	json_add_u64(o, "slots", sw->nr_slots);
	json_add_u64(o, "slots_in_use", sw->slots_in_use);
	json_add_u64(o, "writes", sw->writes);
	json_add_u64(o, "reads", sw->reads);
	json_add_u64(o, "write_errors", sw->write_errors);
	json_add_u64(o, "read_errors", sw->read_errors);
	json_add_u64(o, "checksum_failures", sw->checksum_failures);
	json_add_u64(o, "full_refusals", sw->full_refusals);
	return o;
}

struct json_object *vmm_memory_stats_json(struct vmm_memory *m)
{
	struct json_object *root = json_object_new_object(), *objects = json_object_new_array();
	struct pager_reclaim_stats rs;
	struct pager_swap_stats sw;
	struct pager_stats total;

	if (pager_stats(m->pager, -1, &total))
		memset(&total, 0, sizeof(total));
	pager_reclaim_stats(m->pager, &rs);
	pager_swap_stats(m->swap, &sw);
	json_add_u64(root, "limit_bytes", m->limit_pages * PAGER_PAGE_SIZE);
	json_add_u64(root, "peak_present_bytes", rs.peak_present * PAGER_PAGE_SIZE);
	json_add_object_stats(root, &total);
	json_add_u64(root, "reclaim_passes", rs.passes);
	json_add_u64(root, "direct_reclaims", rs.direct);
	json_add_u64(root, "reclaimed_pages", rs.reclaimed);
	json_add_u64(root, "backoffs", rs.backoffs);
	json_add_u64(root, "over_limit", rs.over_limit);
	json_object_object_add(root, "swap", json_swap(&sw));
	for (unsigned int id = 0; id < m->nr_objects; id++) {
		struct json_object *o = json_object_new_object();
		struct pager_stats s;

		if (pager_stats(m->pager, (int)id, &s))
			memset(&s, 0, sizeof(s));
		json_object_object_add(o, "name", json_object_new_string(m->objects[id].name));
		json_add_object_stats(o, &s);
		json_object_array_add(objects, o);
	}
	json_object_object_add(root, "objects", objects);
	return root;
}

static void print_object_stats(const char *name, const struct pager_stats *s)
{
	fprintf(stderr, "umbra: %s:", name);
#define MEMORY_STAT_TEXT(key, value) fprintf(stderr, " %s=%" PRIu64, key, (uint64_t)(value));
	MEMORY_OBJECT_STATS(MEMORY_STAT_TEXT)
#undef MEMORY_STAT_TEXT
	fprintf(stderr, " swapin_ns_p50=%" PRIu64 " swapin_ns_p99=%" PRIu64 " swapin_ns_max=%" PRIu64 "\n",
		s->swapin_ns_p50, s->swapin_ns_p99, s->swapin_ns_max);
}

void vmm_memory_stats_print(struct vmm_memory *m)
{
	struct pager_reclaim_stats rs;
	struct pager_swap_stats sw;
	struct pager_stats s;

	pager_reclaim_stats(m->pager, &rs);
	pager_swap_stats(m->swap, &sw);
	fprintf(stderr,
		"umbra: pager: limit_bytes=%" PRIu64 " peak_present_bytes=%" PRIu64 " reclaim_passes=%" PRIu64
		" direct_reclaims=%" PRIu64 " reclaimed_pages=%" PRIu64 " backoffs=%" PRIu64 " over_limit=%" PRIu64
		" swap_slots=%" PRIu64 " swap_slots_in_use=%" PRIu64 " swap_checksum_failures=%" PRIu64
		" swap_full_refusals=%" PRIu64 "\n",
		m->limit_pages * PAGER_PAGE_SIZE, rs.peak_present * PAGER_PAGE_SIZE, rs.passes, rs.direct,
		rs.reclaimed, rs.backoffs, rs.over_limit, sw.nr_slots, sw.slots_in_use, sw.checksum_failures,
		sw.full_refusals);
	if (pager_stats(m->pager, -1, &s) == 0)
		print_object_stats("pager total", &s);
	for (unsigned int id = 0; id < m->nr_objects; id++)
		if (pager_stats(m->pager, (int)id, &s) == 0)
			print_object_stats(m->objects[id].name, &s);
}
