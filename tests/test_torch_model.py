"""TorchModel: gradients against the numpy models and finite differences, bit-identity on
every backend, worker count and deterministic mode, keyed dropout, one module crossing
per fit, crash recovery, checkpoints, and bad input refused before any work."""

from __future__ import annotations

import copy
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest

import asynctrain as at
from asynctrain._engine import _work as _shipping
from asynctrain.backends import ProcessBackend
from asynctrain.data import Dataset
from asynctrain.models import (
    MLP,
    LogisticRegression,
    SoftmaxRegression,
    TorchModel,
    check_gradients,
)

torch = pytest.importorskip("torch")
nn = torch.nn

MODES = [("sync", {}), ("local", {"local_steps": 2}), ("ssp", {"staleness": 2})]


# -- modules (module level, so worker processes can unpickle them) --------------------------


class SmallCNN(nn.Module):  # type: ignore[misc]
    """Conv -> GroupNorm -> relu -> dropout -> linear, on (1, 8, 8) images."""

    def __init__(self, dropout: float = 0.25) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4)
        self.drop = nn.Dropout(dropout)
        self.fc = nn.Linear(4 * 4 * 4, 3)

    def forward(self, x: Any) -> Any:
        h = torch.relu(self.norm(self.conv(x)))
        h = torch.nn.functional.max_pool2d(h, 2)
        return self.fc(self.drop(h.flatten(1)))


class AttentionNet(nn.Module):  # type: ignore[misc]
    """A transformer encoder layer (attention dropout inside nn.MultiheadAttention, drawn
    from torch's generator) on rows of 3 tokens of 4 values."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.TransformerEncoderLayer(4, 2, 8, dropout=0.5, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: Any) -> Any:
        return self.fc(self.encoder(x).flatten(1))


class StackedLSTM(nn.Module):  # type: ignore[misc]
    """A two-layer LSTM whose dropout between layers draws from torch's generator."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(4, 4, num_layers=2, dropout=0.5, batch_first=True)
        self.fc = nn.Linear(12, 3)

    def forward(self, x: Any) -> Any:
        return self.fc(self.rnn(x)[0].flatten(1))


class GradModeProbe(nn.Module):  # type: ignore[misc]
    """Records whether autograd was on in each forward pass."""

    seen: ClassVar[list[bool]] = []

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Any) -> Any:
        GradModeProbe.seen.append(torch.is_grad_enabled())
        return self.fc(x)


