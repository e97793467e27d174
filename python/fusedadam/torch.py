"""fusedadam.torch - FusedAdamW, a drop-in for torch.optim.AdamW that updates every CUDA parameter
with one fused kernel launch per step, FusedAdam, the same for torch.optim.Adam (L2 weight decay), and
FusedLion, the Lion rule (Chen et al. 2023) through the same machinery.

    from fusedadam.torch import FusedAdamW
    opt = FusedAdamW(model.parameters(), lr=3e-4, weight_decay=0.1)

CUDA parameters are stepped by fusedadam's kernel on PyTorch's current stream, CPU parameters by its
CPU implementation on torch.get_num_threads() threads (read at every step; the results are the same
bits at every count). Per-parameter state, under torch.optim.AdamW's keys so that a checkpoint moves
between the two optimizers in either direction:
    step          float32 scalar tensor on the CPU (capturable=True: on the parameter's device): the steps
                  this parameter has taken
    exp_avg       first moment, float32 (torch.optim.AdamW keeps it in the parameter's dtype)
    exp_avg_sq    second moment, float32
    master_param  float32 copy of a bfloat16/float16 parameter (master_weights=True): the update is
                  computed on it and the parameter receives it rounded to nearest (bfloat16: ties away
                  from zero, the remainder layout's rule, so the two layouts agree bit for bit;
                  float16: ties to even)

Memory-lean layouts (per group: master_weights="remainder", moment_dtype=torch.bfloat16 or "int8";
docs/STATE_LAYOUTS.md) keep their state under keys of their own, laid out like the parameter:
    master_remainder   int16 (the uint16 bits): the low 16 bits of the float32 master of a bfloat16
                       parameter, whose own bits are the high 16 (rounded): 2 B instead of 4
    exp_avg_bf16, exp_avg_sq_bf16      bfloat16 moments, stochastically rounded
    exp_avg_int8, exp_avg_sq_uint8     8-bit codes (signed m, companded unsigned v), with
    exp_avg_scales, exp_avg_sq_scales  float32, one per block of 256 elements (in memory order)
state_dict() adds exp_avg / exp_avg_sq / master_param in float32 (dequantized, joined) beside them, so
torch.optim.AdamW loads it (for DTensor parameters only those, as DTensors sharded like the parameter,
so that torch.distributed.checkpoint saves every rank's shard); load_state_dict() takes the compact keys when the group has the same
layout (bit for bit), else converts the float32 ones: moments rounded to nearest (bf16: even; 8-bit:
half up), a float32 master split beside its parameter (exact for the parameter fusedadam wrote; beside one
that torch rounded to even from a master exactly halfway, about 2^-17 of the elements, the master loses
its last ulp; docs/STATE_LAYOUTS.md).
"""

import inspect
import warnings

import torch
from torch.optim import Optimizer

from . import _C

try:  # DTensor (FSDP2, tensor parallelism); absent from torch builds without torch.distributed
    from torch.distributed.tensor import DTensor
except ImportError:  # pragma: no cover
    DTensor = None

__all__ = ["FusedAdamW", "FusedAdam", "FusedLion", "MAX_GROUPS"]

__version__ = _C.version()

# Most parameter groups one optimizer may have (the C library's FADAM_MAX_GROUPS).
MAX_GROUPS = _C.MAX_GROUPS

# State that stays float32 whatever the parameter's dtype (torch's loader would cast it to that dtype).
_FP32_STATE_KEYS = ("exp_avg", "exp_avg_sq", "master_param")
# torch.optim.AdamW options fusedadam has no kernel for; accepted only as False.
_UNSUPPORTED_OPTIONS = ("amsgrad", "differentiable")
# Group keys torch.optim.AdamW does not have: state_dict() leaves them out where they hold the
# constructor's value, and load_state_dict() takes the constructor's value where they are missing, so
# that a torch.distributed.checkpoint of either optimizer loads into the other (DCP asks the checkpoint
# for every key of the state dict it loads into).
_OPTIONAL_GROUP_KEYS = ("bias_correction", "master_weights", "moment_dtype", "seed")
# The compact state of the lean layouts (see the module's doc), by the float32 key each stands for.
_MOMENT_KEYS = {
    _C.MOMENT_BF16: {"exp_avg": ("exp_avg_bf16",), "exp_avg_sq": ("exp_avg_sq_bf16",)},
    _C.MOMENT_INT8: {"exp_avg": ("exp_avg_int8", "exp_avg_scales"), "exp_avg_sq": ("exp_avg_sq_uint8", "exp_avg_sq_scales")},
}
_LEAN_STATE_KEYS = ("master_remainder", "exp_avg_bf16", "exp_avg_sq_bf16", "exp_avg_int8", "exp_avg_scales",
                    "exp_avg_sq_uint8", "exp_avg_sq_scales")


class _Default:
    """A constructor argument left out: the class's _DEFAULTS give its value (FusedAdam changes some)."""

    def __repr__(self):
        return "<class default>"


_DEFAULT = _Default()


