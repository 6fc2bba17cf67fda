/*
 * umbra: the command-line program. The only place that prints errors and
 * chooses the process's exit status.
 */
#include <errno.h>
#include <fcntl.h>
#include <json-c/json.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "umbra/abi.h"
#include "vmm.h"

#define IMAGE_SIZE_MAX (256u << 20)

static int read_image(const char *path, void **buf, size_t *len, struct vmm_error *err)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return vmm_error_set(err, errno, "cannot open image '%s': %s", path, strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return vmm_error_set(err, EINVAL, "image '%s' is not a regular file", path);
	}
	if (st.st_size == 0 || (uint64_t)st.st_size > IMAGE_SIZE_MAX) {
		close(fd);
		return vmm_error_set(err, EFBIG, "image '%s': size %lld is not within 1 byte .. 256 MiB", path,
				     (long long)st.st_size);
	}
	*len = (size_t)st.st_size;
	*buf = malloc(*len);
	if (!*buf) {
		close(fd);
		return vmm_error_set(err, ENOMEM, "out of memory reading image '%s'", path);
	}
	size_t done = 0;
	while (done < *len) {
		ssize_t n = read(fd, (char *)*buf + done, *len - done);
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;
			free(*buf);
			close(fd);
			return vmm_error_set(err, e, "reading image '%s': %s", path, strerror(e));
		}
		done += (size_t)n;
	}
	close(fd);
	return 0;
}

/* An image read and validated once per distinct (path, load limit). */
struct loaded_image {
	const char *path;
	uint64_t load_max;
	void *buf;
	size_t len;
	struct elf_image elf;
};

static void print_stats(const char *name, int status, const struct vm_stats *stats)
{
	const struct shadow_mmu_stats *sh = &stats->shadow;

	fprintf(stderr, "umbra: %s: exit status %d, %llu KVM exits:", name, status,
		(unsigned long long)stats->exits_total);
	for (int i = 0; i < VM_EXIT_NR; i++)
		if (stats->exits[i])
			fprintf(stderr, " %s=%llu", vm_exit_kind_names[i], (unsigned long long)stats->exits[i]);
	fprintf(stderr, "\numbra: %s: hypercalls:", name);
	for (int i = 0; i < UMBRA_HC_NR; i++)
		if (stats->hypercalls[i])
			fprintf(stderr, " %s=%llu", vm_hypercall_names[i], (unsigned long long)stats->hypercalls[i]);
	fprintf(stderr,
		"\numbra: %s: shadow: faults=%llu fixed=%llu guest=%llu retries=%llu installs=%llu zapped=%llu "
		"tables=%llu (created %llu, freed %llu) invlpg=%llu cr3_loads=%llu syncs=%llu invalidations=%llu\n"
		"umbra: %s: shootdowns: requests=%llu kicks=%llu nmis=%llu acks=%llu\n"
		"umbra: %s: tables reached: %llu (private %llu, shared %llu); sharing: clones=%llu "
		"privatizations=%llu cow_breaks=%llu canonical created=%llu reused=%llu remote_flushes=%llu\n",
		name, (unsigned long long)sh->faults, (unsigned long long)sh->fixed,
		(unsigned long long)sh->guest_faults, (unsigned long long)sh->retries,
		(unsigned long long)sh->installs, (unsigned long long)sh->zapped,
		(unsigned long long)(sh->tables_created - sh->tables_freed), (unsigned long long)sh->tables_created,
		(unsigned long long)sh->tables_freed, (unsigned long long)sh->invlpg,
		(unsigned long long)sh->cr3_loads, (unsigned long long)sh->syncs,
		(unsigned long long)sh->invalidations, name, (unsigned long long)stats->flush_requests,
		(unsigned long long)stats->kicks, (unsigned long long)stats->nmis,
		(unsigned long long)stats->flush_acks, name, (unsigned long long)stats->tables.tables,
		(unsigned long long)stats->tables.private_, (unsigned long long)stats->tables.shared,
		(unsigned long long)sh->clones, (unsigned long long)sh->privatizations,
		(unsigned long long)sh->cow_breaks, (unsigned long long)sh->canon_created,
		(unsigned long long)sh->canon_reused, (unsigned long long)sh->remote_flushes);
}

/* Table memory of the whole process: the pool's pages in use, against the
 * sum of what each VM reaches (what the VMs would need without sharing). */
struct table_memory {
	uint64_t pool_pages, in_use, unshared;
};

static void table_memory(const struct vmm_host *host, struct vm *const *vms, unsigned int nr_vms,
			 struct table_memory *tm)
{
	tm->pool_pages = host->pool_pages;
	tm->in_use = shadow_pool_pages_in_use(host->pool, 0);
	tm->unshared = 0;
	for (unsigned int i = 0; i < nr_vms; i++) {
		struct vm_stats stats;

		vm_get_stats(vms[i], &stats);
		tm->unshared += stats.tables.tables;
	}
}