class KillOnce(TorchModel):
    """A TorchModel that SIGKILLs its worker on its ``at_call``-th shard, once per run."""

    def __init__(self, module: Any, marker: str, at_call: int, **options: Any) -> None:
        super().__init__(module, **options)
        self.marker, self.at_call, self.calls = marker, at_call, 0

    def loss_and_grad(self, params: Any, X: Any, y: Any, *, key: Any = None) -> Any:
        if key is not None and key[1] * 4 + key[2] == self.at_call:
            try:
                os.close(os.open(self.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                pass
            else:
                os.kill(os.getpid(), signal.SIGKILL)
        return super().loss_and_grad(params, X, y, key=key)


def per_row_l1(outputs: Any, y: Any) -> Any:
    """A callable loss: per-sample L1 distance of one regression output."""
    return (outputs.reshape(len(outputs)) - y).abs()


def summed_l1(outputs: Any, y: Any) -> Any:
    """A wrong callable loss: sums over the rows itself."""
    return (outputs.reshape(len(outputs)) - y).abs().sum()


def broadcast_l1(outputs: Any, y: Any) -> Any:
    """A wrong callable loss: (n, 1) outputs minus (n,) targets broadcast to (n, n)."""
    return (outputs - y).abs()


def per_row_cross_entropy(outputs: Any, y: Any) -> Any:
    """A callable classification loss: per-sample cross-entropy of (n, K) scores."""
    return torch.nn.functional.cross_entropy(outputs, y, reduction="none")


def per_row_logistic(outputs: Any, y: Any) -> Any:
    """A callable classification loss: per-sample log-loss of one logit per row."""
    logits = outputs.reshape(len(outputs))
    return torch.nn.functional.binary_cross_entropy_with_logits(
        logits, y.to(logits.dtype), reduction="none"
    )


# -- fixtures and helpers -----------------------------------------------------------------


def cnn_model(dropout: float = 0.25, **options: Any) -> TorchModel:
    torch.manual_seed(0)
    return TorchModel(SmallCNN(dropout), input_shape=(1, 8, 8), **options)


@pytest.fixture(scope="module")
def images() -> Dataset:
    rng = np.random.default_rng(0)
    X = rng.standard_normal((192, 1, 8, 8)).astype(np.float32)
    y = (X[:, 0, :4].sum(axis=(1, 2)) > 0).astype(np.int64) + (X[:, 0, 4:, :4].sum(axis=(1, 2)) > 0)
    return Dataset(X, y)


def _bits(params: dict[str, np.ndarray]) -> dict[str, bytes]:
    return {k: v.tobytes() for k, v in params.items()}


async def _fit(backend: Any, model: Any, data: Dataset, mode: str = "sync", **options: Any) -> Any:
    settings = {"batch_size": 48, "shards": 4, "seed": 5, "mode": mode}
    async with at.Trainer(model, at.optim.adam(1e-2), backend=backend, **settings, **options) as tr:
        await tr.fit(data, epochs=2)
        return tr.params


# -- gradients ------------------------------------------------------------------------------


def _sample(n_features: int, classes: int, rows: int = 12) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    X = rng.standard_normal((rows, n_features)).astype(np.float32)
    return X, rng.integers(0, classes, rows)


def test_gradients_equal_the_numpy_mlp_on_the_same_weights() -> None:
    torch.manual_seed(0)
    model = TorchModel(nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)))
    params = model.init(np.random.default_rng(0))
    X, y = _sample(5, 3)
    loss, grads = model.loss_and_grad(params, X, y)
    numpy_params = {
        "W0": params["0.weight"].T.copy(),
        "b0": params["0.bias"],
        "W1": params["2.weight"].T.copy(),
        "b1": params["2.bias"],
    }
    expected_loss, expected = MLP((5, 7, 3)).loss_and_grad(numpy_params, X, y)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(grads["0.weight"].T, expected["W0"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["0.bias"], expected["b0"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["2.weight"].T, expected["W1"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["2.bias"], expected["b1"], rtol=1e-4, atol=1e-5)


def test_gradients_equal_softmax_and_logistic_regression() -> None:
    X, y = _sample(4, 3)
    softmax = TorchModel(nn.Linear(4, 3))
    params = softmax.init(np.random.default_rng(0))
    loss, grads = softmax.loss_and_grad(params, X, y)
    reference = {"W": params["weight"].T.copy(), "b": params["bias"]}
    expected_loss, expected = SoftmaxRegression(4, 3).loss_and_grad(reference, X, y)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(grads["weight"].T, expected["W"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["bias"], expected["b"], rtol=1e-4, atol=1e-5)

    binary = TorchModel(nn.Linear(4, 1), "binary_cross_entropy")
    params = binary.init(np.random.default_rng(0))
    labels = y % 2
    loss, grads = binary.loss_and_grad(params, X, labels)
    reference = {"w": params["weight"][0].copy(), "b": params["bias"]}
    expected_loss, expected = LogisticRegression(4).loss_and_grad(reference, X, labels)
    assert loss == pytest.approx(expected_loss, rel=1e-5)
    np.testing.assert_allclose(grads["weight"][0], expected["w"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads["bias"], expected["b"], rtol=1e-4, atol=1e-5)
    assert binary.n_classes == 2


@pytest.mark.parametrize(
    ("loss", "targets"),
    [("cross_entropy", "labels"), ("mse", "values"), ("huber", "values"), (per_row_l1, "one")],
)
def test_check_gradients_passes_in_float64(loss: Any, targets: str) -> None:
    torch.manual_seed(0)
    outputs = 1 if targets == "one" else 3
    module = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(8, outputs))
    model = TorchModel(module, loss, input_shape=(1, 4, 4), dtype=np.float64)
    rng = np.random.default_rng(2)
    X = rng.standard_normal((6, 1, 4, 4))
    y = {
        "labels": rng.integers(0, 3, 6),
        "values": 3 * rng.standard_normal((6, 3)),
        "one": rng.standard_normal(6),
    }[targets]
    check = check_gradients(model, model.init(rng), X, y)
    assert check.ok, check


def test_check_gradients_of_a_dropout_model_runs_in_eval_mode(images: Dataset) -> None:
    model = cnn_model(dtype=np.float64)
    X, y = images.X[:5].astype(np.float64), images.y[:5]
    assert check_gradients(model, model.init(np.random.default_rng(0)), X, y, max_checks=20).ok


# -- randomness -----------------------------------------------------------------------------


def test_dropout_is_keyed_by_seed_step_and_shard(images: Dataset) -> None:
    model = cnn_model(dropout=0.5)
    params = model.init(np.random.default_rng(0))
    X, y = images.X[:16], images.y[:16]
    first = model.loss_and_grad(params, X, y, key=(5, 3, 1))
    again = model.loss_and_grad(params, X, y, key=(5, 3, 1))
    other_step = model.loss_and_grad(params, X, y, key=(5, 4, 1))
    other_shard = model.loss_and_grad(params, X, y, key=(5, 3, 2))
    other_seed = model.loss_and_grad(params, X, y, key=(6, 3, 1))
    evaluation = model.loss_and_grad(params, X, y)
    assert first[0] == again[0]
    assert _bits(first[1]) == _bits(again[1])
    losses = {first[0], other_step[0], other_shard[0], other_seed[0], evaluation[0]}
    assert len(losses) == 5  # every key draws its own masks; no key: no dropout
    assert evaluation[0] == model.loss_and_grad(params, X, y)[0]


def test_init_copies_the_module_or_reinitialises_from_the_seed() -> None:
    torch.manual_seed(0)
    module = nn.Linear(3, 2)
    copied = TorchModel(module).init(np.random.default_rng(0))
    np.testing.assert_array_equal(copied["weight"], module.weight.detach().numpy())
    fresh = TorchModel(module, reinit=True)
    a, b = fresh.init(np.random.default_rng(1)), fresh.init(np.random.default_rng(1))
    c = fresh.init(np.random.default_rng(2))
    assert _bits(a) == _bits(b)
    assert _bits(a) != _bits(c)
    assert not np.array_equal(a["weight"], copied["weight"])


# -- bit-identity on every backend and worker count ---------------------------------------


@pytest.fixture(scope="module")
def references(images: Dataset) -> dict[str, dict[str, bytes]]:
    """The inline result of each deterministic mode: what every backend must reproduce."""
    return {
        mode: _bits(at.run(_fit("inline", cnn_model(), images, mode, **options)))
        for mode, options in MODES
    }


@pytest.mark.parametrize(
    ("name", "workers"), [("thread", 1), ("thread", 2), ("process", 1), ("process", 2)]
)
async def test_bits_equal_on_every_backend_and_worker_count(
    name: str, workers: int, images: Dataset, references: dict[str, dict[str, bytes]]
) -> None:
    backend, _ = at.backends.get_backend(name, workers=workers)
    async with backend:
        for mode, options in MODES:
            params = await _fit(backend, cnn_model(), images, mode, **options)
            assert _bits(params) == references[mode], mode


@pytest.mark.dask
async def test_bits_equal_on_dask(
    dask_cluster: Any, images: Dataset, references: dict[str, dict[str, bytes]]
) -> None:
    async with at.backends.DaskBackend(dask_cluster.scheduler_address) as backend:
        for mode, options in MODES:
            params = await _fit(backend, cnn_model(), images, mode, **options)
            assert _bits(params) == references[mode], mode


async def test_the_module_crosses_to_a_worker_once_per_fit(images: Dataset) -> None:
    model = cnn_model()
    module_bytes = len(pickle.dumps(model))
    async with ProcessBackend(workers=1) as backend:
        before = await backend.run(_shipping.loads)
        await _fit(backend, model, images)  # 2 epochs x 4 steps x 4 shards
        after_one = await backend.run(_shipping.loads)
        await _fit(backend, model, images)
        after_two = await backend.run(_shipping.loads)
        stats = backend.stats
    assert (after_one - before, after_two - after_one) == (1, 1)
    # With one worker a step is one task (its 4 shards grouped), from the first step.
    assert stats.tasks >= 2 * 2 * 4
    assert stats.bytes_sent / stats.tasks < module_bytes / 2  # not every task carried it
    assert module_bytes > 2000


async def test_a_killed_worker_reruns_its_shard_bit_identically(
    tmp_path: Path, images: Dataset, references: dict[str, dict[str, bytes]]
) -> None:
    torch.manual_seed(0)
    model = KillOnce(SmallCNN(), str(tmp_path / "killed"), at_call=14, input_shape=(1, 8, 8))
    async with ProcessBackend(workers=2) as backend:
        params = await _fit(backend, model, images)
        assert backend.stats.retries == 1
    assert (tmp_path / "killed").exists()
    assert _bits(params) == references["sync"]


# -- checkpoints ----------------------------------------------------------------------------


class Interrupted(Exception):
    pass


class InterruptAt(at.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step(self, event: at.StepEvent) -> None:
        if event.step == self.step:
            raise Interrupted


async def test_checkpoint_and_resume_end_bit_identical(
    tmp_path: Path, images: Dataset, references: dict[str, dict[str, bytes]]
) -> None:
    settings = {"batch_size": 48, "shards": 4, "seed": 5, "backend": "inline"}
    options = {"epochs": 2, "checkpoint_dir": tmp_path, "checkpoint_every": 3}
    trainer = at.Trainer(cnn_model(), at.optim.adam(1e-2), **settings)
    with pytest.raises(Interrupted):
        await trainer.fit(images, callbacks=[InterruptAt(4)], **options)
    resumed = at.Trainer(cnn_model(), at.optim.adam(1e-2), **settings)
    result = await resumed.fit(images, resume=True, **options)
    assert 0 < result.steps < 8
    assert _bits(resumed.params) == references["sync"]


async def test_resuming_into_a_different_module_is_refused(tmp_path: Path, images: Dataset) -> None:
    settings = {"batch_size": 48, "shards": 4, "backend": "inline"}
    trainer = at.Trainer(cnn_model(), at.optim.adam(1e-2), **settings)
    await trainer.fit(images, checkpoint_dir=tmp_path)
    torch.manual_seed(0)
    other = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.Flatten(), nn.Linear(256, 3)
    )
    resumed = at.Trainer(TorchModel(other, input_shape=(1, 8, 8)), **settings)
    with pytest.raises(at.CheckpointError) as info:
        await resumed.fit(images, checkpoint_dir=tmp_path, resume=True, epochs=2)
    message = str(info.value)
    assert "model.architecture" in message
    assert "SmallCNN" in message
    assert "params['conv.weight']" in message


# -- predictions, rows of any shape -------------------------------------------------------


def test_predict_runs_without_autograd_and_returns_int64_labels() -> None:
    model = TorchModel(GradModeProbe())
    params = model.init(np.random.default_rng(0))
    X = np.ones((4, 3), np.float32)
    GradModeProbe.seen.clear()
    labels = model.predict(params, X)
    proba = model.predict_proba(params, X)
    model.loss_and_grad(params, X, np.array([0, 1, 0, 1]))
    assert GradModeProbe.seen[-3:] == [False, False, True]
    assert labels.dtype == np.int64
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(labels, proba.argmax(axis=1))


async def test_images_train_stream_and_predict_through_the_service(images: Dataset) -> None:
    model = cnn_model()
    async with at.Trainer(
        model, at.optim.adam(1e-2), backend="process", workers=2, batch_size=48, shards=2
    ) as trainer:
        batches = [(images.X[i : i + 32], images.y[i : i + 32]) for i in range(0, 192, 32)]
        await trainer.fit_stream(batches)
        assert trainer.state.step == 4
        async with at.TrainingService(backend="inline") as service:
            job = await service.start("cnn", trainer.model, images, batch_size=48)
            await job.result()
            prediction = await job.predict(images.X[:5])
            assert prediction.values.shape == (5,)
            with pytest.raises(at.DataError, match=r"\(n, 1, 8, 8\)"):
                await job.predict(images.X[:5, 0])


# -- bad input, refused before any work --------------------------------------------------


class NoParameters(nn.Module):  # type: ignore[misc]
    def forward(self, x: Any) -> Any:
        return x


class IntegerParameter(nn.Module):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.table = nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False)

    def forward(self, x: Any) -> Any:
        return self.fc(x)


class TupleOutputs(nn.Module):  # type: ignore[misc]
    """Returns its scores with an auxiliary tensor, as many library models do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Any) -> Any:
        return self.fc(x), x


class RenamedDropout(nn.Dropout):  # type: ignore[misc]
    """torch's dropout under another class name (torch's forward pass)."""


class AlwaysOnDropout(nn.Dropout):  # type: ignore[misc]
    """A dropout subclass with a forward of its own, drawing from torch's generator."""

    def forward(self, x: Any) -> Any:
        return torch.nn.functional.dropout(x, self.p, training=True)


def _spectral_module() -> Any:
    return nn.Sequential(nn.Linear(3, 4), nn.utils.parametrizations.spectral_norm(nn.Linear(4, 2)))


def _lazy_module() -> Any:
    return nn.Sequential(nn.LazyLinear(4), nn.Linear(4, 2))


def _old_weight_norm_module() -> Any:
    with pytest.warns(FutureWarning):
        return nn.Sequential(nn.Linear(3, 4), nn.utils.weight_norm(nn.Linear(4, 2)))


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (
            lambda: TorchModel(_spectral_module()),
            r"buffer '1.parametrizations.weight.0._u' .* changes in the forward pass",
        ),
        (
            lambda: TorchModel(_lazy_module(), input_shape=(3,)),
            r"parameter '0.weight' is not initialised yet \(a lazy module",
        ),
        (lambda: TorchModel(_old_weight_norm_module()), "parametrizations.weight_norm"),
    ],
)
def test_state_kept_outside_the_parameters_is_refused_at_construction(
    build: Any, message: str
) -> None:
    """Buffers a training forward pass changes (spectral norm's power iteration) would
    evolve in each pooled copy of the module, so results would depend on the workers;
    lazy and uncopyable modules are named instead of failing deep inside torch."""
    with pytest.raises(at.ConfigError, match=message):
        build()


