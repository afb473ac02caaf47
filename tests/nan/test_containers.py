"""Finding the outermost module holding a module called: from known containers, else from the caller's locals."""

from __future__ import annotations

import gc
import sys
import weakref

from torch import nn

from torchdoctor.nan.containers import find_container, place, unwrap


class Parts(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
        self.head = nn.Linear(2, 1)


def test_wrappers_are_unwrapped_and_the_largest_holder_wins():
    model = Parts()
    assert unwrap(nn.DataParallel(model)) is model
    assert place(model.encoder[1], [model.encoder, nn.DataParallel(model)]) == (model, "encoder.1")
    assert place(model.head, [nn.Linear(2, 1)]) == (model.head, "")  # held by no candidate: its own root


def test_the_callers_locals_are_searched_until_one_holds_the_module():
    def loop_step(part):  # a helper the loop calls: its own locals hold only the part
        return find_container(part, [], sys._getframe())

    model = Parts()
    assert loop_step(model.head) == (model, "head")  # found in this test's frame, one frame out
    assert find_container(model, [], sys._getframe()) == (model, "")  # the model itself: nothing holds it


def test_reading_a_frame_keeps_none_of_its_locals_alive():
    model = Parts()
    reference = weakref.ref(model)
    assert find_container(model.head, [], sys._getframe())[0] is model
    del model
    gc.collect()
    assert reference() is None  # before 3.13 f_locals leaves a snapshot on the frame: it was emptied


def test_a_known_container_places_a_module_without_any_frame():
    model = Parts()
    assert find_container(model.head, [model], None) == (model, "head")