class FusedAdamW(Optimizer):
    """torch.optim.AdamW with one fused kernel launch per step for all CUDA parameters.

    Takes torch.optim.AdamW's arguments with its defaults. ``foreach`` and ``fused`` are accepted and
    ignored (the step is always fused); ``amsgrad`` and ``differentiable`` must stay False.
    ``capturable=True`` (for CUDA graphs) keeps the step counts and lr in tensors on the parameters'
    device, read by the update when it runs: take one step before capturing; every parameter on one
    device with one step count. Three more, per parameter group like the rest:

    bias_correction (bool): divide by 1 - beta^t as PyTorch does (default True).
    decoupled_weight_decay (bool): True (default) is AdamW's decay, p *= 1 - lr * weight_decay;
        False is Adam's L2 decay, grad += weight_decay * p (torch.optim.Adam, see FusedAdam).
    master_weights (bool or "remainder"): keep a float32 master copy of each bfloat16/float16
        parameter in state['master_param'] (default True). With False the 16-bit parameter is read,
        updated in float32 and rounded back each step. "remainder" (bfloat16 parameters only; a
        float16 one raises TypeError at the step) keeps the master as a 16-bit remainder beside the
        parameter (state['master_remainder']): the same bits as True at every step, for 2 bytes
        instead of 4 (the parameter differs only where its master is an even tie, docs/STATE_LAYOUTS.md).
    moment_dtype (torch.float32, torch.bfloat16 or "int8"; torch.int8 means "int8"): how exp_avg and
        exp_avg_sq are stored (default torch.float32). bfloat16 rounds them stochastically
        (round-to-nearest would stall the second moment); "int8" keeps 8-bit codes with one float32
        scale per block of 256 elements. master_weights and moment_dtype are fixed once a group's
        parameters have state: changing them later raises ValueError (a checkpoint converts instead).
    seed (int in [0, 2^64)): the seed of stochastic rounding (default 0). A tensor's random stream is
        a function of the seed, the parameter's index among the optimizer's parameters (in group
        order), the step and the element's index, so runs repeat bit for bit on any device and a
        resumed run equals an uninterrupted one. A DTensor shard counts its elements from 0 (its
        offset in the full tensor is not used). A master goes stale if the parameter is changed outside
        the optimizer (the next step would overwrite the change): call resync_master_weights() after
        such an edit. load_state_dict does it by itself, with a warning (a master that no longer
        rounds to its parameter, e.g. one a torch.optim.AdamW run carried along unchanged).

    The parameters and their state tensors are cached between steps; each step checks the cache
    against param_groups and state (in C++, by identity), so editing either is seen at the next step.
    max_grad_norm (float, optional; not per group): clip the global L2 norm of all gradients to it
        inside the step, as torch.nn.utils.clip_grad_norm_ would, and skip the step (nothing changes, the
        step counts stay) when that norm is Inf/NaN. With DTensor parameters sharded over a 1-D mesh
        (FSDP2) the norm spans every rank: each rank's sum of squares is all-reduced, one number on the
        device, and the clip coefficient reaches the update as a tensor: no host synchronization.
        last_grad_norm then holds the norm of the last step (a tensor, after unscaling).

    GradScaler: the step takes the grad_scale and found_inf tensors that torch.amp.GradScaler hands
    optimizers with _step_supports_amp_scaling (torch's fused AdamW does the same): the unscale happens
    as the update reads each gradient, and a step with found_inf set changes nothing. With CUDA
    parameters the decision stays on the device; the step counts of a skipped step are taken back at
    the next step() or state_dict() (the flag is read then, long after it is ready).

    Parameters whose grad is None are skipped and their step count does not advance, as in torch.
    Parameters whose step counts differ (some were skipped) are stepped by one launch per distinct
    count. Errors (sparse or misplaced gradients, unsupported dtypes, tensors with gaps, bad
    hyperparameters) raise before any parameter or state is modified.
    """

    _step_supports_amp_scaling = True  # torch.amp.GradScaler passes grad_scale and found_inf (see step)

    # The rule: the constructor's defaults for the arguments left out (a subclass such as FusedAdam
    # changes only these), and each group's C update mode (_hparams).
    _DEFAULTS = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2, "decoupled_weight_decay": True}
    # The float32 moments each parameter's state holds (made by _create_state, read by the binding).
    _STATE_KEYS = ("exp_avg", "exp_avg_sq")
    # Whether float64 parameters, which the C library does not step, go through torch's Adam math.
    _FLOAT64_ADAM = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.__signature__ = _signature(cls)

    @staticmethod
    def _mode(group):
        """The C library's update rule for a parameter group."""
        return _C.ADAMW if group["decoupled_weight_decay"] else _C.ADAM_L2

    @classmethod
    def _group_state(cls, group):
        """Which state tensors the binding reads for a group's parameters, and how they are stored."""
        master_format, moment_format, seed = _layout(group)
        return _C.GroupState(master=bool(group["master_weights"]), second_moment="exp_avg_sq" in cls._STATE_KEYS,
                             master_format=master_format, moment_format=moment_format, seed=seed)

    @classmethod
    def _hparams(cls, group):
        """A group's hyperparameters as the C library takes them (read at every step: schedulers change
        lr); the one place a group's dict becomes a fadam_hparams."""
        _check_options(group)
        beta1, beta2 = group["betas"]
        lr = group["lr"]
        return _C.Hparams(
            lr=0.0 if group["capturable"] and torch.is_tensor(lr) else float(lr),  # capturable: lr read from memory
            beta1=float(beta1),
            beta2=float(beta2),
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            mode=cls._mode(group),
            bias_correction=bool(group["bias_correction"]),
            maximize=bool(group["maximize"]),
        )

    def __init__(
        self,
        params,
        lr=_DEFAULT,
        betas=_DEFAULT,
        eps=_DEFAULT,
        weight_decay=_DEFAULT,
        amsgrad=False,
        *,
        maximize=False,
        foreach=None,
        capturable=False,
        differentiable=False,
        fused=None,
        bias_correction=True,
        decoupled_weight_decay=_DEFAULT,
        master_weights=True,
        moment_dtype=torch.float32,
        seed=0,
        max_grad_norm=None,
    ):
        given = {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay,
                 "decoupled_weight_decay": decoupled_weight_decay}
        defaults = {key: self._DEFAULTS[key] if value is _DEFAULT else value for key, value in given.items()}
        lr = defaults["lr"]
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if max_grad_norm is not None and not max_grad_norm > 0.0:
            raise ValueError(f"Invalid max_grad_norm value: {max_grad_norm}")
        defaults.update({
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": capturable,
            "differentiable": differentiable,
            "fused": fused,
            "bias_correction": bias_correction,
            "master_weights": master_weights,
            "moment_dtype": moment_dtype,
            "seed": seed,
        })
        _layout(defaults)
        # The C library's checks (fadam_hparams_validate), as torch checks its constructor's arguments.
        self._hparams({**defaults, "capturable": False}).validate()
        self._tables = _C.TableCache()
        self._cache = _C.ParamCache()
        self._loading = None
        self._needs_view = False  # some parameter is a DTensor or has gaps: steps go through _step_view
        self._has_float64 = False  # some parameter is float64: torch's AdamW math steps it (_step_float64)
        self.max_grad_norm = None if max_grad_norm is None else float(max_grad_norm)
        self.last_grad_norm = None
        self._pending_skip = None  # (pinned flag, event, step tensors) of a CUDA step that may have skipped
        self._verify_masters = False  # a state dict was loaded: the next step checks its masters first
        self._capturable_t = None  # capturable=True: the steps taken, int64 on the parameters' device
        self._capturable_lr = None  # capturable=True: every group's lr, float32 on that device
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        if len(self.param_groups) >= MAX_GROUPS:
            raise ValueError(f"{type(self).__name__}: at most {MAX_GROUPS} parameter groups are supported")
        _check_options({**self.defaults, **param_group})
        _layout({**self.defaults, **param_group})
        super().add_param_group(param_group)
        self._cache.clear()  # the step would notice the new group; clearing says so outright
        needs_view, has_float64 = _layout_flags([self.param_groups[-1]])
        self._needs_view = self._needs_view or needs_view
        self._has_float64 = self._has_float64 or has_float64

    def __getstate__(self):
        _resolve_pending_skip(self)
        return {**super().__getstate__(), "max_grad_norm": self.max_grad_norm}

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("max_grad_norm", None)
        self.__dict__.setdefault("last_grad_norm", None)
        self.__dict__.setdefault("_pending_skip", None)
        self.__dict__.setdefault("_verify_masters", False)
        self.__dict__.setdefault("_capturable_t", None)
        self.__dict__.setdefault("_capturable_lr", None)
        # A torch.optim.AdamW checkpoint lacks this optimizer's own keys: they take the defaults.
        for group in self.param_groups:
            for key, value in self.defaults.items():
                group.setdefault(key, value)
        if not hasattr(self, "_tables"):  # unpickled or deep-copied: tables and cache are not carried over
            self._tables = _C.TableCache()
            self._cache = _C.ParamCache()
            self._loading = None
        self._needs_view, self._has_float64 = _layout_flags(self.param_groups)

    @torch.no_grad()
    def step(self, closure=None):
        """Performs a single optimization step; closure (optional) re-evaluates the model and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Per group, read at every step (schedulers change lr); per parameter, the binding reads the
        # grads and checks its cache of the parameters and their state against the optimizer.
        hparams = [self._hparams(group) for group in self.param_groups]
        group_states = [self._group_state(group) for group in self.param_groups]
        # A step captured in a CUDA graph would replay its host step counts and lr frozen: refused
        # with torch's own check and message (capturable is False).
        self._cuda_graph_capture_health_check()
        _resolve_pending_skip(self)
        if self._verify_masters:
            self._verify_masters = False
            stale = self.resync_master_weights()
            if stale:
                warnings.warn(
                    f"fusedadam: {stale} loaded master weight(s) no longer round to their bfloat16/float16 "
                    "parameter (it was changed without them, e.g. trained by another optimizer): rebuilt "
                    "from the parameters",
                    stacklevel=2,
                )
        scaling = {}
        grad_scale, found_inf = getattr(self, "grad_scale", None), getattr(self, "found_inf", None)
        if grad_scale is not None or found_inf is not None or self.max_grad_norm is not None:
            scaling = _scaling_inputs(self, grad_scale, found_inf)
            if scaling is None:  # skipped, as a CPU flag said: nothing to do
                return loss
        capturable = {bool(group["capturable"]) for group in self.param_groups}
        if len(capturable) > 1:
            raise ValueError("fusedadam: capturable must be the same for every parameter group")
        capturable, stepped = capturable.pop(), None
        if capturable:
            stepped = _stepped_params(self)
            if not stepped:
                return loss
            scaling = {**scaling, **_capturable_inputs(self, stepped)}
        float64_step = _float64_step(self, scaling) if self._has_float64 else None
        if not self._needs_view and _C.step(
            self._tables, self._cache, self.param_groups, self.state, hparams, group_states, **scaling,
            defer_float64=self._has_float64,
        ):
            if float64_step:
                float64_step()
            if capturable:
                _advance_capturable(self, stepped, scaling)
            _defer_skip(self, scaling)
            return loss
        # The cache is stale (first step, a group added, a checkpoint loaded, state to create or
        # replaced): make the state that is missing, rebuild the cache and step from it.
        self._needs_view, self._has_float64 = _layout_flags(self.param_groups)
        _check_layouts_fixed(self)
        created = _create_state(self)
        try:
            float64_step = _float64_step(self, scaling) if self._has_float64 else None
            if self._needs_view:
                _step_view(self, hparams, group_states, scaling)
            else:
                self._cache.load(self.param_groups, self.state, group_states)
                if not _C.step(
                    self._tables, self._cache, self.param_groups, self.state, hparams, group_states, **scaling,
                    defer_float64=self._has_float64,
                ):
                    raise RuntimeError("fusedadam: internal error: the parameter cache is stale just after its rebuild")
        except BaseException:
            _discard_state(self, created)
            raise
        if float64_step:
            float64_step()
        if capturable:
            _advance_capturable(self, stepped, scaling)
        _defer_skip(self, scaling)
        return loss

    def state_dict(self):
        """torch.optim.AdamW's state dict; this optimizer's own group keys (bias_correction,
        master_weights) only where a group's value differs from the constructor's, which loading
        restores: so a torch.distributed.checkpoint of it loads into torch.optim.AdamW and back."""
        _resolve_pending_skip(self)
        state_dict = super().state_dict()
        _export_fp32_state(self, state_dict)
        for group in state_dict["param_groups"]:
            for key in _OPTIONAL_GROUP_KEYS:
                if key in group and group[key] == self.defaults[key]:
                    del group[key]
        return state_dict

    def load_state_dict(self, state_dict):
        """Loads a state dict of this optimizer or of torch.optim.AdamW/Adam.

        The state layout stays this optimizer's (moment_dtype, seed, master_weights="remainder" or
        not): the file's state is converted into it (see the module's doc).

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


    @torch.no_grad()
    def resync_master_weights(self):
        """Brings every float32 master back in line with its bfloat16/float16 parameter after the
        parameter was changed outside the optimizer (re-initialised, loaded, edited in place): each
        element of a master that does not round to its parameter (to nearest, a halfway master to
        either neighbour) is replaced by the parameter's value;
        the others keep their extra precision. One pass over the 16-bit parameters; returns the number
        of parameters whose master changed."""
        return sum(
            _resync_master(p, self.state[p]["master_param"])
            for group in self.param_groups
            for p in group["params"]
            if _wants_master(p, group["master_weights"]) and self.state.get(p, {}).get("master_param") is not None
        )


