"""fusedadam.torch - FusedAdamW, a drop-in for torch.optim.AdamW that updates every CUDA parameter
with one fused kernel launch per step, and FusedAdam, the same for torch.optim.Adam (L2 weight decay).

    from fusedadam.torch import FusedAdamW
    opt = FusedAdamW(model.parameters(), lr=3e-4, weight_decay=0.1)

CUDA parameters are stepped by fusedadam's kernel on PyTorch's current stream, CPU parameters by its
CPU implementation on torch.get_num_threads() threads (read at every step; the results are the same
bits at every count). Per-parameter state, under torch.optim.AdamW's keys so that a checkpoint moves
between the two optimizers in either direction:
    step          float32 scalar tensor on the CPU: the steps this parameter has taken
    exp_avg       first moment, float32 (torch.optim.AdamW keeps it in the parameter's dtype)
    exp_avg_sq    second moment, float32
    master_param  float32 copy of a bfloat16/float16 parameter (master_weights=True): the update is
                  computed on it and the parameter receives it rounded to nearest even
"""

import torch
from torch.optim import Optimizer

from . import _C

__all__ = ["FusedAdamW", "FusedAdam", "MAX_GROUPS"]

__version__ = _C.version()

# Most parameter groups one optimizer may have (the C library's FADAM_MAX_GROUPS).
MAX_GROUPS = _C.MAX_GROUPS

# State that stays float32 whatever the parameter's dtype (torch's loader would cast it to that dtype).
_FP32_STATE_KEYS = ("exp_avg", "exp_avg_sq", "master_param")
# torch.optim.AdamW options fusedadam has no kernel for; accepted only as False.
_UNSUPPORTED_OPTIONS = ("amsgrad", "capturable", "differentiable")


