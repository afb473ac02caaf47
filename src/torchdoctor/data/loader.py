"""The loader under test: wrap a Dataset in a DataLoader, record its settings, know its sampler's order."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

# A Dataset given alone is read in batches of this size: DataLoader's own default (1) would make every
# batch statistic meaningless, and 32 is what most training scripts start from.
DEFAULT_BATCH_SIZE = 32


def as_loader(obj: Any, batch_size: int = DEFAULT_BATCH_SIZE) -> tuple[Any, bool]:
    """``(loader, wrapped)``: a DataLoader as it is, a Dataset inside ``DataLoader(obj, batch_size)``, a
    Lightning DataModule's ``train_dataloader()``."""
    from torch.utils.data import DataLoader, Dataset

    obj = datamodule_loader(obj)
    if isinstance(obj, DataLoader):
        return obj, False
    if isinstance(obj, Dataset):
        return DataLoader(obj, batch_size=batch_size), True
    raise TypeError(f"expected a torch DataLoader or Dataset, got {type(obj).__name__}")


def datamodule_loader(obj: Any, call: Callable[[Callable[[], Any]], Any] = lambda fn: fn()) -> Any:
    """A LightningDataModule's train DataLoader, prepared as ``trainer.fit`` prepares it; anything else as it is.

    Told apart by its methods (``train_dataloader`` and ``setup``), not by class: importing lightning costs
    seconds, and a DataModule-like class without lightning works the same. ``call`` runs the user's methods.
    """
    from torch.utils.data import DataLoader, Dataset

    if isinstance(obj, DataLoader | Dataset) or not all(callable(getattr(obj, name, None))
                                                         for name in ("train_dataloader", "setup")):
        return obj
    if callable(getattr(obj, "prepare_data", None)):
        call(obj.prepare_data)
    call(lambda: obj.setup("fit"))
    return call(obj.train_dataloader)


def collect_loader_facts(loader: Any, *, wrapped: bool) -> dict[str, Any]:
    """The DataLoader's settings as plain facts (JSON-safe)."""
    dataset = loader.dataset
    context = loader.multiprocessing_context
    return {
        "wrapped": wrapped,
        "dataset_class": type(dataset).__name__,
        "map_style": is_map_style(dataset),
        "dataset_len": _safe_len(dataset),
        "batch_size": loader.batch_size,
        "drop_last": bool(loader.drop_last),
        "shuffle": sampler_shuffles(loader),
        "sampler": type(loader.sampler).__name__,
        "batch_sampler": type(loader.batch_sampler).__name__ if loader.batch_sampler is not None else None,
        "num_batches": _safe_len(loader),
        "last_batch_size": last_batch_size(loader),
        "num_workers": loader.num_workers,
        "pin_memory": bool(loader.pin_memory),
        "persistent_workers": bool(loader.persistent_workers),
        "multiprocessing_context": _context_name(context),
        "collate_fn": _collate_name(loader.collate_fn),
        "default_collate": _is_default_collate(loader.collate_fn),
    }


def is_map_style(dataset: Any) -> bool:
    from torch.utils.data import IterableDataset

    return not isinstance(dataset, IterableDataset) and hasattr(dataset, "__getitem__")


def sampler_shuffles(loader: Any) -> bool | None:
    """True for a RandomSampler, False for a sequential order, None when the sampler is the user's own."""
    from torch.utils.data import RandomSampler, SequentialSampler

    sampler = loader.sampler
    if isinstance(sampler, RandomSampler):
        return True
    if isinstance(sampler, (SequentialSampler, range, list, tuple)):
        return False
    return None


def deterministic_batches(loader: Any) -> bool:
    """True when iterating ``loader.batch_sampler`` yields the loader's order and touches no RNG."""
    from torch.utils.data import BatchSampler

    return (is_map_style(loader.dataset) and type(loader.batch_sampler) is BatchSampler
            and sampler_shuffles(loader) is False)


def batch_indices(loader: Any, batch_number: int) -> list[int] | None:
    """The data-set indices of batch ``batch_number`` when the order is deterministic, else None."""
    if not deterministic_batches(loader):
        return None
    try:
        found = next(itertools.islice(iter(loader.batch_sampler), batch_number, batch_number + 1), None)
        return [int(i) for i in found] if found is not None else None
    except Exception:  # the sampler asks the user's __len__, which may be what failed
        return None


def last_batch_size(loader: Any) -> int | None:
    """Samples in the last batch of an epoch (None when unknown or when it is dropped)."""
    size, samples = loader.batch_size, _safe_len(loader.sampler) if loader.batch_sampler is not None else None
    if not size or samples is None or samples == 0:
        return None
    rest = samples % size
    if rest == 0:
        return size
    return None if loader.drop_last else rest


def _safe_len(obj: Any) -> int | None:
    try:
        return int(len(obj))
    except Exception:  # IterableDataset without __len__, samplers of unknown length, user code that raises
        return None


def _context_name(context: Any) -> str | None:
    if context is None:
        return None
    getter = getattr(context, "get_start_method", None)
    return getter() if callable(getter) else str(context)


def _collate_name(collate_fn: Any) -> str:
    from torchdoctor.targets import is_target_module

    name = getattr(collate_fn, "__qualname__", None) or type(collate_fn).__name__
    module = getattr(collate_fn, "__module__", None) or ""
    shown = module and not module.startswith("torch.") and not is_target_module(module)
    return f"{module}.{name}" if shown else name


def _is_default_collate(collate_fn: Any) -> bool:
    from torch.utils.data import default_collate
    from torch.utils.data._utils.collate import default_convert

    return collate_fn in (default_collate, default_convert)
