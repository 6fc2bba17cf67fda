#include "pager_stub.h"
void pager_set_ops(struct pager *pager, const struct pager_ops *ops, void *priv){(void)pager;(void)ops;(void)priv;}
int pager_pin(struct pager *pager, int id, uint64_t first, uint64_t npages){(void)pager;(void)id;(void)first;(void)npages;return 0;}
void pager_set_refault_window(struct pager *pager, uint64_t pages){(void)pager;(void)pages;}
int pager_budget_start(struct pager *pager, const struct pager_budget *budget){(void)pager;(void)budget;return 0;}
void pager_reclaim_stats(struct pager *pager, struct pager_reclaim_stats *st){(void)pager;(void)st;}
