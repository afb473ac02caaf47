"""``Names``: module and parameter names are paths in the outermost container ``place`` gives for each root."""

from __future__ import annotations

from torch import nn

from torchdoctor.learning.names import Names


class Parts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        self.head = nn.Linear(2, 1)


def test_roots_called_separately_are_named_in_their_container():
    model = Parts()
    names = Names(lambda: [model.encoder, model.head], place=lambda root: (model, "encoder" if root is model.encoder
                                                                          else "head"))
    assert names.refresh()
    assert names.display(model.encoder[0]) == "encoder.0" and names.param_display(model.head.bias) == "head.bias"
    assert names.is_root(model.encoder) and names.is_root(model.head) and names.containers == [model]


def test_a_container_found_later_renames_what_an_earlier_one_named():
    model = Parts()
    roots = [model.encoder]
    places = {id(model.encoder): (model.encoder, ""), id(model): (model, "")}
    names = Names(lambda: roots, place=lambda root: places[id(root)])
    assert names.refresh() and names.display(model.encoder[0]) == "0"  # all it knows: the encoder called
    roots.append(model)  # the whole model is called later (an evaluation): encoder.0, as print(model) says
    assert names.refresh() and names.containers == [model]
    assert names.display(model.encoder[0]) == "encoder.0" and names.param_display(model.encoder[0].weight) == (
        "encoder.0.weight")