def _signature(cls):
    """The constructor's signature with the class's own defaults in place of _DEFAULT (for help() and
    inspect.signature)."""
    signature = inspect.signature(FusedAdamW.__init__)
    params = list(signature.parameters.values())[1:]
    return signature.replace(
        parameters=[p.replace(default=cls._DEFAULTS[p.name]) if p.default is _DEFAULT else p for p in params]
    )


FusedAdamW.__signature__ = _signature(FusedAdamW)


class FusedAdam(FusedAdamW):
    """torch.optim.Adam's drop-in: FusedAdamW with torch.optim.Adam's defaults, weight_decay=0 and
    L2 weight decay (decoupled_weight_decay=False, the decay is added to the gradient)."""

    _DEFAULTS = {**FusedAdamW._DEFAULTS, "weight_decay": 0, "decoupled_weight_decay": False}


class FusedLion(FusedAdamW):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): FusedAdamW with the
    Lion rule and its defaults lr=1e-4, betas=(0.9, 0.99), weight_decay=0. Per element:
        c = beta1 * m + (1 - beta1) * g
        p = p * (1 - lr * weight_decay) - lr * sign(c)      (sign(0) = 0, as torch.sign)
        m = beta2 * m + (1 - beta2) * g
    One moment, state['exp_avg'] (float32; the key of the lion-pytorch package and timm's Lion, whose
    state dicts load here and back); eps, bias_correction and decoupled_weight_decay are accepted
    and unused (the decay is always decoupled). Everything else (master_weights, maximize,
    max_grad_norm, GradScaler, capturable, CPU and CUDA parameters) is FusedAdamW's. float64
    parameters are not supported. A beta in [0, 1] is accepted (no bias correction divides by
    1 - beta)."""

    _DEFAULTS = {**FusedAdamW._DEFAULTS, "lr": 1e-4, "betas": (0.9, 0.99), "eps": 0.0, "weight_decay": 0.0}
    _STATE_KEYS = ("exp_avg",)
    _FLOAT64_ADAM = False

    @staticmethod
    def _mode(group):
        return _C.LION


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
                master_format, moment_format, _ = _layout(group)
                if not state:
                    state = optimizer.state[param]
                    state["step"] = _new_step(param, group["capturable"], 0.0)
                    created.append((state, "step"))
                    for key in optimizer._STATE_KEYS:
                        for name, value in _empty_moment(param, key, moment_format).items():
                            state[name] = value
                            created.append((state, name))
                if not _wants_master(param, group["master_weights"]):
                    continue
                if master_format == _C.MASTER_REMAINDER:
                    if _local(param).dtype != torch.bfloat16:
                        raise TypeError(f"fusedadam: master_weights='remainder' needs bfloat16 parameters, not "
                                        f"{_local(param).dtype} (shape {tuple(param.shape)})")
                    if state.get("master_remainder") is None:  # 0: the master is the parameter
                        state["master_remainder"] = torch.zeros_like(param, dtype=torch.int16,
                                                                     memory_format=torch.preserve_format)
                        created.append((state, "master_remainder"))
                elif state.get("master_param") is None:
                    state["master_param"] = _fp32_like(param, param)
                    created.append((state, "master_param"))
    except BaseException:
        _discard_state(optimizer, created)
        raise
    return created


def _layout(group):
    """(master_format, moment_format, seed) of a group's dict; ValueError for a value not documented."""
    master = group.get("master_weights", True)
    if master == "remainder":
        master_format = _C.MASTER_REMAINDER
    elif isinstance(master, bool):
        master_format = _C.MASTER_FP32
    else:
        raise ValueError(f"fusedadam: master_weights={master!r}: True, False or 'remainder'")
    moment_dtype = group.get("moment_dtype", torch.float32)
    if moment_dtype == torch.float32:
        moment_format = _C.MOMENT_FP32
    elif moment_dtype == torch.bfloat16:
        moment_format = _C.MOMENT_BF16
    elif moment_dtype in ("int8", torch.int8):
        moment_format = _C.MOMENT_INT8
    else:
        raise ValueError(f"fusedadam: moment_dtype={moment_dtype!r}: torch.float32, torch.bfloat16 or 'int8'")
    seed = group.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**64:
        raise ValueError(f"fusedadam: seed={seed!r}: an int in [0, 2**64)")
    if (master_format, moment_format) != (_C.MASTER_FP32, _C.MOMENT_FP32) and not _C.lean_layouts_supported():
        raise ValueError("fusedadam: this build of the C library does not step the lean state layouts "
                         "(master_weights='remainder', moment_dtype bfloat16/'int8')")
    return master_format, moment_format, seed


