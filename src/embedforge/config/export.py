"""The params of the export stage: which serving formats it writes, and how closely they must agree."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from embedforge.config.base import Section


class ExportParams(Section):
    variants: list[Literal["onnx_fp32", "onnx_int8"]] = Field(
        default=["onnx_fp32", "onnx_int8"],
        min_length=1,
        description="What models/export holds: the ONNX graph (onnx_fp32) and its int8 dynamically quantized twin "
        "(onnx_int8); each is checked, scored and timed like the PyTorch student.",
    )
    min_cosine: float = Field(
        default=0.9999,
        ge=-1,
        le=1,
        description="The fp32 graph's embeddings must reach this cosine with the PyTorch student's on every "
        "sentence of the STS splits, or the stage fails (an export that does not compute the same function).",
    )