static void print_table_memory(const struct table_memory *tm)
{
	fprintf(stderr,
		"umbra: table memory: %llu KiB in use of a %llu KiB pool (%llu tables); "
		"unshared it would be %llu KiB (%llu tables)\n",
		(unsigned long long)tm->in_use * 4, (unsigned long long)tm->pool_pages * 4,
		(unsigned long long)tm->in_use, (unsigned long long)tm->unshared * 4,
		(unsigned long long)tm->unshared);
}

static struct json_object *json_counters(const char *const *names, const uint64_t *values, int n)
{
	struct json_object *o = json_object_new_object();

	for (int i = 0; i < n; i++)
		json_object_object_add(o, names[i], json_object_new_uint64(values[i]));
	return o;
}

/* Writes every VM's statistics to path as JSON (docs/config.md). */
static int write_stats_json(const char *path, const struct plan *plan, struct segment *const *segments,
			    struct vm *const *vms, const int *status, const struct table_memory *tm,
			    struct vmm_error *err)
{
	struct json_object *root = json_object_new_object();
	struct json_object *jvms = json_object_new_array();
	struct json_object *jsegs = json_object_new_array();

	json_object_object_add(root, "umbra_version", json_object_new_string(UMBRA_VERSION));
	json_object_object_add(root, "abi_version", json_object_new_int(UMBRA_ABI_VERSION));
	for (unsigned int i = 0; i < plan->nr_segments; i++) {
		const struct plan_segment *ps = &plan->segments[i];
		struct json_object *js = json_object_new_object();
		json_object_object_add(js, "name", json_object_new_string(ps->name));
		json_object_object_add(js, "gpa", json_object_new_uint64(ps->gpa));
		json_object_object_add(js, "size", json_object_new_uint64(ps->size));
		json_object_object_add(js, "writable", json_object_new_boolean(ps->writable));
		uint64_t evictions = 0, restores = 0;
		if (segments[i])
			shadow_store_stats(segments[i]->store, &evictions, &restores);
		json_object_object_add(js, "evictions", json_object_new_uint64(evictions));
		json_object_object_add(js, "restores", json_object_new_uint64(restores));
		json_object_array_add(jsegs, js);
	}
	json_object_object_add(root, "segments", jsegs);
	static const char *const pool_names[] = { "pages", "in_use", "unshared" };
	uint64_t pool_values[] = { tm->pool_pages, tm->in_use, tm->unshared };
	json_object_object_add(root, "table_pages", json_counters(pool_names, pool_values, 3));
	for (unsigned int i = 0; i < plan->nr_vms; i++) {
		const struct plan_vm *pv = &plan->vms[i];
		struct json_object *jv = json_object_new_object();
		struct json_object *jexits = json_object_new_object();
		struct json_object *jattached = json_object_new_array();
		struct vm_stats stats;

		memset(&stats, 0, sizeof(stats));

		if (vms[i])
			vm_get_stats(vms[i], &stats);
		json_object_object_add(jv, "name", json_object_new_string(pv->name));
		json_object_object_add(jv, "image", json_object_new_string(pv->image));
		json_object_object_add(jv, "vcpus", json_object_new_int((int)pv->vcpus));
		json_object_object_add(jv, "mem", json_object_new_uint64(pv->mem));
		json_object_object_add(jv, "exit_status", json_object_new_int(status[i]));
		for (unsigned int k = 0; k < pv->nr_segments; k++)
			json_object_array_add(jattached, json_object_new_string(plan->segments[pv->segments[k]].name));
		json_object_object_add(jv, "segments", jattached);
		json_object_object_add(jexits, "total", json_object_new_uint64(stats.exits_total));
		for (int k = 0; k < VM_EXIT_NR; k++)
			json_object_object_add(jexits, vm_exit_kind_names[k], json_object_new_uint64(stats.exits[k]));
		json_object_object_add(jv, "exits", jexits);
		json_object_object_add(jv, "hypercalls", json_counters(vm_hypercall_names, stats.hypercalls, UMBRA_HC_NR));
		static const char *const shadow_names[] = { "faults", "fixed", "guest_faults", "retries", "installs",
							    "zapped", "tables_created", "tables_freed", "invlpg",
							    "cr3_loads", "syncs", "invalidations" };
		const struct shadow_mmu_stats *sh = &stats.shadow;
		uint64_t shadow_values[] = { sh->faults, sh->fixed, sh->guest_faults, sh->retries, sh->installs,
					     sh->zapped, sh->tables_created, sh->tables_freed, sh->invlpg,
					     sh->cr3_loads, sh->syncs, sh->invalidations };
		struct json_object *jshadow = json_counters(shadow_names, shadow_values, 12);
		json_object_object_add(jshadow, "tables", json_object_new_uint64(sh->tables_created - sh->tables_freed));
		static const char *const sharing_names[] = { "clones", "privatizations", "cow_breaks",
							     "canon_created", "canon_reused", "remote_flushes" };
		uint64_t sharing_values[] = { sh->clones, sh->privatizations, sh->cow_breaks,
					      sh->canon_created, sh->canon_reused, sh->remote_flushes };
		json_object_object_add(jshadow, "sharing", json_counters(sharing_names, sharing_values, 6));
		static const char *const table_names[] = { "reached", "private", "shared", "pt", "pd", "pdpt", "pml4" };
		const struct shadow_table_usage *tu = &stats.tables;
		uint64_t table_values[] = { tu->tables, tu->private_, tu->shared, tu->by_level[1],
					    tu->by_level[2], tu->by_level[3], tu->by_level[4] };
		json_object_object_add(jshadow, "tables_reached", json_counters(table_names, table_values, 7));
		json_object_object_add(jv, "shadow", jshadow);
		static const char *const shootdown_names[] = { "requests", "kicks", "nmis", "acks" };
		uint64_t shootdown_values[] = { stats.flush_requests, stats.kicks, stats.nmis, stats.flush_acks };
		json_object_object_add(jv, "shootdowns", json_counters(shootdown_names, shootdown_values, 4));
		json_object_array_add(jvms, jv);
	}
	json_object_object_add(root, "vms", jvms);
	int ret = json_object_to_file_ext(path, root, JSON_C_TO_STRING_PRETTY | JSON_C_TO_STRING_SPACED);
	json_object_put(root);
	if (ret < 0)
		return vmm_error_set(err, EIO, "--stats-json '%s': %s", path, json_util_get_last_err());
	return 0;
}

