"""Peak bytes of the tensors a piece of code allocates, counted as PyTorch runs each operator (no timing, no RSS).

``with TensorMeter() as meter: ...`` then ``meter.peak``: the largest total size of storages that were allocated by
operators inside the block and were alive at the same time. Views and in-place results share an input's storage and
are not counted again; storages that existed before the block (weights, the input frames) are never counted.
"""

from __future__ import annotations

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storages(tree) -> list:
    return [t.untyped_storage() for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]


class TensorMeter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.current = 0
        self.peak = 0

    def _prune(self) -> None:
        for key in [k for k, (ref, _) in self.live.items() if ref.expired()]:
            self.current -= self.live.pop(key)[1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self._prune()
        inputs = {s.data_ptr() for s in _storages((args, kwargs))}
        for storage in _storages(out):
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in inputs or key in self.live:
                continue  # a view / in-place result of an input, or already counted
            self.live[key] = (StorageWeakRef(storage), size)
            self.current += size
        self.peak = max(self.peak, self.current)
        return out
