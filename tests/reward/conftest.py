import pytest


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine two spinning OpenMP
    threads per process make a training step about 50x slower (measured: 24.6 s vs 0.26 s for 6 steps)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_chat_checkpoint(tmp_path_factory):
    """A random 2-layer Llama with a ChatML BPE tokenizer, written once per test session."""
    from trellis.sft.testing import build_tiny_chat_checkpoint

    return build_tiny_chat_checkpoint(tmp_path_factory.mktemp("tiny-chat") / "base")