@pytest.mark.parametrize("module_class", [AttentionNet, StackedLSTM])
def test_attention_and_rnn_dropout_are_keyed_by_seed_step_and_shard(module_class: Any) -> None:
    """nn.MultiheadAttention and stacked RNNs draw their dropout inside torch's forward,
    from torch's global generator: the bridge seeds it by the shard's key."""
    torch.manual_seed(0)
    model = TorchModel(module_class(), input_shape=(3, 4))
    rng = np.random.default_rng(0)
    X, y = rng.standard_normal((8, 3, 4)).astype(np.float32), rng.integers(0, 3, 8)
    params = model.init(rng)
    state = torch.get_rng_state()
    first = model.loss_and_grad(params, X, y, key=(1, 2, 3))
    torch.manual_seed(123)  # the caller's generator plays no part
    again = model.loss_and_grad(params, X, y, key=(1, 2, 3))
    other = model.loss_and_grad(params, X, y, key=(1, 2, 4))
    assert first[0] == again[0]
    assert _bits(first[1]) == _bits(again[1])
    assert first[0] != other[0]
    torch.set_rng_state(state)


async def test_attention_dropout_bits_equal_on_every_backend_and_worker_count() -> None:
    rng = np.random.default_rng(0)
    data = Dataset(rng.standard_normal((96, 3, 4)).astype(np.float32), rng.integers(0, 3, 96))

    async def fit(name: str, workers: int) -> dict[str, bytes]:
        torch.manual_seed(0)
        model = TorchModel(AttentionNet(), input_shape=(3, 4))
        settings = {"batch_size": 32, "shards": 4, "seed": 5, "workers": workers}
        async with at.Trainer(model, at.optim.adam(1e-2), backend=name, **settings) as tr:
            await tr.fit(data, epochs=1)
            return _bits(tr.params)

    inline = await fit("inline", 1)
    assert await fit("thread", 2) == inline
    assert await fit("process", 2) == inline


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: TorchModel(NoParameters(), input_shape=(3,)), "no trainable parameters"),
        (
            lambda: TorchModel(nn.Sequential(nn.Linear(3, 4), AlwaysOnDropout(), nn.Linear(4, 2))),
            r"'1' \(AlwaysOnDropout\) draws random numbers",
        ),
        (
            lambda: TorchModel(TupleOutputs(), input_shape=(3,)),
            r"must return one tensor of outputs, got tuple; wrap it",
        ),
        (lambda: TorchModel(IntegerParameter()), "parameter 'table' has dtype torch.int64"),
        (lambda: TorchModel(nn.Linear(3, 2), "hinge"), "unknown loss 'hinge'"),
        (lambda: TorchModel(nn.Linear(3, 1), summed_l1), r"shape \(2,\) for 2 rows"),
        (
            lambda: TorchModel(nn.Linear(3, 1), broadcast_l1),
            r"got shape \(2, 2\).*outputs are \(n, 1\) and the targets \(n,\), they broadcast",
        ),
        (lambda: TorchModel(nn.Linear(3, 2), device="cuda:0"), "CUDA device 0"),
        (
            lambda: TorchModel(nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))),
            r"'1' \(BatchNorm1d\) keeps running statistics.*GroupNorm or nn.LayerNorm",
        ),
        (
            lambda: TorchModel(nn.Sequential(nn.Linear(3, 4), nn.RReLU(), nn.Linear(4, 2))),
            r"'1' \(RReLU\) draws random numbers",
        ),
        (lambda: TorchModel(nn.Conv2d(1, 2, 3)), "pass input_shape"),
        (lambda: TorchModel(nn.Linear(3, 2), input_shape=(4,)), r"fails on rows of shape \(4,\)"),
        (lambda: TorchModel(nn.Linear(3, 1)), "cross_entropy' needs outputs"),
        (lambda: TorchModel(nn.Linear(3, 2), n_classes=5), "n_classes=5 but"),
        (
            lambda: TorchModel(nn.Linear(3, 3), per_row_cross_entropy, n_classes=5),
            r"n_classes=5 with a callable loss needs outputs of shape \(n, 5\).*\(n, 3\)",
        ),
        (
            lambda: TorchModel(nn.Linear(3, 1), per_row_logistic, n_classes=3),
            r"n_classes=3 with a callable loss.*gives \(n, 1\)",
        ),
    ],
)
def test_bad_models_are_refused_at_construction(build: Any, message: str) -> None:
    if "cuda" in message.lower() and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(at.ConfigError, match=message):
        build()


