"""nvidia-smi CSV parsing (pure)."""

from __future__ import annotations

import pytest

from phasegate.policy.gpus import GpuInfo, parse_query_gpu_csv


def test_parses_real_nvidia_smi_rows() -> None:
    text = ("0, NVIDIA RTX A6000, 49140, 20123, 73, GPU-8a1c0f5e-1111-2222-3333-444455556666\n"
            "1, NVIDIA RTX A6000, 49140, 0, 0, GPU-8a1c0f5e-1111-2222-3333-444455557777\n")
    gpus = parse_query_gpu_csv(text)
    assert gpus[0] == GpuInfo(0, "NVIDIA RTX A6000", 49140, 20123, 73.0,
                              "GPU-8a1c0f5e-1111-2222-3333-444455556666")
    assert [g.index for g in gpus] == [1 - 1, 1]


@pytest.mark.parametrize("text", ["", "\n\n"])
def test_no_rows_is_no_gpus(text: str) -> None:
    assert parse_query_gpu_csv(text) == []


@pytest.mark.parametrize("text, fragment", [
    ("0, NVIDIA RTX A6000, 49140 MiB, 1, 2, GPU-x", "line 1"),
    ("0, NVIDIA RTX A6000, 49140", "expected 6 fields"),
])
def test_malformed_rows_are_refused_with_the_line(text: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse_query_gpu_csv(text)