def _empty_moment(param, key, moment_format):
    """The zero state of moment `key` ("exp_avg", "exp_avg_sq") in a format: {state key: tensor}."""
    if moment_format == _C.MOMENT_FP32:
        return {key: torch.zeros_like(param, dtype=_state_dtype(param), memory_format=torch.preserve_format)}
    names = _MOMENT_KEYS[moment_format][key]
    if moment_format == _C.MOMENT_BF16:
        return {names[0]: torch.zeros_like(param, dtype=torch.bfloat16, memory_format=torch.preserve_format)}
    codes = torch.int8 if key == "exp_avg" else torch.uint8
    local = _local(param)
    blocks = (local.numel() + _C.MOMENT_BLOCK - 1) // _C.MOMENT_BLOCK
    return {names[0]: torch.zeros_like(param, dtype=codes, memory_format=torch.preserve_format),
            names[1]: torch.zeros(blocks, dtype=torch.float32, device=local.device)}


def _state_layout(state):
    """(master_format or None, moment_format or None) that a parameter's state holds (None: no such state)."""
    master = _C.MASTER_REMAINDER if "master_remainder" in state else _C.MASTER_FP32 if "master_param" in state else None
    moments = (_C.MOMENT_BF16 if "exp_avg_bf16" in state else _C.MOMENT_INT8 if "exp_avg_int8" in state
               else _C.MOMENT_FP32 if "exp_avg" in state else None)
    return master, moments


