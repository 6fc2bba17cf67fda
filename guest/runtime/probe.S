/*
 * Fault probes (see paging.h). The #PF path in runtime.c recognises a fault
 * at probe_read_insn / probe_write_insn, sets RAX to PROBE_FAULTED | error
 * code and resumes at the instruction after it, as Linux's exception tables do.
 */
	.text
	.globl probe_read, probe_read_insn, probe_read_resume
probe_read:			/* (va, uint64_t *value) */
	xor %eax, %eax
probe_read_insn:
	mov (%rdi), %rdx
probe_read_resume:
	test %rax, %rax
	jnz 1f
	mov %rdx, (%rsi)
1:	ret

	.globl probe_write, probe_write_insn, probe_write_resume
probe_write:			/* (va, value) */
	xor %eax, %eax
probe_write_insn:
	mov %rsi, (%rdi)
probe_write_resume:
	ret
	.section .note.GNU-stack, "", @progbits
