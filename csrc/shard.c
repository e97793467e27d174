/* shard.c - sharded registration for data parallelism (ZeRO-1): each rank registers the slices of the
 * tensors it owns, with their place in the full tensors, which checkpoints record. */
#include <stdlib.h>

#include "internal.h"
#include "optimizer_internal.h"

void fadam_tensor_shard_of(const fadam_optimizer *opt, int64_t index, int64_t *offset, int64_t *full_numel) {
    if (index < opt->shard_count) {
        *offset = opt->shard_offset[index];
        *full_numel = opt->shard_full_numel[index];
    } else {
        *offset = 0;
        *full_numel = opt->tensors[index].numel;
    }
}

void fadam_shard_free(fadam_optimizer *opt) {
    free(opt->shard_offset);
    free(opt->shard_full_numel);
    opt->shard_offset = opt->shard_full_numel = NULL;
    opt->shard_count = opt->shard_capacity = 0;
}

/* Room for `needed` entries; on failure the arrays are as before (only their capacity may have grown). */
static fadam_status reserve(fadam_optimizer *opt, int64_t needed) {
    int64_t capacity = opt->shard_capacity ? opt->shard_capacity : 64;
    int64_t *grown;
    if (needed <= opt->shard_capacity) return FADAM_SUCCESS;
    while (capacity < needed) capacity *= 2;
    grown = (int64_t *)realloc(opt->shard_offset, (size_t)capacity * sizeof *grown);
    if (!grown) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "fadam_add_tensor_shard: no host memory for the shard list");
    opt->shard_offset = grown;
    grown = (int64_t *)realloc(opt->shard_full_numel, (size_t)capacity * sizeof *grown);
    if (!grown) return fadam_fail(FADAM_ERR_OUT_OF_MEMORY, "fadam_add_tensor_shard: no host memory for the shard list");
    opt->shard_full_numel = grown;
    opt->shard_capacity = capacity;
    return FADAM_SUCCESS;
}

fadam_status fadam_add_tensor_shard(fadam_optimizer *opt, const char *name, void *param, const void *grad,
                                    int64_t numel, int64_t full_numel, int64_t offset, fadam_dtype param_dtype,
                                    fadam_dtype grad_dtype, int group, int64_t *index_out) {
    fadam_status status;
    int64_t index, i;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_add_tensor_shard");
    if (numel < 0 || offset < 0 || full_numel < 0 || offset > full_numel || numel > full_numel - offset)
        return fadam_fail_tensor(opt->n_tensors, FADAM_ERR_INVALID_VALUE,
                          "fadam_add_tensor_shard: tensor %lld: the slice [%lld, %lld + %lld) must lie in [0, "
                          "full_numel=%lld)",
                          (long long)opt->n_tensors, (long long)offset, (long long)offset, (long long)numel,
                          (long long)full_numel);
    if ((status = reserve(opt, opt->n_tensors + 1)) != FADAM_SUCCESS) return status;
    status = fadam_add_tensor(opt, name, param, grad, numel, param_dtype, grad_dtype, group, &index);
    if (status != FADAM_SUCCESS) return status;
    /* Whole tensors registered before this one. */
    for (i = opt->shard_count; i < index; i++) {
        opt->shard_offset[i] = 0;
        opt->shard_full_numel[i] = opt->tensors[i].numel;
    }
    opt->shard_offset[index] = offset;
    opt->shard_full_numel[index] = full_numel;
    opt->shard_count = index + 1;
    if (index_out) *index_out = index;
    return FADAM_SUCCESS;
}

fadam_status fadam_shard_range(int64_t total, int rank, int n_ranks, int64_t *offset_out, int64_t *numel_out) {
    int64_t size, begin, end;
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(offset_out, "fadam_shard_range");
    FADAM_REQUIRE_NOT_NULL(numel_out, "fadam_shard_range");
    if (total < 0 || n_ranks < 1 || rank < 0 || rank >= n_ranks)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "fadam_shard_range: need total >= 0 (%lld), 0 <= rank (%d) < n_ranks (%d)",
                          (long long)total, rank, n_ranks);
    size = total / n_ranks + (total % n_ranks != 0);
    begin = (int64_t)rank * size < total ? (int64_t)rank * size : total;
    end = total - begin > size ? begin + size : total;
    *offset_out = begin;
    *numel_out = end - begin;
    return FADAM_SUCCESS;
}

fadam_status fadam_set_shard_rank(fadam_optimizer *opt, int rank, int n_ranks) {
    fadam_clear_error();
    FADAM_REQUIRE_NOT_NULL(opt, "fadam_set_shard_rank");
    if (opt->finalized)
        return fadam_fail(FADAM_ERR_BAD_STATE, "fadam_set_shard_rank: call it before fadam_finalize");
    if (n_ranks < 1 || rank < 0 || rank >= n_ranks)
        return fadam_fail(FADAM_ERR_INVALID_VALUE, "fadam_set_shard_rank: need 0 <= rank (%d) < n_ranks (%d)", rank,
                          n_ranks);
    opt->shard_rank = rank;
    opt->shard_ranks = n_ranks;
    return FADAM_SUCCESS;
}