def _weight_normed_module() -> Any:
    return nn.Sequential(nn.Linear(3, 4), nn.utils.parametrizations.weight_norm(nn.Linear(4, 2)))


async def test_a_parametrized_module_is_refused_by_the_process_backend_with_the_fix() -> None:
    # torch cannot pickle a parametrized module: the message said to define it at module level
    model = TorchModel(_weight_normed_module(), n_classes=2)
    expected = (
        r"parametrized tensors \(1\.weight: .*weight_norm.*backend='thread'.*"
        r"remove_parametrizations\(layer, 'weight'\)"
    )
    with pytest.raises(at.ConfigTypeError, match=expected) as caught:
        ProcessBackend(workers=1).check_picklable(model)
    assert "module level" not in str(caught.value)
    assert repr(copy.deepcopy(model)) == repr(model)  # copies, as torch copies the module
    X, y = np.random.default_rng(0).normal(size=(16, 3)), np.arange(16) % 2
    async with at.Trainer(model, backend="thread", workers=2, batch_size=8) as trainer:
        assert (await trainer.fit((X, y))).steps == 2


async def test_rows_of_the_wrong_shape_fail_before_any_step(images: Dataset) -> None:
    model = cnn_model()
    flat = Dataset(images.X.reshape(len(images), -1), images.y)
    async with at.Trainer(model, backend="inline", batch_size=48) as trainer:
        expected = r"rows of shape \(64,\).*expects rows of shape \(1, 8, 8\)"
        with pytest.raises(at.DataError, match=expected):
            await trainer.fit(flat)
        assert trainer.state.step == 0


