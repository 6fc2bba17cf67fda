/*
 * Private to the files that run a KVM VM (kvm.c, mmu.c, run.c, exit.c,
 * hypercall.c, shootdown.c, stats.c, memory.c): struct vm, struct vcpu and the calls
 * between those files. vmm.h is the interface for main() and the tests.
 *
 * Threads: main() creates a VM (kvm.c), loads its image (kvm.c, boot.c),
 * starts one thread per vCPU (run.c) and waits for them. A vCPU thread runs
 * KVM_RUN and handles its exits itself (exit.c, hypercall.c). Stopping the
 * VM (the guest exits, or fails) is vm_stop(): the first caller records the
 * exit status, then every vCPU is kicked out of KVM_RUN (immediate_exit and
 * a signal). The last vCPU thread to end destroys the VM's shadow MMU
 * (vm_mmu_release), after which main() joins the threads and reads what was
 * recorded. Other threads reach a vCPU only through its TLB-shootdown
 * mailbox (shootdown.c). Locks: vmm.h, "Locks".
 */
#ifndef UMBRA_VMM_VM_INTERNAL_H
#define UMBRA_VMM_VM_INTERNAL_H

#include <linux/kvm.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "umbra/lock.h"
#include "umbra/abi.h"
#include "vmm.h"

#define CONSOLE_LINE_MAX 1024
#define VM_NAME_MAX 32

/* KVM memslots: the boot RAM in slot 0, segment i in slot 1 + i, the
 * shadow-table pool in slot 32 (above every segment slot), and each other
 * RAM area (area.c) in slot 33 + its shadow slot id. */
#define VMM_MEMSLOT_RAM 0u
#define VMM_MEMSLOT_SEGMENT(i) (1u + (i))
#define VMM_MEMSLOT_POOL 32u
#define VMM_MEMSLOT_AREA(slot_id) (33u + (unsigned int)(slot_id))
_Static_assert(VMM_MEMSLOT_SEGMENT(UMBRA_MAX_SEGMENTS - 1) < VMM_MEMSLOT_POOL,
	       "segment memslots lie below the pool's");

/*
 * A RAM area (area.c, docs/sharing.md "Clones on KVM"): a memfd of the VM's
 * RAM size placed at one machine (KVM guest-physical) address, indexed by
 * guest page: page g holds guest page g for every VM whose P2M maps g
 * there. A VM's own area (its RAM at boot; after a clone, a fresh sparse
 * one for its private copies) is a writable memslot of that VM alone. A
 * clone freezes the parent's own area into a layer, a read-only memslot of
 * every VM that holds it, so that no guest, even one that loads its own CR3,
 * can write a page its clones share. refs counts the VMs holding the area
 * (atomic); the last area_put() destroys it. dying (atomic) is set when its
 * last holder stops: pages its shadow MMU frees then are not discarded one
 * by one, the whole area is.
 */
struct vm_area {
	char name[VM_NAME_MAX + 16];
	int fd;
	void *host;
	uint64_t size, mpa;
	struct notifier_object *obj;
	struct vmm_memory *memory; /* its pager, or NULL */
	int pager_id;              /* its object there, -1 without a pager */
	struct shadow_slot pager_slot; /* the pager's slot of it (its get_page) */
	unsigned int refs;
	unsigned int live;         /* atomic: holders whose shadow MMU exists */
	bool dying;
	uint64_t pages_discarded;  /* atomic: pages freed by put_page */
};

/* The saved state of one vCPU, for its clones (clone.c). */
struct vcpu_snapshot {
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_fpu fpu;
	struct kvm_vcpu_events events;
	bool halted;       /* its thread ended after HLT: the clone's stays halted */
	uint64_t guest_cr3;
	bool nmi_ready;
	uint64_t nmis_injected, acks_received;
	bool has_tsc_offset;
	uint64_t tsc_offset; /* KVM_VCPU_TSC_OFFSET, where KVM has it */
};

#define VCPU_NMI_RING 8u

