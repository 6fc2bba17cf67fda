/*
 * umbra: the command-line program. The only place that prints errors and
 * chooses the process's exit status.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "umbra_abi.h"
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

static void print_stats(const char *name, const struct vm_stats *stats)
{
	fprintf(stderr, "umbra: %s: %llu KVM exits:", name, (unsigned long long)stats->exits_total);
	for (int i = 0; i < VM_EXIT_NR; i++)
		if (stats->exits[i])
			fprintf(stderr, " %s=%llu", vm_exit_kind_names[i], (unsigned long long)stats->exits[i]);
	fputc('\n', stderr);
}

static int run(const struct vmm_options *opts)
{
	struct vmm_error err = { "" };
	struct vm *vm = NULL;
	void *image = NULL;
	size_t image_len = 0;
	int kvm_fd, status;

	struct elf_image elf;
	if (read_image(opts->image, &image, &image_len, &err)) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		return UMBRA_STATUS_IMAGE_ERROR;
	}
	if (elf_image_parse(image, image_len, UMBRA_IMAGE_MIN_GPA, vm_image_load_max(opts->mem, opts->vcpus),
			    &elf, &err)) {
		fprintf(stderr, "umbra: image '%s': %s\n", opts->image, err.msg);
		status = UMBRA_STATUS_IMAGE_ERROR;
		goto free_image;
	}
	if (vmm_kvm_open(&kvm_fd, &err)) {
		fprintf(stderr, "umbra: %s\n", err.msg);
		status = UMBRA_STATUS_NO_KVM;
		goto free_image;
	}
	struct vm_config config = { "vm0", opts->mem, opts->vcpus, opts->cmdline };
	if (vm_create(kvm_fd, &config, &vm, &err)) {
		fprintf(stderr, "umbra: cannot create the VM: %s\n", err.msg);
		status = UMBRA_STATUS_NO_KVM;
		goto close_kvm;
	}
	if (vm_load_image(vm, &elf, image, &err)) {
		fprintf(stderr, "umbra: cannot load image '%s': %s\n", opts->image, err.msg);
		status = UMBRA_STATUS_NO_KVM;
		goto destroy_vm;
	}
	status = vm_run(vm);
	if (opts->stats) {
		struct vm_stats stats;
		vm_get_stats(vm, &stats);
		print_stats("vm0", &stats);
	}
destroy_vm:
	vm_destroy(vm);
close_kvm:
	close(kvm_fd);
free_image:
	free(image);
	return status;
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
