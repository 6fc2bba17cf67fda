/*
 * The pager's userfaultfd: opening it, registering the objects' mappings,
 * the page ioctls, and the handler thread that reads fault messages and hands
 * them to the page state machine (pager.c).
 *
 * Locks: none here; the handler takes an object's lock only inside
 * pager_fault_missing / pager_fault_wp.  The handler never waits for
 * reclaim: a thread holding a VM's mmu_lock may be waiting on it.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "pager_internal.h"
#include "umbra/trace.h"

#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

/* Messages read per read() by the handler. */
#define UFFD_MSG_BATCH 16

static int uffd_new(void)
{
	int fd, dev;

	fd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	if (fd >= 0 || errno != EPERM)
		return fd >= 0 ? fd : -errno;
	/* vm.unprivileged_userfaultfd = 0: the device grants it to its users. */
	dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
	if (dev < 0)
		return -EPERM;
	fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
	close(dev);
	return fd >= 0 ? fd : -errno;
}

/* The API handshake asking for @features.  Returns 0 or -errno; a refused
 * handshake leaves the userfaultfd ready for another. */
static int uffd_api(int fd, uint64_t features)
{
	struct uffdio_api api = { .api = UFFD_API, .features = features };

	return ioctl(fd, UFFDIO_API, &api) < 0 ? -errno : 0;
}

int pager_uffd_open(struct pager *pager)
{
	int fd = uffd_new(), ret;

	if (fd < 0)
		return fd;
	/* The faulting thread's id is for ops.page_lost; without it, 0. */
	ret = uffd_api(fd, UFFD_FEATURE_WP_HUGETLBFS_SHMEM | UFFD_FEATURE_THREAD_ID);
	pager->thread_id = !ret;
	if (ret)
		ret = uffd_api(fd, UFFD_FEATURE_WP_HUGETLBFS_SHMEM);
	if (ret) {
		close(fd);
		return ret;
	}
	pager->uffd = fd;
	return 0;
}

int pager_uffd_register(struct pager *pager, void *host, uint64_t size)
{
	struct uffdio_register reg = {
		.range = { .start = (uintptr_t)host, .len = size },
		.mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP,
	};
	const uint64_t need = (1ull << _UFFDIO_COPY) | (1ull << _UFFDIO_ZEROPAGE) |
			      (1ull << _UFFDIO_WRITEPROTECT) | (1ull << _UFFDIO_WAKE);

	if (ioctl(pager->uffd, UFFDIO_REGISTER, &reg) < 0)
		return -errno;
	if ((reg.ioctls & need) != need) {
		pager_uffd_unregister(pager, host, size);
		return -EOPNOTSUPP;
	}
	return 0;
}

int pager_uffd_unregister(struct pager *pager, void *host, uint64_t size)
{
	struct uffdio_range range = { .start = (uintptr_t)host, .len = size };

	return ioctl(pager->uffd, UFFDIO_UNREGISTER, &range) < 0 ? -errno : 0;
}

int pager_uffd_copy(struct pager *pager, void *addr, const void *buf, bool protect)
{
	struct uffdio_copy copy = {
		.dst = (uintptr_t)addr,
		.src = (uintptr_t)buf,
		.len = PAGER_PAGE_SIZE,
		.mode = (protect ? UFFDIO_COPY_MODE_WP : 0) | UFFDIO_COPY_MODE_DONTWAKE,
	};

	while (ioctl(pager->uffd, UFFDIO_COPY, &copy) < 0) {
		if (errno != EAGAIN)
			return -errno;
		copy.copy = 0;
	}
	return 0;
}

int pager_uffd_zero(struct pager *pager, void *addr)
{
	struct uffdio_zeropage zero = {
		.range = { .start = (uintptr_t)addr, .len = PAGER_PAGE_SIZE },
		.mode = UFFDIO_ZEROPAGE_MODE_DONTWAKE,
	};

	while (ioctl(pager->uffd, UFFDIO_ZEROPAGE, &zero) < 0) {
		if (errno != EAGAIN)
			return -errno;
		zero.zeropage = 0;
	}
	return 0;
}

int pager_uffd_protect(struct pager *pager, void *addr, uint64_t len, bool protect)
{
	struct uffdio_writeprotect wp = {
		.range = { .start = (uintptr_t)addr, .len = len },
		/* The kernel refuses DONTWAKE with WP: protecting wakes nobody. */
		.mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
	};

	while (ioctl(pager->uffd, UFFDIO_WRITEPROTECT, &wp) < 0) {
		if (errno != EAGAIN)
			return -errno;
	}
	return 0;
}

void pager_uffd_wake(struct pager *pager, void *addr, uint64_t len)
{
	struct uffdio_range range = { .start = (uintptr_t)addr, .len = len };

	/* Fails only for a range outside every registration: nothing waits. */
	(void)ioctl(pager->uffd, UFFDIO_WAKE, &range);
}

static void uffd_handle(struct pager *pager, const struct uffd_msg *msg)
{
	struct pager_object *po;
	uint64_t page;

	if (msg->event != UFFD_EVENT_PAGEFAULT)
		return;
	po = pager_object_of(pager, msg->arg.pagefault.address, &page);
	if (!po)
		return;
	if (msg->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP)
		pager_fault_wp(po, page);
	else
		pager_fault_missing(po, page, pager->thread_id ? (pid_t)msg->arg.pagefault.feat.ptid : 0);
}

/* The handler thread: until stop_fd is signalled, read and handle faults. */
static void *uffd_handler(void *arg)
{
	struct pager *pager = arg;
	struct uffd_msg msgs[UFFD_MSG_BATCH];
	struct pollfd fds[2] = {
		{ .fd = pager->uffd, .events = POLLIN },
		{ .fd = pager->stop_fd, .events = POLLIN },
	};

	umbra_trace_thread_name("pager userfaultfd");
	for (;;) {
		ssize_t n;

		if (poll(fds, 2, -1) < 0)
			continue;	/* EINTR */
		if (fds[1].revents)
			return NULL;
		n = read(pager->uffd, msgs, sizeof(msgs));
		for (ssize_t i = 0; i < n / (ssize_t)sizeof(msgs[0]); i++)
			uffd_handle(pager, &msgs[i]);
	}
}

int pager_uffd_start(struct pager *pager)
{
	int ret;

	pager->stop_fd = eventfd(0, EFD_CLOEXEC);
	if (pager->stop_fd < 0)
		return -errno;
	ret = pthread_create(&pager->handler, NULL, uffd_handler, pager);
	if (ret) {
		close(pager->stop_fd);
		pager->stop_fd = -1;
		return -ret;
	}
	pager->handler_started = true;
	return 0;
}

void pager_uffd_stop(struct pager *pager)
{
	uint64_t one = 1;

	if (pager->handler_started) {
		/* An eventfd write of 1 cannot fail short of a counter overflow. */
		(void)!write(pager->stop_fd, &one, sizeof(one));
		pthread_join(pager->handler, NULL);
		pager->handler_started = false;
	}
	if (pager->stop_fd >= 0)
		close(pager->stop_fd);
	pager->stop_fd = -1;
}