def test_import_asynctrain_imports_neither_torch_nor_jax() -> None:
    code = "import sys, asynctrain; print('torch' in sys.modules, 'jax' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.stdout.split() == ["False", "False"], out.stderr


class TiedHead(nn.Module):  # type: ignore[misc]
    """An embedding-like input layer whose weight the output layer reuses (tied)."""

    def __init__(self) -> None:
        super().__init__()
        self.encode = nn.Linear(4, 4, bias=False)
        self.decode = nn.Linear(4, 4, bias=False)
        self.decode.weight = self.encode.weight

    def forward(self, x: Any) -> Any:
        return self.decode(torch.tanh(self.encode(x)))


def test_tied_parameters_get_the_gradient_of_both_uses() -> None:
    torch.manual_seed(0)
    module = TiedHead()
    model = TorchModel(module, dtype=np.float64)
    rng = np.random.default_rng(1)
    params = {"encode.weight": rng.standard_normal((4, 4))}  # not the module's own values
    X, y = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    reference = TiedHead().double()
    with torch.no_grad():
        reference.encode.weight.copy_(torch.from_numpy(params["encode.weight"]))
    out = reference(torch.from_numpy(X))
    expected = torch.nn.functional.cross_entropy(out, torch.from_numpy(y), reduction="sum")
    expected.backward()
    loss, grads = model.loss_and_grad(params, X, y)
    assert list(model.init(rng)) == ["encode.weight"]
    assert loss == pytest.approx(float(expected.detach()), rel=1e-12)
    np.testing.assert_allclose(grads["encode.weight"], reference.encode.weight.grad.numpy())