class FusedAdamW(Optimizer):
    """torch.optim.AdamW with one fused kernel launch per step for all CUDA parameters.

    Takes torch.optim.AdamW's arguments with its defaults. ``foreach`` and ``fused`` are accepted and
    ignored (the step is always fused); ``amsgrad``, ``capturable`` and ``differentiable`` must stay
    False. Three more, per parameter group like the rest:

    bias_correction (bool): divide by 1 - beta^t as PyTorch does (default True).
    decoupled_weight_decay (bool): True (default) is AdamW's decay, p *= 1 - lr * weight_decay;
        False is Adam's L2 decay, grad += weight_decay * p (torch.optim.Adam, see FusedAdam).
    master_weights (bool): keep a float32 master copy of each bfloat16/float16 parameter in
        state['master_param'] (default True). With False the 16-bit parameter is read, updated in
        float32 and rounded back each step. A master goes stale if the parameter is changed outside
        the optimizer; load_state_dict or deleting state['master_param'] rebuilds it from the parameter.

    The parameters and their state tensors are cached between steps; each step checks the cache
    against param_groups and state (in C++, by identity), so editing either is seen at the next step.
    Parameters whose grad is None are skipped and their step count does not advance, as in torch.
    Parameters whose step counts differ (some were skipped) are stepped by one launch per distinct
    count. Errors (sparse or misplaced gradients, unsupported dtypes, tensors with gaps, bad
    hyperparameters) raise before any parameter or state is modified.
    """

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=1e-2,
        amsgrad=False,
        *,
        maximize=False,
        foreach=None,
        capturable=False,
        differentiable=False,
        fused=None,
        bias_correction=True,
        decoupled_weight_decay=True,
        master_weights=True,
    ):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 <= lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 <= eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
            "bias_correction": bias_correction,
            "master_weights": master_weights,
        }
        self._tables = _C.TableCache()
        self._cache = _C.ParamCache()
        self._loading = None
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        if len(self.param_groups) >= MAX_GROUPS:
            raise ValueError(f"{type(self).__name__}: at most {MAX_GROUPS} parameter groups are supported")
        _check_options({**self.defaults, **param_group})
        super().add_param_group(param_group)
        self._cache.clear()  # the step would notice the new group; clearing says so outright

    def __setstate__(self, state):
        super().__setstate__(state)
        # A torch.optim.AdamW checkpoint lacks this optimizer's own keys: they take the defaults.
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if not hasattr(self, "_tables"):  # unpickled or deep-copied: tables and cache are not carried over
            self._tables = _C.TableCache()
            self._cache = _C.ParamCache()
            self._loading = None

    @torch.no_grad()
    def step(self, closure=None):
        """Performs a single optimization step; closure (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Per group, read at every step (schedulers change lr); per parameter, the binding reads the
        # grads and checks its cache of the parameters and their state against the optimizer.
        hparams = [_group_hparams(group) for group in self.param_groups]
        master_weights = [bool(group["master_weights"]) for group in self.param_groups]
        if _C.step(self._tables, self._cache, self.param_groups, self.state, hparams, master_weights):
            return loss
        # The cache is stale (first step, a group added, a checkpoint loaded, state to create or
        # replaced): make the state that is missing, rebuild the cache and step from it.
        created = _create_state(self)
        try:
            self._cache.load(self.param_groups, self.state, master_weights)
            if not _C.step(self._tables, self._cache, self.param_groups, self.state, hparams, master_weights):
                raise RuntimeError("fusedadam: internal error: the parameter cache is stale just after its rebuild")
        except BaseException:
            _discard_state(self, created)
            raise
        return loss

    def load_state_dict(self, state_dict):
        """Loads a state dict of this optimizer or of torch.optim.AdamW/Adam.

        Unlike torch's loader, which casts every state tensor to its parameter's dtype, the moments
        and masters are kept in float32, and the step counts become CPU float32 tensors. A 16-bit
        parameter whose checkpoint has no master (torch's) gets one made from the parameter.
        """
        # Our pre-hook runs after the user's (it sees the state dict they return) and our post-hook
        # before theirs (they see the state as it will be used).
        stash_hook = self.register_load_state_dict_pre_hook(_stash_fp32_state)
        restore_hook = self.register_load_state_dict_post_hook(_restore_fp32_state, prepend=True)
        try:
            super().load_state_dict(state_dict)
        finally:
            stash_hook.remove()
            restore_hook.remove()
            self._loading = None
            self._cache.clear()  # lets go of the replaced state tensors now, not at the next step


class FusedAdam(FusedAdamW):
    """torch.optim.Adam's drop-in: FusedAdamW with torch.optim.Adam's defaults, weight_decay=0 and
    L2 weight decay (decoupled_weight_decay=False, the decay is added to the gradient)."""

    def __init__(
        self,
        params,
        lr=1e-3,
        betas=(0.9, 0.999),
        eps=1e-8,
        weight_decay=0,
        amsgrad=False,
        *,
        foreach=None,
        maximize=False,
        capturable=False,
        differentiable=False,
        fused=None,
        decoupled_weight_decay=False,
        bias_correction=True,
        master_weights=True,
    ):
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            amsgrad,
            maximize=maximize,
            foreach=foreach,
            capturable=capturable,
            differentiable=differentiable,
            fused=fused,
            bias_correction=bias_correction,
            decoupled_weight_decay=decoupled_weight_decay,
            master_weights=master_weights,
        )


def _check_options(group):
    for option in _UNSUPPORTED_OPTIONS:
        if group.get(option):
            raise ValueError(f"fusedadam: {option}=True is not supported")


def _create_state(optimizer):
    """Makes the state of every parameter that has a gradient and lacks it (torch.optim.AdamW's, and
    the master of a 16-bit parameter); returns (state, key) for each made, for _discard_state."""
    created = []
    try:
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = optimizer.state.get(param)
                if not state:
                    state = optimizer.state[param]
                    state["step"] = torch.tensor(0.0, dtype=torch.float32)
                    for key in ("exp_avg", "exp_avg_sq"):
                        state[key] = torch.zeros_like(param, dtype=torch.float32, memory_format=torch.preserve_format)
                    created += [(state, "step"), (state, "exp_avg"), (state, "exp_avg_sq")]
                if _wants_master(param, group["master_weights"]) and state.get("master_param") is None:
                    state["master_param"] = _fp32_like(param, param)
                    created.append((state, "master_param"))
    except BaseException:
        _discard_state(optimizer, created)
        raise
    return created


def _discard_state(optimizer, created):
    """Takes back the state _create_state made for a step that was refused."""
    for state, key in created:
        del state[key]
    emptied = {id(state) for state, _ in created if not state}
    for param in [p for p, state in optimizer.state.items() if id(state) in emptied]:
        del optimizer.state[param]
    optimizer._cache.clear()  # it holds the discarded tensors


def _group_hparams(group):
    """A group's hyperparameters as the binding takes them, read at every step (schedulers change lr)."""
    _check_options(group)
    beta1, beta2 = group["betas"]
    return (
        float(group["lr"]),
        float(beta1),
        float(beta2),
        float(group["eps"]),
        float(group["weight_decay"]),
        bool(group["decoupled_weight_decay"]),
        bool(group["bias_correction"]),
        bool(group["maximize"]),
    )


def _wants_master(param, master_weights):
    return master_weights and param.dtype in (torch.bfloat16, torch.float16)


def _fp32_like(param, value):
    """A float32 tensor laid out like param (what the binding requires), holding value."""
    out = torch.empty_like(param, dtype=torch.float32, memory_format=torch.preserve_format)
    out.copy_(value)
    return out


def _stash_fp32_state(optimizer, state_dict):
    """Load pre-hook: takes the float32 state out of state_dict, for _restore_fp32_state to put back."""
    stashed, state = {}, {}
    for key, value in state_dict["state"].items():
        if isinstance(value, dict):
            stashed[key] = {k: value[k] for k in _FP32_STATE_KEYS if k in value}
            value = {k: v for k, v in value.items() if k not in _FP32_STATE_KEYS}
        state[key] = value
    saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
    optimizer._loading = (saved_ids, stashed)
    return {**state_dict, "state": state}


@torch.no_grad()
def _restore_fp32_state(optimizer):
    """Load post-hook: puts the stashed state back as float32 tensors laid out like their parameters."""
    saved_ids, stashed = optimizer._loading
    params = [(p, group) for group in optimizer.param_groups for p in group["params"]]
    for saved_id, (param, group) in zip(saved_ids, params):
        if saved_id not in stashed:
            continue
        state = optimizer.state[param]
        for key, value in stashed[saved_id].items():
            state[key] = _fp32_like(param, value)
        if "step" in state:
            state["step"] = torch.tensor(float(state["step"]), dtype=torch.float32)
        # A torch.optim.AdamW checkpoint has no master: the parameter is the best there is.
        if _wants_master(param, group["master_weights"]) and "master_param" not in state:
            state["master_param"] = _fp32_like(param, param)
