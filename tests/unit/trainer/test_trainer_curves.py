"""The training-curves PNG."""

from __future__ import annotations

import io
import struct

from gallery_trainer.curves import CURVES_HEIGHT_PX, CURVES_WIDTH_PX, render_curves


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_curves_are_a_png_of_the_documented_size() -> None:
    records = []
    for epoch in range(1, 6):
        records.append(
            {"kind": "step", "step": epoch * 10, "epoch": epoch, "train_loss": 1 / epoch, "lr": 0.01 / epoch}
        )
        records.append(
            {
                "kind": "epoch",
                "step": epoch * 10,
                "epoch": epoch,
                "train_loss": 1 / epoch,
                "val_loss": 1.2 / epoch,
                "val_accuracy": 0.5 + epoch / 20,
                "lr": 0.01 / epoch,
            }
        )
    png = render_curves(records, title="iris run 1")
    assert png_size(png) == (CURVES_WIDTH_PX, CURVES_HEIGHT_PX)
    empty = render_curves([])
    assert png_size(empty) == (CURVES_WIDTH_PX, CURVES_HEIGHT_PX)
    # The curves are drawn: a plot with lines holds far more detail than three empty panels.
    assert len(png) > len(empty) * 1.2


def test_curves_decode_as_an_image_with_drawn_lines() -> None:
    from matplotlib.image import imread

    records = [
        {"kind": "epoch", "step": n, "epoch": n, "train_loss": 2.0 / n, "val_accuracy": n / 4, "lr": 0.1}
        for n in range(1, 5)
    ]
    pixels = imread(io.BytesIO(render_curves(records)), format="png")
    assert pixels.shape[:2] == (CURVES_HEIGHT_PX, CURVES_WIDTH_PX)
    # matplotlib's default first line colour (C0, #1f77b4) appears: the loss curve is there.
    c0 = (
        (abs(pixels[..., 0] - 0x1F / 255) < 0.02)
        & (abs(pixels[..., 1] - 0x77 / 255) < 0.02)
        & (abs(pixels[..., 2] - 0xB4 / 255) < 0.02)
    )
    assert c0.sum() > 100