static int load_images(const struct plan *plan, struct loaded_image *images, unsigned int *nr_images,
		       unsigned int *vm_image, struct vmm_error *err)
{
	*nr_images = 0;
	for (unsigned int i = 0; i < plan->nr_vms; i++) {
		const struct plan_vm *pv = &plan->vms[i];
		uint64_t load_max = vm_image_load_max(pv->mem, pv->vcpus);
		unsigned int k;

		for (k = 0; k < *nr_images; k++)
			if (strcmp(images[k].path, pv->image) == 0 && images[k].load_max == load_max)
				break;
		vm_image[i] = k;
		if (k < *nr_images)
			continue;
		struct loaded_image *li = &images[(*nr_images)++];
		li->path = pv->image;
		li->load_max = load_max;
		if (read_image(pv->image, &li->buf, &li->len, err))
			return -ENOEXEC;
		if (elf_image_parse(li->buf, li->len, UMBRA_IMAGE_MIN_GPA, load_max, &li->elf, err)) {
			char msg[VMM_ERROR_MAX];
			snprintf(msg, sizeof(msg), "%s", err->msg);
			return vmm_error_set(err, ENOEXEC, "image '%s': %s", pv->image, msg);
		}
	}
	return 0;
}

static int run(const struct vmm_options *opts)
{
	struct vmm_error err = { "" };
	struct plan plan;
	struct segment *segments[UMBRA_MAX_SEGMENTS] = { NULL };
	struct loaded_image *images = NULL;
	unsigned int nr_images = 0, *vm_image = NULL;
	struct vm **vms = NULL;
	struct vmm_host *host = NULL;
	struct evictor *evictor = NULL;
	int *status = NULL;
	int kvm_fd = -1, ret;

	ret = opts->config ? plan_from_config(opts->config, &plan, &err) : plan_from_options(opts, &plan, &err);
	if (ret) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		return ret == -ENOMEM ? UMBRA_STATUS_NO_KVM : UMBRA_STATUS_USAGE;
	}
	if (opts->evict_ms && plan.nr_segments == 0) {
		fprintf(stderr, "umbra: --evict-ms: there are no segments to evict (declare them in a --config file)\n");
		plan_free(&plan);
		return UMBRA_STATUS_USAGE;
	}
	images = calloc(plan.nr_vms, sizeof(*images));
	vm_image = calloc(plan.nr_vms, sizeof(*vm_image));
	vms = calloc(plan.nr_vms, sizeof(*vms));
	status = calloc(plan.nr_vms, sizeof(*status));
	if (!images || !vm_image || !vms || !status) {
		fprintf(stderr, "umbra: out of memory\n");
		ret = UMBRA_STATUS_NO_KVM;
		goto free_all;
	}
	if (load_images(&plan, images, &nr_images, vm_image, &err)) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		ret = UMBRA_STATUS_IMAGE_ERROR;
		goto free_all;
	}
	for (unsigned int i = 0; i < plan.nr_segments; i++) {
		if (segment_create(&plan.segments[i], &segments[i], &err)) {
			fprintf(stderr, "umbra: %s\n", err.msg);
			ret = UMBRA_STATUS_SEGMENT_ERROR;
			goto free_all;
		}
	}
	if (vmm_kvm_open(&kvm_fd, &err) || vmm_check_nested_paging(&err)) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		ret = UMBRA_STATUS_NO_KVM;
		goto free_all;
	}
	if (vmm_host_create(VMM_POOL_PAGES_DEFAULT, &host, &err)) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		ret = UMBRA_STATUS_NO_KVM;
		goto free_all;
	}
	vmm_signals_init();
	for (unsigned int i = 0; i < plan.nr_vms; i++) {
		const struct plan_vm *pv = &plan.vms[i];
		struct segment *attached[UMBRA_MAX_SEGMENTS];
		const struct loaded_image *li = &images[vm_image[i]];

		for (unsigned int k = 0; k < pv->nr_segments; k++)
			attached[k] = segments[pv->segments[k]];
		struct vm_config config = { host, pv->name, pv->mem, pv->vcpus, pv->cmdline, pv->nr_segments, attached,
					    plan.nr_vms > 1 };
		if (vm_create(kvm_fd, &config, &vms[i], &err)) {
			fprintf(stderr, "umbra: %s: cannot create the VM: %s\n", pv->name, err.msg);
			ret = UMBRA_STATUS_NO_KVM;
			goto destroy_vms;
		}
		if (vm_load_image(vms[i], &li->elf, li->buf, &err)) {
			fprintf(stderr, "umbra: %s: cannot load image '%s': %s\n", pv->name, pv->image, err.msg);
			ret = UMBRA_STATUS_NO_KVM;
			goto destroy_vms;
		}
	}
	for (unsigned int i = 0; i < plan.nr_vms; i++)
		vm_start(vms[i]);
	if (opts->evict_ms && evictor_start(segments, plan.nr_segments, opts->evict_ms, opts->evict_pages,
					    &evictor, &err))
		fprintf(stderr, "umbra: warning: %s; running without evictions\n", err.msg);
	ret = 0;
	for (unsigned int i = 0; i < plan.nr_vms; i++) {
		status[i] = vm_wait(vms[i]);
		if (ret == 0)
			ret = status[i];
	}
	evictor_stop(evictor);
	evictor = NULL;
	struct table_memory tm;
	table_memory(host, vms, plan.nr_vms, &tm);
	for (unsigned int i = 0; i < plan.nr_vms; i++) {
		struct vm_stats stats;
		vm_get_stats(vms[i], &stats);
		if (opts->stats)
			print_stats(plan.vms[i].name, status[i], &stats);
		else if (plan.nr_vms > 1 && status[i] != 0)
			fprintf(stderr, "umbra: %s: exit status %d\n", plan.vms[i].name, status[i]);
	}
	if (opts->stats) {
		print_table_memory(&tm);
		for (unsigned int i = 0; i < plan.nr_segments; i++) {
			uint64_t evictions, restores;
			shadow_store_stats(segments[i]->store, &evictions, &restores);
			fprintf(stderr, "umbra: segment '%s': evictions=%llu restores=%llu\n", segments[i]->name,
				(unsigned long long)evictions, (unsigned long long)restores);
		}
	}
	if (opts->stats_json && write_stats_json(opts->stats_json, &plan, segments, vms, status, &tm, &err)) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		if (ret == 0)
			ret = UMBRA_STATUS_USAGE;
	}
destroy_vms:
	evictor_stop(evictor);
	for (unsigned int i = 0; i < plan.nr_vms; i++)
		vm_destroy(vms[i]);
free_all:
	vmm_host_destroy(host);
	if (kvm_fd >= 0)
		close(kvm_fd);
	for (unsigned int i = 0; i < plan.nr_segments; i++)
		segment_destroy(segments[i]);
	for (unsigned int i = 0; i < nr_images; i++)
		free(images[i].buf);
	free(images);
	free(vm_image);
	free(vms);
	free(status);
	plan_free(&plan);
	return ret;
}

int main(int argc, char **argv)
{
	struct vmm_options opts;
	struct vmm_error err = { "" };

	if (vmm_options_parse(argc, argv, &opts, &err)) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		return UMBRA_STATUS_USAGE;
	}
	switch (opts.command) {
	case VMM_CMD_HELP:
		fputs(vmm_usage, stdout);
		return 0;
	case VMM_CMD_VERSION:
		printf("umbra %s (guest ABI version %u)\n", UMBRA_VERSION, UMBRA_ABI_VERSION);
		return 0;
	case VMM_CMD_RUN:
		return run(&opts);
	}
	return UMBRA_STATUS_USAGE;
}