async def test_trainer_predict_takes_rows_of_the_input_shape(images: Dataset) -> None:
    async with at.Trainer(cnn_model(), backend="inline", batch_size=48) as trainer:
        await trainer.fit(images)
        assert trainer.predict(images.X[:3]).shape == (3,)
        with pytest.raises(at.DataError, match=r"expects rows of shape \(1, 8, 8\)"):
            trainer.predict(images.X[:3].reshape(3, -1))


def test_reversed_views_are_taken_as_rows_and_parameters() -> None:
    # torch.from_numpy refuses negative strides: X[::-1] or np.flip(X) failed predict and
    # loss_and_grad with torch's ValueError
    torch.manual_seed(0)
    model = TorchModel(nn.Sequential(nn.Linear(4, 3)))
    params = model.init(np.random.default_rng(0))
    X, y = _sample(4, 3, rows=6)
    flipped = {name: np.flip(value) for name, value in params.items()}
    expected = model.loss_and_grad({k: v.copy() for k, v in flipped.items()}, X[::-1].copy(), y)
    loss, grads = model.loss_and_grad(flipped, X[::-1], y)
    assert loss == expected[0]
    assert _bits(grads) == _bits(expected[1])
    np.testing.assert_array_equal(model.predict(params, X[::-1]), model.predict(params, X)[::-1])
    mirrored = model.predict_proba(params, np.flip(X, axis=1))
    np.testing.assert_array_equal(mirrored, model.predict_proba(params, X[:, ::-1].copy()))


