/*
 * umbra: the command-line program. The only place that prints errors and
 * chooses the process's exit status.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "umbra/abi.h"
#include "umbra/trace.h"
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

/* What run() sets up, released by run_free(). */
struct run_state {
	struct plan plan;
	struct segment *segments[UMBRA_MAX_SEGMENTS];
	struct loaded_image *images;
	unsigned int nr_images, *vm_image;
	struct vm **vms;
	struct vmm_host *host;
	struct vmm_memory *memory; /* the pager, or NULL */
	int *status;          /* [VMM_MAX_VMS], of host->vms[i] */
	unsigned int nr_run;  /* host->vms waited for */
	int kvm_fd;
};

/* Creates every VM of the plan and loads its image. Returns 0, or the exit
 * status after printing why. */
static int create_vms(struct run_state *rs)
{
	struct vmm_error err = { "" };

	for (unsigned int i = 0; i < rs->plan.nr_vms; i++) {
		const struct plan_vm *pv = &rs->plan.vms[i];
		struct segment *attached[UMBRA_MAX_SEGMENTS];
		const struct loaded_image *li = &rs->images[rs->vm_image[i]];

		for (unsigned int k = 0; k < pv->nr_segments; k++)
			attached[k] = rs->segments[pv->segments[k]];
		struct vm_config config = {
			.host = rs->host, .group = &rs->host->groups[pv->group_index], .table_quota = pv->table_quota,
			.name = pv->name, .mem = pv->mem, .vcpus = pv->vcpus, .cmdline = pv->cmdline,
			.nr_segments = pv->nr_segments, .segments = attached, .prefix_output = rs->plan.nr_vms > 1,
		};
		if (vm_create(rs->kvm_fd, &config, &rs->vms[i], &err)) {
			fprintf(stderr, "umbra: %s: cannot create the VM: %s\n", pv->name, err.msg);
			return UMBRA_STATUS_NO_KVM;
		}
		if (vm_load_image(rs->vms[i], &li->elf, li->buf, &err)) {
			fprintf(stderr, "umbra: %s: cannot load image '%s': %s\n", pv->name, pv->image, err.msg);
			return UMBRA_STATUS_NO_KVM;
		}
		vm_set_clone_at_ready(rs->vms[i], i, pv->clones);
	}
	for (unsigned int i = 0; i < rs->plan.nr_vms; i++)
		vmm_host_add_vm(rs->host, rs->vms[i]);
	/* Every page that must stay resident is pinned: the budget can start. */
	if (rs->memory && vmm_memory_start(rs->memory, &err)) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		return UMBRA_STATUS_USAGE;
	}
	return 0;
}

/* Everything before the VMs: images, segments, /dev/kvm, the table pool.
 * Returns 0, or the exit status after printing why. */
static int prepare(const struct vmm_options *opts, struct run_state *rs)
{
	struct vmm_error err = { "" };
	unsigned int nr_vms = rs->plan.nr_vms;

	if (opts->evict_ms && rs->plan.nr_segments == 0) {
		fprintf(stderr, "umbra: --evict-ms: there are no segments to evict (declare them in a --config file)\n");
		return UMBRA_STATUS_USAGE;
	}
	rs->images = calloc(nr_vms, sizeof(*rs->images));
	rs->vm_image = calloc(nr_vms, sizeof(*rs->vm_image));
	rs->vms = calloc(nr_vms, sizeof(*rs->vms));
	rs->status = calloc(VMM_MAX_VMS, sizeof(*rs->status));
	if (!rs->images || !rs->vm_image || !rs->vms || !rs->status) {
		fprintf(stderr, "umbra: out of memory\n");
		return UMBRA_STATUS_NO_KVM;
	}
	if (load_images(&rs->plan, rs->images, &rs->nr_images, rs->vm_image, &err)) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		return UMBRA_STATUS_IMAGE_ERROR;
	}
	if (plan_uses_pager(&rs->plan, opts->evict_ms) &&
	    vmm_memory_create(&rs->plan, &opts->pager, &rs->memory, &err)) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		return UMBRA_STATUS_NO_KVM;
	}
	for (unsigned int i = 0; i < rs->plan.nr_segments; i++) {
		if (rs->plan.segments[i].notifier_mode < 0)
			rs->plan.segments[i].notifier_mode = (int)opts->notifier_mode;
		if (segment_create(&rs->plan.segments[i], rs->memory, &rs->segments[i], &err)) {
			fprintf(stderr, "umbra: %s\n", err.msg);
			return UMBRA_STATUS_SEGMENT_ERROR;
		}
	}
	if (vmm_kvm_open(&rs->kvm_fd, &err) || vmm_check_nested_paging(&err) ||
	    vmm_host_create(&rs->plan, &rs->host, &err)) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		return UMBRA_STATUS_NO_KVM;
	}
	rs->host->console = opts->console;
	rs->host->fault_around = opts->fault_around;
	rs->host->huge_leaves = opts->huge_leaves;
	rs->host->notifier_mode = opts->notifier_mode;
	rs->host->memory = rs->memory;
	if (opts->dump_tables && vmm_dump_create(opts->dump_tables, &rs->host->dump)) {
		fprintf(stderr, "umbra: out of memory\n");
		return UMBRA_STATUS_NO_KVM;
	}
	return 0;
}