def _check_layouts_fixed(optimizer):
    """master_weights and moment_dtype cannot change once a parameter has state in its group's layout."""
    names = {_C.MASTER_FP32: "True", _C.MASTER_REMAINDER: "'remainder'", _C.MOMENT_FP32: "torch.float32",
             _C.MOMENT_BF16: "torch.bfloat16", _C.MOMENT_INT8: "'int8'"}
    for index, group in enumerate(optimizer.param_groups):
        master_format, moment_format, _ = _layout(group)
        for param in group["params"]:
            held_master, held_moments = _state_layout(optimizer.state.get(param, {}))
            if held_moments is not None and held_moments != moment_format:
                raise ValueError(f"fusedadam: group {index}: moment_dtype is fixed after the first step (the state "
                                 f"holds {names[held_moments]} moments); load a state dict to convert")
            if (_wants_master(param, group["master_weights"]) and held_master is not None
                    and held_master != master_format):
                raise ValueError(f"fusedadam: group {index}: master_weights is fixed after the first step (the state "
                                 f"holds master_weights={names[held_master]}); load a state dict to convert")


def _cpu(tensor):
    return _local(tensor).detach().cpu()


def _fp32_moment(state, key):
    """A moment as a float32 CPU tensor from whichever form the state holds; None when absent."""
    if key in state:
        return _cpu(state[key]).float()
    bf16 = _MOMENT_KEYS[_C.MOMENT_BF16][key][0]
    if bf16 in state:
        return _cpu(state[bf16]).float()
    codes, scales = _MOMENT_KEYS[_C.MOMENT_INT8][key]
    if codes in state and scales in state:
        return _C.dequantize_moment(_cpu(state[codes]), _cpu(state[scales]).contiguous())
    return None


def _fp32_master(param, state):
    """A bfloat16 parameter's float32 master from its remainder (CPU); None without one."""
    if "master_remainder" not in state or _local(param).dtype != torch.bfloat16:
        return None
    return _C.join_master(_cpu(param), _cpu(state["master_remainder"]))


def _export_fp32_state(optimizer, state_dict):
    """state_dict(): a lean state also as torch.optim.AdamW's float32 exp_avg / exp_avg_sq / master_param
    (new dicts: the optimizer's own state is not touched), laid out like the parameter. For a DTensor
    parameter (FSDP2, tensor parallelism) only those, as DTensors sharded like it: the compact tensors
    (8-bit block scales of the local shard above all) are not DTensors of the global shape, and
    torch.distributed.checkpoint would save one rank's copy of a plain tensor for all of them."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, param in enumerate(params):
        state = state_dict["state"].get(index)
        if not isinstance(state, dict) or not any(key in state for key in _LEAN_STATE_KEYS):
            continue
        state = dict(state)
        for key in ("exp_avg", "exp_avg_sq"):
            if key not in state:
                value = _fp32_moment(state, key)
                if value is not None:
                    state[key] = _laid_like(param, value)
        master = _fp32_master(param, state)
        if master is not None and "master_param" not in state:
            state["master_param"] = _laid_like(param, master)
        if DTensor is not None and isinstance(param, DTensor):
            state = {key: value for key, value in state.items() if key not in _LEAN_STATE_KEYS}
        state_dict["state"][index] = state


def _discard_state(optimizer, created):
    """Takes back the state _create_state made for a step that was refused."""
    for state, key in created:
        del state[key]
    emptied = {id(state) for state, _ in created if not state}
    for param in [p for p, state in optimizer.state.items() if id(state) in emptied]:
        del optimizer.state[param]
    optimizer._cache.clear()  # it holds the discarded tensors


def _is_dense(tensor):
    """Whether tensor's elements fill its storage span with no gap or overlap, in some dimension order
    (what the C library steps: a flat buffer)."""
    if tensor.is_contiguous() or tensor.numel() <= 1:
        return True
    expected = 1
    for stride, size in sorted((s, n) for n, s in zip(tensor.shape, tensor.stride()) if n != 1):
        if stride != expected:
            return False
        expected *= size
    return True


def _layout_flags(param_groups):
    """(needs_view, has_float64): some parameter is a DTensor or a strided tensor with gaps (stepped
    through _step_view); some is float64 (stepped by _float64_step)."""
    needs_view = has_float64 = False
    for group in param_groups:
        for param in group["params"]:
            local = _local(param)
            needs_view = needs_view or local is not param or (local.layout == torch.strided and not _is_dense(local))
            has_float64 = has_float64 or local.dtype == torch.float64
    return needs_view, has_float64


def _local(tensor):
    """A DTensor's local shard (the same tensor object at every call, under no_grad), else the tensor."""
    return tensor.to_local() if DTensor is not None and isinstance(tensor, DTensor) else tensor


def _local_grad(param):
    """The local shard of a DTensor parameter's gradient, laid out as the parameter's shard."""
    grad = param.grad
    if not isinstance(grad, DTensor):
        raise TypeError(f"fusedadam: a DTensor parameter (shape {tuple(param.shape)}) has a gradient that is not a DTensor")
    if grad.device_mesh != param.device_mesh or grad.placements != param.placements:
        grad = grad.redistribute(param.device_mesh, param.placements)  # e.g. a Partial gradient of tensor parallelism
    return grad.to_local()


