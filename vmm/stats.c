/*
 * Statistics: a VM's counters (vm_get_stats), --stats (lines on stderr) and
 * --stats-json (docs/config.md). The names and values of both outputs come
 * from the same lists: VM_EXIT_KINDS, vm_hypercall_names and VM_STATS (in
 * vmm.h), TABLE_MEMORY_STATS and SEGMENT_STATS (here).
 */
#include <errno.h>
#include <json-c/json.h>
#include <stdio.h>
#include <string.h>

#include "vm_internal.h"

#define PAGE_KIB (SHADOW_PAGE_SIZE / 1024) /* KiB in a table page */

const char *const vm_exit_kind_names[VM_EXIT_NR] = {
#define VM_EXIT_KIND_NAME(kind, name) [VM_EXIT_##kind] = name,
	VM_EXIT_KINDS(VM_EXIT_KIND_NAME)
#undef VM_EXIT_KIND_NAME
};

const char *const vm_hypercall_names[UMBRA_HC_NR] = {
	[UMBRA_HC_EXIT] = "exit",
	[UMBRA_HC_EXCEPTION] = "exception",
	[UMBRA_HC_CONSOLE_WRITE] = "console_write",
	[UMBRA_HC_SET_CR3] = "set_cr3",
	[UMBRA_HC_PAGE_FAULT] = "page_fault",
	[UMBRA_HC_INVLPG] = "invlpg",
	[UMBRA_HC_FLUSH] = "flush",
	[UMBRA_HC_FLUSH_ACK] = "flush_ack",
	[UMBRA_HC_PIN] = "pin",
	[UMBRA_HC_READY] = "ready",
	[UMBRA_HC_SYNC_TABLE] = "sync_table",
	[UMBRA_HC_CLONE] = "clone",
};
_Static_assert(UMBRA_HC_CLONE == UMBRA_HC_NR - 1, "a name for every hypercall");

