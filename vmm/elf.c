/*
 * ELF64 guest images: validation and loading. Everything in the file is
 * untrusted; every field is checked before it is used.
 */
#include <elf.h>
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "umbra/abi.h"
#include "vmm.h"

_Static_assert((UMBRA_PF_RESIDENT & PF_MASKOS) == UMBRA_PF_RESIDENT, "UMBRA_PF_RESIDENT is an OS-specific flag");

#define PAGE_SIZE 4096ull

/* The bytes of the pages [start, start + len) touches (len > 0, no wrap). */
static uint64_t page_span(uint64_t start, uint64_t len)
{
	return ((start + len + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)) - (start & ~(PAGE_SIZE - 1));
}

static bool range_in(uint64_t start, uint64_t len, uint64_t lo, uint64_t hi)
{
	return lo <= hi && start >= lo && len <= hi - lo && start - lo <= hi - lo - len;
}

int elf_image_parse(const void *buf, size_t len, uint64_t load_min, uint64_t load_max,
		    struct elf_image *image, struct vmm_error *err)
{
	const Elf64_Ehdr *eh = buf;

	memset(image, 0, sizeof(*image));
	if (len < EI_NIDENT || memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0)
		return vmm_error_set(err, ENOEXEC, "not an ELF file (bad magic)");
	if (len < sizeof(*eh))
		return vmm_error_set(err, ENOEXEC, "truncated ELF header (%zu bytes)", len);
	if (eh->e_ident[EI_CLASS] != ELFCLASS64)
		return vmm_error_set(err, ENOEXEC, "not ELF64 (class %u; umbra runs 64-bit images)",
				     eh->e_ident[EI_CLASS]);
	if (eh->e_ident[EI_DATA] != ELFDATA2LSB)
		return vmm_error_set(err, ENOEXEC, "not little-endian (data encoding %u)",
				     eh->e_ident[EI_DATA]);
	if (eh->e_ident[EI_VERSION] != EV_CURRENT || eh->e_version != EV_CURRENT)
		return vmm_error_set(err, ENOEXEC, "unknown ELF version %u", eh->e_version);
	if (eh->e_machine != EM_X86_64)
		return vmm_error_set(err, ENOEXEC, "wrong machine %u (want x86-64, %u)", eh->e_machine,
				     EM_X86_64);
	if (eh->e_type != ET_EXEC)
		return vmm_error_set(err, ENOEXEC,
				     "ELF type %u is not an executable (ET_EXEC; link with -static -no-pie)",
				     eh->e_type);
	if (eh->e_phentsize != sizeof(Elf64_Phdr))
		return vmm_error_set(err, ENOEXEC, "program header size %u (want %zu)", eh->e_phentsize,
				     sizeof(Elf64_Phdr));
	if (eh->e_phnum == 0)
		return vmm_error_set(err, ENOEXEC, "no program headers");
	if (!range_in(eh->e_phoff, (uint64_t)eh->e_phnum * sizeof(Elf64_Phdr), 0, len))
		return vmm_error_set(err, ENOEXEC, "program headers (offset %#" PRIx64 ", %u entries) lie outside the file",
				     (uint64_t)eh->e_phoff, eh->e_phnum);

