import pytest

from trellis.models.flops import mfu, peak_tflops_for


@pytest.mark.parametrize("name,peak", [
    ("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
    ("NVIDIA H200", 989.0), ("NVIDIA L4", 121.0),
])
def test_gpu_peak_table(name, peak):
    assert peak_tflops_for(name, "bf16") == peak
    assert peak_tflops_for(name, "fp32") == peak / 2  # TF32


def test_unknown_gpu_has_no_peak_and_mfu_is_a_ratio():
    assert peak_tflops_for("Some Future Accelerator") is None
    assert mfu(1000.0, 6e9, 989e12) == pytest.approx(6e12 / 989e12)
