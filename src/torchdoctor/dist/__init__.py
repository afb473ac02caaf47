"""``torchdoctor env --distributed``: launch local ranks with torchrun, run collectives and a DDP step, judge."""