def _step_view(optimizer, hparams, group_states, scaling):
    """The step of an optimizer with DTensor parameters (FSDP2's fully_shard, tensor parallelism) or
    strided parameters with gaps, through a view of the optimizer where
      - a DTensor is its local shard, as are its gradient and state tensors: each rank steps its own
        shards (AdamW is elementwise, no communication);
      - a tensor with gaps (a slice with a step, a transposed narrow) is a dense copy, its gradient
        too, stepped and copied back (the cost: one copy of the parameter and its gradient in, one of
        the parameter out; its state tensors are dense);
    with every other parameter, in one fused call. The view is rebuilt at every step (a Python loop over
    the parameters): FSDP2 gives each step new gradient DTensors, which reach the binding as the .grad
    of the local shards."""
    groups, state, given, copies = [], {}, [], []
    try:
        for group in optimizer.param_groups:
            view_params = []
            for param in group["params"]:
                local = _local(param)
                work = local
                if local.layout == torch.strided and not _is_dense(local) and local.dtype != torch.float64:
                    if torch._debug_has_internal_overlap(local) == 1:  # 1: certainly overlaps (2: cannot tell)
                        raise RuntimeError(
                            f"fusedadam: a parameter of shape {tuple(local.shape)} with strides {local.stride()} "
                            "has elements that overlap in memory; it cannot be updated element by element"
                        )
                    # dense, in the dimension order of the state torch.zeros_like made for it
                    work = torch.empty_like(local, memory_format=torch.preserve_format).copy_(local)
                    copies.append((local, work))
                view_params.append(work)
                param_state = optimizer.state.get(param)
                if param_state:
                    state[work] = {key: _local(value) for key, value in param_state.items()}
                if work is not param and param.grad is not None:
                    grad = param.grad if local is param else _local_grad(param)
                    work.grad = torch.empty_like(work, dtype=grad.dtype).copy_(grad) if work is not local else grad
                    given.append(work)
            groups.append({"params": view_params})
        optimizer._cache.load(groups, state, group_states)
        if not _C.step(
            optimizer._tables, optimizer._cache, groups, state, hparams, group_states, **scaling,
            defer_float64=optimizer._has_float64,
        ):
            raise RuntimeError("fusedadam: internal error: the parameter cache is stale just after its rebuild")
        for local, work in copies:
            local.copy_(work)
    finally:
        for work in given:
            work.grad = None
        optimizer._cache.clear()  # holds the view's tensors: let go of them now


def _float64_step(optimizer, scaling):
    """float64 parameters, which the C library does not step: torch.optim.Adam's own math (its foreach
    implementation, float64 state as torch keeps it, the group's values as Python floats, unrounded
    to fadam_hparams' float32), checked now and run after the fused step by the returned function;
    None when no float64 parameter has a gradient."""
    work = []
    for group in optimizer.param_groups:
        params = [p for p in group["params"] if p.grad is not None and _local(p).dtype == torch.float64]
        if not params:
            continue
        if not optimizer._FLOAT64_ADAM:
            raise TypeError(f"fusedadam: {type(optimizer).__name__} does not support float64 parameters "
                            "(float32, bfloat16 and float16 are supported)")
        if not group["bias_correction"]:
            raise ValueError("fusedadam: bias_correction=False is not supported for float64 parameters")
        grads = [_local_grad(p) if _local(p) is not p else p.grad for p in params]
        beta1, beta2 = group["betas"]
        options = dict(amsgrad=False, beta1=float(beta1), beta2=float(beta2), lr=float(group["lr"]),
                       weight_decay=float(group["weight_decay"]), eps=float(group["eps"]),
                       maximize=bool(group["maximize"]),
                       decoupled_weight_decay=optimizer._mode(group) == _C.ADAMW)
        work.append((params, grads, options))
    if not work:
        return None
    multiplier = scaling.get("grad_multiplier") if scaling else None
    skip = scaling.get("found_inf") if scaling else None
    if skip is not None and skip.device.type != "cpu":  # a set CPU flag has already returned
        raise NotImplementedError("fusedadam: float64 parameters with grad_scale/found_inf/max_grad_norm on a GPU")

    def run():
        from torch.optim.adam import adam

        for params, grads, options in work:
            states = [optimizer.state[p] for p in params]  # made by now (_create_state)
            if multiplier is not None:
                grads = torch._foreach_mul(grads, multiplier.to(torch.float64).reshape(()))
            adam([_local(p) for p in params], grads, [_local(s["exp_avg"]) for s in states],
                 [_local(s["exp_avg_sq"]) for s in states], [], [s["step"] for s in states], foreach=None, **options)

    return run


def _new_step(param, capturable, value):
    """state['step']: a CPU float32 scalar tensor, or with capturable=True one on the parameter's device
    (torch's convention), which the step advances with device ops."""
    device = _local(param).device if capturable else "cpu"
    return torch.full((), value, dtype=torch.float32, device=device)


def _capturable_inputs(optimizer, params):
    """capturable=True: t of this step (int64) and every group's lr (float32) in tensors on the
    parameters' device, made with device ops only, so that a step captured in a CUDA graph reads
    them when it is replayed (lr tensors changed in place by schedulers included). The counter behind
    t is set up from the step counts outside a capture: the first step (the warm-up torch's capturable
    optimizers also need) and the first after a load."""
    device = _local(params[0]).device
    if any(_local(p).device != device for p in params):
        raise ValueError("fusedadam: capturable=True needs every parameter on one device")
    if any(_local(p).dtype == torch.float64 for p in params):
        raise NotImplementedError("fusedadam: capturable=True with float64 parameters")
    counter = optimizer._capturable_t
    if counter is None or counter.device != device:
        if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("fusedadam: take one step with capturable=True before capturing it (a warm-up step)")
        counts = {float(optimizer.state[p]["step"]) if "step" in optimizer.state.get(p, {}) else 0.0 for p in params}
        if len(counts) > 1:
            raise ValueError(f"fusedadam: capturable=True steps every parameter with one step count; they have {sorted(counts)}")
        counter = torch.full((), int(counts.pop()) if counts else 0, dtype=torch.int64, device=device)
        optimizer._capturable_t = counter
        optimizer._capturable_lr = torch.empty(len(optimizer.param_groups), dtype=torch.float32, device=device)
    lrs = optimizer._capturable_lr
    if lrs.numel() != len(optimizer.param_groups):
        lrs = optimizer._capturable_lr = torch.empty(len(optimizer.param_groups), dtype=torch.float32, device=device)
    for g, group in enumerate(optimizer.param_groups):
        lrs[g].fill_(group["lr"])  # a tensor lr is copied on the device; a float is the fill's argument
    return {"device_step": counter + 1, "device_lr": lrs}