struct vcpu {
	struct vm *vm;
	unsigned int id;
	int fd;
	struct kvm_run *run;
	pthread_t thread;
	bool thread_started; /* atomic: read by whichever thread stops the VM */
	/* The thread's kernel id, set (atomically) as it starts: the pager
	 * names the thread whose access needed a page (memory.c). */
	pid_t tid;
	/* Console bytes of this vCPU until a newline; only its thread touches it. */
	char line[CONSOLE_LINE_MAX];
	size_t line_len;

	/* Shadow paging. tlb is registered with the VM's shadow MMU, which calls
	 * its ops (shootdown.c) to flush this vCPU. guest_cr3 is the address
	 * space it runs (its thread only). */
	struct shadow_tlb tlb;
	uint64_t guest_cr3;
	/* Reserved-bit page faults in a row at rsvd_va with EFER unchanged
	 * (hypercall.c bounds them); its thread only. */
	uint64_t rsvd_va;
	unsigned int rsvd_faults;
	/* TLB-shootdown mailbox: flush_req counts flush requests (atomic);
	 * nmi_done is how many of them the vCPU thread has served, by an
	 * injected NMI or, before its NMI handler is installed, by a TLB flush
	 * of its own (its thread only); nmi_ready says the guest's NMI
	 * handler is installed (atomic, set once by UMBRA_HC_READY). */
	uint64_t flush_req;
	uint64_t nmi_done;
	bool nmi_ready;
	/* Its thread ended after HLT (atomic, set by its thread): nothing can
	 * wake it; a clone's copy of it stays halted. */
	bool halted;
	/* Written by its thread as it parks for a clone (clone.c); read by the
	 * cloning thread once every vCPU is parked. */
	struct vcpu_snapshot snap;
	/* NMIs injected into this vCPU and FLUSH_ACKs it sent (its thread
	 * only): a guest acknowledges at most what it received (NMIs that
	 * coalesce only lower the count received). */
	uint64_t nmis_injected, acks_received;
	/* The requests each of the last VCPU_NMI_RING NMIs served, (first,
	 * last] in flush_req's numbering, by NMI number modulo the ring (its
	 * thread only; for --trace's acknowledgements: KVM holds at most two
	 * NMIs, one pending and one being handled, so an acknowledgement
	 * answers one of the last few). */
	struct vcpu_nmi_served {
		uint64_t first, last;
	} nmi_served[VCPU_NMI_RING];
	/* The VM's shadow reclaims count (shadow_mmu_stats.reclaims) when this
	 * vCPU's pins were last pre-faulted (its thread only). */
	uint64_t pins_reclaims;
	/* mode_lock (UMBRA_LOCK_RANK_VMM_VCPU_MODE) protects in_guest and exit_seq:
	 * in_guest is true while the thread is in (or about to enter)
	 * KVM_RUN; exit_seq counts returns from KVM_RUN. Requesters that find
	 * in_guest wait on mode_cond for the next return. */
	struct umbra_mutex mode_lock;
	pthread_cond_t mode_cond;
	bool in_guest;
	uint64_t exit_seq;
};

/* Ranges kept mapped in every address space (docs/abi.md, "What stays
 * resident"): count ranges of len bytes, the k-th at va + k * stride (the
 * vCPUs' stacks); count 1 for the others. */
struct pin {
	uint64_t va, len, stride;
	unsigned int count;
};

struct vm {
	char name[VM_NAME_MAX];
	/* Its process in a --trace (umbra/trace.h): its place in the run's
	 * list of VMs + 1, set as it joins (vmm_host_add_vm), before its
	 * vCPU threads start. */
	uint32_t trace_id;
	int kvm_fd; /* borrowed */
	int vm_fd;
	void *ram; /* the boot RAM's mapping (areas[ram_slot]), for loading the image */
	uint64_t ram_size;
	size_t run_size;
	bool has_nx;
	char cmdline[UMBRA_CMDLINE_MAX];
	bool prefix_output;
	unsigned int nr_segments;
	struct segment *segments[UMBRA_MAX_SEGMENTS]; /* borrowed from main */
	uint64_t boot_tables_end;
	struct kvm_cpuid2 *cpuid;

