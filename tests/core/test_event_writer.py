"""The one TensorBoard writer: scalars and heatmap images read back by TensorBoard itself."""

import numpy as np

from nasprobe.report.event_writer import EventWriter, heatmap_rgba, heatmap_scale


def test_scalars_and_images_round_trip(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rgba = heatmap_rgba(np.array([[0.0, 0.5], [1.0, np.nan]]))
    with EventWriter(tmp_path / "tb") as w:
        assert w.write(-1, {"nas_median/a": 0.25, "loss": float("nan")})
        assert w.write(3, {"nas_median/a": 0.5}, {"nas_heatmap/a": rgba})
        assert not w.write(4, {"loss": float("inf")})  # nothing finite: no event
    ea = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0, "scalars": 0})
    ea.Reload()
    assert ea.Tags()["scalars"] == ["nas_median/a"]
    assert [(e.step, e.value) for e in ea.Scalars("nas_median/a")] == [(-1, 0.25), (3, 0.5)]
    (img,) = ea.Images("nas_heatmap/a")
    k = heatmap_scale((2, 2))
    assert (img.step, img.height, img.width) == (3, 2 * k, 2 * k)
    from io import BytesIO

    from PIL import Image

    decoded = np.asarray(Image.open(BytesIO(img.encoded_image_string)))
    np.testing.assert_array_equal(decoded, rgba)
    assert decoded[-1, -1, 3] == 0  # NaN is transparent


def test_three_spatial_dims_are_slices_side_by_side():
    volume = np.arange(12.0).reshape(3, 2, 2) / 12
    side = np.concatenate(list(volume), axis=1)  # (2, 6): the z slices in a row
    np.testing.assert_array_equal(heatmap_rgba(volume), heatmap_rgba(side))