def _advance_capturable(optimizer, params, scaling):
    """After a capturable step: the counter and each stepped parameter's step count advance on the
    device, by 1 - found_inf when a skip flag was given (as torch's capturable optimizers do)."""
    skip = scaling.get("found_inf") if scaling else None
    steps = [optimizer.state[p]["step"] for p in params]
    if skip is None:
        optimizer._capturable_t.add_(1)
        torch._foreach_add_(steps, 1.0)
    else:
        advance = 1.0 - skip.reshape(())
        optimizer._capturable_t.add_(advance.to(torch.int64))
        torch._foreach_add_(steps, advance)


def _stepped_params(optimizer):
    return [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]


def _sum_of_squares(grads):
    if not grads:
        return None
    wide = [g for g in grads if g.dtype == torch.float64]  # vector_norm will not narrow them to float32
    narrow = [g for g in grads if g.dtype != torch.float64]
    norms = list(torch._foreach_norm(narrow, 2.0, dtype=torch.float32)) if narrow else []
    norms += [n.float() for n in torch._foreach_norm(wide, 2.0)] if wide else []
    return torch.stack(norms).square().sum()


def _global_grad_norm(params, device):
    """The L2 norm of every gradient, as one float32 tensor on `device`. The local shards of DTensor
    gradients sharded over a 1-D mesh (FSDP2) add up across ranks: their sum of squares is
    all-reduced, one number, on the device; replicated gradients (DDP, plain tensors) count once."""
    sharded, whole, mesh = [], [], None
    for param in params:
        if DTensor is not None and isinstance(param, DTensor):
            local = _local_grad(param)
            if any(placement.is_shard() for placement in param.placements):
                if param.device_mesh.ndim != 1:
                    raise NotImplementedError("fusedadam: max_grad_norm supports DTensors on a 1-D device mesh")
                if mesh is not None and param.device_mesh != mesh:
                    raise NotImplementedError("fusedadam: max_grad_norm supports DTensors on one device mesh")
                mesh = param.device_mesh
                sharded.append(local)
            else:
                whole.append(local)
        else:
            whole.append(param.grad)
    total = torch.zeros((), dtype=torch.float32, device=device)
    if mesh is not None:
        local_sum = _sum_of_squares(sharded)
        if local_sum is not None:
            total = total + local_sum.to(device)
        torch.distributed.all_reduce(total, group=mesh.get_group())
    whole_sum = _sum_of_squares(whole)
    if whole_sum is not None:
        total = total + whole_sum.to(device)
    return total.sqrt()


def _scaling_inputs(optimizer, grad_scale, found_inf):
    """The gradient multiplier (1/grad_scale times the clip coefficient) and the skip flag of this step,
    as one-element float32 tensors on the parameters' device, computed there without a host sync;
    None when a CPU flag says the step is skipped (reading it costs no device synchronization)."""
    params = _stepped_params(optimizer)
    if not params:
        return {}
    device = _local(params[0]).device
    multiplier, skip = None, None
    if grad_scale is not None:
        multiplier = torch.reciprocal(grad_scale.to(device=device, dtype=torch.float64)).float().reshape(1)
    if found_inf is not None:
        skip = found_inf.to(device=device, dtype=torch.float32).reshape(1)
    if optimizer.max_grad_norm is not None:
        norm = _global_grad_norm(params, device).reshape(1)
        if multiplier is not None:
            norm = norm * multiplier
        optimizer.last_grad_norm = norm
        coefficient = torch.clamp(optimizer.max_grad_norm / (norm + 1e-6), max=1.0)  # clip_grad_norm_'s
        nonfinite = (~torch.isfinite(norm)).float()
        skip = nonfinite if skip is None else torch.maximum(skip, nonfinite)
        multiplier = coefficient if multiplier is None else multiplier * coefficient
    if skip is not None and device.type == "cpu" and float(skip) != 0.0:
        return None
    return {"grad_multiplier": multiplier, "found_inf": skip}


def _defer_skip(optimizer, scaling):
    """After a CUDA step whose skip flag is on the device: the binding advanced the step counts; the
    flag is copied to the host asynchronously, and _resolve_pending_skip takes them back if it was set."""
    skip = scaling.get("found_inf") if scaling else None
    if skip is None or skip.device.type != "cuda" or optimizer.defaults["capturable"]:
        return
    flag = torch.empty(1, dtype=torch.float32, pin_memory=True)
    flag.copy_(skip, non_blocking=True)
    event = torch.cuda.Event()
    event.record()
    steps = [optimizer.state[p]["step"] for p in _stepped_params(optimizer)]
    optimizer._pending_skip = (flag, event, steps)


def _resolve_pending_skip(optimizer):
    pending = optimizer.__dict__.get("_pending_skip")
    if pending is None:
        return
    optimizer._pending_skip = None
    flag, event, steps = pending
    event.synchronize()  # recorded a whole step ago: normally long done
    if float(flag) != 0.0:
        for step in steps:
            step -= 1


def _wants_master(param, master_weights):
    return master_weights and param.dtype in (torch.bfloat16, torch.float16)


def _state_dtype(param):
    """float32 state, but float64 for a float64 parameter (stepped by torch's math, as torch keeps it)."""
    return torch.float64 if param.dtype == torch.float64 else torch.float32


def _fp32_like(param, value):
    """A float32 tensor (float64 for a float64 param) laid out like param (what the binding requires),
    holding value."""
    out = torch.empty_like(param, dtype=_state_dtype(param), memory_format=torch.preserve_format)
    out.copy_(value)
    return out


def _resync_master(param, master):
    """Replaces the elements of master that do not round to param by param's; True when any did."""
    local_param, local_master = _local(param), _local(master)
    stale = local_master.to(local_param.dtype) != local_param
    if local_param.dtype == torch.bfloat16:  # a master exactly halfway rounds to either neighbour (ours: away from zero)
        bits = local_master.view(torch.int32)
        halfway = (bits & 0xFFFF) == 0x8000
        stale &= ~(halfway & (((bits >> 16) + 1).to(torch.int16) == local_param.view(torch.int16)))
    if not bool(stale.any()):
        return False
    local_master.copy_(torch.where(stale, local_param.to(torch.float32), local_master))
    return True


