"""TorchModel: a PyTorch module as an asynctrain Model, with autograd's gradients.

torch is imported when a TorchModel is built (or unpickled in a worker), never by
``import asynctrain``.
"""

from __future__ import annotations

import contextlib
import copy
import queue
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_int
from asynctrain._exceptions import ConfigError, ConfigTypeError
from asynctrain._types import DEFAULT_DTYPE, Grads, Params
from asynctrain.models import _bridge
from asynctrain.models._common import check_dtype


def _torch() -> Any:
    return _bridge.import_framework("torch", "torch")


class TorchModel(_bridge.Bridge):
    """Train a PyTorch ``nn.Module`` with asynctrain: gradients by autograd, no hand-written
    backward pass, and every guarantee of the numpy models (bit-identical results on
    every backend for a seed and shard count, in sync, local and ssp modes).

    The module is copied at construction and only ever run functionally
    (``torch.func.functional_call``): the parameters are numpy float arrays keyed by their
    ``named_parameters()`` names (``"0.weight"``, ``"fc.bias"``), owned by the trainer, and
    seen by torch through ``torch.from_numpy`` views, without copies. The loss is summed
    over rows, so shards add up (see :class:`Model`).

    ``init`` returns copies of the module's current parameters, so seed torch before
    building the module (``torch.manual_seed(0)``) to fix them; or pass ``reinit=True``
    and ``init(rng)`` re-runs every submodule's ``reset_parameters()`` from a seed drawn
    from ``rng``, so the trainer's seed alone fixes them.

    Dropout layers (``nn.Dropout``, ``Dropout1d/2d/3d``) draw their masks from a generator
    seeded by ``(seed, step, shard)`` of each shard task, so they are reproducible on
    every backend (subclasses too, unless they define a forward of their own);
    evaluation, ``predict`` and :func:`check_gradients` run the module in eval mode,
    without dropout. Other random layers (``AlphaDropout``, ``RReLU``, a dropout subclass
    with its own forward) are refused, and so are BatchNorm running statistics: they
    change in the forward pass, outside the parameters the trainer reduces, so shards
    would disagree. Randomness drawn in ``forward`` itself (``F.dropout``,
    ``torch.rand``) is not seeded per shard.

    Each call runs ``threads`` torch threads (``torch.set_num_threads``, process-wide;
    default 1, like BLAS in asynctrain's workers): workers × threads stay within the
    cores, and the bits never depend on the machine's core count. They do depend on
    ``threads`` itself: torch's kernels (convolutions, some matrix products) split their
    sums by it, so ``threads=2`` gives other last bits than ``threads=1`` (the same on
    every backend and worker count for one ``threads``).

    Args:
        module: an ``nn.Module`` with at least one floating-point parameter.
        loss: ``"cross_entropy"`` (outputs (n, K) scores, int labels), ``"binary_cross_entropy"``
            (one logit per row, labels 0/1), ``"mse"``, ``"huber"`` (delta 1), or a callable
            ``(outputs, y) -> (n,)`` per-sample loss tensor.
        n_classes: for a callable loss, the number of classes (None: regression); for the
            named losses it is read from the outputs (and checked if given).
        input_shape: the shape of one row, e.g. ``(1, 8, 8)``; default: ``(in_features,)``
            of a first ``nn.Linear``.
        device: ``"cpu"`` or ``"cuda:N"`` (the math runs there; parameters and gradients
            cross as numpy arrays).
        dtype: ``np.float32`` (default) or ``np.float64``.
        threads: torch threads per call.
        reinit: ``init(rng)`` re-initialises the parameters from ``rng``.

    Raises:
        ImportError: torch is not installed (``pip install 'asynctrain[torch]'``).
        ConfigError: no parameters, integer parameters, BatchNorm running statistics,
            random layers other than dropout, an
            unknown loss, a loss returning the wrong shape, outputs that do not suit the
            loss, a module that fails on rows of ``input_shape``, or CUDA asked for but
            absent.

    Example:
        >>> import numpy as np, torch
        >>> from asynctrain.models import TorchModel
        >>> _ = torch.manual_seed(0)
        >>> model = TorchModel(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(),
        ...                                        torch.nn.Linear(8, 3)))
        >>> model.n_features, model.n_classes, sorted(model.init(np.random.default_rng(0)))
        (4, 3, ['0.bias', '0.weight', '2.bias', '2.weight'])
    """

    uses_key = True  # the shard task's (seed, step, shard) keys dropout
    supports_sample_weight = True  # loss_and_grad takes sample_weight= (see Model)

    def __init__(
        self,
        module: Any,
        loss: str | Callable[..., Any] = "cross_entropy",
        *,
        n_classes: int | None = None,
        input_shape: tuple[int, ...] | None = None,
        device: str = "cpu",
        dtype: npt.DTypeLike = DEFAULT_DTYPE,
        threads: int = 1,
        reinit: bool = False,
    ) -> None:
        torch = _torch()
        if not isinstance(module, torch.nn.Module):
            raise ConfigTypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.loss = _bridge.check_loss(loss)
        self.dtype = check_dtype(dtype)
        self.device = _check_device(torch, device)
        self.threads = check_int("threads", threads)
        self.reinit = bool(reinit)
        _refuse_running_stats(torch, module)
        _refuse_unkeyed_randomness(module)
        self._names = _parameter_names(torch, module)
        self.input_shape = (
            _bridge.check_input_shape(input_shape)
            if input_shape is not None
            else _infer_input_shape(torch, module)
        )
        self.architecture = _bridge.qualified_name(type(module))
        self._module = _deepcopy(module).to(self.device, _torch_dtype(torch, self.dtype))
        # Layers that draw from torch's global generator inside their forward (attention
        # and RNN dropout): their training forward runs with that generator seeded by the
        # shard's key, one such forward at a time in the process.
        self._global_random = _global_randomness(torch, self._module)
        # Untying shared parameters costs functional_call ~10 us a call: only when needed.
        every = list(module.named_parameters(remove_duplicate=False))
        self._tied = len(every) != len(list(module.named_parameters()))
        self._pools = _pools()
        self._head = self._probe(n_classes)
        self._refuse_changing_buffers(torch)

    # -- the Model protocol --------------------------------------------------------------

    def init(self, rng: np.random.Generator) -> Params:
        """Return copies of the module's parameters in ``dtype`` (``reinit=True``:
        re-initialised from a seed drawn from ``rng``)."""
        module = self._module
        if self.reinit:
            torch = _torch()
            seed = int(rng.integers(2**63))
            module = copy.deepcopy(self._module)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                for sub in module.modules():
                    if callable(getattr(sub, "reset_parameters", None)):
                        sub.reset_parameters()
        found = dict(module.named_parameters())
        return {name: _to_numpy(found[name], self.dtype, copy=True) for name in self._names}

    def loss_and_grad(
        self,
        params: Params,
        X: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        key: tuple[int, int, int] | None = None,
        sample_weight: npt.NDArray[Any] | None = None,
    ) -> tuple[float, Grads]:
        """Return the loss summed over the rows and its gradient, by autograd.

        Args:
            params: arrays keyed like ``init``'s; the computation runs in their dtype.
            X: (n, *input_shape) inputs.
            y: (n,) labels, or (n,) / (n, n_outputs) regression targets.
            key: ``(seed, step, shard)`` of a training shard: the module runs in train
                mode with dropout drawn from that seed. None: eval mode, deterministic.
            sample_weight: (n,) row weights; the loss is ``sum_i w_i * loss_i``.

        Returns:
            ``(loss_sum, grads)``: gradients as numpy arrays keyed like ``params``.
        """
        torch = _torch()
        self._pin_threads(torch)
        dtype = np.dtype(params[self._names[0]].dtype)
        tensors = {name: self._tensor(params[name], dtype).requires_grad_() for name in self._names}
        inputs = self._tensor(np.asarray(X, dtype), dtype)
        with self._borrowed(train=key is not None, dtype=dtype) as (module, generator):
            if key is not None and generator is not None:
                generator.manual_seed(_bridge.shard_seed(key))
            with self._seeded_global_generator(torch, key):
                outputs = torch.func.functional_call(
                    module, tensors, (inputs,), tie_weights=self._tied
                )
        outputs = _one_tensor(torch, outputs)  # some modules return more in train mode only
        weight = None
        if sample_weight is not None:
            weight = self._tensor(np.asarray(sample_weight, dtype).reshape(-1), dtype)
        total = self._losses(torch, outputs, self._targets(torch, y, dtype), weight)
        found = torch.autograd.grad(total, list(tensors.values()), allow_unused=True)
        grads: Grads = {}
        for name, grad in zip(self._names, found, strict=True):
            grads[name] = (
                np.zeros_like(params[name], dtype) if grad is None else _to_numpy(grad, dtype)
            )
        return float(total.detach()), grads

    # -- pickling: the module crosses once per fit (see asynctrain._engine._work) ----

    def __getstate__(self) -> dict[str, Any]:
        _refuse_parametrizations(_torch(), self._module)
        return self._state()

    def __deepcopy__(self, memo: dict[int, Any]) -> TorchModel:
        # A copy is no pickle: torch deep-copies a parametrized module, never pickles one.
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        clone.__setstate__(copy.deepcopy(self._state(), memo))
        return clone

    def _state(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_pools"]  # each process makes its own copies
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        _torch()
        self.__dict__.update(state)
        self._pools = _pools()

    def __repr__(self) -> str:
        loss = self.loss if isinstance(self.loss, str) else _bridge.qualified_name(self.loss)
        return (
            f"TorchModel({self.architecture}, loss={loss!r}, input_shape={self.input_shape}, "
            f"n_classes={self.n_classes}, device={self.device!r}, dtype={self.dtype.name})"
        )

    # -- helpers -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _borrowed(self, *, train: bool, dtype: np.dtype[Any]) -> Iterator[tuple[Any, Any]]:
        """A copy of the module in train or eval mode and in the parameters' ``dtype``
        that no other thread uses meanwhile, with the generator of its keyed dropout (None
        in eval mode or without dropout).

        ``functional_call`` swaps the parameters into the module's attributes for the
        length of the call, and dropout draws from the copy's own generator: neither may
        be shared with a thread computing another shard, so each concurrent call borrows
        its own copy from a pool (as many copies as calls ever ran at once). What it does
        not swap, frozen parameters and buffers, must be in the dtype of those it does
        (float64 params of a float32 model, as :func:`check_gradients` passes, met a
        float32 frozen weight in a matmul), so each dtype has its own copies.
        """
        key = (train, dtype.str)
        pool = self._pools.get(key) or self._pools.setdefault(key, queue.SimpleQueue())
        try:
            borrowed = pool.get_nowait()
        except queue.Empty:
            borrowed = _copy_module(
                _torch(), self._module, train=train, device=self.device, dtype=dtype
            )
        try:
            yield borrowed
        finally:
            pool.put(borrowed)

    @contextlib.contextmanager
    def _seeded_global_generator(
        self, torch: Any, key: tuple[int, int, int] | None
    ) -> Iterator[None]:
        """Seed torch's global generator by ``key`` for a training forward pass of a module
        whose layers draw from it (``nn.MultiheadAttention`` and multi-layer RNNs with
        ``dropout > 0``), and restore it afterwards; nothing otherwise.

        That generator is the process's, so such forward passes run one at a time (the
        backward passes, and every other module's calls, still run concurrently).
        """
        if key is None or not self._global_random:
            yield
            return
        devices = [] if self.device == "cpu" else [torch.device(self.device).index or 0]
        seed = _bridge.shard_seed((*key, 1))  # not the keyed dropout's seed: other masks
        with _holding_global_generator(), torch.random.fork_rng(devices=devices):
            if self.device == "cpu":
                torch.default_generator.manual_seed(seed)
            else:
                torch.cuda.default_generators[devices[0]].manual_seed(seed)
            yield

    def _refuse_changing_buffers(self, torch: Any) -> None:
        """Run one training forward pass on a copy and refuse the module if a buffer
        changed: state updated in the forward pass (spectral norm's power iteration,
        running statistics of a layer of one's own) lives outside the parameters the
        trainer reduces in shard order, and each pooled copy would evolve its own, so
        results would depend on the backend, the workers and the thread that ran a shard.
        """
        before = {name: value.detach().clone() for name, value in self._module.named_buffers()}
        if not before:
            return
        module, generator = _copy_module(
            torch, self._module, train=True, device=self.device, dtype=self.dtype
        )
        if generator is not None:
            generator.manual_seed(0)
        rows = np.random.default_rng(0).standard_normal((_bridge.PROBE_ROWS, *self.input_shape))
        try:
            with torch.no_grad(), self._seeded_global_generator(torch, (0, 0, 0)):
                module(self._tensor(rows, self.dtype))
        except Exception:  # reported by its own message at the first step
            return
        after = dict(module.named_buffers())
        for name, value in before.items():
            now = after.get(name)
            if now is None or not _same_values(torch, now, value):
                raise ConfigError(
                    f"buffer {name!r} of {type(self._module).__name__} changes in the forward "
                    "pass in training mode (spectral_norm's power iteration, running "
                    "statistics kept in a buffer): that state lives outside the parameters "
                    "asynctrain reduces in shard order, so shards, backends and worker counts "
                    "would disagree; use a layer without such state (e.g. "
                    "torch.nn.utils.parametrizations.weight_norm instead of spectral_norm)"
                )

    def _pin_threads(self, torch: Any) -> None:
        if torch.get_num_threads() != self.threads:
            torch.set_num_threads(self.threads)

    def _tensor(self, array: npt.NDArray[Any], dtype: np.dtype[Any]) -> Any:
        """A tensor viewing ``array`` in ``dtype`` (on ``device``); a copy only where
        torch cannot view it: a reversed view (``X[::-1]``, ``np.flip``) has negative
        strides, which ``torch.from_numpy`` refuses."""
        torch = _torch()
        values = np.asarray(array, dtype)
        if any(stride < 0 for stride in values.strides):
            values = values.copy()
        tensor = torch.from_numpy(_bridge.writable(values))
        return tensor if self.device == "cpu" else tensor.to(self.device)

    def _targets(self, torch: Any, y: npt.NDArray[Any], dtype: np.dtype[Any]) -> Any:
        labels = self._head.n_classes is not None
        values = np.asarray(y, np.int64 if labels else dtype)
        return self._tensor(values, values.dtype)

    def _losses(self, torch: Any, outputs: Any, targets: Any, weight: Any = None) -> Any:
        """The loss summed over the rows (a 0-d tensor), each row's times its ``weight``."""
        if weight is not None:
            return (self._per_row(torch, outputs, targets) * weight).sum()
        rows = outputs.shape[0]
        F = torch.nn.functional
        if callable(self.loss):
            losses = self.loss(outputs, targets)
            _bridge.check_loss_shape(tuple(losses.shape), rows)
            return losses.sum()
        if self.loss == "cross_entropy":
            return F.cross_entropy(outputs, targets, reduction="sum")
        if self.loss == "binary_cross_entropy":
            logits = outputs.reshape(rows)
            return F.binary_cross_entropy_with_logits(
                logits, targets.to(logits.dtype), reduction="sum"
            )
        targets = targets.reshape(outputs.shape)
        if self.loss == "mse":
            return ((outputs - targets) ** 2).sum()
        return F.huber_loss(outputs, targets, reduction="sum")

    def _per_row(self, torch: Any, outputs: Any, targets: Any) -> Any:
        """Each row's loss, shape (n,): what ``_losses`` sums when rows are weighted."""
        rows = outputs.shape[0]
        F = torch.nn.functional
        if callable(self.loss):
            losses = self.loss(outputs, targets)
            _bridge.check_loss_shape(tuple(losses.shape), rows)
            return losses
        if self.loss == "cross_entropy":
            return F.cross_entropy(outputs, targets, reduction="none")
        if self.loss == "binary_cross_entropy":
            logits = outputs.reshape(rows)
            return F.binary_cross_entropy_with_logits(
                logits, targets.to(logits.dtype), reduction="none"
            )
        targets = targets.reshape(outputs.shape)
        if self.loss == "mse":
            per_value = (outputs - targets) ** 2
        else:
            per_value = F.huber_loss(outputs, targets, reduction="none")
        return per_value.reshape(rows, -1).sum(dim=1)

    def _outputs(self, params: Params, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        torch = _torch()
        self._pin_threads(torch)
        dtype = np.dtype(params[self._names[0]].dtype)
        tensors = {name: self._tensor(params[name], dtype) for name in self._names}
        with torch.no_grad(), self._borrowed(train=False, dtype=dtype) as (module, _):
            inputs = self._tensor(X, dtype)
            outputs = torch.func.functional_call(module, tensors, (inputs,), tie_weights=self._tied)
        return _to_numpy(_one_tensor(torch, outputs), dtype, copy=True)

    def _probe(self, n_classes: int | None) -> _bridge.Head:
        """Run rows of zeros through the module: its outputs tell the classes and check
        that it takes rows of ``input_shape``; a callable loss is checked on them."""
        torch = _torch()
        rows = _bridge.PROBE_ROWS
        zeros = np.zeros((rows, *self.input_shape), self.dtype)
        found = dict(self._module.named_parameters())
        params = {name: _to_numpy(found[name], self.dtype, copy=True) for name in self._names}
        try:
            outputs = self._outputs(params, zeros)
        except ConfigError:  # it ran, but gave no single tensor
            raise
        except Exception as exc:
            raise ConfigError(
                f"the module fails on rows of shape {self.input_shape} ({type(exc).__name__}: "
                f"{exc}); pass the shape of one row as input_shape=..."
            ) from exc
        head = _bridge.head_of(self.loss, outputs.shape, n_classes)
        if callable(self.loss):
            targets = _bridge.probe_targets(head, rows, self.dtype)
            with torch.no_grad():
                losses = self.loss(torch.from_numpy(outputs), torch.from_numpy(targets))
            if not hasattr(losses, "shape"):
                raise ConfigError(
                    f"the loss function returned {type(losses).__name__}, not a tensor of "
                    f"per-sample losses of shape ({rows},)"
                )
            _bridge.check_loss_shape(tuple(losses.shape), rows)
        return head


def _one_tensor(torch: Any, outputs: Any) -> Any:
    """``outputs`` if the module returned one tensor; else a ConfigError saying how to
    wrap a module that returns a tuple or dict (auxiliary outputs, a model output object)."""
    if not isinstance(outputs, torch.Tensor):
        raise ConfigError(
            f"the module must return one tensor of outputs, got {type(outputs).__name__}; "
            "wrap it in a module whose forward returns only the outputs the loss takes "
            "(e.g. module(x)[0] or module(x)['logits'])"
        )
    return outputs


_GLOBAL_GENERATOR: queue.SimpleQueue[None] = queue.SimpleQueue()
"""One token, held by a training forward pass that seeds torch's global generator (see
``TorchModel._seeded_global_generator``): a lock made of a queue, as the numpy layers
import no concurrency module (tests/test_layering.py)."""
_GLOBAL_GENERATOR.put(None)


@contextlib.contextmanager
def _holding_global_generator() -> Iterator[None]:
    _GLOBAL_GENERATOR.get()
    try:
        yield
    finally:
        _GLOBAL_GENERATOR.put(None)


def _global_randomness(torch: Any, module: Any) -> tuple[str, ...]:
    """Names of the submodules that draw from torch's global generator in training mode,
    where keyed dropout cannot replace them: ``nn.MultiheadAttention`` (inside
    ``nn.Transformer*`` layers too) and ``nn.RNN/LSTM/GRU`` with ``dropout > 0``."""
    nn = torch.nn

    def draws(sub: Any) -> bool:
        if isinstance(sub, nn.MultiheadAttention):
            return bool(sub.dropout > 0)
        return isinstance(sub, nn.RNNBase) and sub.dropout > 0 and sub.num_layers > 1

    return tuple(name for name, sub in module.named_modules() if draws(sub))


def _same_values(torch: Any, a: Any, b: Any) -> bool:
    """Whether two tensors hold the same values, NaN equal to NaN (a buffer of NaNs that
    the forward pass leaves alone has not changed)."""
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if torch.equal(a, b):
        return True
    return bool(
        a.is_floating_point()
        and torch.equal(a.isnan(), b.isnan())
        and torch.equal(a.nan_to_num(0.0, 0.0, 0.0), b.nan_to_num(0.0, 0.0, 0.0))
    )


def _deepcopy(module: Any) -> Any:
    """A deep copy of ``module``; a ConfigError naming the cause if torch cannot copy it."""
    try:
        return copy.deepcopy(module)
    except RuntimeError as exc:
        raise ConfigError(
            f"module {type(module).__name__} cannot be copied ({str(exc)[:200]}); a module "
            "made with the deprecated torch.nn.utils.weight_norm cannot be: use "
            "torch.nn.utils.parametrizations.weight_norm"
        ) from exc


def _refuse_parametrizations(torch: Any, module: Any) -> None:
    """ConfigTypeError naming the parametrized tensors of ``module``, if it has any: torch
    refuses to pickle such a module (only its ``state_dict``), so it cannot reach a worker
    process or a Dask worker, and torch's own message points nowhere useful."""
    is_parametrized = torch.nn.utils.parametrize.is_parametrized
    names = [
        f"{prefix}.{name}" if prefix else name
        for prefix, sub in module.named_modules()
        if is_parametrized(sub)
        for name in sub.parametrizations
    ]
    if names:
        raise ConfigTypeError(
            f"module {type(module).__name__} has parametrized tensors ({', '.join(names)}: "
            "torch.nn.utils.parametrizations.weight_norm, say), and torch cannot pickle a "
            "parametrized module, so the process and Dask backends cannot send it to "
            "their workers; train it with backend='thread', or remove the parametrization "
            "before building the TorchModel: "
            "torch.nn.utils.parametrize.remove_parametrizations(layer, 'weight') keeps "
            "the current weight as a plain parameter"
        )


def _pools() -> dict[tuple[bool, str], queue.SimpleQueue[tuple[Any, Any]]]:
    """Idle module copies by (train mode, dtype), filled as calls need them."""
    return {}


def _copy_module(
    torch: Any, module: Any, *, train: bool, device: str, dtype: np.dtype[Any]
) -> tuple[Any, Any]:
    """A deep copy of ``module`` in train or eval mode and in ``dtype``; in train mode
    its dropout layers draw from a generator of their own (returned with it, None if it
    has none)."""
    copied = copy.deepcopy(module).train(train).to(dtype=_torch_dtype(torch, dtype))
    if not train:
        return copied, None
    generator = torch.Generator(device=device)
    keyed = _keyed_dropout_class(torch)
    found = False
    for _, parent in list(copied.named_modules()):
        for name, child in list(parent.named_children()):
            channels = _keyed_channels(torch, child)
            if channels is not None:
                setattr(parent, name, keyed(child, generator, channels))
                found = True
    return copied, generator if found else None


_KEYED_CLASS: list[Any] = []


def _keyed_dropout_class(torch: Any) -> Any:
    """``KeyedDropout``: nn.Dropout/Dropout1d/2d/3d drawing its mask from a given
    generator (built once per process, when torch is loaded)."""
    if _KEYED_CLASS:
        return _KEYED_CLASS[0]

    class KeyedDropout(torch.nn.Module):  # type: ignore[misc]
        def __init__(self, original: Any, generator: Any, channels: bool) -> None:
            super().__init__()
            self.p, self.generator = float(original.p), generator
            self.channels = channels  # Dropout1d/2d/3d drop whole channels

        def forward(self, x: Any) -> Any:
            if not self.training or self.p == 0.0:
                return x
            if self.p == 1.0:
                return x * 0.0
            shape = (*x.shape[:2], *([1] * (x.dim() - 2))) if self.channels else x.shape
            keep = torch.empty(shape, dtype=x.dtype, device=x.device)
            keep.bernoulli_(1.0 - self.p, generator=self.generator)
            return x * keep / (1.0 - self.p)

    _KEYED_CLASS.append(KeyedDropout)
    return KeyedDropout


def _keyed_channels(torch: Any, sub: Any) -> bool | None:
    """For a dropout layer keyed dropout replaces, whether it drops whole channels
    (Dropout1d/2d/3d) or single values (Dropout); None for any other module.

    Replaced are torch's nn.Dropout, Dropout1d/2d/3d and their subclasses that keep
    torch's forward pass (told by the forward, not the class name: a subclass called
    otherwise is replaced too, and a class of one's own called "Dropout" is not).
    """
    nn = torch.nn
    forward = getattr(type(sub), "forward", None)
    if forward is nn.Dropout.forward:
        return False
    if forward in (nn.Dropout1d.forward, nn.Dropout2d.forward, nn.Dropout3d.forward):
        return True
    return None


def _refuse_unkeyed_randomness(module: Any) -> None:
    """Refuse random layers keyed dropout cannot replace: AlphaDropout,
    FeatureAlphaDropout, RReLU, and dropout subclasses with a forward pass of their own
    (which draw from torch's global generator, so shards and backends would disagree)."""
    torch = _torch()
    random = (torch.nn.modules.dropout._DropoutNd, torch.nn.RReLU)
    for name, sub in module.named_modules():
        if isinstance(sub, random) and _keyed_channels(torch, sub) is None:
            raise ConfigError(
                f"module {name!r} ({type(sub).__name__}) draws random numbers asynctrain "
                "cannot seed per shard yet, so runs would not be reproducible; use "
                "nn.Dropout (or Dropout1d/2d/3d, or a subclass that keeps their forward), "
                "which asynctrain seeds by (seed, step, shard)"
            )


def _check_device(torch: Any, device: object) -> str:
    if not isinstance(device, str):
        raise ConfigTypeError(f"device must be a string such as 'cpu' or 'cuda:0', got {device!r}")
    if device == "cpu":
        return device
    try:
        parsed = torch.device(device)
    except RuntimeError as exc:
        raise ConfigError(f"device {device!r} is not a device: use 'cpu' or 'cuda:N'") from exc
    if parsed.type != "cuda":
        raise ConfigError(f"device {device!r} is not supported; use 'cpu' or 'cuda:N'")
    available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = parsed.index or 0
    if index >= available:
        raise ConfigError(
            f"device {device!r} asks for CUDA device {index}, but this machine has "
            f"{available} CUDA device(s) usable by torch; use device='cpu'"
        )
    return f"cuda:{index}"


def _refuse_running_stats(torch: Any, module: Any) -> None:
    norm = torch.nn.modules.batchnorm._NormBase
    for name, sub in module.named_modules():
        if isinstance(sub, norm) and sub.track_running_stats:
            where = f"{name!r} ({type(sub).__name__})" if name else type(sub).__name__
            raise ConfigError(
                f"module {where} keeps running statistics, which change in the forward pass "
                "outside the parameters asynctrain reduces, so shards would disagree; use "
                "nn.GroupNorm or nn.LayerNorm instead (or track_running_stats=False)"
            )


def _parameter_names(torch: Any, module: Any) -> tuple[str, ...]:
    names = []
    for name, parameter in module.named_parameters():
        if isinstance(parameter, torch.nn.parameter.UninitializedParameter):
            raise ConfigError(
                f"parameter {name!r} is not initialised yet (a lazy module, such as "
                "nn.LazyLinear): run the module once on a batch, e.g. "
                "module(torch.zeros(1, *input_shape)), before building the TorchModel"
            )
        if not parameter.is_floating_point():
            raise ConfigError(
                f"parameter {name!r} has dtype {parameter.dtype}; asynctrain trains floating "
                "point parameters only: register it as a buffer instead"
            )
        if parameter.requires_grad:
            names.append(name)
    if not names:
        raise ConfigError(
            f"module {type(module).__name__} has no trainable parameters (requires_grad); "
            "there is nothing to train"
        )
    return tuple(names)


def _infer_input_shape(torch: Any, module: Any) -> tuple[int, ...]:
    leaves = [sub for sub in module.modules() if not list(sub.children())]
    if leaves and isinstance(leaves[0], torch.nn.Linear):
        return (int(leaves[0].in_features),)
    raise ConfigError(
        f"cannot tell the shape of one input row of {type(module).__name__}: pass "
        "input_shape=..., e.g. input_shape=(1, 8, 8) for 8x8 single-channel images"
    )


def _torch_dtype(torch: Any, dtype: np.dtype[Any]) -> Any:
    return torch.float64 if dtype == np.float64 else torch.float32


def _to_numpy(tensor: Any, dtype: np.dtype[Any], *, copy: bool = False) -> npt.NDArray[Any]:
    array = np.asarray(tensor.detach().cpu().numpy(), dtype)
    return array.copy() if copy else array
