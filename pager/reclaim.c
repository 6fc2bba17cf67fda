/* STUB: helper P2 */
/*
 * The budget's reclaim: no budget here, so a fill never waits or wakes
 * anything.
 */
#include "pager_internal.h"

void pager_reclaim_note_fill(struct pager *pager)
{
	(void)pager;
}

void pager_reclaim_before_fill(struct pager *pager)
{
	(void)pager;
}