	/* Shadow paging: the VM's trust group (whose pool its MMU uses), its
	 * table quota (pages), the VM's shadow MMU, its RAM as a memory object,
	 * and the shadow MMU's slot ids of RAM and each segment. mmu is NULL
	 * once the last vCPU thread has ended (vm_mmu_release); its counters
	 * and table usage are then in *_at_stop. */
	struct vmm_host *host;
	struct vmm_group *group;
	uint64_t table_quota;
	struct shadow_mmu *mmu;
	struct shadow_mmu_stats mmu_stats_at_stop;
	struct shadow_table_usage tables_at_stop;
	unsigned int threads_running; /* vCPU threads not yet ended (atomic) */
	int ram_slot, segment_slots[UMBRA_MAX_SEGMENTS];
	unsigned int nr_vcpus;
	struct vcpu *vcpus;
	/* RAM areas by shadow slot id (NULL for a segment's slot): the boot RAM
	 * (areas[ram_slot]), the layers it holds and its own area
	 * (areas[own_slot]). Written by the thread that clones the VM while
	 * every vCPU is parked, or before the VM starts. */
	struct vm_area *areas[SHADOW_MAX_SLOTS];
	int own_slot, nr_slots; /* nr_slots: of its shadow MMU (RAM, segments, own areas) */
	/* Layers taken over (clone.c): takeover_req has bit i when the VM is
	 * the last running holder of areas[i], a layer (set by the thread of the
	 * holder that stopped, atomic); writable_layers has bit i once the VM
	 * made areas[i] a writable memslot of its own (its vCPUs parked). */
	uint64_t takeover_req, writable_layers;
	unsigned int layers_taken_over;
	/* Clones (clone.c): the clone's parent (NULL for a VM of the plan) and
	 * its index among the parent's clones; clones made of this VM. */
	struct vm *parent;
	unsigned int clone_index, nr_clones;
	unsigned int plan_index; /* the VM of the plan it is (or descends from) */
	/* Timing (CLOCK_MONOTONIC ns): the CLONEs' time (atomic adds); for a
	 * clone, when its parent's CLONE began, and when its first vCPU first
	 * entered the guest (set once, atomic). */
	uint64_t clone_ns, clone_started_ns, first_run_ns;

	/* lock (UMBRA_LOCK_RANK_VMM_VM) protects pins, nr_pins, stopped (written
	 * under it, read atomically without it), exit_status and nr_halted. */
	struct umbra_mutex lock;
	struct pin pins[UMBRA_MAX_PINS];
	unsigned int nr_pins;
	uint64_t guest_pinned_bytes; /* of the guest's PINs (at most UMBRA_PIN_TOTAL_MAX) */
	uint64_t pinned_pages; /* pin_pages() of every pin: written under lock, read atomically */
	/* CR3 loads that pre-faulted the pins into their root, and those that
	 * found the root still as the last pre-fault left it (atomic). */
	uint64_t pin_walks, pin_walks_skipped;
	bool stopped;
	int exit_status;
	unsigned int nr_halted;
	/* Parking for a clone (clone.c), under lock: pausing is set by the
	 * cloning vCPU's thread, which waits on pause_cond until nr_parked
	 * equals the other running vCPU threads; each parks in vcpu_park()
	 * (after saving its state) and waits on pause_cond until pause_gen
	 * moves on. A thread that ends broadcasts pause_cond. */
	bool pausing;
	unsigned int nr_parked;
	uint64_t pause_gen;
	pthread_cond_t pause_cond;
	/* Whether READY of this VM's last vCPU clones it (--clone), how many
	 * times, and how many of its vCPUs have sent READY (under lock). */
	unsigned int clone_at_ready, nr_ready;

