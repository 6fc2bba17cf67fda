/* Runtime internals that images may also use (exception hooks). */
#ifndef UMBRA_GUEST_RUNTIME_H
#define UMBRA_GUEST_RUNTIME_H

#include <stdint.h>

/* What exception_common pushes, lowest address first. */
struct exception_frame {
	uint64_t r15, r14, r13, r12, r11, r10, r9, r8;
	uint64_t rbp, rdi, rsi, rdx, rcx, rbx, rax;
	uint64_t vector, error_code;
	uint64_t rip, cs, rflags, rsp, ss;
};

/* For vector 14, handlers see only the faults umbra says are the guest's own
 * (error_code is then umbra's: the guest tables' view), after the
 * demand-zero heap declined them. */
/* Returns nonzero when it handled the exception (execution resumes at
 * frame->rip), zero to fall through to umbra's report. */
typedef int (*exception_handler_t)(struct exception_frame *frame);

exception_handler_t set_exception_handler(unsigned int vector, exception_handler_t handler);
/* This vCPU's id (from its GDT's address: each vCPU loads its own). */
uint32_t runtime_vcpu_id(void);
/* The guest's own #PF policy (paging.c): 1 if handled (demand-zero heap). */
int paging_handle_own_fault(uint64_t cr2, uint32_t error_code);
const char *exception_name(unsigned int vector);

#endif
