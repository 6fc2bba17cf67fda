/*
 * x86 architectural constants the VMM programs into a vCPU: control and
 * EFER bits, page-table entry bits, segment descriptors, CPUID leaves, the
 * 16550 UART's line status register. Private to vmm/ (Intel SDM vol. 3,
 * AMD APM vol. 2 name them the same way).
 */
#ifndef UMBRA_VMM_X86_H
#define UMBRA_VMM_X86_H

#define X86_PAGE_SIZE 4096ull
#define X86_LARGE_PAGE_SIZE (2ull << 20) /* a 2 MiB page (PDE.PS) */
#define X86_HUGE_PAGE_SHIFT 30           /* a PDPTE maps 1 GiB */
#define X86_PD_SHIFT 21                  /* a PDE maps 2 MiB */
#define X86_ENTRIES_PER_TABLE 512u

/* Control registers and EFER. */
#define X86_CR0_PE (1ull << 0)  /* protected mode */
#define X86_CR0_MP (1ull << 1)  /* monitor coprocessor */
#define X86_CR0_ET (1ull << 4)  /* extension type (always 1) */
#define X86_CR0_NE (1ull << 5)  /* native x87 errors */
#define X86_CR0_WP (1ull << 16) /* supervisor writes obey R/W */
#define X86_CR0_PG (1ull << 31) /* paging */
#define X86_CR4_PAE (1ull << 5)
#define X86_CR4_PGE (1ull << 7)     /* global pages; a change flushes the TLB */
#define X86_CR4_OSFXSR (1ull << 9)     /* FXSAVE/SSE enabled */
#define X86_CR4_OSXMMEXCPT (1ull << 10) /* SSE exceptions as #XM */
#define X86_EFER_LME (1ull << 8)  /* long mode enable */
#define X86_EFER_LMA (1ull << 10) /* long mode active */
#define X86_EFER_NXE (1ull << 11) /* execute-disable bit honoured */
#define X86_RFLAGS_FIXED (1ull << 1) /* reserved, always 1 */

/* Page-table entries. */
#define X86_PTE_PRESENT (1ull << 0)
#define X86_PTE_WRITABLE (1ull << 1)
#define X86_PTE_ACCESSED (1ull << 5)
#define X86_PTE_DIRTY (1ull << 6)  /* in a leaf */
#define X86_PTE_LARGE (1ull << 7) /* PS: a 2 MiB (PDE) or 1 GiB (PDPTE) leaf */
#define X86_PTE_ADDR_MASK (~(X86_PAGE_SIZE - 1))

/* Segment descriptor types (the 4-bit type field) and sizes. */
#define X86_SEG_TYPE_DATA_RW_ACCESSED 0x3 /* read/write data, accessed */
#define X86_SEG_TYPE_CODE_RX_ACCESSED 0xb /* execute/read code, accessed */
#define X86_SEG_TYPE_TSS64_BUSY 0xb       /* system: 64-bit TSS, busy */
#define X86_SEG_TYPE_LDT 0x2              /* system: LDT */
#define X86_SEG_LIMIT_4G 0xffffffffu      /* a flat segment's byte limit */
#define X86_DESC_SIZE 8u                  /* one GDT entry */
#define X86_TSS64_SIZE 104u               /* a 64-bit TSS without I/O map */
#define X86_TSS64_IOMAP_BASE 102u         /* offset of its I/O map base field */

/* CPUID. */
#define X86_CPUID_FEATURES 0x1u
#define X86_CPUID_1_EBX_APIC_ID_SHIFT 24 /* EBX[31:24]: initial APIC id */
#define X86_CPUID_1_EBX_APIC_ID_MASK 0xff000000u
#define X86_CPUID_EXT_FEATURES 0x80000001u
#define X86_CPUID_EXT_EDX_NX (1u << 20)
#define X86_CPUID_EXT_EDX_PDPE1GB (1u << 26) /* 1 GiB pages */
#define X86_CPUID_ADDR_SIZES 0x80000008u
#define X86_CPUID_ADDR_SIZES_PHYS_MASK 0xffu /* EAX[7:0]: physical address bits */
#define X86_MAXPHYADDR_MIN 32u
#define X86_MAXPHYADDR_MAX 52u

/* Exceptions: vectors 0..31 are architectural. */
#define X86_NR_EXCEPTIONS 32u

/* The 16550 UART at a base port: 8 registers; LSR is base + 5. */
#define UART_NR_REGS 8u
#define UART_LSR 5u
#define UART_LSR_THRE 0x20u /* transmit holding register empty */
#define UART_LSR_TEMT 0x40u /* transmitter empty */

#endif
