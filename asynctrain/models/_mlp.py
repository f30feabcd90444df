"""A fully connected network with relu or tanh hidden layers, for classes or values."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from asynctrain._checks import check_choice, check_float
from asynctrain._exceptions import ConfigError
from asynctrain._types import DEFAULT_DTYPE, Grads, Params
from asynctrain.models._common import (
    add_l2_,
    argmax_rows,
    as_input,
    as_weights,
    check_dtype,
    l2_penalty,
    matmul_into,
    set_fields,
    softmax_,
    softmax_xent_,
    squared_error_,
    t_product,
)
from asynctrain.models._layers import (
    activate_,
    activation_grad_,
    check_sizes,
    init_uniform,
    init_weight,
    layer_keys,
    weight_keys,
)
from asynctrain.models._scratch import Workspace, borrowed

_ACTIVATIONS = ("relu", "tanh")
_INITIALIZERS = ("auto", "uniform")
_TASKS = ("classification", "regression")
# Blocks bound the scratch memory a call holds (a layer's block is at most this big), not
# its speed. Smaller blocks (a few hundred rows, to stay in L2 and on OpenBLAS's small-
# matrix kernel) made one thread's shard a few per cent faster, but a shard then makes
# many more short numpy calls, and threads that share the GIL wait on each other at each
# one: a 2-worker MLP epoch at batch 4096 took 15 % longer with 352-row blocks than with
# one block per 2,048-row shard (interleaved, load average 1). For the same reason each
# layer's product is one call: with numpy 2.4.6 (OpenBLAS 0.3.31) the thin products into
# and out of the 10 classes run no faster in row slices within OpenBLAS's small-matrix
# size than whole (see docs/benchmarks.md).
_BLOCK_BYTES = 2**23
_MIN_BLOCK_ROWS = 64


def _product_into(
    total: npt.NDArray[Any], a: Any, delta: npt.NDArray[Any], work: Workspace, *, add: bool
) -> None:
    """``total = a.T @ delta``, or ``total += a.T @ delta`` if ``add`` (a weight's
    gradient; ``a`` may be CSR)."""
    if not isinstance(a, np.ndarray):
        product = t_product(a, delta)
    elif add:
        product = np.matmul(a.T, delta, out=work.array("dw", total.shape, total.dtype))
    else:
        np.matmul(a.T, delta, out=total)
        return
    if add:
        total += product
    else:
        np.copyto(total, product)


def _even_rows(n: int, most: int) -> int:
    """Rows per block that split ``n`` rows into as few blocks of at most ``most`` rows
    (a multiple of 32) as possible, as evenly as multiples of 32 allow."""
    blocks = max(1, _ceil_div(n, most))
    return max(32, _ceil_div(_ceil_div(n, blocks), 32) * 32)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True, init=False)
class MLP:
    """A multi-layer perceptron: dense layers with relu or tanh between them.

    ``sizes=(128, 256, 10)`` is 128 inputs, one hidden layer of 256 and 10 outputs.
    For ``task="classification"`` the output is a softmax over ``sizes[-1]`` classes
    with cross-entropy loss (labels int64); for ``task="regression"`` it is linear with
    squared error, and ``y`` is (n,) when ``sizes[-1] == 1``, else (n, sizes[-1]).
    Params are ``W0, b0, W1, b1, ...`` (``Wi`` is (sizes[i], sizes[i+1])); L2 applies to
    every ``Wi`` as described in :class:`Model`.

    Args:
        sizes: layer widths, input first, output last; at least two entries.
        activation: ``"relu"`` or ``"tanh"``.
        initializer: how ``init`` draws the parameters. ``"auto"``: He-normal weights for
            relu, Glorot-uniform for tanh, zero biases. ``"uniform"``: weights and biases
            of a layer with ``fan_in`` inputs from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the
            default of PyTorch's ``nn.Linear`` (see docs/benchmarks.md for what it changed
            on the reference ``"mlp"`` problem).
        task: ``"classification"`` (needs ``sizes[-1] >= 2``) or ``"regression"``.
        l2: L2 penalty strength on the weights, a finite number >= 0.
        dtype: compute dtype, ``np.float32`` (default) or ``np.float64``.

    Raises:
        ConfigTypeError: ``sizes`` is not a sequence of ints, or a value has the wrong type.
        ConfigError: a value is out of range or not one of the choices.

    Example:
        >>> import numpy as np
        >>> model = MLP((4, 8, 3))
        >>> params = model.init(np.random.default_rng(0))
        >>> [(k, v.shape) for k, v in params.items()]
        [('W0', (4, 8)), ('b0', (8,)), ('W1', (8, 3)), ('b1', (3,))]
    """

    accepts_sparse: ClassVar[bool] = True
    """``X`` may be a scipy.sparse CSR matrix: the first layer's products ``X @ W0`` and
    ``X.T @ delta`` are sparse; every later layer is dense."""

    sizes: tuple[int, ...]
    activation: str
    initializer: str
    task: str
    l2: float
    dtype: np.dtype[Any]

    supports_sample_weight = True  # loss_and_grad takes sample_weight= (see Model)

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        activation: str = "relu",
        initializer: str = "auto",
        task: str = "classification",
        l2: float = 0.0,
        dtype: npt.DTypeLike = DEFAULT_DTYPE,
    ) -> None:
        checked = check_sizes(sizes)
        task = check_choice("task", task, _TASKS)
        if task == "classification" and checked[-1] < 2:
            raise ConfigError(
                f"task='classification' needs at least 2 outputs, got sizes={checked!r}; "
                "use task='regression' for one output"
            )
        set_fields(
            self,
            sizes=checked,
            activation=check_choice("activation", activation, _ACTIVATIONS),
            initializer=check_choice("initializer", initializer, _INITIALIZERS),
            task=task,
            l2=check_float("l2", l2),
            dtype=check_dtype(dtype),
        )

    @property
    def n_features(self) -> int:
        """Number of inputs: ``sizes[0]``."""
        return self.sizes[0]

    @property
    def n_classes(self) -> int | None:
        """``sizes[-1]`` for classification, ``None`` for regression."""
        return self.sizes[-1] if self.task == "classification" else None

    @property
    def n_outputs(self) -> int:
        """Number of output units: ``sizes[-1]``."""
        return self.sizes[-1]

    def init(self, rng: np.random.Generator) -> Params:
        """Return random parameters in ``dtype``, drawn as ``initializer`` says.

        Args:
            rng: the source of the weights; the same seed gives the same parameters.
        """
        params: Params = {}
        keys = layer_keys(len(self.sizes) - 1)
        for (w_key, b_key), fan_in, fan_out in zip(keys, self.sizes, self.sizes[1:], strict=False):
            if self.initializer == "uniform":
                limit = 1.0 / math.sqrt(fan_in)
                params[w_key] = init_uniform(rng, (fan_in, fan_out), limit, self.dtype)
                params[b_key] = init_uniform(rng, (fan_out,), limit, self.dtype)
                continue
            params[w_key] = init_weight(rng, (fan_in, fan_out), self.activation, self.dtype)
            params[b_key] = np.zeros(fan_out, self.dtype)
        return params

    def _block_rows(self, n: int) -> int:
        """Rows computed together out of ``n``: at most as many as keep the widest
        layer's block within ``_BLOCK_BYTES`` (8,192 rows of the reference MLP's 256
        float32 units, so a shard is usually one block), as even a split as multiples of
        32 rows allow (no thin last block)."""
        most = _BLOCK_BYTES // (max(self.sizes[1:]) * self.dtype.itemsize)
        return _even_rows(n, max(_MIN_BLOCK_ROWS, most // 32 * 32))

    def _forward_into(
        self, params: Params, X: npt.NDArray[Any], work: Workspace
    ) -> list[npt.NDArray[Any]]:
        """Return ``[X, h1, ..., output]``: every layer's input, then the raw output, each
        layer's output in scratch memory of ``work``."""
        outputs = [X]
        keys = layer_keys(len(self.sizes) - 1)
        for i, (w_key, b_key) in enumerate(keys, start=1):
            kind = np.promote_types(outputs[-1].dtype, params[w_key].dtype)  # as ``@`` would
            z = work.array(f"z{i}", (X.shape[0], self.sizes[i]), kind)
            matmul_into(outputs[-1], params[w_key], z)
            z += params[b_key]
            if i < len(keys):
                activate_(z, self.activation, work)
            outputs.append(z)
        return outputs

    def _backward_into(
        self,
        params: Params,
        outputs: list[npt.NDArray[Any]],
        delta: npt.NDArray[Any],
        sums: Grads,
        work: Workspace,
        *,
        add: bool,
    ) -> None:
        """Back-propagate ``delta = d loss / d output`` through every layer, writing each
        parameter's gradient to ``sums`` (adding it, with ``add``)."""
        keys = layer_keys(len(self.sizes) - 1)
        ones = work.filled(1.0, (delta.shape[0],), delta.dtype)
        for i in range(len(keys) - 1, -1, -1):
            w_key, b_key = keys[i]
            _product_into(sums[w_key], outputs[i], delta, work, add=add)
            if add:
                sums[b_key] += np.matmul(
                    ones, delta, out=work.array("db", sums[b_key].shape, delta.dtype)
                )
            else:
                np.matmul(ones, delta, out=sums[b_key])
            if i:
                below = work.array(f"d{i}", outputs[i].shape, delta.dtype)
                np.matmul(delta, params[w_key].T, out=below)
                activation_grad_(below, outputs[i], self.activation, work)
                delta = below

    def _add_block(
        self,
        params: Params,
        X: npt.NDArray[Any],
        y: npt.NDArray[Any],
        weight: npt.NDArray[Any] | None,
        sums: Grads,
        work: Workspace,
        *,
        add: bool,
    ) -> float:
        """Write the gradient of one block of rows to ``sums`` (add it, with ``add``);
        return the block's summed loss."""
        outputs = self._forward_into(params, X, work)
        delta = outputs[-1]
        loss = self._loss_(delta, y, weight)
        self._backward_into(params, outputs, delta, sums, work, add=add)
        return loss

    def loss_and_grad(
        self,
        params: Params,
        X: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        sample_weight: npt.NDArray[Any] | None = None,
    ) -> tuple[float, Grads]:
        """Return the summed loss and its gradient (see :class:`Model`).

        The rows go through the network in blocks of bounded size (one block for a
        shard of up to thousands of rows, see :meth:`_block_rows`), in scratch memory
        reused from call to call (:mod:`._scratch`): a call allocates little more than
        the gradients it returns.

        Args:
            params: ``W0, b0, W1, b1, ...`` as returned by ``init``.
            X: (n, sizes[0]) inputs.
            y: (n,) int64 labels (classification); (n,) or (n, sizes[-1]) floats
                (regression).
            sample_weight: (n,) row weights; the loss is ``sum_i w_i * loss_i``.

        Returns:
            ``(loss_sum, grads)`` with the keys of ``params``.
        """
        X, labels = as_input(X, self.dtype), np.asarray(y)
        weight = None if sample_weight is None else as_weights(sample_weight, self.dtype)
        n, step = X.shape[0], self._block_rows(X.shape[0])
        # float64 params compute in float64, as ``@`` would; the first block writes the
        # sums, later ones add to them (no rows: zero gradients)
        empty = np.empty if n else np.zeros
        sums = {k: empty(v.shape, np.promote_types(self.dtype, v.dtype)) for k, v in params.items()}
        loss = 0.0
        with borrowed() as work:
            for start in range(0, n, step):
                rows = slice(start, start + step)
                part = None if weight is None else weight[rows]
                block = X[rows], labels[rows], part
                loss += self._add_block(params, *block, sums, work, add=start > 0)
        loss += add_l2_(sums, params, weight_keys(len(self.sizes) - 1), self.l2, n, weight)
        return loss, sums

    def predict(self, params: Params, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Return int64 labels (argmax of the outputs) or regression values in ``dtype``.

        Regression values are (n,) when ``sizes[-1] == 1``, else (n, sizes[-1]). The rows
        go through the network in the blocks and scratch memory of :meth:`loss_and_grad`.

        Example:
            >>> import numpy as np
            >>> model = MLP((3, 5, 1), task="regression")
            >>> model.predict(model.init(np.random.default_rng(0)), np.ones((4, 3))).shape
            (4,)
        """
        X = as_input(X, self.dtype)
        predicted = self._predictions(params, X.shape[0])
        with borrowed() as work:
            for rows, output in self._outputs(params, X, work):
                self._predict_into(predicted, rows, output)
        return predicted

    def loss_and_predict(
        self,
        params: Params,
        X: npt.NDArray[Any],
        y: npt.NDArray[Any],
        *,
        sample_weight: npt.NDArray[Any] | None = None,
    ) -> tuple[float, npt.NDArray[Any]]:
        """Return the summed loss of :meth:`loss_and_grad` (the same bits) and
        :meth:`predict`'s predictions, from one forward pass and no gradient: what
        validation and ``Trainer.evaluate`` need, in about a third of the time.

        Example:
            >>> import numpy as np
            >>> model = MLP((3, 5, 2))
            >>> params = model.init(np.random.default_rng(0))
            >>> X, y = np.ones((4, 3)), np.arange(4) % 2
            >>> loss, labels = model.loss_and_predict(params, X, y)
            >>> loss == model.loss_and_grad(params, X, y)[0]
            True
            >>> labels.tolist() == model.predict(params, X).tolist()
            True
        """
        X, labels = as_input(X, self.dtype), np.asarray(y)
        weight = None if sample_weight is None else as_weights(sample_weight, self.dtype)
        predicted, loss = self._predictions(params, X.shape[0]), 0.0
        with borrowed() as work:
            for rows, output in self._outputs(params, X, work):
                self._predict_into(predicted, rows, output)
                loss += self._loss_(output, labels[rows], None if weight is None else weight[rows])
        keys = weight_keys(len(self.sizes) - 1)
        return loss + l2_penalty(params, keys, self.l2, X.shape[0], weight), predicted

    def _outputs(
        self, params: Params, X: npt.NDArray[Any], work: Workspace
    ) -> Iterator[tuple[slice, npt.NDArray[Any]]]:
        """Each block of rows of :meth:`loss_and_grad` and its raw output (in ``work``'s
        scratch memory, overwritten by the next block's)."""
        step = self._block_rows(X.shape[0])
        for start in range(0, X.shape[0], step):
            rows = slice(start, start + step)
            yield rows, self._forward_into(params, X[rows], work)[-1]

    def _loss_(
        self, output: npt.NDArray[Any], y: npt.NDArray[Any], weight: npt.NDArray[Any] | None
    ) -> float:
        """The summed loss of a block's raw ``output`` (turned into its delta in place)."""
        if self.task == "classification":
            return softmax_xent_(output, y, weight)
        return squared_error_(output, y, weight)

    def _predictions(self, params: Params, n: int) -> npt.NDArray[Any]:
        """An empty array for :meth:`predict`'s answer on ``n`` rows."""
        if self.task == "classification":
            return np.empty(n, np.int64)
        shape = (n,) if self.sizes[-1] == 1 else (n, self.sizes[-1])
        return np.empty(shape, self._output_kind(params))

    def _output_kind(self, params: Params) -> np.dtype[Any]:
        """The dtype of the raw output: ``dtype``, or float64 for float64 weights."""
        return np.result_type(self.dtype, params[layer_keys(len(self.sizes) - 1)[-1][0]])

    def _predict_into(
        self, predicted: npt.NDArray[Any], rows: slice, output: npt.NDArray[Any]
    ) -> None:
        if self.task == "classification":
            predicted[rows] = argmax_rows(output)
        else:
            predicted[rows] = output[:, 0] if self.sizes[-1] == 1 else output

    def predict_proba(self, params: Params, X: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Return (n, n_classes) softmax probabilities in ``dtype``; rows sum to 1.

        The rows go through the network in the blocks and scratch memory of
        :meth:`predict` (the same bits as one pass over all rows).

        Raises:
            ConfigError: the model was built with ``task="regression"``.

        Example:
            >>> import numpy as np
            >>> model = MLP((3, 5, 2), activation="tanh")
            >>> model.predict_proba(model.init(np.random.default_rng(0)), np.ones((4, 3))).shape
            (4, 2)
        """
        if self.task != "classification":
            raise ConfigError(
                "predict_proba needs an MLP with task='classification'; this one has "
                "task='regression' (use predict)"
            )
        X = as_input(X, self.dtype)
        proba = np.empty((X.shape[0], self.sizes[-1]), self._output_kind(params))
        with borrowed() as work:
            for rows, output in self._outputs(params, X, work):
                softmax_(output)  # row by row: a block's rows get the whole pass's bits
                proba[rows] = output
        return proba