	_Atomic uint64_t exits[VM_EXIT_NR];
	_Atomic uint64_t hypercalls[UMBRA_HC_NR];
	_Atomic uint64_t flush_requests, kicks, nmis, flush_acks, early_flushes;
};

/* The boot layout of the VM's RAM (boot.c's view of it). */
struct boot_layout vm_boot_layout(const struct vm *vm);

/* ---- mmu.c: the VM's shadow MMU ---- */

/* Creates the VM's shadow MMU with slots for RAM and each segment (the P2M
 * is the identity). Returns 0 or -errno with err. */
int vm_mmu_init(struct vm *vm, struct vmm_error *err);
/* Records the MMU's counters and table usage (and the group pool's pages in
 * use), unregisters every vCPU's TLB and destroys the MMU, so that its
 * tables return to the pool when the VM stops. Called once, by the last vCPU
 * thread to end (or by vm_start when no thread started), with no lock held;
 * no thread of the VM touches vm->mmu afterwards. May block. */
void vm_mmu_release(struct vm *vm);
/* Destroys what vm_mmu_init made and vm_mmu_release left. */
void vm_mmu_exit(struct vm *vm);
/* Destroys the VM's shadow MMU (if not yet done); an area that no other
 * running VM holds is freed whole after it. No lock held. May block. */
void vm_mmu_destroy(struct vm *vm);
/* Under the pager: pins the page that guest-physical gpa maps to now (a RAM
 * area's or a segment's), for the rest of the run. No lock held. */
void vm_pin_gpa(struct vm *vm, uint64_t gpa);
/* Switches the vCPU to the shadow of the address space guest_cr3 and returns
 * the shadow root (the CR3 the CPU must load) in *root; pre-faults the
 * pinned ranges. Called by the vCPU's thread (or before it starts) with no
 * lock held. Returns 0, -ENOMEM (the pool is exhausted), -EDQUOT (the VM's
 * table quota is), -EBUSY or another -errno of the MMU. */
int vcpu_load_guest_cr3(struct vcpu *vcpu, uint64_t guest_cr3, uint64_t *root);
/* A clone's vCPU goes on in @guest_cr3's address space where its parent's
 * left off: its cached root as the clone copied it, not synced
 * (shadow_mmu_resume_cr3), and no pin faulted in (the clone refreshes its
 * pins before it runs). 0 or -errno. */
int vcpu_resume_guest_cr3(struct vcpu *vcpu, uint64_t guest_cr3, uint64_t *root);
/* Pre-faults every pin of the VM into the vCPU's address space (a pin the
 * guest may write is copied first if a clone shares it). No lock held. 0,
 * -ENOMEM or -EDQUOT. */
int vcpu_prefault_pins(struct vcpu *vcpu);
/* Under the pager: pins the pages [va, va + len) translates to in vcpu's
 * address space (vm_pin_gpa). No lock held. */
void vm_pin_va_range(struct vcpu *vcpu, uint64_t va, uint64_t len);
/* Records a pinned range of the guest's and pre-faults every pin into the
 * vCPU's address space. No lock held. Returns 0, -ENOSPC (UMBRA_MAX_PINS
 * reached), -E2BIG (the guest's pins would total more than
 * UMBRA_PIN_TOTAL_MAX bytes), -ENOMEM or -EDQUOT (no room for the pins). */
int vcpu_add_pin(struct vcpu *vcpu, uint64_t va, uint64_t len);
/* The pages pin covers (a page in two pins counts in each). */
uint64_t pin_pages(const struct pin *pin);
/* Before the vCPU enters the guest: if the VM reclaimed its shadow tables
 * (pool full or quota reached: every pinned translation went) since this
 * vCPU last pre-faulted its pins, pre-faults them again into its address
 * space, so that its handlers, IDT and stacks are mapped before it runs.
 * The vCPU's thread, no lock held. Returns 0, -ENOMEM or -EDQUOT. */
