"""The pure helpers behind the watch pictures."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from torchdoctor.render.watch_series import LogScale, bucket_mean, buckets, colour, layer_for, number

LAYERS = ["", "encoder.layers.0.linear1", "encoder.layers.0.linear2", "head"]


def test_locations_resolve_to_the_module_the_parameter_or_the_first_layer_inside():
    assert layer_for("head", LAYERS) == 3
    assert layer_for("encoder.layers.0.linear2.weight", LAYERS) == 2
    assert layer_for("encoder", LAYERS) == 1
    assert layer_for("bias", LAYERS) == 0  # the root module's own parameter
    assert layer_for("decoder", LAYERS) is None and layer_for(None, LAYERS) is None


def test_numbers_come_back_from_json_safe_strings():
    assert [number(v) for v in (1, 2.5, None, True, "x")] == [1.0, 2.5, None, None, None]
    assert math.isnan(number("NaN")) and number("-Infinity") == -math.inf
    assert math.isnan(number("nan")) and number("inf") == math.inf  # report.json_float's spelling


def test_log_scale_places_decades_evenly_and_refuses_what_it_cannot_place():
    scale = LogScale.of([1e-6, None, 0.0, 1e-3, 1.0, math.inf])
    assert (scale.position(1e-6), scale.position(1e-3), scale.position(1.0)) == (0.0, 0.5, 1.0)
    assert scale.position(0.0) is None and scale.position(math.nan) is None
    assert LogScale.of([0.0, None]) is None
    assert colour(0.0) == "#440154" and colour(1.0) == "#fde725"


@given(st.integers(0, 2000), st.integers(1, 300))
def test_buckets_cover_every_item_once_in_order(length, count):
    parts = buckets(length, count)
    assert [i for part in parts for i in part] == list(range(length))
    assert len(parts) == min(length, count) and all(len(part) > 0 for part in parts)


def test_bucket_mean_skips_gaps_and_keeps_non_finite_visible():
    assert bucket_mean([1.0, None, 3.0], range(3)) == 2.0
    assert bucket_mean([None, None], range(2)) is None
    assert math.isinf(bucket_mean([1.0, math.inf], range(2)))


def test_the_largest_floats_stay_finite_in_scales_and_means():
    scale = LogScale.of([1e-300, 1.7976931348623157e308])
    assert (scale.smallest, scale.largest) == (1e-300, 1.7976931348623157e308)
    assert bucket_mean([1.7e308, 1.7e308], range(2)) == 1.7e308
