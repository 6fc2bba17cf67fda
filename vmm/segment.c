/*
 * Shared segments: named memfds that VMs attach at the same guest-physical
 * address, optionally preloaded from a file, under the pager when it runs.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "vmm.h"

static int preload(struct segment *seg, const char *path, struct vmm_error *err)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	int ret = 0;

	if (fd < 0)
		return vmm_error_set(err, errno, "segment '%s': cannot open file '%s': %s", seg->name, path,
				     strerror(errno));
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		ret = vmm_error_set(err, EINVAL, "segment '%s': file '%s' is not a regular file", seg->name, path);
		goto close_fd;
	}
	if ((uint64_t)st.st_size > seg->size) {
		ret = vmm_error_set(err, EFBIG, "segment '%s': file '%s' has %lld bytes, more than the segment's %" PRIu64,
				    seg->name, path, (long long)st.st_size, seg->size);
		goto close_fd;
	}
	for (uint64_t done = 0; done < (uint64_t)st.st_size;) {
		ssize_t n = read(fd, (char *)seg->host + done, (size_t)st.st_size - done);
		if (n <= 0) {
			ret = vmm_error_set(err, n < 0 ? errno : EIO, "segment '%s': reading '%s': %s", seg->name, path,
					    n < 0 ? strerror(errno) : "file shrank");
			goto close_fd;
		}
		done += (uint64_t)n;
	}
close_fd:
	close(fd);
	return ret;
}

int segment_create(const struct plan_segment *pseg, struct vmm_memory *memory, struct segment **out,
		   struct vmm_error *err)
{
	struct segment *seg = calloc(1, sizeof(*seg));
	char name[UMBRA_SEGMENT_NAME_MAX + 16];
	int ret;

	if (!seg)
		return vmm_error_set(err, ENOMEM, "out of memory");
	seg->pager_id = -1;
	memcpy(seg->name, pseg->name, sizeof(seg->name));
	seg->gpa = pseg->gpa;
	seg->size = pseg->size;
	seg->writable = pseg->writable;
	seg->fd = memfd_create(seg->name, MFD_CLOEXEC);
	if (seg->fd < 0 || ftruncate(seg->fd, (off_t)seg->size) < 0) {
		ret = vmm_error_set(err, errno, "segment '%s': memfd of %" PRIu64 " bytes: %s", seg->name, seg->size,
				    strerror(errno));
		goto close_fd;
	}
	seg->host = mmap(NULL, seg->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, seg->fd, 0);
	if (seg->host == MAP_FAILED) {
		ret = vmm_error_set(err, errno, "segment '%s': mmap: %s", seg->name, strerror(errno));
		goto close_fd;
	}
	if (pseg->file && (ret = preload(seg, pseg->file, err)))
		goto unmap;
	ret = notifier_object_create(seg->name, seg->size / NOTIFIER_PAGE_SIZE, &seg->obj);
	if (ret) {
		vmm_error_set(err, -ret, "segment '%s': memory object: %s", seg->name, strerror(-ret));
		goto unmap;
	}
	ret = notifier_object_set_mode(seg->obj, pseg->notifier_mode < 0 ? NOTIFIER_MODE_RANGE
									 : (enum notifier_mode)pseg->notifier_mode);
	if (ret) {
		vmm_error_set(err, -ret, "segment '%s': notifier mode: %s", seg->name, strerror(-ret));
		goto destroy_obj;
	}
	/* The preloaded pages are in the memfd; the pager finds them there. */
	snprintf(name, sizeof(name), "segment %s", seg->name);
	if (memory && (ret = vmm_memory_add(memory, name, NULL, seg->gpa, seg->obj, seg->fd, seg->host, seg->size,
					    &seg->pager_id, err)))
		goto destroy_obj;
	seg->memory = memory;
	*out = seg;
	return 0;

destroy_obj:
	notifier_object_destroy(seg->obj);
unmap:
	munmap(seg->host, seg->size);
close_fd:
	if (seg->fd >= 0)
		close(seg->fd);
	free(seg);
	return ret;
}

void segment_destroy(struct segment *seg)
{
	if (!seg)
		return;
	notifier_object_destroy(seg->obj);
	munmap(seg->host, seg->size);
	close(seg->fd);
	free(seg);
}
