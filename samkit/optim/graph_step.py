"""A whole training step in ONE CUDA graph: ``TrainConfig(compile="graph")``.

At batch 128 a GPU step is launch-bound: CUDA graphs of the model alone left SAM's vector ops
un-captured (SAM/SGD 2.9 on an H100), while the whole step captured together (both passes, ε,
the restore, the BatchNorm freeze, the base update) reached the floor of 2.0 (measured on one H100,
torch 2.11). ``GraphStep`` does that for the trainer and for ``benchmarks/step_time.py``:

* It runs exactly the step ``samkit.train.loop.train_epoch`` runs eagerly (``train_step`` below), in
  the same order, so a graph run's numbers are an eager run's on the same GPU (the run key
  leaves ``compile`` out, as it leaves out ``device``).
* A *step kind* is what the optimizer is about to do: ``base`` (SGD), ``sam`` (the SAM family's
  step with the ascent and the second pass), ``plain`` (a SAM-family step without it:
  ``sam_interval`` k, LookSAM between its SAM steps) and ``msam`` (Momentum-SAM). Each kind gets
  its own graph, captured once the kind ran eagerly ``warmup`` times: by then every tensor the
  step updates in place exists (SGD momentum, SAM's saved weights, LookSAM's g_v, the cuBLAS
  and cuDNN workspaces) and keeps its address (SAM's copy path on CUDA).
* Inputs are copied into static buffers, then the graph replays. Only batches of
  ``batch_size`` examples replay; another size (an epoch's last, short batch) runs eagerly:
  dropping it would change what an epoch is (the data seen, the step count, ``grad_evals``).
* Hyperparameters the kernels take as Python numbers (lr, momentum, weight decay, rho, ...) are
  baked into a graph: when one changes (the LR schedule), the kind is captured again.
* A replay runs no Python, so the SAM family's step count (which steps take the ascent) and
  ``grad_evals`` do not move by themselves: each replay adds what its capture added.
* bf16 autocast runs with ``cache_enabled=False`` (autocast's weight-cast cache must not
  outlive a capture); the values are the same.
* Captures are serialised within a process and use ``capture_error_mode="thread_local"``, so
  several runs may train in threads of one process, each on its own CUDA stream.

Works with ``torch.optim.SGD`` and the samkit SAM family over it (what the trainer builds).
"""
from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass

import torch

from samkit.optim.bn import bn_frozen
from samkit.optim.sam import SAM
from samkit.optim.variants import MomentumSAM

WARMUP = 3  # eager steps of a kind before it is captured
COUNTERS = ("_sam_steps", "grad_evals")  # Python-side state a SAM-family step advances
_CAPTURE_LOCK = threading.Lock()


def require_cuda(device) -> None:
    """The one error for compile="graph" without a GPU."""
    kind = torch.device(device).type
    if kind != "cuda":
        raise ValueError(f"compile: got 'graph' on device {kind}; allowed: eager (CUDA graphs "
                         "need a GPU)")


def step_kind(opt) -> str:
    if isinstance(opt, MomentumSAM):
        return "msam"
    if isinstance(opt, SAM):
        return "sam" if opt.needs_second_pass else "plain"
    return "base"


def hyper_key(opt) -> tuple:
    """Every param group's plain-valued hyperparameters: what a capture bakes into kernels."""
    return tuple(tuple(sorted((k, v) for k, v in g.items() if k != "params"
                              and (v is None or isinstance(v, (bool, int, float, str)))))
                 for g in opt.param_groups)


def train_step(model, opt, loss_fn, x, y, autocast, perturbed_bn=bn_frozen):
    """The one training step: ``samkit.train.loop.train_epoch`` runs it eagerly and ``GraphStep``
    captures it. Returns the first pass's loss, detached, in float32. ``autocast()`` makes a
    fresh context (torch.autocast, or contextlib.nullcontext when bf16 is off);
    ``perturbed_bn(model)`` the context of SAM's second pass (``samkit.optim.bn.PERTURBED_PASS``)."""
    if isinstance(opt, MomentumSAM):  # ε is known before the pass: to w̃ first
        opt.first_step(zero_grad=True)
    with autocast():
        loss = loss_fn(model(x), y)
    loss.backward()
    if isinstance(opt, MomentumSAM):
        opt.second_step(zero_grad=True)
    elif isinstance(opt, SAM):
        if opt.first_step(zero_grad=True):
            with perturbed_bn(model), autocast():
                loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)
    else:
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss.detach().float()