@pytest.mark.parametrize(
    ("width", "loss", "n_classes"), [(3, "per_row_cross_entropy", 3), (1, "per_row_logistic", 2)]
)
def test_a_callable_classification_loss_gives_probabilities_of_n_classes(
    width: int, loss: str, n_classes: int
) -> None:
    torch.manual_seed(0)
    model = TorchModel(nn.Linear(4, width), globals()[loss], n_classes=n_classes)
    X, _ = _sample(4, n_classes, rows=5)
    proba = model.predict_proba(model.init(np.random.default_rng(0)), X)
    assert model.n_classes == n_classes
    assert proba.shape == (5, n_classes)


class AuxiliaryInTraining(nn.Module):  # type: ignore[misc]
    """Returns (scores, auxiliary scores) in train mode only, as Inception-style nets do."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: Any) -> Any:
        scores = self.fc(x)
        return (scores, scores) if self.training else scores


def test_a_module_returning_a_tuple_in_training_is_named_in_the_error() -> None:
    model = TorchModel(AuxiliaryInTraining())
    params = model.init(np.random.default_rng(0))
    X, y = _sample(3, 2, rows=4)
    model.loss_and_grad(params, X, y)  # evaluation: eval mode, one tensor
    with pytest.raises(at.ConfigError, match="must return one tensor of outputs, got tuple"):
        model.loss_and_grad(params, X, y, key=(0, 1, 0))


def test_float64_params_of_a_float32_model_with_a_frozen_layer() -> None:
    # check_gradients passes float64 params: the frozen float32 weight, which
    # functional_call does not replace, failed the matmul with a dtype RuntimeError
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))
    module[0].requires_grad_(False)
    model = TorchModel(module)
    params = model.init(np.random.default_rng(0))
    assert sorted(params) == ["2.bias", "2.weight"]
    X, y = _sample(4, 3, rows=6)
    assert check_gradients(model, params, X.astype(np.float64), y).ok
    wide = {name: value.astype(np.float64) for name, value in params.items()}
    np.testing.assert_array_equal(model.predict(wide, X), model.predict(params, X))
    assert model.loss_and_grad(params, X, y)[1]["2.weight"].dtype == np.float32


def test_a_dropout_subclass_is_keyed_like_dropout() -> None:
    # keyed dropout replaced layers by class name: a subclass of nn.Dropout drew from
    # torch's global generator, so one key gave another loss at every call
    def build(layer: Any) -> TorchModel:
        torch.manual_seed(0)
        return TorchModel(nn.Sequential(nn.Linear(4, 8), layer(0.5), nn.Linear(8, 3)))

    model, plain = build(RenamedDropout), build(nn.Dropout)
    params = model.init(np.random.default_rng(0))
    X, y = _sample(4, 3, rows=6)
    first = model.loss_and_grad(params, X, y, key=(0, 1, 2))
    again = model.loss_and_grad(params, X, y, key=(0, 1, 2))
    assert first[0] == again[0]
    assert _bits(first[1]) == _bits(again[1])
    assert plain.loss_and_grad(params, X, y, key=(0, 1, 2))[0] == first[0]  # the same masks


def test_one_logit_probabilities_of_huge_logits_do_not_overflow() -> None:
    model = TorchModel(nn.Linear(1, 1), "binary_cross_entropy", dtype=np.float64)
    params = {"weight": np.array([[1000.0]]), "bias": np.zeros(1)}
    X = np.array([[-1.0], [0.0], [1.0], [-0.03]])
    with np.errstate(over="raise", invalid="raise"):  # 1 / (1 + exp(1000)) overflowed
        proba = model.predict_proba(params, X)
    logits = torch.tensor([-1000.0, 0.0, 1000.0, -30.0], dtype=torch.float64)
    np.testing.assert_allclose(proba[:, 1], torch.sigmoid(logits).numpy(), rtol=1e-14, atol=0)
    np.testing.assert_allclose(proba[:, 0], torch.sigmoid(-logits).numpy(), rtol=1e-14, atol=0)