const struct vm_stat_desc vm_stat_descs[VM_STAT_NR] = {
#define VM_STAT_DESC(group, key, before, after, value) \
	[VM_STAT_##group##_##key] = { VM_STAT_##group, #key, before, after },
	VM_STATS(VM_STAT_DESC)
#undef VM_STAT_DESC
};

void vm_stats_values(const struct vm_stats *s, uint64_t *values)
{
#define VM_STAT_VALUE(group, key, before, after, value) values[VM_STAT_##group##_##key] = (value);
	VM_STATS(VM_STAT_VALUE)
#undef VM_STAT_VALUE
}

void vm_get_stats(const struct vm *vm, struct vm_stats *stats)
{
	memset(stats, 0, sizeof(*stats));
	for (int i = 0; i < VM_EXIT_NR; i++) {
		stats->exits[i] = __atomic_load_n(&vm->exits[i], __ATOMIC_RELAXED);
		stats->exits_total += stats->exits[i];
	}
	for (int i = 0; i < UMBRA_HC_NR; i++)
		stats->hypercalls[i] = __atomic_load_n(&vm->hypercalls[i], __ATOMIC_RELAXED);
	if (vm->mmu) {
		shadow_mmu_stats(vm->mmu, &stats->shadow);
		(void)shadow_mmu_table_usage(vm->mmu, &stats->tables); /* on -ENOMEM: zeroes */
	} else { /* stopped: as recorded when its tables were freed */
		stats->shadow = vm->mmu_stats_at_stop;
		stats->tables = vm->tables_at_stop;
	}
	stats->pinned_pages = __atomic_load_n(&vm->pinned_pages, __ATOMIC_RELAXED);
	stats->pin_walks = __atomic_load_n(&vm->pin_walks, __ATOMIC_RELAXED);
	stats->pin_walks_skipped = __atomic_load_n(&vm->pin_walks_skipped, __ATOMIC_RELAXED);
	stats->flush_requests = __atomic_load_n(&vm->flush_requests, __ATOMIC_RELAXED);
	stats->kicks = __atomic_load_n(&vm->kicks, __ATOMIC_RELAXED);
	stats->nmis = __atomic_load_n(&vm->nmis, __ATOMIC_RELAXED);
	stats->flush_acks = __atomic_load_n(&vm->flush_acks, __ATOMIC_RELAXED);
	stats->early_flushes = __atomic_load_n(&vm->early_flushes, __ATOMIC_RELAXED);
	stats->clones_made = __atomic_load_n(&vm->nr_clones, __ATOMIC_RELAXED);
	stats->clone_ns = __atomic_load_n(&vm->clone_ns, __ATOMIC_RELAXED);
	stats->layers_taken_over = __atomic_load_n(&vm->layers_taken_over, __ATOMIC_RELAXED);
	const struct vm_area *ram = vm->areas[vm->own_slot >= 0 ? vm->own_slot : vm->ram_slot];
	if (ram && ram->obj) {
		stats->notifier_mode = notifier_object_mode(ram->obj);
		notifier_object_stats(ram->obj, &stats->notifier);
	}
	uint64_t first = __atomic_load_n(&vm->first_run_ns, __ATOMIC_ACQUIRE);
	if (vm->parent && first > vm->clone_started_ns)
		stats->clone_to_run_ns = first - vm->clone_started_ns;
}

/* The process's table memory: X(field, key) of struct table_memory. */
#define TABLE_MEMORY_STATS(X) \
	X(pools, "pools")       \
	X(pool_pages, "pages")  \
	X(in_use, "in_use")     \
	X(unshared, "unshared")

/* A segment's pager counters: X(field, key), printed "key=value":
 * evictions are its swap-outs (with and without I/O), restores its
 * swap-ins (docs/pager.md has the full set, in "pager"). */
#define SEGMENT_STATS(X)           \
	X(evictions, "evictions") \
	X(restores, "restores")

struct segment_stats {
	uint64_t evictions, restores;
};

static void segment_get_stats(const struct segment *seg, struct segment_stats *ss)
{
	struct pager_stats ps;

	memset(ss, 0, sizeof(*ss));
	if (!seg->memory || vmm_memory_object_stats(seg->memory, seg->pager_id, &ps))
		return;
	ss->evictions = ps.swapouts_io + ps.swapouts_cached;
	ss->restores = ps.swapins;
}

/* The pages in use in the group's pool: the most seen as its VMs stopped,
 * or now if more. */
static uint64_t group_pages_in_use(const struct vmm_group *group)
{
	size_t now = shadow_pool_pages_in_use(group->pool, 0);
	size_t seen = __atomic_load_n(&group->in_use_seen, __ATOMIC_RELAXED);

	return now > seen ? now : seen;
}

void table_memory_get(const struct vmm_host *host, struct vm *const *vms, unsigned int nr_vms,
		      struct table_memory *tm)
{
	tm->pools = host->nr_groups;
	tm->pool_pages = tm->in_use = tm->unshared = 0;
	for (unsigned int g = 0; g < host->nr_groups; g++) {
		tm->pool_pages += host->groups[g].pool_pages;
		tm->in_use += group_pages_in_use(&host->groups[g]);
	}
	for (unsigned int i = 0; i < nr_vms; i++) {
		struct vm_stats stats;

		vm_get_stats(vms[i], &stats);
		tm->unshared += stats.tables.tables;
	}
}

/* ---- --stats ---- */

/* " mode=M key=value ..." of a notifier object, on stderr. */
static void print_notifier(enum notifier_mode mode, const struct notifier_stats *n)
{
	fprintf(stderr, " mode=%s", notifier_mode_name(mode));
#define NOTIFIER_STAT_TEXT(key, value) fprintf(stderr, " %s=%llu", key, (unsigned long long)(value));
	NOTIFIER_STATS(NOTIFIER_STAT_TEXT)
#undef NOTIFIER_STAT_TEXT
}

/* Prints the text of every counter of group. */
static void print_group(enum vm_stat_group group, const uint64_t *values)
{
	for (int i = 0; i < VM_STAT_NR; i++)
		if (vm_stat_descs[i].group == group && vm_stat_descs[i].before)
			fprintf(stderr, "%s%llu%s", vm_stat_descs[i].before, (unsigned long long)values[i],
				vm_stat_descs[i].after);
}

void vm_stats_print(const char *name, int status, const struct vm_stats *stats)
{
	uint64_t values[VM_STAT_NR];

	vm_stats_values(stats, values);
	fprintf(stderr, "umbra: %s: exit status %d, %llu KVM exits:", name, status,
		(unsigned long long)stats->exits_total);
	for (int i = 0; i < VM_EXIT_NR; i++)
		if (stats->exits[i])
			fprintf(stderr, " %s=%llu", vm_exit_kind_names[i], (unsigned long long)stats->exits[i]);
	fprintf(stderr, "\numbra: %s: hypercalls:", name);
	for (int i = 0; i < UMBRA_HC_NR; i++)
		if (stats->hypercalls[i])
			fprintf(stderr, " %s=%llu", vm_hypercall_names[i], (unsigned long long)stats->hypercalls[i]);
	fprintf(stderr, "\numbra: %s: shadow:", name);
	print_group(VM_STAT_SHADOW, values);
	fprintf(stderr, "\numbra: %s: shootdowns:", name);
	print_group(VM_STAT_SHOOTDOWNS, values);
	fprintf(stderr, "\numbra: %s: tables reached:", name);
	print_group(VM_STAT_TABLES_REACHED, values);
	fprintf(stderr, "; sharing:");
	print_group(VM_STAT_SHARING, values);
	fprintf(stderr, "\numbra: %s: notifier (RAM):", name);
	print_notifier(stats->notifier_mode, &stats->notifier);
	fputc('\n', stderr);
}

void vmm_stats_print_process(const struct table_memory *tm, struct segment *const *segments,
			     unsigned int nr_segments)
{
	fprintf(stderr,
		"umbra: table memory: %llu KiB in use of %llu KiB in %llu pool%s (%llu tables); "
		"unshared it would be %llu KiB (%llu tables)\n",
		(unsigned long long)(tm->in_use * PAGE_KIB), (unsigned long long)(tm->pool_pages * PAGE_KIB),
		(unsigned long long)tm->pools, tm->pools == 1 ? "" : "s",
		(unsigned long long)tm->in_use, (unsigned long long)(tm->unshared * PAGE_KIB),
		(unsigned long long)tm->unshared);
	for (unsigned int i = 0; i < nr_segments; i++) {
		struct segment_stats ss;

		segment_get_stats(segments[i], &ss);
		fprintf(stderr, "umbra: segment '%s':", segments[i]->name);
#define SEGMENT_STAT_PRINT(field, key) fprintf(stderr, " %s=%llu", key, (unsigned long long)ss.field);
		SEGMENT_STATS(SEGMENT_STAT_PRINT)
#undef SEGMENT_STAT_PRINT
		struct notifier_stats ns;
		notifier_object_stats(segments[i]->obj, &ns);
		fprintf(stderr, "; notifier:");
		print_notifier(notifier_object_mode(segments[i]->obj), &ns);
		fputc('\n', stderr);
	}
}

/* ---- --stats-json ---- */

static void json_add_u64(struct json_object *o, const char *key, uint64_t value)
{
	json_object_object_add(o, key, json_object_new_uint64(value));
}

/* An object of the counters of group. */
static struct json_object *json_group(enum vm_stat_group group, const uint64_t *values)
{
	struct json_object *o = json_object_new_object();

	for (int i = 0; i < VM_STAT_NR; i++)
		if (vm_stat_descs[i].group == group)
			json_add_u64(o, vm_stat_descs[i].key, values[i]);
	return o;
}

/* {"mode": M, key: value, ...} of a notifier object. */
static struct json_object *json_notifier(enum notifier_mode mode, const struct notifier_stats *n)
{
	struct json_object *o = json_object_new_object();

	json_object_object_add(o, "mode", json_object_new_string(notifier_mode_name(mode)));
#define NOTIFIER_STAT_JSON(key, value) json_add_u64(o, key, value);
	NOTIFIER_STATS(NOTIFIER_STAT_JSON)
#undef NOTIFIER_STAT_JSON
	return o;
}

static struct json_object *json_segment(const struct plan_segment *ps, const struct segment *seg)
{
	struct json_object *js = json_object_new_object();
	struct segment_stats ss = { 0 };

	if (seg)
		segment_get_stats(seg, &ss);
	json_object_object_add(js, "name", json_object_new_string(ps->name));
	json_add_u64(js, "gpa", ps->gpa);
	json_add_u64(js, "size", ps->size);
	json_object_object_add(js, "writable", json_object_new_boolean(ps->writable));
#define SEGMENT_STAT_JSON(field, key) json_add_u64(js, key, ss.field);
	SEGMENT_STATS(SEGMENT_STAT_JSON)
#undef SEGMENT_STAT_JSON
	if (seg) {
		struct notifier_stats ns;

		notifier_object_stats(seg->obj, &ns);
		json_object_object_add(js, "notifier", json_notifier(notifier_object_mode(seg->obj), &ns));
	}
	return js;
}

/* The counters of one VM: exits, hypercalls, shadow, shootdowns. */
static void json_add_vm_counters(struct json_object *jv, const struct vm_stats *stats)
{
	struct json_object *jexits = json_object_new_object();
	struct json_object *jhypercalls = json_object_new_object();
	uint64_t values[VM_STAT_NR];

	vm_stats_values(stats, values);
	json_add_u64(jexits, "total", stats->exits_total);
	for (int k = 0; k < VM_EXIT_NR; k++)
		json_add_u64(jexits, vm_exit_kind_names[k], stats->exits[k]);
	json_object_object_add(jv, "exits", jexits);
	for (int k = 0; k < UMBRA_HC_NR; k++)
		json_add_u64(jhypercalls, vm_hypercall_names[k], stats->hypercalls[k]);
	json_object_object_add(jv, "hypercalls", jhypercalls);
	struct json_object *jshadow = json_group(VM_STAT_SHADOW, values);
	json_object_object_add(jshadow, "sharing", json_group(VM_STAT_SHARING, values));
	json_object_object_add(jshadow, "tables_reached", json_group(VM_STAT_TABLES_REACHED, values));
	json_object_object_add(jv, "shadow", jshadow);
	json_object_object_add(jv, "shootdowns", json_group(VM_STAT_SHOOTDOWNS, values));
	json_object_object_add(jv, "notifier", json_notifier(stats->notifier_mode, &stats->notifier));
}

static struct json_object *json_vm(const struct plan *plan, const struct plan_vm *pv, const struct vm *vm,
				   int status)
{
	struct json_object *jv = json_object_new_object();
	struct json_object *jattached = json_object_new_array();
	struct vm_stats stats;

	memset(&stats, 0, sizeof(stats));
	if (vm)
		vm_get_stats(vm, &stats);
	json_object_object_add(jv, "name", json_object_new_string(vm ? vm_name(vm) : pv->name));
	if (vm && vm_parent(vm))
		json_object_object_add(jv, "parent", json_object_new_string(vm_name(vm_parent(vm))));
	json_object_object_add(jv, "image", json_object_new_string(pv->image));
	json_object_object_add(jv, "vcpus", json_object_new_int((int)pv->vcpus));
	json_add_u64(jv, "mem", pv->mem);
	json_object_object_add(jv, "exit_status", json_object_new_int(status));
	json_object_object_add(jv, "group", json_object_new_string(pv->group));
	json_object_object_add(jv, "pool", json_object_new_int((int)pv->group_index));
	json_add_u64(jv, "table_quota", pv->table_quota);
	for (unsigned int k = 0; k < pv->nr_segments; k++)
		json_object_array_add(jattached, json_object_new_string(plan->segments[pv->segments[k]].name));
	json_object_object_add(jv, "segments", jattached);
	json_add_vm_counters(jv, &stats);
	return jv;
}

/* Writes text (NULL: json-c ran out of memory) to the file at path,
 * created or truncated. Returns 0 or -errno. */
static int write_text_file(const char *path, const char *text)
{
	FILE *f;
	int ret = 0;

	if (!text)
		return -ENOMEM;
	f = fopen(path, "w");
	if (!f)
		return -errno;
	errno = EIO; /* what a short write that sets no errno reports */
	if (fputs(text, f) == EOF)
		ret = -errno;
	if (fclose(f) == EOF && !ret)
		ret = -errno;
	return ret;
}

/* The trust groups' pools: name, VMs, pages, pages in use (the most seen),
 * and pages in use as the statistics are written (0 once every VM of the
 * group stopped: their tables were freed). */
static struct json_object *json_pools(const struct plan *plan, const struct vmm_host *host)
{
	struct json_object *jpools = json_object_new_array();

	for (unsigned int g = 0; g < host->nr_groups; g++) {
		struct json_object *jg = json_object_new_object();

		json_object_object_add(jg, "group", json_object_new_string(plan->groups[g].name));
		json_object_object_add(jg, "vms", json_object_new_int((int)plan->groups[g].nr_vms));
		json_add_u64(jg, "pages", host->groups[g].pool_pages);
		json_add_u64(jg, "in_use", group_pages_in_use(&host->groups[g]));
		json_add_u64(jg, "in_use_at_end", shadow_pool_pages_in_use(host->groups[g].pool, 0));
		json_object_array_add(jpools, jg);
	}
	return jpools;
}

int vmm_stats_write_json(const char *path, const struct plan *plan, const struct vmm_host *host,
			 struct segment *const *segments, struct vm *const *vms, unsigned int nr_vms, const int *status,
			 const struct table_memory *tm, struct vmm_error *err)
{
	struct json_object *root = json_object_new_object();
	struct json_object *jvms = json_object_new_array();
	struct json_object *jsegs = json_object_new_array();
	struct json_object *jpool = json_object_new_object();

	json_object_object_add(root, "umbra_version", json_object_new_string(UMBRA_VERSION));
	json_object_object_add(root, "abi_version", json_object_new_int(UMBRA_ABI_VERSION));
	for (unsigned int i = 0; i < plan->nr_segments; i++)
		json_object_array_add(jsegs, json_segment(&plan->segments[i], segments[i]));
	json_object_object_add(root, "segments", jsegs);
#define TABLE_MEMORY_JSON(field, key) json_add_u64(jpool, key, tm->field);
	TABLE_MEMORY_STATS(TABLE_MEMORY_JSON)
#undef TABLE_MEMORY_JSON
	json_object_object_add(root, "table_pages", jpool);
	json_object_object_add(root, "pools", json_pools(plan, host));
	struct json_object *jram = json_object_new_object();
	unsigned int nr_areas = 0;
	(void)vmm_host_ram_bytes((struct vmm_host *)host, &nr_areas);
	json_object_object_add(jram, "areas", json_object_new_int((int)nr_areas));
	json_add_u64(jram, "bytes_seen", __atomic_load_n(&host->ram_bytes_seen, __ATOMIC_RELAXED));
	json_object_object_add(root, "ram", jram);
	for (unsigned int i = 0; i < nr_vms; i++)
		json_object_array_add(jvms, json_vm(plan, &plan->vms[vm_plan_index(vms[i])], vms[i], status[i]));
	json_object_object_add(root, "vms", jvms);
	if (host->memory)
		json_object_object_add(root, "pager", vmm_memory_stats_json(host->memory));
	int ret = write_text_file(path, json_object_to_json_string_ext(root, JSON_C_TO_STRING_PRETTY |
									    JSON_C_TO_STRING_SPACED));
	json_object_put(root);
	if (ret)
		return vmm_error_set(err, -ret, "cannot write statistics to '%s': %s", path, strerror(-ret));
	return 0;
}