	bool entry_ok = false;
	unsigned int resident_segments = 0;
	for (unsigned int i = 0; i < eh->e_phnum; i++) {
		Elf64_Phdr ph;

		memcpy(&ph, (const char *)buf + eh->e_phoff + i * sizeof(ph), sizeof(ph));
		if (ph.p_type != PT_LOAD || ph.p_memsz == 0)
			continue;
		if (image->nr_segments == ELF_MAX_SEGMENTS)
			return vmm_error_set(err, ENOEXEC, "more than %d loadable segments", ELF_MAX_SEGMENTS);
		if (ph.p_filesz > ph.p_memsz)
			return vmm_error_set(err, ENOEXEC, "segment %u: file size %#" PRIx64 " exceeds memory size %#" PRIx64,
					     i, (uint64_t)ph.p_filesz, (uint64_t)ph.p_memsz);
		if (!range_in(ph.p_offset, ph.p_filesz, 0, len))
			return vmm_error_set(err, ENOEXEC, "segment %u: file range %#" PRIx64 "+%#" PRIx64 " lies outside the file (%zu bytes)",
					     i, (uint64_t)ph.p_offset, (uint64_t)ph.p_filesz, len);
		if (!range_in(ph.p_paddr, ph.p_memsz, load_min, load_max))
			return vmm_error_set(err, ENOEXEC,
					     "segment %u: guest-physical range %#" PRIx64 "..%#" PRIx64 " lies outside the loadable RAM %#" PRIx64 "..%#" PRIx64,
					     i, (uint64_t)ph.p_paddr, (uint64_t)(ph.p_paddr + ph.p_memsz), load_min, load_max);
		if (ph.p_vaddr != ph.p_paddr)
			return vmm_error_set(err, ENOEXEC,
					     "segment %u: virtual address %#" PRIx64 " differs from physical %#" PRIx64 " (boot mapping is identity)",
					     i, (uint64_t)ph.p_vaddr, (uint64_t)ph.p_paddr);
		for (unsigned int j = 0; j < image->nr_segments; j++) {
			const struct elf_segment *s = &image->segments[j];
			if (ph.p_paddr < s->gpa + s->memsz && s->gpa < ph.p_paddr + ph.p_memsz)
				return vmm_error_set(err, ENOEXEC, "segment %u overlaps an earlier segment at %#" PRIx64,
						     i, s->gpa);
		}
		if (ph.p_flags & UMBRA_PF_RESIDENT) {
			uint64_t pages = page_span(ph.p_paddr, ph.p_memsz);

			if (++resident_segments > UMBRA_MAX_RESIDENT_SEGMENTS)
				return vmm_error_set(err, ENOEXEC, "more than %u resident (UMBRA_PF_RESIDENT) segments",
						     UMBRA_MAX_RESIDENT_SEGMENTS);
			if (pages > UMBRA_RESIDENT_MAX - image->resident_bytes)
				return vmm_error_set(err, ENOEXEC,
						     "segment %u: the resident (UMBRA_PF_RESIDENT) segments cover more than %llu bytes",
						     i, (unsigned long long)UMBRA_RESIDENT_MAX);
			image->resident_bytes += pages;
		}
		struct elf_segment *seg = &image->segments[image->nr_segments++];
		*seg = (struct elf_segment){ ph.p_paddr, ph.p_offset, ph.p_filesz, ph.p_memsz, ph.p_flags };
		uint64_t end = (ph.p_paddr + ph.p_memsz + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1);
		if (end > image->end)
			image->end = end;
		if ((ph.p_flags & PF_X) && eh->e_entry >= ph.p_paddr && eh->e_entry < ph.p_paddr + ph.p_memsz)
			entry_ok = true;
	}
	if (image->nr_segments == 0)
		return vmm_error_set(err, ENOEXEC, "no loadable (PT_LOAD) segments");
	if (!entry_ok)
		return vmm_error_set(err, ENOEXEC, "entry point %#" PRIx64 " is not in an executable segment",
				     (uint64_t)eh->e_entry);
	image->entry = eh->e_entry;
	return 0;
}

void elf_image_load(const struct elf_image *image, const void *buf, void *ram)
{
	/* ram is zero (a fresh memfd) and segments do not overlap: the bytes
	 * past filesz already read as zero, and are left untouched so that a
	 * large bss takes no host memory until the guest uses it. */
	for (unsigned int i = 0; i < image->nr_segments; i++) {
		const struct elf_segment *s = &image->segments[i];

		memcpy((char *)ram + s->gpa, (const char *)buf + s->offset, s->filesz);
	}
}