/* Runs the created VMs (and the evictor) to their end, and their clones,
 * which join the run's list of VMs as they are made (before their parent
 * ends); returns the first non-zero VM status, or 0. */
static int run_vms(const struct vmm_options *opts, struct run_state *rs)
{
	struct vmm_error err = { "" };
	struct evictor *evictor = NULL;
	struct vm *vm;
	int ret = 0;

	for (unsigned int i = 0; i < rs->plan.nr_vms; i++)
		vm_start(rs->vms[i]);
	if (opts->evict_ms && evictor_start(rs->segments, rs->plan.nr_segments, opts->evict_ms, opts->evict_pages,
					    &evictor, &err))
		fprintf(stderr, "umbra: warning: %s; running without evictions\n", err.msg);
	for (unsigned int i = 0; (vm = vmm_host_vm(rs->host, i)); i++) {
		rs->status[i] = vm_wait(vm);
		if (ret == 0)
			ret = rs->status[i];
		rs->nr_run = i + 1;
	}
	evictor_stop(evictor);
	return ret;
}

/* --stats, --stats-json and the statuses of failed VMs. A statistics file
 * that cannot be written is a warning: the exit status stays the guests'. */
static void report(const struct vmm_options *opts, struct run_state *rs)
{
	struct vmm_error err = { "" };
	struct table_memory tm;

	struct vm *const *vms = (struct vm *const *)rs->host->vms; /* every VM has ended */

	table_memory_get(rs->host, vms, rs->nr_run, &tm);
	for (unsigned int i = 0; i < rs->nr_run; i++) {
		struct vm_stats stats;
		vm_get_stats(vms[i], &stats);
		if (opts->stats)
			vm_stats_print(vm_name(vms[i]), rs->status[i], &stats);
		else if (rs->nr_run > 1 && rs->status[i] != 0)
			fprintf(stderr, "umbra: %s: exit status %d\n", vm_name(vms[i]), rs->status[i]);
	}
	if (opts->stats)
		vmm_stats_print_process(&tm, rs->segments, rs->plan.nr_segments);
	if (opts->stats && rs->memory)
		vmm_memory_stats_print(rs->memory);
	if (opts->stats_json &&
	    vmm_stats_write_json(opts->stats_json, &rs->plan, rs->host, rs->segments, vms, rs->nr_run, rs->status, &tm,
				 &err))
		fprintf(stderr, "umbra: warning: %s\n", err.msg);
	if (rs->host->dump && vmm_dump_write(rs->host->dump, &err))
		fprintf(stderr, "umbra: warning: %s\n", err.msg);
}

/*
 * The trust groups of the plan (docs/security.md), and whether it fits the
 * host. Where the pool is guest-writable, VMs without a group share nothing,
 * and one line says so. Returns 0, or the exit status after printing why.
 */
static int plan_check(struct plan *plan)
{
	struct vmm_error err = { "" };
	struct vmm_host_memory hm;
	struct vmm_fit fit;
	bool writable = vmm_pool_must_be_writable();
	unsigned int ungrouped = plan_nr_ungrouped(plan);

	if (plan_assign_groups(plan, !writable, &err)) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		return UMBRA_STATUS_NO_KVM;
	}
	plan_fit_estimate(plan, &fit);
	if (vmm_host_memory_read(&hm, &err))
		fprintf(stderr, "umbra: warning: %s; not checking that the VMs fit this host\n", err.msg);
	else if (vmm_fit_check(&fit, &hm, &err)) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		return UMBRA_STATUS_USAGE;
	}
	if (writable && ungrouped && plan->nr_vms > 1)
		fprintf(stderr,
			"umbra: note: AMD nested paging: the shadow-table pool is guest-writable, so VMs share shadow "
			"tables only within a trust group; %u VM%s without a \"group\" share%s none (docs/security.md)\n",
			ungrouped, ungrouped == 1 ? "" : "s", ungrouped == 1 ? "s" : "");
	return 0;
}

