"""The boundary checks every node uses: they name the input, count the bad values and say where the first is."""

import pytest
import torch

from unidense_core.io.checks import check_choice, check_finite, check_image, check_latent, check_mask


def test_finite_tensor_passes_unchanged():
    x = torch.rand(2, 4, 4, 3)
    assert check_finite(x, "image") is x and check_image(x) is x


def test_nan_and_inf_are_counted_and_located():
    x = torch.zeros(2, 5, 6, 3)
    x[1, 3, 4, 2] = float("nan")
    x[1, 4, 0, 0] = float("inf")
    x[1, 4, 1, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"image has 3 non-finite .*NaN: 1, Inf: 2.*B=1, H=3, W=4, C=2"):
        check_image(x, "image")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: check_image(torch.rand(0, 4, 4, 3)), r"image is empty"),
        (lambda: check_image(torch.rand(1, 0, 0, 3)), r"image is empty"),
        (lambda: check_image(torch.rand(4, 4, 3)), r"IMAGE \[B,H,W,C\]"),
        (lambda: check_image(torch.rand(1, 4, 4, 2)), r"1 or 3 or 4 channels"),
        (lambda: check_mask(torch.full((1, 2, 2), float("nan")), "rgb_mask"), r"rgb_mask has 4 non-finite"),
        (lambda: check_mask(torch.rand(1, 1, 2, 2), "depth_mask"), r"depth_mask must be a MASK"),
        (lambda: check_latent({"samples": torch.rand(1, 4, 2, 2)}, channels=(8,)), r"8 channels, got 4"),
        (lambda: check_latent(torch.rand(1, 4, 2, 2)), r"must be a LATENT"),
        (lambda: check_choice("fp64", "weight_dtype", ["auto", "fp32"]), r"weight_dtype must be one of"),
    ],
)
def test_bad_inputs_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