int vcpu_refresh_pins(struct vcpu *vcpu);
/* What -ENOMEM / -EDQUOT from the VM's shadow MMU means, for a message:
 * "the VM's shadow-table quota (N pages) is exhausted", "the shadow table
 * pool (N pages) is exhausted", else strerror. Written into buf. */
const char *vm_room_error(const struct vm *vm, int err, char *buf, size_t size);

/* ---- shootdown.c: TLB shootdown by NMI ---- */

/* The shadow MMU's flush interface on a KVM vCPU. */
extern const struct shadow_tlb_ops vcpu_tlb_ops;
/* Called by the vCPU's thread first: the thread flushes its own vCPU
 * without a kick. */
void vcpu_shootdown_thread_init(struct vcpu *vcpu);
/* The guest's NMI handler is installed (UMBRA_HC_READY): requests so far
 * are served by the CR3 reload that follows. Its thread only. */
void vcpu_shootdown_ready(struct vcpu *vcpu);
/* Turns pending flush requests into one injected NMI. Its thread only,
 * outside KVM_RUN. Returns 0, or -errno of KVM_NMI. */
int vcpu_inject_pending_flush(struct vcpu *vcpu);
/* Pre-faults the pins again if the VM reclaimed (vcpu_refresh_pins; on
 * failure stops the VM and returns false), then marks the vCPU as in guest
 * mode and returns true, unless a flush request slipped in (then false:
 * inject it first). Its thread, no lock held; takes mode_lock. */
bool vcpu_enter_guest_mode(struct vcpu *vcpu);
/* A FLUSH_ACK from the guest: true if it answers an injected NMI not yet
 * acknowledged (counted), false if none is pending. Its thread only. */
bool vcpu_flush_ack(struct vcpu *vcpu);
/* Marks the return from KVM_RUN and wakes the requesters waiting for it.
 * Takes mode_lock. */
void vcpu_exit_guest_mode(struct vcpu *vcpu);

/* ---- run.c: vCPU threads ---- */

/* Makes the vCPU leave KVM_RUN (or not enter it). Any thread, any lock. */
void vcpu_kick(struct vcpu *vcpu);
bool vm_is_stopped(struct vm *vm);
/* Records status (the first stop wins) and kicks every vCPU out of KVM_RUN.
 * Takes vm->lock: no vmm lock may be held. */
void vm_stop(struct vm *vm, int status);

/* ---- exit.c: exits and console output ---- */

/* Handles the exit the vCPU's kvm_run describes. Its thread only. */
void vcpu_handle_exit(struct vcpu *vcpu);
/* Appends c to the vCPU's console line; prints the line at a newline or
 * when it is full. Its thread only; takes the output lock. */
void console_put(struct vcpu *vcpu, char c);
/* Prints the vCPU's pending console line, if any. Takes the output lock. */
void console_flush(struct vcpu *vcpu);
/* Reports a guest failure (with registers if dump) and stops the VM with
 * UMBRA_STATUS_GUEST_ERROR. Only the first failure of a VM is reported.
 * The vCPU's thread; takes the output lock, then vm->lock (not nested). */
