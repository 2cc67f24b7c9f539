"""How a SAM optimizer is saved and restored: ``state_dict``/``load_state_dict`` (resumed runs
continue exactly) and pickling (``copy.deepcopy``, ``pickle``, ``torch.save``).

A mixin, because ``torch.optim.Optimizer``'s own versions know nothing of the wrapped base
optimizer: they would save no momentum and pickle no base at all.
"""
from __future__ import annotations


class SAMState:
    """State saving for ``SAM`` and its variants (mixed in before ``torch.optim.Optimizer``).

    Expects ``base_optimizer``, ``param_groups`` (shared with the base), ``state``,
    ``_sam_steps`` and ``grad_evals`` on the instance."""

    # Per-parameter state that outlives a step, saved by state_dict (LookSAM: g_v). The kept
    # weight buffer "w" is scratch and is not saved.
    _PERSISTENT = ()

    # torch.optim.Optimizer pickles only defaults/state/param_groups, which would drop the base
    # optimizer (copy.deepcopy, pickle and torch.save of SAM all go through these two).
    _PICKLED = ("base_optimizer", "_perturbed", "_stashed", "_sam_keys", "interval",
                "grad_evals", "_sam_steps")

    def _params(self):
        return [p for g in self.param_groups for p in g["params"]]

    def state_dict(self):
        """The base optimizer's full state (momentum, Adam moments, groups incl. rho), plus
        SAM's own under "sam": the step count (which steps take the ascent), ``grad_evals``,
        and per-parameter state that outlives a step, indexed like the base's state."""
        own = {}
        for i, p in enumerate(self._params()):
            kept = {k: v for k, v in self.state.get(p, {}).items() if k in self._PERSISTENT}
            if kept:
                own[i] = kept
        return {"base_optimizer": self.base_optimizer.state_dict(),
                "sam": {"steps": self._sam_steps, "grad_evals": self.grad_evals, "state": own}}

    # The per-parameter state of davda54/sam and pytorch_optimizer's SAM: the weights before
    # the ascent ("old_p"; "e_w" in davda54's first version), scratch of a finished step.
    _PEER_SCRATCH = ("old_p", "e_w")

    def load_state_dict(self, state_dict):
        """Load a dict saved by ``state_dict()``, or one saved by davda54/sam or
        pytorch_optimizer's SAM (``Optimizer.state_dict()`` of SAM itself: the shared param
        groups with rho/adaptive and the base's hyperparameters, and per-parameter "old_p").
        Theirs hold no base-optimizer state (momentum, Adam moments) and no step count: those
        start afresh, as they do when those SAMs load their own dicts. Their ASAM has no η
        (T = |w|): build this SAM with ``eta=0`` to continue such a run."""
        if "base_optimizer" not in state_dict:
            if "param_groups" not in state_dict:
                raise ValueError("SAM.load_state_dict: expected a dict saved by SAM.state_dict() "
                                 "(key 'base_optimizer') or an Optimizer.state_dict() of "
                                 "davda54/sam or pytorch_optimizer's SAM (key 'param_groups')")
            state_dict = self._from_peer(state_dict)
        self.base_optimizer.load_state_dict(state_dict["base_optimizer"])
        # load_state_dict rebuilds the group dicts: share them again.
        self.param_groups = self.base_optimizer.param_groups
        own = state_dict.get("sam", {})  # absent in dicts saved before the variants existed
        self._sam_steps = int(own.get("steps", 0))
        self.grad_evals = int(own.get("grad_evals", 0))
        self._load_persistent(own.get("state", {}))

    def _from_peer(self, peer):
        """A peer SAM's ``Optimizer.state_dict()`` in this class's format."""
        state = {}
        for i, kept in peer.get("state", {}).items():
            kept = {k: v for k, v in kept.items() if k not in self._PEER_SCRATCH}
            if kept:
                state[i] = kept
        return {"base_optimizer": {"state": state, "param_groups": peer["param_groups"]}}

    def _load_persistent(self, saved):
        """Replace the per-parameter state that outlives a step with ``saved``'s."""
        params = self._params()
        for p in params:
            for k in self._PERSISTENT:
                self.state[p].pop(k, None)
        for i, kept in saved.items():
            p = params[int(i)]
            for k, v in kept.items():
                if k in self._PERSISTENT:  # a copy: later in-place updates stay ours
                    self.state[p][k] = v.to(device=p.device, dtype=p.dtype, copy=True)

    def __getstate__(self):
        state = super().__getstate__()
        state.update({k: self.__dict__[k] for k in self._PICKLED if k in self.__dict__})
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        # One list of group dicts for both (pickle's memo already keeps it one object).
        self.param_groups = self.base_optimizer.param_groups
