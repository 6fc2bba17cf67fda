/*
 * RAM areas (struct vm_area, vm_internal.h): the memfds that hold guest RAM,
 * each placed at one machine address and indexed by guest page, shared by
 * the VMs of a clone family that hold it (docs/sharing.md, "Clones on
 * KVM"). An area is a KVM memslot of each VM that holds it: writable for the
 * one VM whose own area it is, read-only once a clone has frozen it into a
 * layer. The shadow MMU counts the VMs that map each page of an area and
 * hands a page nobody maps any more to area_put_page(), which frees it.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "vm_internal.h"

/* shadow_slot_ops.put_page: page @page of the area is mapped by no VM's P2M
 * any more. Its memory is freed (under the pager: discarded, its swap slot
 * too), unless the whole area is about to be (dying). No shadow lock held. */
static void area_put_page(void *priv, uint64_t page)
{
	struct vm_area *a = priv;

	if (__atomic_load_n(&a->dying, __ATOMIC_ACQUIRE))
		return;
	if (a->memory)
		(void)vmm_memory_discard(a->memory, a->pager_id, page, 1);
	else
		(void)fallocate(a->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)(page * SHADOW_PAGE_SIZE),
				SHADOW_PAGE_SIZE);
	__atomic_fetch_add(&a->pages_discarded, 1, __ATOMIC_RELAXED);
}

int area_create(struct vmm_host *host, const char *name, struct vm *owner, uint64_t size, uint64_t mpa,
		struct vm_area **out, struct vmm_error *err)
{
	struct vm_area *a = calloc(1, sizeof(*a));
	int ret;

	if (!a)
		return vmm_error_set(err, ENOMEM, "out of memory");
	snprintf(a->name, sizeof(a->name), "%s", name);
	a->size = size;
	a->mpa = mpa;
	a->refs = 1;
	a->pager_id = -1;
	a->host = MAP_FAILED;
	a->fd = memfd_create("umbra-ram", MFD_CLOEXEC);
	if (a->fd < 0 || ftruncate(a->fd, (off_t)size) < 0) {
		ret = vmm_error_set(err, errno, "guest RAM memfd of %" PRIu64 " bytes for %s: %s", size, name,
				    strerror(errno));
		goto close_fd;
	}
	a->host = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_NORESERVE, a->fd, 0);
	if (a->host == MAP_FAILED) {
		ret = vmm_error_set(err, errno, "mmap of guest RAM for %s: %s", name, strerror(errno));
		goto close_fd;
	}
	ret = notifier_object_create(name, size / SHADOW_PAGE_SIZE, &a->obj);
	if (ret) {
		vmm_error_set(err, -ret, "memory object for %s: %s", name, strerror(-ret));
		goto unmap;
	}
	ret = notifier_object_set_mode(a->obj, host->notifier_mode); /* before anyone subscribes */
	if (ret) {
		vmm_error_set(err, -ret, "memory object for %s: notifier mode: %s", name, strerror(-ret));
		goto destroy_obj;
	}
	if (host->memory) {
		ret = vmm_memory_add(host->memory, name, owner, 0, a->obj, a->fd, a->host, size, &a->pager_id, err);
		if (ret)
			goto destroy_obj;
		a->memory = host->memory;
		vmm_memory_slot(a->memory, a->pager_id, &a->pager_slot);
	}
	*out = a;
	return 0;

destroy_obj:
	notifier_object_destroy(a->obj);
unmap:
	munmap(a->host, size);
close_fd:
	if (a->fd >= 0)
		close(a->fd);
	free(a);
	return ret;
}

void area_free_memory(struct vm_area *a)
{
	if (a->memory)
		(void)vmm_memory_discard(a->memory, a->pager_id, 0, a->size / SHADOW_PAGE_SIZE);
	else
		(void)fallocate(a->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, (off_t)a->size);
}

void area_get(struct vm_area *a)
{
	__atomic_add_fetch(&a->refs, 1, __ATOMIC_RELAXED);
}

void area_put(struct vm_area *a)
{
	if (!a || __atomic_sub_fetch(&a->refs, 1, __ATOMIC_ACQ_REL) != 0)
		return;
	notifier_object_destroy(a->obj);
	munmap(a->host, a->size);
	close(a->fd);
	free(a);
}

/* shadow_slot_ops.get_page under the pager: the pager's own. */
static int area_get_page(void *priv, uint64_t page, bool write)
{
	struct vm_area *a = priv;

	return a->pager_slot.ops->get_page(a->pager_slot.priv, page, write);
}

static bool area_is_resident(void *priv, uint64_t page)
{
	struct vm_area *a = priv;

	return a->pager_slot.ops->is_resident(a->pager_slot.priv, page);
}

static const struct shadow_slot_ops area_ops = { .put_page = area_put_page };
static const struct shadow_slot_ops area_paged_ops = {
	.get_page = area_get_page,
	.is_resident = area_is_resident,
	.put_page = area_put_page,
};

void area_slot(struct vm_area *a, bool readonly, struct shadow_slot *slot)
{
	*slot = (struct shadow_slot){ a->obj, a->mpa, a->host, readonly, a->memory ? &area_paged_ops : &area_ops, a };
}

int area_set_memslot(struct vm *vm, int slot_id, bool readonly, struct vmm_error *err)
{
	const struct vm_area *a = vm->areas[slot_id];
	unsigned int memslot = slot_id == vm->ram_slot ? VMM_MEMSLOT_RAM : VMM_MEMSLOT_AREA(slot_id);
	struct kvm_userspace_memory_region r = { .slot = memslot };

	if (readonly && ioctl(vm->kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_READONLY_MEM) <= 0)
		return vmm_error_set(err, ENOTSUP, "KVM lacks KVM_CAP_READONLY_MEM, needed to share RAM with clones");
	/* Removes the memslot if there is one (KVM answers EINVAL if not). */
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0 && errno != EINVAL)
		return vmm_error_set(err, errno, "KVM_SET_USER_MEMORY_REGION (removing %s): %s", a->name,
				     strerror(errno));
	r.flags = readonly ? KVM_MEM_READONLY : 0;
	r.guest_phys_addr = a->mpa;
	r.memory_size = a->size;
	r.userspace_addr = (uint64_t)(uintptr_t)a->host;
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r) < 0)
		return vmm_error_set(err, errno, "KVM_SET_USER_MEMORY_REGION (%s at %#" PRIx64 "): %s", a->name,
				     a->mpa, strerror(errno));
	return 0;
}

struct vm_area *vm_area_of_mpa(struct vm *vm, uint64_t mpa, uint64_t *page)
{
	for (unsigned int i = 0; i < SHADOW_MAX_SLOTS; i++) {
		struct vm_area *a = vm->areas[i];

		if (a && mpa >= a->mpa && mpa - a->mpa < a->size) {
			*page = (mpa - a->mpa) / SHADOW_PAGE_SIZE;
			return a;
		}
	}
	return NULL;
}

int vm_read_guest(struct vm *vm, uint64_t gpa, void *buf, size_t len)
{
	char *out = buf;

	while (len) {
		size_t chunk = SHADOW_PAGE_SIZE - (gpa & (SHADOW_PAGE_SIZE - 1));
		uint64_t mpa;
		void *host;

		if (chunk > len)
			chunk = len;
		if (shadow_mmu_p2m_lookup(vm->mmu, gpa, &mpa, &host))
			return -EFAULT;
		memcpy(out, host, chunk);
		out += chunk;
		gpa += chunk;
		len -= chunk;
	}
	return 0;
}