void vcpu_fail(struct vcpu *vcpu, bool dump, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
/* Prints "umbra: NAME: message" on stderr under the output lock. */
void vm_print_error(struct vm *vm, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* ---- area.c: RAM areas ---- */

/* Creates an area of size bytes at machine address mpa: a sparse memfd
 * mapped shared (under host->memory's pager if there is one, as the RAM of
 * owner), its notifier object; one reference. No lock held. 0 or -errno
 * with err. */
int area_create(struct vmm_host *host, const char *name, struct vm *owner, uint64_t size, uint64_t mpa,
		struct vm_area **out, struct vmm_error *err);
void area_get(struct vm_area *a);
/* Frees the memory of every page of the area (no VM runs on it any more). */
void area_free_memory(struct vm_area *a);
/* Drops a reference; the last destroys the area (every shadow MMU that had
 * it as a slot is destroyed already). */
void area_put(struct vm_area *a);
/* The shadow slot of the area (its pager's get_page, the put_page that
 * frees a page no VM maps any more). */
void area_slot(struct vm_area *a, bool readonly, struct shadow_slot *slot);
/* Places the area in vm's KVM memslots as shadow slot slot_id's: the boot
 * RAM's memslot for ram_slot, else VMM_MEMSLOT_AREA(slot_id); readonly
 * makes it a KVM_MEM_READONLY memslot. An area already placed there is
 * removed first (KVM cannot change a memslot's flags in place): the VM's
 * vCPUs must be parked or not yet running. 0 or -errno with err. */
int area_set_memslot(struct vm *vm, int slot_id, bool readonly, struct vmm_error *err);
/* The area of vm that holds machine address mpa and the page of it, or
 * NULL. */
struct vm_area *vm_area_of_mpa(struct vm *vm, uint64_t mpa, uint64_t *page);
/* Guest memory as the VM sees it now (through its P2M): copies len bytes
 * at guest-physical gpa into buf. 0, or -EFAULT where nothing backs it. */
int vm_read_guest(struct vm *vm, uint64_t gpa, void *buf, size_t len);

/* ---- clone.c: clones of a running VM ---- */

/* Parks the calling vCPU's thread if its VM is being cloned: saves its state
 * for the clones (completing a pending port I/O first), then waits until the
 * clone is done. Its thread, no lock held, outside KVM_RUN. Returns false
 * if it must stop (the VM stopped, or saving its state failed: reported). */
bool vcpu_park(struct vcpu *vcpu);
/* The VM stopped while it held area a at slot id slot with one other
 * running VM holding it still: that VM may take the layer over
 * (vm_take_over_layers, at its next exit). No lock held. */
void vmm_host_offer_layer(struct vmm_host *host, struct vm *stopped, int slot, const struct vm_area *a);
/* A vCPU thread ends: a clone waiting for it to park stops waiting. */
void vcpu_thread_ended(struct vcpu *vcpu);
/* Clones the VM of vcpu n times (CLONE, or READY with --clone): parks its
 * other vCPUs, shares memory and shadow tables copy-on-write with n new VMs
 * that run on from this point (the calling vCPU's RAX is 0 in the parent and
 * k in clone k; its RIP past the out), and resumes. Sets the calling vCPU's
 * registers itself. Its thread, no lock held. Returns 0, -ENOSPC (VM,
 * slot or address-space limit), -ENOMEM, or another -errno (in the parent,
 * with nothing cloned; the message is printed). */
int vm_clone(struct vcpu *vcpu, unsigned int n);

/* Makes clone k of this CLONE of vm, its index-th clone (named
 * "NAME.index"): a new KVM VM on shadow MMU mmu (vm's clone), holding vm's
 * RAM areas read-only but own_area (in place of vm's own area), writable,
 * vm's segments and pool, and vCPUs with the saved states of vm's (the one
 * of vCPU caller with RAX = k), on mmu's copies of vm's roots. Takes over
 * mmu and the reference on own_area (released on failure). vm's vCPUs are
 * parked. kvm.c. 0 or -errno with err. */
int vm_create_clone(struct vm *vm, unsigned int caller, unsigned int k, unsigned int index,
		    struct shadow_mmu *mmu, struct vm_area *own_area, struct vm **out, struct vmm_error *err);
/* Restores a saved vCPU state on root (the shadow root for its CR3); the
 * TSC offset of the vCPU it was saved from (parent) too, where KVM allows,
 * so that the family's TSCs agree. */
int vcpu_restore_state(struct vcpu *vcpu, const struct vcpu_snapshot *s, uint64_t root);
/* CLOCK_MONOTONIC in ns. */
uint64_t vmm_now_ns(void);

/* ---- hypercall.c ---- */

/* Handles the hypercall the vCPU's registers describe (an out to
 * UMBRA_HC_PORT). Its thread only. */
void vcpu_handle_hypercall(struct vcpu *vcpu);

#endif