class _Cuda:
    """What GraphStep needs of CUDA (a test replaces it to check the bookkeeping on a CPU)."""

    def stream(self, device):
        return torch.cuda.Stream(device)

    def on(self, stream):
        return torch.cuda.stream(stream)

    def join(self, waiting, other):
        waiting.wait_stream(other)

    def current(self):
        return torch.cuda.current_stream()

    def capture(self, step):
        """A graph of one step of ``step`` (a GraphStep) on its static inputs, and its loss."""
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=step.stream, capture_error_mode="thread_local"):
            loss = step._step(*step.static)
        return graph, loss


BACKEND = _Cuda()


@dataclass
class _Captured:
    key: tuple
    graph: object
    loss: torch.Tensor
    advance: dict


class GraphStep:
    """``step(x, y)`` trains ``model`` one step with ``opt``; returns the first pass's loss
    (0-d float32, on the device; a replay's output: use it before the next call)."""

    def __init__(self, model, opt, loss_fn, batch_size: int, bf16: bool = False,
                 warmup: int = WARMUP, perturbed_bn=bn_frozen):
        device = next(model.parameters()).device
        require_cuda(device)
        self.model, self.opt, self.loss_fn = model, opt, loss_fn
        self.batch_size, self.bf16, self.warmup = batch_size, bf16, warmup
        self.perturbed_bn = perturbed_bn
        self.device_type = device.type
        self.stream = BACKEND.stream(device)  # eager steps and captures; replays: the caller's
        self.static = None                    # (x, y) input buffers of the captured graphs
        self.graphs: dict[str, _Captured] = {}
        self.eager_steps = Counter()          # full-size eager steps per kind
        self.captures = self.replays = 0

    def _autocast(self):
        return torch.autocast(self.device_type, dtype=torch.bfloat16, enabled=self.bf16,
                              cache_enabled=False)

    def _step(self, x, y):
        return train_step(self.model, self.opt, self.loss_fn, x, y, self._autocast,
                          self.perturbed_bn)

    def __call__(self, x, y):
        if not self.model.training:
            raise RuntimeError("GraphStep: the model is in eval mode; call model.train() first")
        kind = step_kind(self.opt)
        full = len(x) == self.batch_size
        if not full or self.eager_steps[kind] < self.warmup:
            self.eager_steps[kind] += full
            return self._eager(x, y)
        if self.static is None:
            self.static = (torch.empty_like(x), torch.empty_like(y))
        self.static[0].copy_(x)
        self.static[1].copy_(y)
        key = hyper_key(self.opt)
        captured = self.graphs.get(kind)
        if captured is None or captured.key != key:
            # The old graph goes first: its memory pool is only marked freeable, and is freed
            # by the new capture's start (torch.cuda.graph synchronises, then empties the
            # cache), after its last replay; never while another thread captures (the lock).
            self.graphs.pop(kind, None)
            del captured  # the last reference to the old graph
            captured = self.graphs[kind] = self._capture(kind, key)
        captured.graph.replay()  # on the caller's stream
        for name, delta in captured.advance.items():
            setattr(self.opt, name, getattr(self.opt, name) + delta)
        self.replays += 1
        return captured.loss

    def _eager(self, x, y):
        # On the side stream, as torch's whole-network capture recipe warms up; ordered after
        # and before the caller's stream.
        current = BACKEND.current()
        BACKEND.join(self.stream, current)
        with BACKEND.on(self.stream):
            loss = self._step(x, y)
        BACKEND.join(current, self.stream)
        return loss

    def _capture(self, kind, key) -> _Captured:
        opt = self.opt
        before = {n: getattr(opt, n) for n in COUNTERS if hasattr(opt, n)}
        try:
            with _CAPTURE_LOCK:
                BACKEND.join(self.stream, BACKEND.current())
                graph, loss = BACKEND.capture(self)
        except RuntimeError as e:
            raise RuntimeError(f"GraphStep: capturing a {kind!r} step as a CUDA graph failed "
                               f"({e}); train with compile: eager") from e
        finally:
            # Capturing ran the step's Python once without running its kernels.
            after = {n: getattr(opt, n) for n in before}
            for n, v in before.items():
                setattr(opt, n, v)
        self.captures += 1
        return _Captured(key, graph, loss, {n: after[n] - before[n] for n in before})