def _restored_state(optimizer, param, group, saved):
    """The live state of one parameter from its saved tensors (float32 and compact keys), in its group's
    layout: the compact tensors as they are when the layouts match (bit for bit), else converted from
    float32 (bfloat16: round to nearest even; 8-bit: round to nearest; a remainder: the exact split of
    the master)."""
    master_format, moment_format, _ = _layout(group)
    local = _local(param)
    state = {}
    for key in ("exp_avg", "exp_avg_sq"):
        if moment_format != _C.MOMENT_FP32 and all(k in saved for k in _MOMENT_KEYS[moment_format][key]):
            for name in _MOMENT_KEYS[moment_format][key]:
                if name.endswith("_scales"):
                    state[name] = saved[name].to(device=local.device, dtype=torch.float32).contiguous()
                else:
                    state[name] = _laid_like(param, saved[name])
            continue
        if moment_format == _C.MOMENT_FP32 and key in saved:  # as torch keeps it (float64 for float64)
            state[key] = _fp32_like(param, saved[key])
            continue
        value = _fp32_moment(saved, key)
        if value is None:
            continue
        if moment_format == _C.MOMENT_FP32:
            state[key] = _fp32_like(param, value.reshape(local.shape))
        elif moment_format == _C.MOMENT_BF16:
            state[_MOMENT_KEYS[moment_format][key][0]] = _laid_like(param, value.reshape(local.shape).to(torch.bfloat16))
        else:
            codes_name, scales_name = _MOMENT_KEYS[moment_format][key]
            dense = _laid_like(param, value.reshape(local.shape))  # memory order of the parameter
            codes, scales = _C.quantize_moment(_cpu(dense), key == "exp_avg_sq")
            state[codes_name] = _laid_like(param, codes)
            state[scales_name] = scales.to(local.device)
    if master_format == _C.MASTER_REMAINDER and local.dtype == torch.bfloat16 and group["master_weights"]:
        if "master_remainder" in saved:
            state["master_remainder"] = _laid_like(param, saved["master_remainder"])
        elif "master_param" in saved:
            # exact for the parameter the fp32-master path wrote; one rounded by torch (round to
            # nearest even) at an even-tie master (rate ~2^-17) stays, its master one ulp toward zero
            master = _laid_like(param, saved["master_param"].to(torch.float32))
            state["master_remainder"] = _laid_like(param, _C.split_master(_cpu(master), _cpu(param))[1])
    elif "master_param" in saved:
        state["master_param"] = _fp32_like(param, saved["master_param"])
    elif "master_remainder" in saved and local.dtype == torch.bfloat16:
        # a remainder joined with the parameter as it is now (the model's weights loaded before this)
        state["master_param"] = _fp32_like(param, _C.join_master(_cpu(param), _cpu(_laid_like(param, saved["master_remainder"]))))
    return state


def _laid_like(param, value):
    """value (its dtype kept) as a tensor laid out like param, on its device."""
    out = torch.empty_like(param, dtype=value.dtype, memory_format=torch.preserve_format)
    local, value = _local(out), _local(value)  # a DTensor value: its shard, laid out as this rank's
    local.copy_(value if value.shape == local.shape else value.reshape(local.shape))
    return out


def _stash_fp32_state(optimizer, state_dict):
    """Load pre-hook: takes the float32 state out of state_dict, for _restore_fp32_state to put back."""
    stashed, state = {}, {}
    for key, value in state_dict["state"].items():
        if isinstance(value, dict):
            stashed[key] = {k: value[k] for k in _FP32_STATE_KEYS + _LEAN_STATE_KEYS if k in value}
            value = {k: v for k, v in value.items() if k not in _FP32_STATE_KEYS + _LEAN_STATE_KEYS}
        state[key] = value
    saved_ids = [i for group in state_dict["param_groups"] for i in group["params"]]
    # The layout is this optimizer's, not the checkpoint's (a file converts into it): kept per group.
    layouts = [{key: group.get(key) for key in ("master_weights", "moment_dtype", "seed")}
               for group in optimizer.param_groups]
    optimizer._loading = (saved_ids, stashed, layouts)
    return {**state_dict, "state": state}


@torch.no_grad()
def _restore_fp32_state(optimizer):
    """Load post-hook: puts the stashed state back as float32 tensors laid out like their parameters."""
    saved_ids, stashed, layouts = optimizer._loading
    for group, layout in zip(optimizer.param_groups, layouts):
        if "remainder" in (group["master_weights"], layout["master_weights"]):
            group["master_weights"] = layout["master_weights"]
        group["moment_dtype"], group["seed"] = layout["moment_dtype"], layout["seed"]
    params = [(p, group) for group in optimizer.param_groups for p in group["params"]]
    for saved_id, (param, group) in zip(saved_ids, params):
        if saved_id not in stashed:
            continue
        state = optimizer.state[param]
        state.update(_restored_state(optimizer, param, group, stashed[saved_id]))
        if "step" in state:
            state["step"] = _new_step(param, optimizer.defaults["capturable"], float(state["step"]))
        elif any(key in state for key in optimizer._STATE_KEYS):  # lion-pytorch, timm's Lion: no step count
            state["step"] = _new_step(param, optimizer.defaults["capturable"], 0.0)
        # A torch.optim.AdamW checkpoint has no master: the parameter is the best there is.
        remainder = _layout(group)[0] == _C.MASTER_REMAINDER
        if (_wants_master(param, group["master_weights"]) and "master_param" not in state
                and not (remainder and "master_remainder" in state)):
            if remainder and _local(param).dtype == torch.bfloat16:  # 0: the master is the parameter
                state["master_remainder"] = torch.zeros_like(param, dtype=torch.int16, memory_format=torch.preserve_format)
            elif not remainder:
                state["master_param"] = _fp32_like(param, param)
    # capturable is this optimizer's choice, not the checkpoint's (torch.optim.AdamW(capturable=True)
    # saves it True): the step counts were placed above for this optimizer's mode.
    for group in optimizer.param_groups:
        group["capturable"] = optimizer.defaults["capturable"]
    optimizer._capturable_t = None  # the step counts changed: the capturable counter starts from them
    # A loaded master the parameter has moved away from (e.g. carried unchanged through a run of
    # another optimizer) would undo that run at the next step. Checked at that step, not here: the
    # model's own state dict may be loaded after the optimizer's.
    optimizer._verify_masters = True