static void run_free(struct run_state *rs)
{
	/* The pager first: its objects' mappings are still there. */
	vmm_memory_destroy(rs->memory);
	if (rs->host)
		rs->host->memory = NULL;
	/* The clones first (they hold their parents' areas), newest first. */
	for (unsigned int i = rs->host ? rs->host->nr_vms : 0; i-- > rs->plan.nr_vms;)
		vm_destroy(rs->host->vms[i]);
	for (unsigned int i = 0; rs->vms && i < rs->plan.nr_vms; i++)
		vm_destroy(rs->vms[i]);
	if (rs->host)
		vmm_dump_destroy(rs->host->dump);
	vmm_host_destroy(rs->host);
	if (rs->kvm_fd >= 0)
		close(rs->kvm_fd);
	for (unsigned int i = 0; i < rs->plan.nr_segments; i++)
		segment_destroy(rs->segments[i]);
	for (unsigned int i = 0; i < rs->nr_images; i++)
		free(rs->images[i].buf);
	free(rs->images);
	free(rs->vm_image);
	free(rs->vms);
	free(rs->status);
	plan_free(&rs->plan);
}

/* --trace: opens the file now (a name that cannot be written fails the run
 * before it starts) and starts recording.  0, or the exit status. */
static int trace_start(const struct vmm_options *opts, FILE **f)
{
	*f = NULL;
	if (!opts->trace)
		return 0;
	*f = fopen(opts->trace, "w");
	if (!*f) {
		fprintf(stderr, "umbra: --trace '%s': %s\n", opts->trace, strerror(errno));
		return UMBRA_STATUS_USAGE;
	}
	if (umbra_trace_init(opts->trace_events ? opts->trace_events : UMBRA_TRACE_ALL,
			     opts->trace_buffer)) {
		fclose(*f);
		*f = NULL;
		fprintf(stderr, "umbra: --trace-events: no kind selected\n");
		return UMBRA_STATUS_USAGE;
	}
	umbra_trace_thread_name("main");
	return 0;
}

/* Writes the trace once every thread has stopped, and says on stderr how
 * much it holds and how much was dropped (a failed write is a warning). */
static void trace_finish(const struct vmm_options *opts, FILE *f)
{
	struct umbra_trace_totals t;

	if (!f)
		return;
	umbra_trace_totals(&t);
	if (umbra_trace_write(f) || fclose(f))
		fprintf(stderr, "umbra: warning: --trace '%s': write failed: %s\n", opts->trace,
			strerror(errno ? errno : EIO));
	else
		fprintf(stderr, "umbra: trace: %" PRIu64 " events of %" PRIu64 " threads in %s, %" PRIu64
				" dropped (at most %" PRIu64 " per thread)\n",
			t.events, t.threads, opts->trace, t.dropped,
			(uint64_t)(opts->trace_buffer ? opts->trace_buffer : UMBRA_TRACE_DEFAULT_CAP));
	umbra_trace_exit();
}

static int run(const struct vmm_options *opts)
{
	struct vmm_error err = { "" };
	struct run_state rs = { .kvm_fd = -1 };
	FILE *trace = NULL;
	int ret;

	ret = opts->config ? plan_from_config(opts->config, &rs.plan, &err) : plan_from_options(opts, &rs.plan, &err);
	if (ret == 0)
		ret = plan_apply_pager_options(&rs.plan, &opts->pager, &err);
	if (ret) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		return ret == -ENOMEM ? UMBRA_STATUS_NO_KVM : UMBRA_STATUS_USAGE;
	}
	ret = plan_check(&rs.plan);
	if (ret == 0)
		ret = trace_start(opts, &trace);
	if (ret == 0)
		ret = prepare(opts, &rs);
	if (ret == 0) {
		vmm_signals_init();
		ret = create_vms(&rs);
	}
	if (ret == 0) {
		ret = run_vms(opts, &rs);
		report(opts, &rs);
	}
	run_free(&rs);
	trace_finish(opts, trace);
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
	case VMM_CMD_TRACE_REPORT:
		return vmm_trace_report(opts.report_traces, opts.nr_report_traces, opts.report_png);
	}
	return UMBRA_STATUS_USAGE;
}
