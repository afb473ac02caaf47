"""``torchdoctor watch``: why a training run does not learn (collect per-step statistics, judge the series).

Named ``learning`` rather than ``watch`` so that the subpackage never shadows the API function
``torchdoctor.watch``.
"""
